//! `compare`: the leaderboard of a sweep, and whether its winner is more than the luck of
//! trying N members (the Deflated Sharpe Ratio and the Probability of Backtest Overfitting,
//! `crate::sweep`). A gathering kind: it runs once and reads every member of what it needs.
//!
//! ```yaml
//! compare:
//!   kind: compare
//!   needs: [train, backtest]     # every member of each
//!   with:
//!     by: sharpe                 # sharpe | total_return | max_drawdown | trades | t_before_fees
//!                                # | balanced_accuracy | log_loss
//!     returns: net               # net | gross: per-bar returns after trading costs, or before
//!                                # them (fees and slippage), where cost drag no longer
//!                                # separates members that trade more or less often
//!     blocks: 16                 # time blocks of the PBO's cross-validation (even)
//!     min_dsr: 0.95              # the winner survives at this DSR or above ...
//!     max_pbo: 0.5               # ... and a PBO below this
//! ```
//!
//! Members are the `backtest` outputs among the inputs (`equity.parquet` and `metrics.json`);
//! the `train` output whose matrix values are among a member's gives its model figures.
//! Outputs: `leaderboard.parquet`, `leaderboard.csv`, `leaderboard.txt`, `compare.json` (the
//! DSR and PBO with their inputs, the winner and the verdict), `curves.parquet` (each member's
//! equity by bar, for the report).

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use serde::{Deserialize, Serialize};

use crate::diagnostic::location::YamlPath;
use crate::diagnostic::params::{ParamError, parse_params};
use crate::engine::stage::{
    BoxFuture, Closing, ClosingContext, PrepareContext, PreparedStage, StageContext, StageError,
    StageInput, StageKind,
};
use crate::sweep::{By, Deflated, Overfitting, Returns, Row, Summary};

pub struct Compare;

pub const SUMMARY_FILE: &str = "compare.json";
pub const LEADERBOARD_FILE: &str = "leaderboard.parquet";
pub const CURVES_FILE: &str = "curves.parquet";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "default_by")]
    by: By,
    #[serde(default = "default_returns")]
    returns: Returns,
    #[serde(default = "default_blocks")]
    blocks: usize,
    #[serde(default = "default_min_dsr")]
    min_dsr: f64,
    #[serde(default = "default_max_pbo")]
    max_pbo: f64,
}

fn default_by() -> By {
    By::Sharpe
}
fn default_returns() -> Returns {
    Returns::Net
}
fn default_blocks() -> usize {
    16
}
fn default_min_dsr() -> f64 {
    0.95
}
fn default_max_pbo() -> f64 {
    0.5
}

#[derive(Debug)]
struct Prepared {
    params: Params,
}

impl StageKind for Compare {
    fn name(&self) -> &'static str {
        "compare"
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn gathers(&self) -> bool {
        true
    }

    fn prepare(
        &self,
        params: &yaml_serde::Value,
        _context: &PrepareContext<'_>,
    ) -> Result<Box<dyn PreparedStage>, ParamError> {
        let params: Params = parse_params(params)?;
        let root = YamlPath::root();
        if !(2..=24).contains(&params.blocks) || !params.blocks.is_multiple_of(2) {
            return Err(ParamError::new(
                root.key("blocks"),
                "blocks must be even, from 2 to 24",
            ));
        }
        crate::diagnostic::params::check_range(
            YamlPath::root().key("min_dsr"),
            params.min_dsr,
            0.0,
            1.0,
            "min_dsr",
        )?;
        crate::diagnostic::params::check_range(
            YamlPath::root().key("max_pbo"),
            params.max_pbo,
            0.0,
            1.000_001,
            "max_pbo",
        )?;
        Ok(Box::new(Prepared { params }))
    }
}

struct Member<'a> {
    input: &'a StageInput,
    summary: crate::backtest::Summary,
    time: Vec<i64>,
    equity: Vec<f64>,
    /// Fees and slippage paid so far, per bar: trading costs, which `gross` adds back.
    fees: Vec<f64>,
    model: Option<serde_json::Value>,
}

