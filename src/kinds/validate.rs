//! `validate`: the real-data and quality gate. Reads the lake parts its inputs list (through
//! DataFusion), checks each dataset (one source x symbol x interval), and lets through only what
//! passes.
//!
//! ```yaml
//! validate:
//!   kind: validate
//!   needs: [collect]
//!   with:
//!     allow_synthetic: false     # simulated data is refused unless this says otherwise
//!     on_failure: quarantine     # or fail: stop the pipeline when any dataset fails
//!     min_symbols: 1             # stop the pipeline when fewer symbols pass
//!     max_missing: 0.05          # share of the expected grid
//!     max_gap: 3d                # the longest run of missing candles
//!     max_filled: 0.01           # share of filled-looking bars (no trades, no volume, O=H=L=C)
//!     max_stale_run: 24          # identical closes in a row
//!     tick_z: 12                 # a bad tick's jump and return, in local robust scales ...
//!     min_tick_move: 0.25        # ... and at least 25% (a close that jumps and comes back)
//!     wick_z: 16                 # a wick beyond its body and its neighbours' ranges ...
//!     min_wick: 0.5              # ... by at least 50% (a near-zero low, a fat-finger high)
//!     max_bad_ticks: 0           # bad-tick bars a dataset may have
//!     min_history: 30d
//!     max_lag: 3d                # ends this long before the newest dataset of its interval
//!     source_tolerance: 0.01     # closes of one symbol from two sources agree within this
//!                                # (|a - b| / min(a, b)); both datasets fail when they do not
//!     funding_cap: 0.03          # funding rates beyond +-this fail where the rows record no
//!                                # cap and floor of their own (fundingInfo's)
//!     max_missing_funding: 0     # settlements a funding series may miss
//! ```
//!
//! Every table of the lake is checked: klines as above; mark, index and premium klines the
//! same way except that their volume fields may be zero (no filled-bar check) and the premium
//! index, a signed fraction, is not a price (no positivity or bad-tick check); funding series
//! for settlements on the symbol's schedule (a few milliseconds late is normal; a minute is
//! not), missing settlements, and rates inside the cap and floor.
//!
//! Outputs: `lake.json` (the passing datasets' parts, same format as `collect`'s),
//! `validation_report.json` (every check's figure, limit and verdict, per dataset),
//! `validation_table.txt` (the table printed at the end of the stage).
//!
//! How each dataset is measured and judged, and how its quality score is made: [`crate::quality`].

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use object_store::memory::InMemory;
use serde::{Deserialize, Serialize};

use crate::diagnostic::location::YamlPath;
use crate::diagnostic::params::{ParamError, check_range, parse_params};
use crate::engine::stage::{
    BoxFuture, PrepareContext, PreparedStage, StageContext, StageError, StageKind,
};
use crate::kinds::write_json;
use crate::market::lake::{LISTING_FILE, LakeListing, PartEntry};
use crate::market::model::Dataset;
use crate::quality::measure::MEMORY_URL;
use crate::quality::ticks::TickRules;
use crate::quality::{
    DatasetKey, DatasetReport, Limits, Measured, judge, render_table, scan_dataset,
    source_agreement,
};

pub struct Validate;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    #[default]
    Quarantine,
    Fail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default)]
    allow_synthetic: bool,
    #[serde(default)]
    on_failure: OnFailure,
    #[serde(default = "one")]
    min_symbols: usize,
    #[serde(default = "default_max_missing")]
    max_missing: f64,
    #[serde(default = "default_max_gap")]
    max_gap: String,
    #[serde(default = "default_max_filled")]
    max_filled: f64,
    #[serde(default = "default_max_stale_run")]
    max_stale_run: u64,
    #[serde(default = "default_tick_z")]
    tick_z: f64,
    #[serde(default = "default_min_tick_move")]
    min_tick_move: f64,
    #[serde(default = "default_wick_z")]
    wick_z: f64,
    #[serde(default = "default_min_wick")]
    min_wick: f64,
    #[serde(default)]
    max_bad_ticks: u64,
    /// Gone: a large return is not bad data. Refused with a pointer to the bad-tick params.
    #[serde(default, skip_serializing)]
    outlier_z: Option<serde::de::IgnoredAny>,
    #[serde(default, skip_serializing)]
    max_outliers: Option<serde::de::IgnoredAny>,
    #[serde(default = "default_min_history")]
    min_history: String,
    #[serde(default = "default_max_lag")]
    max_lag: String,
    #[serde(default = "default_source_tolerance")]
    source_tolerance: f64,
    #[serde(default = "default_funding_cap")]
    funding_cap: f64,
    #[serde(default)]
    max_missing_funding: u64,
}

