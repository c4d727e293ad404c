//! Window functions SQL cannot express.
//!
//! Causal (for features):
//! - `ema(x, n)`: exponential moving average, alpha = 2 / (n + 1);
//! - `wilder(x, n)`: Wilder's smoothing (RSI, ATR), alpha = 1 / n.
//!
//! Rolling statistics over the last `n` rows, as window functions so each partition is one
//! tight pass (DataFusion's sliding frames re-slice their inputs for every row):
//! - `rolling_mean(x, n)`: mean of the non-null values among the last n rows;
//! - `rolling_std(x, n)`, `rolling_std_pop(x, n)`: sample / population standard deviation
//!   (null with fewer than 2 values, respectively 1);
//! - `rolling_corr(x, y, n)`: Pearson correlation over the rows among the last n where both
//!   are non-null, null until there are n such pairs.
//!
//! Running sums of deviations from an anchor give means (and the spread of windows over 64
//! rows and the correlations); every `n` rows the anchor moves to the newest value and the
//! window is summed afresh, so no sum carries more than about `2n` updates however far a series
//! drifts. The spread of a window up to 64 rows is summed exactly around its mean. A window
//! whose values are all equal has a spread of exactly 0 and no correlation (null).
//!
//! Carrying a value forward (causal):
//! - `last_known(x, n)`: the newest non-null `x` among the last n rows, this one included
//!   (null when there is none): a sparse series (funding every 8 hours) on every bar, never
//!   staler than `n` rows.
//!
//! Forward-looking (for labels only: the look-ahead guard rejects them in features), where `k`
//! may be a `$param` because, unlike a frame bound, it is an argument:
//! - `forward_value(x, k)`: `x` k rows later (null when there are not k rows left);
//! - `forward_min(x, k)`, `forward_max(x, k)`: the least / greatest `x` over the next k rows
//!   (null when there are not k rows left).
//!
//! Both follow TA-Lib: the first value is the simple average of the first `n` non-null inputs
//! (at the `n`-th of them; earlier rows are null), then `y = alpha * x + (1 - alpha) * y_prev`.
//! Leading nulls (such as a first return) are skipped before counting; a null after the seed
//! gives a null output and leaves the state unchanged. Use them as
//! `ema(close, 12) OVER (PARTITION BY symbol ORDER BY open_time)`: the frame is ignored, every
//! value depends only on rows at or before its own.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Float64Builder};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{
    PartitionEvaluator, Signature, Volatility, WindowUDF, WindowUDFImpl,
};

/// Which smoothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Smoothing {
    Ema,
    Wilder,
}

impl Smoothing {
    fn alpha(self, n: usize) -> f64 {
        match self {
            Smoothing::Ema => 2.0 / (n as f64 + 1.0),
            Smoothing::Wilder => 1.0 / n as f64,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Smoothing::Ema => "ema",
            Smoothing::Wilder => "wilder",
        }
    }
}

/// The smoothing of `x` over its first `rows` values.
pub fn smooth(kind: Smoothing, x: &Float64Array, n: usize, rows: usize) -> Float64Array {
    let alpha = kind.alpha(n);
    // Values and whether each is defined, written in place (a builder's per-row appends
    // were a third of this function's time).
    let mut out = vec![0.0; rows];
    let mut defined = arrow::array::BooleanBufferBuilder::new(rows);
    let mut seen = 0usize;
    let mut sum = 0.0;
    let mut state: Option<f64> = None;
    for (i, slot) in out.iter_mut().enumerate() {
        let value = x.value(i);
        if x.is_null(i) || !value.is_finite() {
            defined.append(false);
            continue;
        }
        let next = match state {
            Some(previous) => Some(alpha * value + (1.0 - alpha) * previous),
            None => {
                seen += 1;
                sum += value;
                (seen == n).then(|| sum / n as f64)
            }
        };
        defined.append(next.is_some());
        if let Some(next) = next {
            state = Some(next);
            *slot = next;
        }
    }
    column(out, defined)
}