impl PreparedStage for Prepared {
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }

    fn run<'a>(&'a self, context: &'a StageContext) -> BoxFuture<'a, Result<(), StageError>> {
        Box::pin(async move { self.compare(context) })
    }

    fn closing(&self, context: &ClosingContext<'_>) -> Result<Closing, String> {
        let path = context.output_dir.join(SUMMARY_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        let summary: Summary =
            serde_json::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))?;
        Ok(Closing {
            lines: vec![format!("sweep: {}", summary.verdict)],
            ..Closing::default()
        })
    }
}

impl Prepared {
    fn compare(&self, context: &StageContext) -> Result<(), StageError> {
        let members = self.members(context)?;
        if members.is_empty() {
            return Err(StageError::failed(
                "no input holds a backtest (equity.parquet and metrics.json): add the backtest stage to `needs`",
            ));
        }
        // Members are compared bar by bar on the bars they all cover (purges and embargoes that
        // depend on a member's label horizon shift its first out-of-sample bar a little).
        let common = common_bars(&members)?;
        let returns: Vec<Vec<f64>> = members
            .iter()
            .map(|m| self.returns_of(m, &common))
            .collect();
        let rows: Vec<Row> = members
            .iter()
            .zip(&returns)
            .map(|(member, returns)| row(member, returns))
            .collect();
        let key = |row: &Row| -> f64 {
            match self.params.by {
                By::Sharpe => row.sharpe_per_bar,
                By::TotalReturn => row.total_return,
                By::MaxDrawdown => row.max_drawdown,
                By::Trades => row.trades as f64,
                By::TBeforeFees => row.t_before_fees.unwrap_or(f64::NEG_INFINITY),
                By::BalancedAccuracy => row.balanced_accuracy.unwrap_or(f64::NEG_INFINITY),
                By::LogLoss => -row.log_loss.unwrap_or(f64::INFINITY),
            }
        };
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by(|&a, &b| {
            key(&rows[b])
                .total_cmp(&key(&rows[a]))
                .then(rows[a].member.cmp(&rows[b].member))
        });
        let winner = order[0];
        let sharpes: Vec<f64> = rows.iter().map(|row| row.sharpe_per_bar).collect();
        let (skew, kurtosis) = crate::sweep::skew_kurtosis(&returns[winner]);
        let deflated = (members.len() > 1).then(|| {
            crate::sweep::deflated_sharpe(
                sharpes[winner],
                returns[winner].len(),
                skew,
                kurtosis,
                &sharpes,
            )
        });
        let overfitting = crate::sweep::overfitting(&returns, self.params.blocks);
        let winner_id = rows[winner].member.clone();
        let n = members.len();
        let (survives, verdict) = verdict(
            &winner_id,
            n,
            deflated.as_ref(),
            overfitting.as_ref(),
            self.params.min_dsr,
            self.params.max_pbo,
            self.params.returns,
        );
        let mut ordered: Vec<Row> = order.iter().map(|&index| rows[index].clone()).collect();
        ordered
            .iter_mut()
            .enumerate()
            .for_each(|(i, row)| row.rank = i + 1);
        let summary = Summary {
            members: n,
            by: self.params.by,
            returns: self.params.returns,
            winner: winner_id,
            deflated,
            overfitting,
            survives,
            verdict: verdict.clone(),
            leaderboard: ordered.clone(),
        };
        crate::kinds::write_json(&context.output_dir.join(SUMMARY_FILE), &summary)?;
        let batch = leaderboard_batch(&ordered)?;
        crate::kinds::write_parquet(&context.output_dir.join(LEADERBOARD_FILE), &batch)?;
        fs_err::write(
            context.output_dir.join("leaderboard.csv"),
            leaderboard_csv(&ordered),
        )?;
        let text = leaderboard_text(&summary);
        fs_err::write(context.output_dir.join("leaderboard.txt"), &text)?;
        crate::kinds::write_parquet(
            &context.output_dir.join(CURVES_FILE),
            &curves_batch(&members)?,
        )?;
        context.progress.report(text);
        Ok(())
    }