fn default_funding_cap() -> f64 {
    0.03
}

fn one() -> usize {
    1
}
fn default_max_missing() -> f64 {
    0.05
}
fn default_max_gap() -> String {
    "3d".into()
}
fn default_max_filled() -> f64 {
    0.01
}
fn default_max_stale_run() -> u64 {
    24
}
fn default_tick_z() -> f64 {
    TickRules::default().tick_z
}
fn default_min_tick_move() -> f64 {
    TickRules::default().min_tick_move
}
fn default_wick_z() -> f64 {
    TickRules::default().wick_z
}
fn default_min_wick() -> f64 {
    TickRules::default().min_wick
}
fn default_min_history() -> String {
    "30d".into()
}
fn default_max_lag() -> String {
    "3d".into()
}
fn default_source_tolerance() -> f64 {
    0.01
}

#[derive(Debug)]
struct Prepared {
    params: Params,
    limits: Limits,
}

impl StageKind for Validate {
    fn name(&self) -> &'static str {
        "validate"
    }

    fn code_version(&self) -> u32 {
        // 2: bad ticks replace return outliers; flagged bars in the report.
        // 3: every table of the lake (funding, mark, index, premium klines).
        3
    }

    fn prepare(
        &self,
        params: &yaml_serde::Value,
        _context: &PrepareContext<'_>,
    ) -> Result<Box<dyn PreparedStage>, ParamError> {
        let params: Params = parse_params(params)?;
        let root = YamlPath::root();
        let duration = |field: &str, text: &str| {
            crate::util::time::parse_duration(text)
                .map_err(|message| ParamError::new(root.clone().key(field), message))
        };
        let max_gap = duration("max_gap", &params.max_gap)?;
        let min_history = duration("min_history", &params.min_history)?;
        let max_lag = duration("max_lag", &params.max_lag)?;
        for (field, value) in [
            ("max_missing", params.max_missing),
            ("max_filled", params.max_filled),
            ("source_tolerance", params.source_tolerance),
        ] {
            if !(0.0..1.0).contains(&value) {
                return Err(ParamError::new(
                    root.clone().key(field),
                    format!("`{field}` is a share in [0, 1): got {value}"),
                ));
            }
        }
        for (field, set) in [
            ("outlier_z", params.outlier_z.is_some()),
            ("max_outliers", params.max_outliers.is_some()),
        ] {
            if set {
                return Err(ParamError {
                    anchor: crate::diagnostic::location::Anchor::Key,
                    ..ParamError::new(
                        root.clone().key(field),
                        format!("`{field}` is gone: a large return is not bad data (crypto returns have fat tails)"),
                    )
                }
                .with_help("bad ticks (a spike that comes back, a wick far outside its neighbours) are judged by tick_z, min_tick_move, wick_z, min_wick and max_bad_ticks; remove this line"));
            }
        }
        for (field, value, high) in [
            ("tick_z", params.tick_z, 1e6),
            ("wick_z", params.wick_z, 1e6),
            ("min_tick_move", params.min_tick_move, 1e6),
            ("min_wick", params.min_wick, 1e6),
            ("funding_cap", params.funding_cap, 1.0),
        ] {
            check_range(
                root.clone().key(field),
                value,
                f64::MIN_POSITIVE,
                high,
                field,
            )?;
        }
        if params.max_stale_run < 2 {
            return Err(ParamError::new(
                root.key("max_stale_run"),
                "max_stale_run must be at least 2",
            ));
        }
        let limits = Limits {
            allow_synthetic: params.allow_synthetic,
            max_missing: params.max_missing,
            max_gap,
            max_filled: params.max_filled,
            max_stale_run: params.max_stale_run,
            ticks: TickRules {
                tick_z: params.tick_z,
                min_tick_move: params.min_tick_move,
                wick_z: params.wick_z,
                min_wick: params.min_wick,
            },
            max_bad_ticks: params.max_bad_ticks,
            min_history,
            max_lag,
            source_tolerance: params.source_tolerance,
            funding_cap: params.funding_cap,
            max_missing_funding: params.max_missing_funding,
        };
        Ok(Box::new(Prepared { params, limits }))
    }
}

