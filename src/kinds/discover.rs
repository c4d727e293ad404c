//! `discover`: the symbol universe of an exchange source, as Parquet.
//!
//! ```yaml
//! discover:
//!   kind: discover
//!   with:
//!     source: aster
//!     quote_assets: [USDT]          # default
//!     statuses: [TRADING]           # default; include_inactive: true keeps every status
//!     include: ["*USDT"]            # globs (* and ?) on the symbol
//!     exclude: ["*DOWN*"]
//!     min_quote_volume: 1000000     # 24h quote volume; fetches ticker/24hr (weight 40)
//!     max_symbols: 50               # the most liquid first when volumes are known
//!   cache: {ttl: 1d}
//! ```
//!
//! Writes `universe.parquet` (symbol, pair, base/quote/margin asset, contract type, status,
//! onboard date, tick size, step size, min notional, 24h quote volume), `universe.csv`,
//! `rate_limits.json` (the declared `rateLimits`) and `discover_report.json`. Symbol names are
//! untrusted: a name outside the source's pattern is refused with a warning and goes no further.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use crate::diagnostic::location::YamlPath;
use crate::diagnostic::params::{ParamError, parse_params};
use crate::engine::stage::{
    BoxFuture, FileRef, PrepareContext, PreparedStage, StageContext, StageError, StageKind,
};
use crate::kinds::write_json;
use crate::market::exchange::connections::Connections;
use crate::market::exchange::source::{Source, SourceKind};

pub struct Discover;

/// The file `collect` looks for among its inputs.
pub const UNIVERSE_FILE: &str = "universe.parquet";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    source: String,
    #[serde(default = "default_quotes")]
    quote_assets: Vec<String>,
    #[serde(default = "default_contracts")]
    contract_types: Vec<String>,
    #[serde(default = "default_statuses")]
    statuses: Vec<String>,
    #[serde(default)]
    include_inactive: bool,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    min_quote_volume: Option<f64>,
    #[serde(default)]
    max_symbols: Option<usize>,
}

fn default_quotes() -> Vec<String> {
    vec!["USDT".into()]
}
fn default_contracts() -> Vec<String> {
    vec!["PERPETUAL".into()]
}
fn default_statuses() -> Vec<String> {
    vec!["TRADING".into()]
}

#[derive(Debug)]
struct Prepared {
    params: Params,
    source: Arc<Source>,
}

/// Resolves a stage's `source` param to an exchange source, with located errors.
pub fn exchange_source(
    context: &PrepareContext<'_>,
    name: &str,
    kind: &str,
) -> Result<Arc<Source>, ParamError> {
    let at = YamlPath::root().key("source");
    let found = context.source::<Source>(name, at.clone())?;
    if !matches!(found.kind, SourceKind::Exchange { .. }) {
        return Err(ParamError::new(
            at,
            format!("`{kind}` needs an exchange API source; `{name}` is a dump directory"),
        ));
    }
    Ok(found)
}

/// A kind's params for the fingerprint, with its source's configuration in place of the name:
/// changing the source's URL or scenario re-runs the stages that use it.
pub fn params_with_source(params: &impl Serialize, source: &Source) -> serde_json::Value {
    let mut value = serde_json::to_value(params).unwrap_or_default();
    value["source"] = source.describe();
    value
}

/// The scenario file of a replay source, for the fingerprint.
pub fn source_files(source: &Source) -> Vec<FileRef> {
    source
        .scenario_file()
        .map(|path| FileRef {
            param: YamlPath::root().key("source"),
            path: path.to_owned(),
        })
        .into_iter()
        .collect()
}

impl StageKind for Discover {
    fn name(&self) -> &'static str {
        "discover"
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn prepare(
        &self,
        params: &yaml_serde::Value,
        context: &PrepareContext<'_>,
    ) -> Result<Box<dyn PreparedStage>, ParamError> {
        let params: Params = parse_params(params)?;
        let source = exchange_source(context, &params.source, self.name())?;
        for (field, patterns) in [("include", &params.include), ("exclude", &params.exclude)] {
            if let Some(index) = patterns.iter().position(|p| p.trim().is_empty()) {
                return Err(ParamError::new(
                    YamlPath::root().key(field).index(index),
                    "empty pattern",
                ));
            }
        }
        if params.max_symbols == Some(0) {
            return Err(ParamError::new(
                YamlPath::root().key("max_symbols"),
                "max_symbols must be at least 1",
            ));
        }
        Ok(Box::new(Prepared { params, source }))
    }
}

/// `*` matches any run of characters, `?` one character; everything else itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), text.chars().collect());
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(position) = star {
            p = position + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// One row of the universe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UniverseRow {
    pub symbol: String,
    pub pair: String,
    pub base_asset: String,
    pub quote_asset: String,
    pub margin_asset: String,
    pub contract_type: String,
    pub status: String,
    pub onboard_date: Option<i64>,
    pub tick_size: Option<f64>,
    pub step_size: Option<f64>,
    pub min_notional: Option<f64>,
    pub quote_volume_24h: Option<f64>,
}

