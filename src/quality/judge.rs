//! Judging a measured dataset: a table of checks, each a small function of the figures and the
//! limits, in the order the report lists them. A check passes or fails with its figure, limit
//! and reason; the dataset's score is the weighted mean of its checks' scores.
//!
//! A passing check scores 1. A failing zero-tolerance check scores 0; a failing check with a
//! tolerance scores `0.5 * limit / figure` (history: `0.5 * span / min_history`), so a near miss
//! counts for more than a wild one. Weights: integrity (parts, schema, provenance, rows, order,
//! grid, close times, OHLC, values, future candles) 2; coverage (missing, longest gap, ends
//! early, history) 1.5; plausibility (filled bars, stale closes, bad ticks, source agreement) 1.

use std::time::Duration;

use serde::Serialize;

use super::measure::Measured;
use crate::market::model::{Dataset, Interval};
use crate::util::time::human;

/// The limits a dataset is judged against (the `validate` stage's params).
#[derive(Debug, Clone)]
pub struct Limits {
    pub allow_synthetic: bool,
    pub max_missing: f64,
    pub max_gap: Duration,
    pub max_filled: f64,
    pub max_stale_run: u64,
    /// What counts as a bad tick (`super::ticks`), used while measuring.
    pub ticks: super::ticks::TickRules,
    /// Bad-tick bars a dataset may have and still pass.
    pub max_bad_ticks: u64,
    pub min_history: Duration,
    pub max_lag: Duration,
    pub source_tolerance: f64,
    /// The bound on funding rates whose rows record no cap and floor.
    pub funding_cap: f64,
    /// Settlements a funding series may miss and still pass.
    pub max_missing_funding: u64,
}

/// One check of one dataset.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub figure: f64,
    pub limit: f64,
    pub passed: bool,
    pub score: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip)]
    weight: f64,
}

/// The verdict on one dataset.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetReport {
    pub table: String,
    pub source: String,
    pub symbol: String,
    pub interval: String,
    pub rows: u64,
    pub first_open_ms: Option<i64>,
    pub last_open_ms: Option<i64>,
    pub provenance: Vec<String>,
    pub passed: bool,
    pub score: f64,
    pub failures: Vec<String>,
    pub checks: Vec<Check>,
    /// The largest one-bar return by robust |z|: shown for people, not judged.
    pub largest_return_z: f64,
    /// The worst bad-tick bars (time, value, why), at most [`FLAGGED_SHOWN`].
    pub flagged: Vec<super::ticks::Flag>,
}

/// How many flagged bars a report lists per dataset.
pub const FLAGGED_SHOWN: usize = 10;

/// The key of a dataset: one table of one source, symbol and (for kline-shaped tables)
/// interval.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DatasetKey {
    pub table: Dataset,
    pub source: String,
    pub symbol: String,
    /// Empty for funding.
    pub interval: String,
}

impl std::fmt::Display for DatasetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.source, self.symbol, self.table)?;
        if !self.interval.is_empty() {
            write!(f, " {}", self.interval)?;
        }
        Ok(())
    }
}

/// What every check looks at.
pub struct Subject<'a> {
    pub key: &'a DatasetKey,
    pub m: &'a Measured,
    /// The largest close difference from another source of the symbol, and that source.
    pub agreement: Option<&'a (f64, String)>,
    /// The newest on-grid open time of any dataset of this interval.
    pub newest: Option<i64>,
    pub limits: &'a Limits,
}

impl Subject<'_> {
    fn step_ms(&self) -> f64 {
        self.m.interval.map_or(1, Interval::millis) as f64
    }
}