    fn members<'a>(&self, context: &'a StageContext) -> Result<Vec<Member<'a>>, StageError> {
        let trains: Vec<&StageInput> = context
            .inputs
            .iter()
            .filter(|input| {
                input
                    .dir
                    .join(crate::kinds::train::PREDICTIONS_FILE)
                    .is_file()
                    && input.dir.join("metrics.json").is_file()
            })
            .collect();
        let mut members = Vec::new();
        for input in &context.inputs {
            let equity_path = input.dir.join(crate::kinds::backtest::EQUITY_FILE);
            let metrics_path = input.dir.join(crate::kinds::backtest::METRICS_FILE);
            if !equity_path.is_file() || !metrics_path.is_file() {
                continue;
            }
            let summary: crate::backtest::Summary = serde_json::from_value(
                crate::kinds::read_json(&metrics_path)?,
            )
            .map_err(|error| StageError::failed(format!("{}: {error}", metrics_path.display())))?;
            let (time, equity, fees) = read_equity(&equity_path)?;
            // The model: the train member whose values are all among this member's.
            let model = trains
                .iter()
                .filter(|train| train.matrix.iter().all(|pair| input.matrix.contains(pair)))
                .max_by_key(|train| train.matrix.len())
                .map(|train| crate::kinds::read_json(&train.dir.join("metrics.json")))
                .transpose()?;
            members.push(Member {
                input,
                summary,
                time,
                equity,
                fees,
                model,
            });
        }
        Ok(members)
    }

    /// Per-bar returns of a member's equity, net or before fees.
    fn returns_of(&self, member: &Member<'_>, common: &[i64]) -> Vec<f64> {
        let at: Vec<usize> = common
            .iter()
            .filter_map(|time| member.time.binary_search(time).ok())
            .collect();
        let level = |i: usize| match self.params.returns {
            Returns::Net => member.equity[at[i]],
            Returns::Gross => member.equity[at[i]] + member.fees[at[i]],
        };
        (1..at.len())
            .map(|i| {
                let before = level(i - 1);
                if before > 0.0 {
                    level(i) / before - 1.0
                } else {
                    0.0
                }
            })
            .collect()
    }
}

fn row(member: &Member<'_>, returns: &[f64]) -> Row {
    let summary = &member.summary;
    let figure = |pointer: &str| {
        member
            .model
            .as_ref()
            .and_then(|model| model.pointer(pointer))
            .and_then(serde_json::Value::as_f64)
    };
    Row {
        rank: 0,
        member: member.input.id.clone(),
        values: member.input.matrix.clone(),
        sharpe: summary.strategy.sharpe,
        sharpe_per_bar: crate::sweep::sharpe(returns),
        total_return: summary.strategy.total_return,
        max_drawdown: summary.strategy.max_drawdown,
        trades: summary.trades.trades,
        pnl_before_fees: summary.before_fees.pnl,
        t_before_fees: summary.before_fees.t_stat,
        balanced_accuracy: figure("/overall/model/balanced_accuracy"),
        baseline_balanced_accuracy: figure("/overall/baseline/balanced_accuracy"),
        log_loss: figure("/overall/model/log_loss"),
        baseline_log_loss: figure("/overall/baseline/log_loss"),
    }
}

