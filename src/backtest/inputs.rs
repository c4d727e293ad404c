//! Reads a backtest's inputs out of a DataFusion session: out-of-sample predictions become
//! signals on a bar grid, the validated klines fill the grid's prices, and the optional
//! universe (step sizes, minimum notionals) and funding tables become per-symbol constraints
//! and per-cell rates.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use super::engine::{FLAT, Instrument, LONG, SHORT, Signals};
use super::market::Market;
use crate::diagnostic::location::YamlPath;
use crate::diagnostic::params::ParamError;
use crate::sql::{query, quoted};

/// The `entry:` param of `backtest` and `signals`: long when P(long_class) is above
/// `long_above`; with `short`, short when P(short_class) is above `short_above`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EntryParams {
    pub long_class: String,
    pub long_above: f64,
    pub short: bool,
    pub short_class: String,
    pub short_above: f64,
}

impl Default for EntryParams {
    fn default() -> Self {
        Self {
            long_class: "BUY".into(),
            long_above: 0.5,
            short: false,
            short_class: "SELL".into(),
            short_above: 0.5,
        }
    }
}

impl EntryParams {
    /// Thresholds are probabilities in [0, 1); the error is at the offending key under `at`.
    pub fn check(&self, at: YamlPath) -> Result<(), ParamError> {
        for (key, value) in [
            ("long_above", self.long_above),
            ("short_above", self.short_above),
        ] {
            crate::diagnostic::params::check_range(
                at.clone().key(key),
                value,
                0.0,
                1.0,
                "a probability threshold",
            )?;
        }
        Ok(())
    }

    pub fn rule(&self) -> EntryRule {
        EntryRule {
            long_column: format!("p_{}", self.long_class),
            long_above: self.long_above,
            short: self
                .short
                .then(|| (format!("p_{}", self.short_class), self.short_above)),
            against_column: format!("p_{}", self.short_class),
        }
    }
}

/// How probabilities become signals.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryRule {
    /// The probability column of the long class (`p_BUY`).
    pub long_column: String,
    pub long_above: f64,
    /// The short class's column and threshold, when shorts are on.
    pub short: Option<(String, f64)>,
    /// The down class's column (`p_SELL`), whose probability a long's Kelly size weighs
    /// against the long class's, shorts on or off.
    pub against_column: String,
}

impl EntryRule {
    /// The side and its strength for one bar's probabilities: the likelier of the two when
    /// both cross their thresholds.
    pub fn decide(&self, p_long: f64, p_short: f64) -> (i8, f64) {
        let wants_long = p_long > self.long_above;
        let wants_short = self
            .short
            .as_ref()
            .is_some_and(|(_, above)| p_short > *above);
        match (wants_long, wants_short) {
            (true, true) if p_short > p_long => (SHORT, p_short),
            (true, _) => (LONG, p_long),
            (false, true) => (SHORT, p_short),
            (false, false) => (FLAT, 0.0),
        }
    }
}

/// The predictions read onto a grid.
#[derive(Debug)]
pub struct Loaded {
    pub market: Market,
    pub signals: Signals,
    /// Prediction rows whose time is not a bar of the grid's interval.
    pub off_grid: u64,
    /// Prediction rows whose bar has no price.
    pub unpriced: u64,
}

pub fn text_column(batch: &RecordBatch, index: usize) -> Result<arrow::array::ArrayRef, String> {
    arrow::compute::cast(batch.column(index), &arrow::datatypes::DataType::Utf8)
        .map_err(|error| format!("reading column {index}: {error}"))
}