/// A name for logs: escaped, shortened.
pub fn printable(name: &str) -> String {
    let shown: String = name.chars().take(48).collect();
    format!("{shown:?}")
}

impl PreparedStage for Prepared {
    fn params(&self) -> serde_json::Value {
        params_with_source(&self.params, &self.source)
    }

    fn files(&self) -> Vec<FileRef> {
        source_files(&self.source)
    }

    /// `universe.parquet`: the `universe` table (and the stage's id, its only table).
    fn output_shape<'a>(
        &'a self,
        stage_id: &'a str,
        _inputs: &'a [(String, crate::engine::stage::OutputShape)],
    ) -> BoxFuture<'a, Result<crate::engine::stage::OutputShape, crate::engine::stage::ShapeError>>
    {
        Box::pin(async move {
            let mut names = vec!["universe".to_owned()];
            if stage_id != "universe" {
                names.push(stage_id.to_owned());
            }
            Ok(crate::engine::stage::OutputShape::Tables(vec![
                crate::engine::stage::ShapeTable {
                    names,
                    schema: universe_schema(),
                },
            ]))
        })
    }

    fn run<'a>(&'a self, context: &'a StageContext) -> BoxFuture<'a, Result<(), StageError>> {
        Box::pin(async move {
            let connection = context
                .resources
                .get::<Connections>()
                .connect(&self.source, &context.cancel)
                .await?;
            let info = &connection.info;
            let params = &self.params;
            let mut refused = Vec::new();
            let mut rows: Vec<UniverseRow> = Vec::new();
            for symbol in &info.symbols {
                if !self.source.accepts_symbol(&symbol.symbol) {
                    refused.push(printable(&symbol.symbol));
                    continue;
                }
                if rows.iter().any(|row| row.symbol == symbol.symbol) {
                    context.warn(&format!(
                        "{} is listed twice by the exchange; kept once",
                        symbol.symbol
                    ));
                    continue;
                }
                let status_ok = params.include_inactive || params.statuses.contains(&symbol.status);
                let wanted = status_ok
                    && params.quote_assets.contains(&symbol.quote_asset)
                    && params.contract_types.contains(&symbol.contract_type)
                    && (params.include.is_empty()
                        || params.include.iter().any(|p| glob_match(p, &symbol.symbol)))
                    && !params.exclude.iter().any(|p| glob_match(p, &symbol.symbol));
                if !wanted {
                    continue;
                }
                rows.push(UniverseRow {
                    symbol: symbol.symbol.clone(),
                    pair: symbol.pair.clone(),
                    base_asset: symbol.base_asset.clone(),
                    quote_asset: symbol.quote_asset.clone(),
                    margin_asset: symbol.margin_asset.clone(),
                    contract_type: symbol.contract_type.clone(),
                    status: symbol.status.clone(),
                    onboard_date: symbol.onboard_date,
                    tick_size: symbol.filter_value("PRICE_FILTER", "tickSize"),
                    step_size: symbol.filter_value("LOT_SIZE", "stepSize"),
                    min_notional: symbol.filter_value("MIN_NOTIONAL", "notional"),
                    quote_volume_24h: None,
                });
            }
            if !refused.is_empty() {
                context.warn(&format!(
                    "refused {} symbol name(s) outside the pattern `{}`: {}",
                    refused.len(),
                    self.source.symbol_pattern.as_str(),
                    refused.join(", ")
                ));
            }
            if params.min_quote_volume.is_some() || params.max_symbols.is_some() {
                let tickers = connection.client.tickers(&context.cancel).await?;
                let volumes: std::collections::HashMap<&str, f64> = tickers
                    .iter()
                    .map(|ticker| (ticker.symbol.as_str(), ticker.quote_volume.0))
                    .collect();
                for row in &mut rows {
                    row.quote_volume_24h = volumes.get(row.symbol.as_str()).copied();
                }
                if let Some(min) = params.min_quote_volume {
                    rows.retain(|row| row.quote_volume_24h.is_some_and(|volume| volume >= min));
                }
                rows.sort_by(|a, b| {
                    b.quote_volume_24h
                        .unwrap_or(0.0)
                        .total_cmp(&a.quote_volume_24h.unwrap_or(0.0))
                        .then_with(|| a.symbol.cmp(&b.symbol))
                });
            } else {
                rows.sort_by(|a, b| a.symbol.cmp(&b.symbol));
            }
            if let Some(max) = params.max_symbols {
                rows.truncate(max);
            }
            if rows.is_empty() {
                return Err(StageError::Failed(format!(
                    "no symbol of {} passed the filters ({} listed)",
                    self.source.name,
                    info.symbols.len()
                )));
            }
            write_universe(&context.output_dir.join(UNIVERSE_FILE), &rows)?;
            write_csv(&context.output_dir.join("universe.csv"), &rows)?;
            write_json(
                &context.output_dir.join("rate_limits.json"),
                &info.rate_limits,
            )?;
            write_json(
                &context.output_dir.join("discover_report.json"),
                &serde_json::json!({
                    "source": self.source.name,
                    "provenance": connection.client.provenance(),
                    "listed": info.symbols.len(),
                    "selected": rows.len(),
                    "refused_names": refused,
                }),
            )?;
            context.progress.message(format!("{} symbols", rows.len()));
            Ok(())
        })
    }
}