/// One check: `None` when it does not apply (source agreement with a single source).
type Rule = fn(&Subject<'_>) -> Option<Check>;

/// Every check of a funding series, in report order.
const FUNDING_RULES: [Rule; 10] = [
    parts,
    schema,
    provenance,
    rows,
    order,
    funding_values,
    future,
    funding_schedule,
    funding_missing,
    funding_bounds,
];

/// Every check of a kline-shaped dataset, in report order.
const RULES: [Rule; 18] = [
    parts,
    schema,
    provenance,
    rows,
    order,
    grid,
    close_time,
    ohlc,
    values,
    future,
    history,
    missing,
    longest_gap,
    ends_early,
    filled,
    stale,
    bad_ticks,
    sources,
];

/// The verdict on one dataset.
pub fn judge(
    key: &DatasetKey,
    m: &Measured,
    agreement: Option<&(f64, String)>,
    newest: Option<i64>,
    limits: &Limits,
) -> DatasetReport {
    let subject = Subject {
        key,
        m,
        agreement,
        newest,
        limits,
    };
    let rules: &[Rule] = if key.table == Dataset::Funding {
        &FUNDING_RULES
    } else {
        &RULES
    };
    let checks: Vec<Check> = rules.iter().filter_map(|rule| rule(&subject)).collect();
    let total: f64 = checks.iter().map(|c| c.weight).sum();
    let score = checks.iter().map(|c| c.weight * c.score).sum::<f64>() / total;
    let failures: Vec<String> = checks.iter().filter_map(|c| c.reason.clone()).collect();
    DatasetReport {
        table: key.table.table().to_owned(),
        source: key.source.clone(),
        symbol: key.symbol.clone(),
        interval: key.interval.clone(),
        rows: m.rows,
        first_open_ms: m.first,
        last_open_ms: m.last,
        provenance: m.provenance.clone(),
        passed: failures.is_empty(),
        score: (score * 10_000.0).round() / 10_000.0,
        failures,
        checks,
        largest_return_z: (m.largest_z * 100.0).round() / 100.0,
        flagged: m.bad_ticks.iter().take(FLAGGED_SHOWN).cloned().collect(),
    }
}

fn parts(s: &Subject<'_>) -> Option<Check> {
    let reason = format!("parts damaged or missing: {}", s.m.damaged.join("; "));
    exact("parts", s.m.damaged.len() as u64, 2.0, reason)
}

fn schema(s: &Subject<'_>) -> Option<Check> {
    let reason = format!("schema: {}", s.m.schema.join("; "));
    exact("schema", s.m.schema.len() as u64, 2.0, reason)
}

fn provenance(s: &Subject<'_>) -> Option<Check> {
    let m = s.m;
    let simulated = m
        .provenance
        .iter()
        .any(|kind| kind == crate::provenance::SIMULATED);
    let unknown: Vec<&str> = m
        .provenance
        .iter()
        .map(String::as_str)
        .filter(|kind| {
            !crate::provenance::REAL.contains(kind) && *kind != crate::provenance::SIMULATED
        })
        .collect();
    let problem = if m.provenance.len() > 1 {
        Some(format!(
            "mixed provenance in one dataset: {}",
            m.provenance.join(", ")
        ))
    } else if !unknown.is_empty() {
        Some(format!(
            "provenance `{}` is not a known source of real data (exchange, recorded, binance-dump)",
            unknown.join(", ")
        ))
    } else if simulated && !s.limits.allow_synthetic {
        Some(
            "simulated data (set allow_synthetic: true to let it through, labelled synthetic)"
                .to_owned(),
        )
    } else {
        None
    };
    exact(
        "provenance",
        u64::from(problem.is_some()),
        2.0,
        problem.unwrap_or_default(),
    )
}

/// No rows at all, with no damaged part or schema problem to explain it.
fn rows(s: &Subject<'_>) -> Option<Check> {
    let m = s.m;
    let empty = m.rows == 0 && m.damaged.is_empty() && m.schema.is_empty();
    exact("rows", u64::from(empty), 2.0, "no rows".to_owned())
}

fn order(s: &Subject<'_>) -> Option<Check> {
    let m = s.m;
    exact(
        "order",
        m.duplicates + m.out_of_order,
        2.0,
        format!(
            "open times not strictly increasing: {} duplicate(s){}, {} out of order",
            m.duplicates,
            m.first_duplicate
                .map(|time| format!(" (first at {})", stamp(time)))
                .unwrap_or_default(),
            m.out_of_order
        ),
    )
}

fn grid(s: &Subject<'_>) -> Option<Check> {
    let reason = format!(
        "{} open time(s) off the {} grid",
        s.m.off_grid, s.key.interval
    );
    exact("grid", s.m.off_grid, 2.0, reason)
}

fn close_time(s: &Subject<'_>) -> Option<Check> {
    let reason = format!(
        "{} candle(s) with closeTime != openTime + interval - 1 ms",
        s.m.bad_close_time
    );
    exact("close_time", s.m.bad_close_time, 2.0, reason)
}

fn ohlc(s: &Subject<'_>) -> Option<Check> {
    let reason = format!(
        "{} candle(s) break low <= min(open, close) <= max(open, close) <= high",
        s.m.bad_ohlc
    );
    exact("ohlc", s.m.bad_ohlc, 2.0, reason)
}

fn values(s: &Subject<'_>) -> Option<Check> {
    let reason = format!(
        "{} candle(s) with a missing or non-finite value, a non-positive price, a negative volume, quote volume or trade count, or taker volume above volume",
        s.m.bad_values
    );
    exact("values", s.m.bad_values, 2.0, reason)
}

fn future(s: &Subject<'_>) -> Option<Check> {
    let reason = format!("{} candle(s) closing in the future", s.m.future);
    exact("future", s.m.future, 2.0, reason)
}

fn history(s: &Subject<'_>) -> Option<Check> {
    let m = s.m;
    let span_ms = match (m.grid_first, m.grid_last) {
        (Some(first), Some(last)) => (last - first) as f64 + s.step_ms(),
        _ => 0.0,
    };
    let min_history = s.limits.min_history;
    let min_history_ms = min_history.as_millis() as f64;
    let long_enough = m.rows == 0 || span_ms >= min_history_ms;
    Some(Check {
        name: "history",
        figure: span_ms / 86_400_000.0,
        limit: min_history_ms / 86_400_000.0,
        passed: long_enough,
        score: if long_enough {
            1.0
        } else {
            0.5 * (span_ms / min_history_ms).min(1.0)
        },
        reason: (!long_enough).then(|| {
            format!(
                "too short: {} of history (minimum {})",
                human(Duration::from_millis(span_ms as u64)),
                human(min_history)
            )
        }),
        weight: 1.5,
    })
}

/// The expected grid runs from the first to the last on-grid candle that has closed.
fn missing(s: &Subject<'_>) -> Option<Check> {
    let m = s.m;
    let expected = match (m.grid_first, m.grid_last) {
        (Some(first), Some(last)) => ((last - first) as f64 / s.step_ms()) + 1.0,
        _ => 0.0,
    };
    let missing = if expected > 0.0 {
        ((expected - m.distinct_on_grid as f64) / expected).max(0.0)
    } else {
        0.0
    };
    let limit = s.limits.max_missing;
    tolerant(
        "missing",
        missing,
        limit,
        1.5,
        format!(
            "missing candles: {} of the expected grid (limit {})",
            percent(missing),
            percent(limit)
        ),
    )
}

/// A gap limit shorter than one candle would refuse any gap at all on long intervals.
fn longest_gap(s: &Subject<'_>) -> Option<Check> {
    let step = s.step_ms();
    let gap_limit = s.limits.max_gap.max(Duration::from_millis(step as u64));
    let gap = Duration::from_millis((s.m.longest_gap_bars as f64 * step) as u64);
    tolerant(
        "longest_gap",
        gap.as_secs_f64() / 86_400.0,
        gap_limit.as_secs_f64() / 86_400.0,
        1.5,
        format!(
            "longest gap: {} candle(s) = {} (limit {})",
            s.m.longest_gap_bars,
            human(gap),
            human(gap_limit)
        ),
    )
}

/// A dataset that stopped well before the others of its interval is stale at the end.
fn ends_early(s: &Subject<'_>) -> Option<Check> {
    let lag = match (s.newest, s.m.grid_last) {
        (Some(newest), Some(last)) => Duration::from_millis((newest - last).max(0) as u64),
        _ => Duration::ZERO,
    };
    let lag_limit = s
        .limits
        .max_lag
        .max(Duration::from_millis(s.step_ms() as u64));
    tolerant(
        "ends_early",
        lag.as_secs_f64() / 86_400.0,
        lag_limit.as_secs_f64() / 86_400.0,
        1.5,
        format!(
            "ends early: its last candle is {} behind the newest {} candle (limit {}; raise max_lag to keep delisted symbols)",
            human(lag),
            s.key.interval,
            human(lag_limit)
        ),
    )
}

/// Only trades have volume to tell a filled bar by.
fn filled(s: &Subject<'_>) -> Option<Check> {
    if !s.key.table.has_volume() {
        return None;
    }
    let share = s.m.filled as f64 / s.m.rows.max(1) as f64;
    let limit = s.limits.max_filled;
    tolerant(
        "filled",
        share,
        limit,
        1.0,
        format!(
            "{} filled-looking bar(s) (no trades, no volume, O=H=L=C): {} (limit {})",
            s.m.filled,
            percent(share),
            percent(limit)
        ),
    )
}

fn stale(s: &Subject<'_>) -> Option<Check> {
    let (run, limit) = (s.m.longest_stale_run, s.limits.max_stale_run);
    tolerant(
        "stale",
        run as f64,
        limit as f64,
        1.0,
        format!(
            "stale data: {run} identical closes in a row{} (limit {limit})",
            s.m.stale_from
                .map(|time| format!(" from {}", stamp(time)))
                .unwrap_or_default()
        ),
    )
}

/// Prices inconsistent with their neighbours (`super::ticks`): the worst named.
fn bad_ticks(s: &Subject<'_>) -> Option<Check> {
    if !s.key.table.is_price() {
        return None;
    }
    let ticks = &s.m.bad_ticks;
    let limit = s.limits.max_bad_ticks;
    let worst = ticks
        .first()
        .map(|flag| format!("; worst at {}: {}", flag.time, flag.why))
        .unwrap_or_default();
    tolerant(
        "bad_ticks",
        ticks.len() as f64,
        limit as f64,
        1.0,
        format!(
            "{} bad tick(s), prices inconsistent with their neighbours (limit {limit}){worst}",
            ticks.len()
        ),
    )
}

fn sources(s: &Subject<'_>) -> Option<Check> {
    let (difference, other) = s.agreement?;
    let limit = s.limits.source_tolerance;
    tolerant(
        "sources",
        *difference,
        limit,
        1.0,
        format!(
            "closes differ from source `{other}` by up to {} (limit {})",
            percent(*difference),
            percent(limit)
        ),
    )
}

fn funding_figures<'a>(s: &Subject<'a>) -> Option<&'a super::funding::FundingFigures> {
    s.m.funding.as_ref()
}

