//! `report.json`: what the `report` stage gathers from its inputs (validation, features, model,
//! backtest), in one versioned document the renderers read. Everything here is data; nothing
//! here draws.

use serde::{Deserialize, Serialize};

use crate::backtest::Summary;
use crate::train::metrics::Metrics;

/// Bump when `report.json` changes shape.
pub const REPORT_FORMAT_VERSION: u32 = 1;
pub const REPORT_DATA_FILE: &str = "report.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportData {
    pub format_version: u32,
    /// Some input derives from simulated data: every page says so.
    pub synthetic: bool,
    pub validation: Option<Validation>,
    pub features: Option<Features>,
    pub model: Option<Model>,
    pub backtest: Option<Backtest>,
    /// The newest bar's signals and the paper book, when a `signals` stage is an input.
    #[serde(default)]
    pub paper: Option<Paper>,
    /// A sweep's leaderboard, selection correction and curves, when a `compare` is an input.
    #[serde(default)]
    pub sweep: Option<Sweep>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sweep {
    pub comparison: crate::sweep::Summary,
    /// Each member's equity by bar (thinned to at most a few hundred points), winner first.
    pub curves: Vec<MemberCurve>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberCurve {
    pub member: String,
    pub time: Vec<i64>,
    pub equity: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Paper {
    pub summary: crate::paper::SignalsSummary,
    /// The probability columns of `latest`, in order.
    pub classes: Vec<String>,
    pub latest: Vec<LatestSignal>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatestSignal {
    pub symbol: String,
    pub side: String,
    pub probabilities: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Validation {
    pub datasets_passed: usize,
    pub datasets_quarantined: usize,
    pub symbols_passed: usize,
    pub datasets: Vec<DatasetRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetRow {
    pub source: String,
    pub symbol: String,
    pub interval: String,
    pub rows: u64,
    pub passed: bool,
    /// The quality score, 0 to 1.
    pub score: f64,
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Features {
    pub table: String,
    pub rows: u64,
    pub symbols: u64,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub columns: Vec<ColumnSummary>,
}

/// One numeric column's distribution; `None` where undefined (no values, or NaN among them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColumnSummary {
    pub name: String,
    pub values: u64,
    pub nulls: u64,
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Model {
    pub model: String,
    pub device: String,
    pub classes: Vec<String>,
    pub rows: usize,
    pub folds: usize,
    pub metrics: Metrics,
    pub baseline: Metrics,
    pub verdict: String,
    /// Each feature's share of the model's importance, most important first (absent from
    /// metrics written before it was kept).
    #[serde(default)]
    pub importance: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backtest {
    pub summary: Summary,
    /// The equity curve, thinned to at most a few thousand points for drawing.
    pub curve: Curve,
    pub monthly: Vec<Month>,
}

/// Parallel columns, one entry per drawn point.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Curve {
    pub time: Vec<i64>,
    pub equity: Vec<f64>,
    /// The deepest drawdown within the points each drawn point stands for.
    pub drawdown: Vec<f64>,
    pub buy_and_hold: Vec<f64>,
    pub buy_and_hold_drawdown: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Month {
    pub year: i32,
    pub month: u32,
    pub strategy: f64,
    pub buy_and_hold: f64,
}

/// Thins parallel series to at most `limit` points: each point keeps the last value of its
/// bucket and the bucket's deepest drawdown, so no drawdown disappears from the chart.
pub fn thin(full: &Curve, limit: usize) -> Curve {
    let count = full.time.len();
    let bucket = count.div_ceil(limit.max(1)).max(1);
    let mut thinned = Curve::default();
    let mut start = 0;
    while start < count {
        let end = (start + bucket).min(count);
        let last = end - 1;
        let deepest = |series: &[f64]| series[start..end].iter().copied().fold(0.0, f64::min);
        thinned.time.push(full.time[last]);
        thinned.equity.push(full.equity[last]);
        thinned.buy_and_hold.push(full.buy_and_hold[last]);
        thinned.drawdown.push(deepest(&full.drawdown));
        thinned
            .buy_and_hold_drawdown
            .push(deepest(&full.buy_and_hold_drawdown));
        start = end;
    }
    thinned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_the_last_value_and_the_deepest_drawdown_of_each_bucket() {
        let full = Curve {
            time: (0..10).collect(),
            equity: (0..10).map(f64::from).collect(),
            drawdown: vec![0.0, -0.1, 0.0, 0.0, -0.5, 0.0, 0.0, 0.0, 0.0, -0.2],
            buy_and_hold: vec![1.0; 10],
            buy_and_hold_drawdown: vec![0.0; 10],
        };
        let thinned = thin(&full, 4);
        assert_eq!(thinned.time, vec![2, 5, 8, 9]);
        assert_eq!(thinned.equity, vec![2.0, 5.0, 8.0, 9.0]);
        assert_eq!(thinned.drawdown, vec![-0.1, -0.5, 0.0, -0.2]);
        assert_eq!(thin(&full, 100).time.len(), 10);
    }
}