fn universe_schema() -> Arc<Schema> {
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    let float = |name: &str| Field::new(name, DataType::Float64, true);
    Arc::new(Schema::new(vec![
        text("symbol"),
        text("pair"),
        text("base_asset"),
        text("quote_asset"),
        text("margin_asset"),
        text("contract_type"),
        text("status"),
        Field::new("onboard_date", DataType::Int64, true),
        float("tick_size"),
        float("step_size"),
        float("min_notional"),
        float("quote_volume_24h"),
    ]))
}

fn write_universe(path: &Path, rows: &[UniverseRow]) -> Result<(), StageError> {
    let text = |f: fn(&UniverseRow) -> &str| {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as ArrayRef
    };
    let float = |f: fn(&UniverseRow) -> Option<f64>| {
        Arc::new(rows.iter().map(f).collect::<Float64Array>()) as ArrayRef
    };
    let batch = RecordBatch::try_new(
        universe_schema(),
        vec![
            text(|r| &r.symbol),
            text(|r| &r.pair),
            text(|r| &r.base_asset),
            text(|r| &r.quote_asset),
            text(|r| &r.margin_asset),
            text(|r| &r.contract_type),
            text(|r| &r.status),
            Arc::new(rows.iter().map(|r| r.onboard_date).collect::<Int64Array>()) as ArrayRef,
            float(|r| r.tick_size),
            float(|r| r.step_size),
            float(|r| r.min_notional),
            float(|r| r.quote_volume_24h),
        ],
    )
    .map_err(|error| StageError::Failed(format!("building the universe table: {error}")))?;
    let file = fs_err::File::create(path)?;
    let parquet_failed = |error: parquet::errors::ParquetError| {
        StageError::Failed(format!("writing {}: {error}", path.display()))
    };
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).map_err(parquet_failed)?;
    writer.write(&batch).map_err(parquet_failed)?;
    writer.close().map_err(parquet_failed)?;
    Ok(())
}

fn write_csv(path: &Path, rows: &[UniverseRow]) -> Result<(), StageError> {
    let number = |value: Option<f64>| value.map(|v| v.to_string()).unwrap_or_default();
    // Exchange-supplied text: quoted when it holds a separator, defused when a spreadsheet
    // would read it as a formula.
    let field = |value: &str| {
        let mut value = value.to_owned();
        if value.starts_with(['=', '+', '-', '@']) {
            value.insert(0, '\'');
        }
        if value.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", value.replace('"', "\"\""))
        } else {
            value
        }
    };
    let mut text = String::from(
        "symbol,pair,base_asset,quote_asset,margin_asset,contract_type,status,onboard_date,tick_size,step_size,min_notional,quote_volume_24h\n",
    );
    for r in rows {
        text.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            field(&r.symbol),
            field(&r.pair),
            field(&r.base_asset),
            field(&r.quote_asset),
            field(&r.margin_asset),
            field(&r.contract_type),
            field(&r.status),
            r.onboard_date.map(|v| v.to_string()).unwrap_or_default(),
            number(r.tick_size),
            number(r.step_size),
            number(r.min_notional),
            number(r.quote_volume_24h),
        ));
    }
    Ok(fs_err::write(path, text)?)
}

/// Reads a universe written by `discover`: (symbol, onboard date) in universe order.
pub fn read_universe(path: &Path) -> Result<Vec<(String, Option<i64>)>, String> {
    let file = File::open(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|builder| builder.build())
        .map_err(|error| format!("{}: {error}", path.display()))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|error| format!("{}: {error}", path.display()))?;
        let symbols = batch
            .column_by_name("symbol")
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| format!("{}: no text column `symbol`", path.display()))?;
        let onboard = batch
            .column_by_name("onboard_date")
            .and_then(|c| c.as_primitive_opt::<Int64Type>());
        for i in 0..batch.num_rows() {
            let date =
                onboard.and_then(|c| (!arrow::array::Array::is_null(c, i)).then(|| c.value(i)));
            out.push((symbols.value(i).to_owned(), date));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*USDT", "BTCUSDT"));
        assert!(glob_match("BTC*", "BTCUSDT"));
        assert!(glob_match("?TCUSDT", "BTCUSDT"));
        assert!(!glob_match("ETH*", "BTCUSDT"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*DOWN*", "XDOWNUSDT"));
    }
}