/// The open times every member's equity covers; an error when that is under half of the
/// shortest member's (members of different intervals or spans do not compare bar by bar).
fn common_bars(members: &[Member<'_>]) -> Result<Vec<i64>, StageError> {
    let mut common: Vec<i64> = members[0].time.clone();
    for member in &members[1..] {
        common.retain(|time| member.time.binary_search(time).is_ok());
    }
    let shortest = members
        .iter()
        .min_by_key(|m| m.time.len())
        .expect("members");
    if common.len() * 2 < shortest.time.len() || common.len() < 3 {
        return Err(StageError::failed(format!(
            "the members share {} bars, and `{}` alone has {}: compare members of one interval and span",
            common.len(),
            shortest.input.id,
            shortest.time.len()
        )));
    }
    Ok(common)
}

/// The verdict line.
fn verdict(
    winner: &str,
    members: usize,
    deflated: Option<&Deflated>,
    overfitting: Option<&Overfitting>,
    min_dsr: f64,
    max_pbo: f64,
    returns: Returns,
) -> (bool, String) {
    let dsr = deflated.map(|d| d.dsr).filter(|d| d.is_finite());
    let pbo = overfitting.map(|o| o.pbo);
    let figures = format!(
        "DSR {}, PBO {}, {} returns",
        dsr.map_or("n/a".to_owned(), |d| format!("{d:.2}")),
        pbo.map_or("n/a".to_owned(), |p| format!("{p:.2}")),
        match returns {
            Returns::Net => "net",
            Returns::Gross => "gross",
        }
    );
    if members < 2 {
        return (
            false,
            format!(
                "one member (`{winner}`): nothing was chosen, so nothing to correct ({figures})"
            ),
        );
    }
    // Both figures are needed: a track too short for the PBO's blocks does not survive.
    let survives = dsr.is_some_and(|d| d >= min_dsr) && pbo.is_some_and(|p| p < max_pbo);
    let line = if survives {
        format!("the best of {members} (`{winner}`) survives the selection correction ({figures})")
    } else {
        format!(
            "the best of {members} (`{winner}`) is indistinguishable from the luck of trying {members} ({figures})"
        )
    };
    (survives, line)
}

/// Open times, equity, and the fees and slippage paid so far.
type EquityColumns = (Vec<i64>, Vec<f64>, Vec<f64>);

fn read_equity(path: &Path) -> Result<EquityColumns, StageError> {
    let mut out: EquityColumns = (Vec::new(), Vec::new(), Vec::new());
    for batch in crate::kinds::read_parquet(path)? {
        let missing = |name: &str| {
            StageError::failed(format!(
                "{}: no column `{name}` (a backtest from an older asterflow: run with --force)",
                path.display()
            ))
        };
        let time = batch
            .column_by_name("open_time")
            .ok_or_else(|| missing("open_time"))?;
        let equity = batch
            .column_by_name("equity")
            .ok_or_else(|| missing("equity"))?;
        let fees = batch
            .column_by_name("fees")
            .ok_or_else(|| missing("fees"))?;
        let slippage = batch
            .column_by_name("slippage")
            .ok_or_else(|| missing("slippage"))?;
        out.0.extend(time.as_primitive::<Int64Type>().values());
        out.1.extend(equity.as_primitive::<Float64Type>().values());
        out.2.extend(
            fees.as_primitive::<Float64Type>()
                .values()
                .iter()
                .zip(slippage.as_primitive::<Float64Type>().values())
                .map(|(fees, slippage)| fees + slippage),
        );
    }
    Ok(out)
}

fn leaderboard_batch(rows: &[Row]) -> Result<RecordBatch, StageError> {
    let float = |name: &str| Field::new(name, DataType::Float64, true);
    let schema = Arc::new(Schema::new(vec![
        Field::new("rank", DataType::Int64, false),
        Field::new("member", DataType::Utf8, false),
        Field::new("values", DataType::Utf8, false),
        float("sharpe"),
        float("sharpe_per_bar"),
        float("total_return"),
        float("max_drawdown"),
        Field::new("trades", DataType::Int64, false),
        float("pnl_before_fees"),
        float("t_before_fees"),
        float("balanced_accuracy"),
        float("baseline_balanced_accuracy"),
        float("log_loss"),
        float("baseline_log_loss"),
    ]));
    let floats = |f: fn(&Row) -> Option<f64>| {
        Arc::new(Float64Array::from(rows.iter().map(f).collect::<Vec<_>>())) as ArrayRef
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.rank as i64),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.member.clone()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| describe(&r.values)),
        )),
        floats(|r| r.sharpe),
        floats(|r| Some(r.sharpe_per_bar)),
        floats(|r| Some(r.total_return)),
        floats(|r| Some(r.max_drawdown)),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.trades as i64),
        )),
        floats(|r| Some(r.pnl_before_fees)),
        floats(|r| r.t_before_fees),
        floats(|r| r.balanced_accuracy),
        floats(|r| r.baseline_balanced_accuracy),
        floats(|r| r.log_loss),
        floats(|r| r.baseline_log_loss),
    ];
    RecordBatch::try_new(schema, columns).map_err(StageError::failed)
}