fn funding_values(s: &Subject<'_>) -> Option<Check> {
    let reason = format!(
        "{} settlement(s) with a missing or non-finite rate",
        s.m.bad_values
    );
    exact("values", s.m.bad_values, 2.0, reason)
}

/// On the hour of the symbol's interval, at most a minute late (real ones: milliseconds).
fn funding_schedule(s: &Subject<'_>) -> Option<Check> {
    let f = funding_figures(s)?;
    let reason = format!(
        "{} settlement(s) off the funding schedule (not on an hour of the symbol's interval, or more than {} s after it){}",
        f.off_schedule,
        super::funding::MAX_DELAY_MS / 1000,
        f.first_off_schedule
            .map(|time| format!("; first at {} ({time})", stamp(time)))
            .unwrap_or_default()
    );
    exact("schedule", f.off_schedule, 2.0, reason)
}

fn funding_missing(s: &Subject<'_>) -> Option<Check> {
    let f = funding_figures(s)?;
    let limit = s.limits.max_missing_funding;
    tolerant(
        "missing",
        f.missing as f64,
        limit as f64,
        1.5,
        format!(
            "{} settlement(s) missing from the funding series (limit {limit}){}",
            f.missing,
            f.first_gap
                .map(|time| format!("; the first gap follows {}", stamp(time)))
                .unwrap_or_default()
        ),
    )
}