/// Which forward-looking function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forward {
    Value,
    Min,
    Max,
}

impl Forward {
    fn name(self) -> &'static str {
        match self {
            Forward::Value => "forward_value",
            Forward::Min => "forward_min",
            Forward::Max => "forward_max",
        }
    }
}

/// `forward_*` over the first `rows` values of `x`.
pub fn forward(kind: Forward, x: &Float64Array, k: usize, rows: usize) -> Float64Array {
    let mut out = Float64Builder::with_capacity(rows);
    for i in 0..rows {
        if i + k >= rows {
            out.append_null();
            continue;
        }
        let value = match kind {
            Forward::Value => (!x.is_null(i + k)).then(|| x.value(i + k)),
            Forward::Min | Forward::Max => {
                let mut best: Option<f64> = None;
                for j in i + 1..=i + k {
                    if x.is_null(j) {
                        continue;
                    }
                    let v = x.value(j);
                    best = Some(match (best, kind) {
                        (None, _) => v,
                        (Some(b), Forward::Min) => b.min(v),
                        (Some(b), _) => b.max(v),
                    });
                }
                best
            }
        };
        out.append_option(value);
    }
    out.finish()
}

/// Which rolling statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rolling {
    Mean,
    Std,
    StdPop,
    Corr,
}

impl Rolling {
    fn name(self) -> &'static str {
        match self {
            Rolling::Mean => "rolling_mean",
            Rolling::Std => "rolling_std",
            Rolling::StdPop => "rolling_std_pop",
            Rolling::Corr => "rolling_corr",
        }
    }

    fn arity(self) -> usize {
        if self == Rolling::Corr { 3 } else { 2 }
    }
}

/// The values of `x` with every missing one (null or not finite) as NaN: borrowed when there
/// is none, which is the usual case for prices and volumes.
pub fn cleaned(x: &Float64Array) -> std::borrow::Cow<'_, [f64]> {
    let values = x.values();
    if x.null_count() == 0 && values.iter().all(|v| v.is_finite()) {
        return std::borrow::Cow::Borrowed(values);
    }
    (0..x.len())
        .map(|i| {
            if x.is_valid(i) && values[i].is_finite() {
                values[i]
            } else {
                f64::NAN
            }
        })
        .collect()
}

/// A nullable column from values and whether each is defined.
fn column(values: Vec<f64>, defined: arrow::array::BooleanBufferBuilder) -> Float64Array {
    let mut defined = defined;
    Float64Array::new(values.into(), Some(defined.finish().into()))
}

/// Whether the values present in a window are all equal, kept as rows arrive: the latest value
/// and the row of the last value that differed from the one after it.
#[derive(Default)]
struct Flatness {
    latest: Option<(f64, usize)>,
    changed: Option<usize>,
}

impl Flatness {
    fn see(&mut self, row: usize, value: f64) {
        if let Some((latest, latest_row)) = self.latest
            && value != latest
        {
            self.changed = Some(latest_row);
        }
        self.latest = Some((value, row));
    }

    /// Whether every value seen at or after `start` equals the latest.
    fn since(&self, start: usize) -> bool {
        self.changed.is_none_or(|row| row < start)
    }

    fn latest(&self) -> f64 {
        self.latest.map_or(f64::NAN, |(value, _)| value)
    }
}