fn describe(values: &[(String, String)]) -> String {
    values
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn number(value: Option<f64>) -> String {
    value.map_or(String::new(), |v| format!("{v}"))
}

fn leaderboard_csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "rank,member,values,sharpe,sharpe_per_bar,total_return,max_drawdown,trades,pnl_before_fees,t_before_fees,balanced_accuracy,baseline_balanced_accuracy,log_loss,baseline_log_loss\n",
    );
    let quote = |text: &str| format!("\"{}\"", text.replace('"', "\"\""));
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.rank,
            quote(&r.member),
            quote(&describe(&r.values)),
            number(r.sharpe),
            r.sharpe_per_bar,
            r.total_return,
            r.max_drawdown,
            r.trades,
            r.pnl_before_fees,
            number(r.t_before_fees),
            number(r.balanced_accuracy),
            number(r.baseline_balanced_accuracy),
            number(r.log_loss),
            number(r.baseline_log_loss),
        ));
    }
    out
}

fn leaderboard_text(summary: &Summary) -> String {
    let mut out = format!(
        "sweep: {} members ranked by {:?} ({:?} returns)\n",
        summary.members, summary.by, summary.returns
    );
    let width = summary
        .leaderboard
        .iter()
        .map(|r| r.member.len())
        .max()
        .unwrap_or(6)
        .max(6);
    out.push_str(&format!(
        "{:>4}  {:<width$}  {:>7}  {:>9}  {:>9}  {:>6}  {:>8}  {:>7}\n",
        "rank", "member", "sharpe", "return", "drawdown", "trades", "t gross", "bal acc"
    ));
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("n/a".to_owned(), |v| format!("{v:.digits$}"));
    for r in &summary.leaderboard {
        out.push_str(&format!(
            "{:>4}  {:<width$}  {:>7}  {:>8.2}%  {:>8.2}%  {:>6}  {:>8}  {:>7}\n",
            r.rank,
            r.member,
            opt(r.sharpe, 2),
            r.total_return * 100.0,
            r.max_drawdown * 100.0,
            r.trades,
            opt(r.t_before_fees, 2),
            opt(r.balanced_accuracy, 3)
        ));
    }
    if let Some(d) = &summary.deflated {
        out.push_str(&format!(
            "deflated Sharpe: DSR {:.3} (best per-bar Sharpe {:.4} vs {:.4} expected from the best of N = {} by luck; V = {:.3e}, T = {}, skew {:.2}, kurtosis {:.2})\n",
            d.dsr, d.sharpe, d.expected_max, d.trials, d.variance, d.periods, d.skewness, d.kurtosis
        ));
    }
    match &summary.overfitting {
        Some(o) => out.push_str(&format!(
            "backtest overfitting: PBO {:.3} (S = {} blocks of {} bars, {} splits, mean logit {:.2})\n",
            o.pbo, o.blocks, o.block_periods, o.splits, o.mean_logit
        )),
        None => out.push_str("backtest overfitting: n/a (fewer than two members or too short a track)\n"),
    }
    out.push_str(&format!("verdict: {}\n", summary.verdict));
    out
}

fn curves_batch(members: &[Member<'_>]) -> Result<RecordBatch, StageError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("member", DataType::Utf8, false),
        Field::new("open_time", DataType::Int64, false),
        Field::new("equity", DataType::Float64, false),
        Field::new("fees", DataType::Float64, false),
    ]));
    let names: Vec<&str> = members
        .iter()
        .flat_map(|m| std::iter::repeat_n(m.input.id.as_str(), m.time.len()))
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(names)),
        Arc::new(Int64Array::from_iter_values(
            members.iter().flat_map(|m| m.time.iter().copied()),
        )),
        Arc::new(Float64Array::from_iter_values(
            members.iter().flat_map(|m| m.equity.iter().copied()),
        )),
        Arc::new(Float64Array::from_iter_values(
            members.iter().flat_map(|m| m.fees.iter().copied()),
        )),
    ];
    RecordBatch::try_new(schema, columns).map_err(StageError::failed)
}