fn funding_bounds(s: &Subject<'_>) -> Option<Check> {
    let f = funding_figures(s)?;
    let reason = format!(
        "{} rate(s) outside the cap and floor (the exchange's, or +-{} where it states none){}",
        f.out_of_bounds,
        percent(s.limits.funding_cap),
        f.first_out_of_bounds
            .map(|(time, rate)| format!("; first {rate} at {}", stamp(time)))
            .unwrap_or_default()
    );
    exact("bounds", f.out_of_bounds, 2.0, reason)
}

fn stamp(ms: i64) -> String {
    crate::util::time::rfc3339(ms.max(0) as u64)
}

/// A zero-tolerance check: passes when `figure` is 0.
fn exact(name: &'static str, figure: u64, weight: f64, reason: String) -> Option<Check> {
    let passed = figure == 0;
    Some(Check {
        name,
        figure: figure as f64,
        limit: 0.0,
        passed,
        score: if passed { 1.0 } else { 0.0 },
        reason: (!passed).then_some(reason),
        weight,
    })
}

/// A check with a tolerance: passes at or under `limit`; a failure scores half the ratio of
/// the limit to the figure.
fn tolerant(
    name: &'static str,
    figure: f64,
    limit: f64,
    weight: f64,
    reason: String,
) -> Option<Check> {
    let passed = figure <= limit;
    Some(Check {
        name,
        figure,
        limit,
        passed,
        score: if passed {
            1.0
        } else {
            0.5 * (limit / figure).min(1.0)
        },
        reason: (!passed).then_some(reason),
        weight,
    })
}