/// Mean and standard deviations over the last `n` rows of `x` (NaN: missing), over the values
/// present. Running sums of deviations from an anchor give the mean (and a long window's
/// spread); every `n` rows the anchor moves to the newest value and the window is summed
/// afresh, so the sums never carry more than about `2n` updates, each of a deviation from a
/// nearby level, however far the series drifts. The spread of a window up to 64 rows is summed
/// exactly around its mean. A window whose values are all equal has exactly that mean and a
/// spread of exactly 0, so `NULLIF(sd, 0)` catches a flat stretch however it was reached.
pub fn rolling(kind: Rolling, x: &[f64], n: usize) -> Float64Array {
    let minimum = if kind == Rolling::Std { 2 } else { 1 };
    let mut out = vec![0.0; x.len()];
    let mut defined = arrow::array::BooleanBufferBuilder::new(x.len());
    let (mut shift, mut next_anchor) = (0.0, 0);
    let (mut count, mut sum, mut squares) = (0usize, 0.0, 0.0);
    let mut flatness = Flatness::default();
    for (i, slot) in out.iter_mut().enumerate() {
        let v = x[i];
        let start = (i + 1).saturating_sub(n);
        if !v.is_nan() && i >= next_anchor {
            (shift, next_anchor) = (v, i + n);
            (count, sum, squares) = (0, 0.0, 0.0);
            for d in x[start..=i]
                .iter()
                .filter(|w| !w.is_nan())
                .map(|w| w - shift)
            {
                count += 1;
                sum += d;
                squares += d * d;
            }
        } else {
            if !v.is_nan() {
                let d = v - shift;
                count += 1;
                sum += d;
                squares += d * d;
            }
            if i >= n && !x[i - n].is_nan() {
                let d = x[i - n] - shift;
                count -= 1;
                sum -= d;
                squares -= d * d;
            }
        }
        if !v.is_nan() {
            flatness.see(i, v);
        }
        defined.append(count >= minimum);
        if count < minimum {
            continue;
        }
        let c = count as f64;
        let flat = flatness.since(start);
        let mean = if flat {
            flatness.latest()
        } else {
            shift + sum / c
        };
        let m2 = match kind {
            _ if flat => 0.0,
            Rolling::Mean => 0.0,
            _ if n > 64 => squares - sum * sum / c,
            _ => squared_deviations(&x[start..=i], mean, count),
        };
        *slot = match kind {
            Rolling::Mean => mean,
            Rolling::Std => (m2.max(0.0) / (c - 1.0)).sqrt(),
            _ => (m2.max(0.0) / c).sqrt(),
        };
    }
    column(out, defined)
}

/// The sum of squared deviations from `mean` of the values present in `window` (`present` of
/// them). A window without holes is summed in four lanes, which the compiler vectorises.
fn squared_deviations(window: &[f64], mean: f64, present: usize) -> f64 {
    if present < window.len() {
        return window
            .iter()
            .filter(|v| !v.is_nan())
            .map(|v| (v - mean) * (v - mean))
            .sum();
    }
    let mut lanes = [0.0; 4];
    let chunks = window.chunks_exact(4);
    let rest: f64 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += (v - mean) * (v - mean);
        }
    }
    lanes.iter().sum::<f64>() + rest
}