/// Reads `predictions_table` and the `klines` of `interval` (bars `bar_ms` long) for the
/// predicted symbols over the predicted span.
pub async fn load(
    session: &SessionContext,
    predictions_table: &str,
    interval: &str,
    bar_ms: i64,
    rule: &EntryRule,
) -> Result<Loaded, String> {
    // The down class's probability, read even when shorts are off: Kelly sizing weighs a long
    // against it. A model without that class leaves everything but the long class against.
    let has_against = session
        .table(datafusion::common::TableReference::bare(predictions_table))
        .await
        .map_err(|error| format!("reading `{predictions_table}`: {error}"))?
        .schema()
        .field_with_unqualified_name(&rule.against_column)
        .is_ok();
    let short_column = match &rule.short {
        Some((column, _)) => quoted(column),
        None if has_against => quoted(&rule.against_column),
        None => format!("1.0 - {}", quoted(&rule.long_column)),
    };
    let predictions = query(
        session,
        &format!(
            "SELECT CAST(symbol AS VARCHAR), CAST(open_time AS BIGINT), CAST({} AS DOUBLE), CAST({short_column} AS DOUBLE) \
             FROM {} ORDER BY 2, 1",
            quoted(&rule.long_column),
            quoted(predictions_table)
        ),
        &format!("`{predictions_table}`"),
    )
    .await?;
    let mut symbols: Vec<String> = Vec::new();
    let mut first = i64::MAX;
    let mut last = i64::MIN;
    for batch in &predictions {
        let names = text_column(batch, 0)?;
        let names = names.as_string::<i32>();
        let times = batch.column(1).as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            if names.is_null(row) || times.is_null(row) {
                continue;
            }
            symbols.push(names.value(row).to_owned());
            first = first.min(times.value(row));
            last = last.max(times.value(row));
        }
    }
    symbols.sort();
    symbols.dedup();
    if symbols.is_empty() {
        return Err(format!("`{predictions_table}` holds no predictions"));
    }
    // The grid starts on a bar boundary of the interval.
    let first = first - first.rem_euclid(bar_ms);
    let mut market = Market::new(symbols, first, last, bar_ms)?;
    let index: HashMap<String, usize> = market
        .symbols
        .iter()
        .enumerate()
        .map(|(position, name)| (name.clone(), position))
        .collect();

    fill_prices(session, interval, &mut market).await?;

    let mut signals = Signals::flat(market.cells());
    let (mut off_grid, mut unpriced) = (0, 0);
    for batch in &predictions {
        let names = text_column(batch, 0)?;
        let names = names.as_string::<i32>();
        let times = batch.column(1).as_primitive::<Int64Type>();
        let long = batch.column(2).as_primitive::<Float64Type>();
        let short = batch.column(3).as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            if names.is_null(row) || times.is_null(row) {
                continue;
            }
            let symbol = index[names.value(row)];
            let Some(cell) = market.cell_at(symbol, times.value(row)) else {
                off_grid += 1;
                continue;
            };
            if market.close[cell].is_nan() {
                unpriced += 1;
                continue;
            }
            let p_long = if long.is_null(row) {
                0.0
            } else {
                long.value(row)
            };
            let p_short = if short.is_null(row) {
                0.0
            } else {
                short.value(row)
            };
            let (side, score) = rule.decide(p_long, p_short);
            signals.side[cell] = side;
            signals.score[cell] = score as f32;
            signals.against[cell] = if side == SHORT { p_long } else { p_short } as f32;
        }
    }
    Ok(Loaded {
        market,
        signals,
        off_grid,
        unpriced,
    })
}