pub fn percent(share: f64) -> String {
    format!("{:.2}%", share * 100.0)
}

/// The table printed at the end of the stage.
pub fn render_table(reports: &[DatasetReport], synthetic: bool) -> String {
    let mut out = String::new();
    if synthetic {
        out.push_str(&format!(
            "*** {} ***\n",
            crate::provenance::SYNTHETIC_BANNER
        ));
    }
    let passed = reports.iter().filter(|r| r.passed).count();
    out.push_str(&format!(
        "validation: {passed} of {} datasets passed, {} quarantined\n",
        reports.len(),
        reports.len() - passed
    ));
    let date = |ms: Option<i64>| {
        ms.map(|ms| crate::util::time::rfc3339(ms.max(0) as u64)[..10].to_owned())
            .unwrap_or_else(|| "-".into())
    };
    let width = reports
        .iter()
        .map(|r| r.symbol.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let source_width = reports
        .iter()
        .map(|r| r.source.len())
        .max()
        .unwrap_or(6)
        .max(6);
    out.push_str(&format!(
        "{:<source_width$}  {:<width$}  {:<14}  {:<8}  {:>8}  {:<10}  {:<10}  {:>5}  verdict\n",
        "source", "symbol", "table", "interval", "rows", "first", "last", "score"
    ));
    for r in reports {
        let verdict = if r.passed {
            "ok".to_owned()
        } else {
            format!("QUARANTINED: {}", r.failures.join("; "))
        };
        out.push_str(&format!(
            "{:<source_width$}  {:<width$}  {:<14}  {:<8}  {:>8}  {:<10}  {:<10}  {:>5.2}  {verdict}\n",
            r.source,
            r.symbol,
            r.table,
            if r.interval.is_empty() { "-" } else { r.interval.as_str() },
            r.rows,
            date(r.first_open_ms),
            date(r.last_open_ms),
            r.score
        ));
        // The bars behind a bad-tick verdict, so a user can look them up.
        for flag in r.flagged.iter().take(TABLE_FLAGS) {
            out.push_str(&format!("    bad tick {}: {}\n", flag.time, flag.why));
        }
        if r.flagged.len() > TABLE_FLAGS {
            out.push_str(&format!(
                "    ... {} more in validation_report.json\n",
                r.flagged.len() - TABLE_FLAGS
            ));
        }
    }
    out
}

/// Flagged bars the table shows per dataset.
const TABLE_FLAGS: usize = 3;