/// Pearson correlation over the pairs among the last `n` rows where both are present (NaN:
/// missing), once there are `n` of them; null when either side is flat in the window. Running
/// sums of deviations from an anchor pair that moves to the newest pair every `n` rows, as in
/// [`rolling`].
pub fn rolling_corr(x: &[f64], y: &[f64], n: usize) -> Float64Array {
    let pair = |i: usize| (!x[i].is_nan() && !y[i].is_nan()).then(|| (x[i], y[i]));
    let mut out = vec![0.0; x.len()];
    let mut defined = arrow::array::BooleanBufferBuilder::new(x.len());
    let (mut anchor, mut next_anchor) = ((0.0, 0.0), 0);
    // Count, sums of a and b, of their squares and of their product.
    let mut sums = [0.0; 6];
    let update = |sums: &mut [f64; 6], (a, b): (f64, f64), anchor: (f64, f64), sign: f64| {
        let (a, b) = (a - anchor.0, b - anchor.1);
        for (sum, term) in sums.iter_mut().zip([1.0, a, b, a * a, b * b, a * b]) {
            *sum += sign * term;
        }
    };
    let (mut flat_x, mut flat_y) = (Flatness::default(), Flatness::default());
    for (i, slot) in out.iter_mut().enumerate() {
        let start = (i + 1).saturating_sub(n);
        if let Some((a, b)) = pair(i) {
            flat_x.see(i, a);
            flat_y.see(i, b);
        }
        match pair(i) {
            Some(newest) if i >= next_anchor => {
                (anchor, next_anchor) = (newest, i + n);
                sums = [0.0; 6];
                for row in start..=i {
                    if let Some(p) = pair(row) {
                        update(&mut sums, p, anchor, 1.0);
                    }
                }
            }
            newest => {
                if let Some(p) = newest {
                    update(&mut sums, p, anchor, 1.0);
                }
                if let Some(p) = i.checked_sub(n).and_then(pair) {
                    update(&mut sums, p, anchor, -1.0);
                }
            }
        }
        let [c, sx, sy, sxx, syy, sxy] = sums;
        let flat = flat_x.since(start) || flat_y.since(start);
        let value = (c >= n as f64 && !flat)
            .then(|| {
                let cov = c * sxy - sx * sy;
                let var = (c * sxx - sx * sx) * (c * syy - sy * sy);
                (var > 0.0).then(|| cov / var.sqrt())
            })
            .flatten();
        defined.append(value.is_some());
        *slot = value.unwrap_or(0.0);
    }
    column(out, defined)
}

/// One of asterflow's window functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Smoothing(Smoothing),
    Forward(Forward),
    Rolling(Rolling),
    LastKnown,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Smoothing(kind) => kind.name(),
            Kind::Forward(kind) => kind.name(),
            Kind::Rolling(kind) => kind.name(),
            Kind::LastKnown => "last_known",
        }
    }

    fn arity(self) -> usize {
        match self {
            Kind::Rolling(kind) => kind.arity(),
            _ => 2,
        }
    }
}

/// The SQL face of a [`Kind`]: every one takes its values and, last, a length (`n` or `k`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Function {
    kind: Kind,
    signature: Signature,
}

impl WindowUDFImpl for Function {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn partition_evaluator(
        &self,
        _args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(Evaluator { kind: self.kind }))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(
            field_args.name(),
            DataType::Float64,
            true,
        )))
    }
}

/// Evaluates a whole partition at once.
#[derive(Debug)]
struct Evaluator {
    kind: Kind,
}

impl PartitionEvaluator for Evaluator {
    fn is_causal(&self) -> bool {
        !matches!(self.kind, Kind::Forward(_))
    }

    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let name = self.kind.name();
        if values.len() != self.kind.arity() {
            return exec_err!("{name} takes {} arguments", self.kind.arity());
        }
        let length = arrow::compute::cast(&values[values.len() - 1], &DataType::Int64)?;
        let length = length.as_primitive::<Int64Type>();
        if length.is_empty() || length.is_null(0) || length.value(0) < 1 {
            return exec_err!(
                "{name}: the length (last argument) must be an integer of at least 1"
            );
        }
        let length = length.value(0) as usize;
        let x = arrow::compute::cast(&values[0], &DataType::Float64)?;
        let x = x.as_primitive::<Float64Type>();
        Ok(Arc::new(match self.kind {
            Kind::Smoothing(kind) => smooth(kind, x, length, num_rows),
            Kind::Forward(kind) => forward(kind, x, length, num_rows),
            Kind::Rolling(Rolling::Corr) => {
                let y = arrow::compute::cast(&values[1], &DataType::Float64)?;
                let y = y.as_primitive::<Float64Type>();
                rolling_corr(&cleaned(x), &cleaned(y), length)
            }
            Kind::Rolling(kind) => rolling(kind, &cleaned(x), length),
            Kind::LastKnown => last_known(x, length, num_rows),
        }))
    }
}