/// Fills `market` with the `klines` of `interval` over its grid, for its symbols; bars with a
/// price that is not positive and finite stay empty.
pub async fn fill_prices(
    session: &SessionContext,
    interval: &str,
    market: &mut Market,
) -> Result<(), String> {
    let (Some(&first), Some(&last)) = (market.times.first(), market.times.last()) else {
        return Ok(());
    };
    let index: HashMap<String, usize> = market
        .symbols
        .iter()
        .enumerate()
        .map(|(position, name)| (name.clone(), position))
        .collect();
    let klines = query(
        session,
        &format!(
            "SELECT CAST(symbol AS VARCHAR), open_time, open, high, low, close FROM {} \
             WHERE \"interval\" = '{}' AND open_time >= {first} AND open_time <= {last} ORDER BY 1, 2",
            crate::sql::KLINES_TABLE,
            interval.replace('\'', "''")
        ),
        "the klines",
    )
    .await?;
    for batch in &klines {
        let names = text_column(batch, 0)?;
        let names = names.as_string::<i32>();
        let times = batch.column(1).as_primitive::<Int64Type>();
        let prices: Vec<_> = (2..6)
            .map(|column| batch.column(column).as_primitive::<Float64Type>())
            .collect();
        for row in 0..batch.num_rows() {
            let Some(&symbol) = index.get(names.value(row)) else {
                continue;
            };
            let ohlc = [0, 1, 2, 3].map(|column| prices[column].value(row));
            if ohlc.iter().all(|price| price.is_finite() && *price > 0.0) {
                market.set(symbol, times.value(row), ohlc);
            }
        }
    }
    Ok(())
}

/// Step sizes and minimum notionals from a universe table (`symbol`, `step_size`,
/// `min_notional`), in the market's symbol order; a symbol it lacks trades unrounded.
pub async fn instruments(
    session: &SessionContext,
    table: &str,
    market: &Market,
) -> Result<(Vec<Instrument>, usize), String> {
    let batches = query(
        session,
        &format!(
            "SELECT CAST(symbol AS VARCHAR), CAST(step_size AS DOUBLE), CAST(min_notional AS DOUBLE) FROM {}",
            quoted(table)
        ),
        &format!("`{table}`"),
    )
    .await?;
    let mut instruments = vec![Instrument::default(); market.symbols.len()];
    let mut found = 0;
    for batch in &batches {
        let names = text_column(batch, 0)?;
        let names = names.as_string::<i32>();
        let steps = batch.column(1).as_primitive::<Float64Type>();
        let minimums = batch.column(2).as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            if let Ok(position) = market
                .symbols
                .binary_search_by(|name| name.as_str().cmp(names.value(row)))
            {
                let value = |array: &arrow::array::Float64Array| {
                    (!array.is_null(row) && array.value(row) > 0.0).then(|| array.value(row))
                };
                instruments[position] = Instrument {
                    step_size: value(steps).unwrap_or(0.0),
                    min_notional: value(minimums).unwrap_or(0.0),
                };
                found += 1;
            }
        }
    }
    Ok((instruments, found))
}

/// Funding rates from a table (`symbol`, `funding_time`, `funding_rate`), summed per cell of
/// the bar whose span holds each funding time.
pub async fn funding(
    session: &SessionContext,
    table: &str,
    market: &Market,
) -> Result<(Vec<f64>, u64), String> {
    let batches = query(
        session,
        &format!(
            "SELECT CAST(symbol AS VARCHAR), CAST(funding_time AS BIGINT), CAST(funding_rate AS DOUBLE) FROM {}",
            quoted(table)
        ),
        &format!("`{table}`"),
    )
    .await?;
    let mut rates = vec![0.0; market.cells()];
    let mut events = 0;
    let Some(&first) = market.times.first() else {
        return Ok((rates, 0));
    };
    for batch in &batches {
        let names = text_column(batch, 0)?;
        let names = names.as_string::<i32>();
        let times = batch.column(1).as_primitive::<Int64Type>();
        let values = batch.column(2).as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            if names.is_null(row) || times.is_null(row) || values.is_null(row) {
                continue;
            }
            let Ok(symbol) = market
                .symbols
                .binary_search_by(|name| name.as_str().cmp(names.value(row)))
            else {
                continue;
            };
            let time = times.value(row);
            let bar_start = time - (time - first).rem_euclid(market.bar_ms);
            if let Some(cell) = market.cell_at(symbol, bar_start) {
                rates[cell] += values.value(row);
                events += 1;
            }
        }
    }
    Ok((rates, events))
}