impl PreparedStage for Prepared {
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }

    fn run<'a>(&'a self, context: &'a StageContext) -> BoxFuture<'a, Result<(), StageError>> {
        Box::pin(self.validate(context))
    }

    fn attachments(
        &self,
        output_dir: &std::path::Path,
    ) -> Result<Vec<crate::engine::cache::OutputFile>, String> {
        crate::kinds::lake_attachments(output_dir)
    }

    fn output_shape<'a>(
        &'a self,
        stage_id: &'a str,
        _inputs: &'a [(String, crate::engine::stage::OutputShape)],
    ) -> BoxFuture<'a, Result<crate::engine::stage::OutputShape, crate::engine::stage::ShapeError>>
    {
        Box::pin(async move { Ok(crate::kinds::listing_shape(stage_id)) })
    }
}

impl Prepared {
    async fn validate(&self, context: &StageContext) -> Result<(), StageError> {
        let mut parts: Vec<PartEntry> = Vec::new();
        for input in &context.inputs {
            let path = input.dir.join(LISTING_FILE);
            if path.is_file() {
                parts.extend(LakeListing::read(&path).map_err(StageError::failed)?.parts);
            }
        }
        if !context
            .inputs
            .iter()
            .any(|i| i.dir.join(LISTING_FILE).is_file())
        {
            return Err(StageError::failed(
                "validate reads the lake through a `lake.json` input: add `needs: [collect]`",
            ));
        }
        if parts.is_empty() {
            return Err(StageError::failed(
                "the input lake.json lists no parts: nothing was collected",
            ));
        }
        let mut datasets: BTreeMap<DatasetKey, Vec<PartEntry>> = BTreeMap::new();
        for part in parts {
            let Some(table) = Dataset::from_table(&part.table) else {
                return Err(StageError::failed(format!(
                    "the input lake.json lists {} in table `{}`, which this version does not know",
                    part.path, part.table
                )));
            };
            datasets
                .entry(DatasetKey {
                    table,
                    source: part.source.clone(),
                    symbol: part.symbol.clone(),
                    interval: part.interval.clone(),
                })
                .or_default()
                .push(part);
        }
        for parts in datasets.values_mut() {
            parts.sort_by_key(|part| part.first_open_ms);
            parts.dedup_by(|a, b| a.path == b.path);
        }
        let session = SessionContext::new_with_config(
            SessionConfig::new()
                .with_target_partitions(1)
                .with_batch_size(65_536),
        );
        let store = Arc::new(InMemory::new());
        let url = reqwest::Url::parse(MEMORY_URL).expect("a valid URL");
        session.register_object_store(
            &url,
            Arc::clone(&store) as Arc<dyn object_store::ObjectStore>,
        );
        let now_ms = crate::util::time::now_ms() as i64;
        let total = datasets.len() as u64;
        let parallel = std::thread::available_parallelism().map_or(2, usize::from);
        let tasks: Vec<_> = datasets
            .into_iter()
            .map(|(key, parts)| {
                let session = session.clone();
                let store = Arc::clone(&store);
                let data_dir = context.data_dir.clone();
                let limits = &self.limits;
                async move {
                    let measured =
                        scan_dataset(&session, &store, &data_dir, &key, &parts, now_ms, limits)
                            .await;
                    (key, parts, measured)
                }
            })
            .collect();
        let scans = futures::stream::iter(tasks).buffer_unordered(parallel);
        futures::pin_mut!(scans);
        let mut results: Vec<(DatasetKey, Vec<PartEntry>, Measured)> = Vec::new();
        let mut done = 0;
        while let Some((key, parts, measured)) = scans.next().await {
            if context.cancel.is_cancelled() {
                return Err(StageError::Cancelled);
            }
            done += 1;
            context.progress.update(done, total, key.to_string());
            results.push((key, parts, measured));
        }
        results.sort_by(|a, b| a.0.cmp(&b.0));
        let agreement = source_agreement(&results);
        // Each table and interval's newest row: a dataset ending well before it has stopped
        // updating.
        let mut newest: BTreeMap<(Dataset, &str), i64> = BTreeMap::new();
        for (key, _, measured) in &results {
            if let Some(last) = measured.grid_last {
                let entry = newest
                    .entry((key.table, key.interval.as_str()))
                    .or_insert(last);
                *entry = (*entry).max(last);
            }
        }
        let mut reports = Vec::new();
        let mut passing_parts = Vec::new();
        for (key, parts, measured) in &results {
            let report = judge(
                key,
                measured,
                agreement.get(key),
                newest.get(&(key.table, key.interval.as_str())).copied(),
                &self.limits,
            );
            if report.passed {
                // The provenance that flows on is the one the files record.
                let kind = measured.provenance.first().cloned().unwrap_or_default();
                passing_parts.extend(parts.iter().cloned().map(|mut part| {
                    part.provenance = kind.clone();
                    part
                }));
            }
            reports.push(report);
        }
        let synthetic = passing_parts
            .iter()
            .any(|part| part.provenance == "simulated");
        let listing = LakeListing::new(passing_parts);
        // A symbol is usable when its trades are.
        let passed_symbols: std::collections::BTreeSet<&str> = reports
            .iter()
            .filter(|r| r.passed && r.table == Dataset::Klines.table())
            .map(|r| r.symbol.as_str())
            .collect();
        let table = render_table(&reports, synthetic);
        write_json(&context.output_dir.join(LISTING_FILE), &listing)?;
        write_json(
            &context.output_dir.join("validation_report.json"),
            &serde_json::json!({
                "synthetic": synthetic,
                "banner": synthetic.then_some(crate::provenance::SYNTHETIC_BANNER),
                "validated_at_ms": now_ms,
                "params": self.params,
                "datasets_passed": reports.iter().filter(|r| r.passed).count(),
                "datasets_quarantined": reports.iter().filter(|r| !r.passed).count(),
                "symbols_passed": passed_symbols.len(),
                "datasets": reports,
            }),
        )?;
        fs_err::write(context.output_dir.join("validation_table.txt"), &table)?;
        context.log(&table);
        context.progress.report(table);
        let failing: Vec<&DatasetReport> = reports.iter().filter(|r| !r.passed).collect();
        if self.params.on_failure == OnFailure::Fail
            && let Some(first) = failing.first()
        {
            return Err(StageError::failed(format!(
                "{} of {} datasets failed validation (on_failure: fail); first: {} {} {} {}: {}",
                failing.len(),
                reports.len(),
                first.source,
                first.symbol,
                first.table,
                first.interval,
                first.failures.join("; ")
            )));
        }
        if passed_symbols.len() < self.params.min_symbols {
            return Err(StageError::failed(format!(
                "only {} symbol(s) passed validation; min_symbols is {} ({} dataset(s) quarantined: see validation_report.json)",
                passed_symbols.len(),
                self.params.min_symbols,
                failing.len()
            )));
        }
        if !failing.is_empty() {
            context.warn(&format!(
                "quarantined {} of {} datasets",
                failing.len(),
                reports.len()
            ));
        }
        Ok(())
    }
}