/// `last_known(x, n)` over the first `rows` values of `x`.
pub fn last_known(x: &Float64Array, n: usize, rows: usize) -> Float64Array {
    let mut out = Float64Builder::with_capacity(rows);
    let mut last: Option<(usize, f64)> = None;
    for i in 0..rows {
        if !x.is_null(i) {
            last = Some((i, x.value(i)));
        }
        out.append_option(last.filter(|(at, _)| i - at < n).map(|(_, value)| value));
    }
    out.finish()
}

/// Every asterflow window function, ready to register.
pub fn functions() -> Vec<WindowUDF> {
    let kinds = [Smoothing::Ema, Smoothing::Wilder]
        .map(Kind::Smoothing)
        .into_iter()
        .chain([Forward::Value, Forward::Min, Forward::Max].map(Kind::Forward))
        .chain([Rolling::Mean, Rolling::Std, Rolling::StdPop, Rolling::Corr].map(Kind::Rolling))
        .chain([Kind::LastKnown]);
    kinds
        .map(|kind| {
            WindowUDF::from(Function {
                kind,
                signature: Signature::any(kind.arity(), Volatility::Immutable),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_known_carries_within_its_reach() {
        let x = Float64Array::from(vec![
            None,
            Some(1.0),
            None,
            None,
            Some(2.0),
            None,
            None,
            None,
        ]);
        assert_eq!(
            values(&last_known(&x, 3, 8)),
            vec![
                None,
                Some(1.0),
                Some(1.0),
                Some(1.0),
                Some(2.0),
                Some(2.0),
                Some(2.0),
                None
            ]
        );
    }

    fn values(array: &Float64Array) -> Vec<Option<f64>> {
        (0..array.len())
            .map(|i| (!array.is_null(i)).then(|| array.value(i)))
            .collect()
    }

    #[test]
    fn ema_is_seeded_with_the_sma_then_recursive() {
        // n = 3, alpha = 0.5: seed (1 + 2 + 3) / 3 = 2, then 0.5 * 4 + 0.5 * 2 = 3, then 0.5 * 8 + 0.5 * 3 = 5.5.
        let x = Float64Array::from(vec![1.0, 2.0, 3.0, 4.0, 8.0]);
        assert_eq!(
            values(&smooth(Smoothing::Ema, &x, 3, 5)),
            [None, None, Some(2.0), Some(3.0), Some(5.5)]
        );
    }

    #[test]
    fn forward_functions_look_exactly_k_rows_ahead() {
        // Row 0 holds the least value: forward_min must not look at the row itself.
        let x = Float64Array::from(vec![0.5, 3.0, 4.0, 1.0, 2.0]);
        assert_eq!(
            values(&forward(Forward::Value, &x, 2, 5)),
            [Some(4.0), Some(1.0), Some(2.0), None, None]
        );
        assert_eq!(
            values(&forward(Forward::Min, &x, 2, 5)),
            [Some(3.0), Some(1.0), Some(1.0), None, None]
        );
        assert_eq!(
            values(&forward(Forward::Max, &x, 2, 5)),
            [Some(4.0), Some(4.0), Some(2.0), None, None]
        );
        assert_eq!(
            values(&forward(Forward::Min, &x, 1, 5))[0],
            Some(3.0),
            "row 0's own 0.5 is not ahead of it"
        );
    }

    #[test]
    fn rolling_statistics_match_direct_computation() {
        let x: Vec<Option<f64>> = (0..300)
            .map(|i| (i % 17 != 3).then(|| 100.0 + (i as f64 * 0.7).sin() * 5.0 + i as f64 * 0.01))
            .collect();
        let array = Float64Array::from(x.clone());
        for n in [1, 5, 20, 100] {
            let means = values(&rolling(Rolling::Mean, &cleaned(&array), n));
            let stds = values(&rolling(Rolling::Std, &cleaned(&array), n));
            let pops = values(&rolling(Rolling::StdPop, &cleaned(&array), n));
            for i in 0..x.len() {
                let window: Vec<f64> = x[i.saturating_sub(n - 1)..=i]
                    .iter()
                    .flatten()
                    .copied()
                    .collect();
                if window.is_empty() {
                    assert_eq!((means[i], pops[i]), (None, None), "n {n} row {i}");
                    continue;
                }
                let mean = window.iter().sum::<f64>() / window.len() as f64;
                assert!(
                    (means[i].unwrap() - mean).abs() < 1e-12 * mean.abs(),
                    "n {n} row {i}"
                );
                let m2 = window.iter().map(|v| (v - mean).powi(2)).sum::<f64>();
                let pop = (m2 / window.len() as f64).sqrt();
                assert!(
                    (pops[i].unwrap() - pop).abs() < 1e-9 * pop.max(1e-3),
                    "n {n} row {i}"
                );
                if window.len() >= 2 {
                    let sd = (m2 / (window.len() - 1) as f64).sqrt();
                    assert!(
                        (stds[i].unwrap() - sd).abs() < 1e-9 * sd.max(1e-3),
                        "n {n} row {i}"
                    );
                } else {
                    assert_eq!(
                        stds[i], None,
                        "n {n} row {i}: one value has no sample spread"
                    );
                }
            }
        }
        let y: Vec<Option<f64>> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v.map(|v| v * 0.5 + (i as f64).cos()))
            .collect();
        let corr = values(&rolling_corr(
            &cleaned(&array),
            &cleaned(&Float64Array::from(y.clone())),
            12,
        ));
        assert!(corr[10].is_none(), "not enough pairs yet");
        let mut checked = 0;
        for (i, got) in corr.iter().enumerate().skip(11) {
            let pairs: Vec<(f64, f64)> = (i - 11..=i).filter_map(|j| x[j].zip(y[j])).collect();
            if pairs.len() < 12 {
                assert!(got.is_none(), "row {i}: a hole leaves fewer than 12 pairs");
                continue;
            }
            let n = pairs.len() as f64;
            let mx = pairs.iter().map(|p| p.0).sum::<f64>() / n;
            let my = pairs.iter().map(|p| p.1).sum::<f64>() / n;
            let cov: f64 = pairs.iter().map(|(a, b)| (a - mx) * (b - my)).sum();
            let vx: f64 = pairs.iter().map(|(a, _)| (a - mx).powi(2)).sum();
            let vy: f64 = pairs.iter().map(|(_, b)| (b - my).powi(2)).sum();
            let want = cov / (vx * vy).sqrt();
            assert!((got.unwrap() - want).abs() < 1e-9, "row {i}");
            checked += 1;
        }
        assert!(checked > 50, "{checked}");
    }

    #[test]
    fn a_series_that_collapses_keeps_its_precision() {
        // A price falling a million-fold over 20,000 bars, with noise: sums anchored at the
        // first value would lose the last bars' digits to the first bars' size.
        let price: Vec<f64> = (0..20_000)
            .map(|i| (-(i as f64) * 13.8 / 20_000.0).exp() * (1.0 + 0.01 * (i as f64 * 0.37).sin()))
            .collect();
        let other: Vec<f64> = price
            .iter()
            .enumerate()
            .map(|(i, p)| p * (1.0 + 0.02 * (i as f64 * 0.11).cos()))
            .collect();
        let array = Float64Array::from(price.clone());
        for n in [20, 168] {
            let means = values(&rolling(Rolling::Mean, &cleaned(&array), n));
            let stds = values(&rolling(Rolling::Std, &cleaned(&array), n));
            let corr = values(&rolling_corr(&price, &other, n));
            for i in (price.len() - 500)..price.len() {
                let window = &price[i + 1 - n..=i];
                let c = n as f64;
                let mean = window.iter().sum::<f64>() / c;
                let sd =
                    (window.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (c - 1.0)).sqrt();
                let relative = |got: f64, want: f64| (got - want).abs() / want.abs();
                assert!(
                    relative(means[i].unwrap(), mean) < 1e-12,
                    "mean n {n} row {i}"
                );
                assert!(relative(stds[i].unwrap(), sd) < 1e-9, "sd n {n} row {i}");
                let pairs = &other[i + 1 - n..=i];
                let my = pairs.iter().sum::<f64>() / c;
                let cov: f64 = window
                    .iter()
                    .zip(pairs)
                    .map(|(a, b)| (a - mean) * (b - my))
                    .sum();
                let vy: f64 = pairs.iter().map(|b| (b - my).powi(2)).sum();
                let want = cov / (sd * sd * (c - 1.0) * vy).sqrt();
                assert!((corr[i].unwrap() - want).abs() < 1e-9, "corr n {n} row {i}");
            }
        }
    }

    #[test]
    fn a_flat_window_has_exactly_its_value_and_no_spread() {
        // Values whose running sums round, then 0.2 five times through a hole and a NaN (both
        // missing): rows 3 to 9 hold only 0.2 among their present values.
        let x = Float64Array::from(vec![
            Some(0.1),
            Some(0.7),
            Some(0.3),
            Some(0.2),
            Some(0.2),
            None,
            Some(0.2),
            Some(f64::NAN),
            Some(0.2),
            Some(0.2),
        ]);
        for n in [5, 6, 7] {
            for kind in [Rolling::Std, Rolling::StdPop] {
                let spread = values(&rolling(kind, &cleaned(&x), n));
                assert_eq!(spread[9], Some(0.0), "{kind:?} n {n}");
                assert!(
                    spread[4].unwrap() > 0.0,
                    "{kind:?} n {n}: 0.3 is in row 4's window"
                );
            }
            assert_eq!(
                values(&rolling(Rolling::Mean, &cleaned(&x), n))[9],
                Some(0.2),
                "n {n}"
            );
        }
        let spread = values(&rolling(Rolling::Std, &cleaned(&x), 8));
        assert!(spread[9].unwrap() > 0.0, "n 8 reaches back to 0.3");
        // Returns of exactly 0 for a stretch after noisy ones: no correlation with anything.
        let returns: Vec<f64> = (0..80)
            .map(|i| {
                if i < 40 {
                    (i as f64 * 0.7).sin() * 0.013
                } else {
                    0.0
                }
            })
            .collect();
        let leader: Vec<f64> = (0..80).map(|i| (i as f64 * 0.3).cos() * 0.01).collect();
        let corr = values(&rolling_corr(&returns, &leader, 24));
        assert!(
            corr[60].is_some(),
            "row 60's window still holds noisy returns"
        );
        assert_eq!(
            corr[63..],
            [None; 17],
            "from row 63 the window holds only zeros"
        );
        // A stretch without volume after some: exactly zero, so NULLIF(sd, 0) leaves no z-score.
        let volume = Float64Array::from(vec![5.3, 0.7, 2.9, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let sd = values(&rolling(Rolling::Std, &cleaned(&volume), 5));
        let mean = values(&rolling(Rolling::Mean, &cleaned(&volume), 5));
        assert_eq!((mean[7], sd[7]), (Some(0.0), Some(0.0)));
    }

    #[test]
    fn wilder_skips_leading_nulls_and_holds_state_over_nulls() {
        // n = 2, alpha = 0.5: nulls first; seed (2 + 4) / 2 = 3; null; then 0.5 * 7 + 0.5 * 3 = 5.
        let x = Float64Array::from(vec![None, Some(2.0), Some(4.0), None, Some(7.0)]);
        assert_eq!(
            values(&smooth(Smoothing::Wilder, &x, 2, 5)),
            [None, None, Some(3.0), None, Some(5.0)]
        );
    }
}
