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
//! Windows of up to 64 rows are recomputed exactly (two-pass) at every row; longer ones keep
//! running sums of values shifted by the partition's first value, which keeps the
//! cancellation error small.
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
    let mut out = Float64Builder::with_capacity(rows);
    let mut seen = 0usize;
    let mut sum = 0.0;
    let mut state: Option<f64> = None;
    for i in 0..rows {
        if x.is_null(i) || !x.value(i).is_finite() {
            out.append_null();
            continue;
        }
        let value = x.value(i);
        match state {
            Some(previous) => {
                let next = alpha * value + (1.0 - alpha) * previous;
                state = Some(next);
                out.append_value(next);
            }
            None => {
                seen += 1;
                sum += value;
                if seen == n {
                    let seed = sum / n as f64;
                    state = Some(seed);
                    out.append_value(seed);
                } else {
                    out.append_null();
                }
            }
        }
    }
    out.finish()
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

/// Mean and standard deviations over the last `n` rows.
pub fn rolling(kind: Rolling, x: &[Option<f64>], n: usize) -> Vec<Option<f64>> {
    let finish = |count: f64, mean: f64, m2: f64| -> Option<f64> {
        match kind {
            Rolling::Mean => (count >= 1.0).then_some(mean),
            Rolling::Std => (count >= 2.0).then(|| (m2.max(0.0) / (count - 1.0)).sqrt()),
            _ => (count >= 1.0).then(|| (m2.max(0.0) / count).sqrt()),
        }
    };
    let mut out = Vec::with_capacity(x.len());
    if n <= 64 {
        for i in 0..x.len() {
            let window = &x[i.saturating_sub(n - 1)..=i];
            let (count, sum) = window
                .iter()
                .flatten()
                .fold((0.0, 0.0), |(c, s), v| (c + 1.0, s + v));
            let mean = if count > 0.0 { sum / count } else { 0.0 };
            let m2: f64 = window
                .iter()
                .flatten()
                .map(|v| (v - mean) * (v - mean))
                .sum();
            out.push(finish(count, mean, m2));
        }
        return out;
    }
    let shift = x.iter().flatten().next().copied().unwrap_or(0.0);
    let (mut count, mut sum, mut squares) = (0.0, 0.0, 0.0);
    for i in 0..x.len() {
        if let Some(v) = x[i] {
            let d = v - shift;
            count += 1.0;
            sum += d;
            squares += d * d;
        }
        if i >= n
            && let Some(v) = x[i - n]
        {
            let d = v - shift;
            count -= 1.0;
            sum -= d;
            squares -= d * d;
        }
        let mean = if count > 0.0 { sum / count } else { 0.0 };
        out.push(finish(count, mean + shift, squares - count * mean * mean));
    }
    out
}

/// Pearson correlation over the pairs among the last `n` rows, once there are `n` of them.
pub fn rolling_corr(x: &[Option<f64>], y: &[Option<f64>], n: usize) -> Vec<Option<f64>> {
    let pair = |i: usize| x[i].zip(y[i]);
    let first = (0..x.len()).find_map(pair).unwrap_or((0.0, 0.0));
    let (mut c, mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let mut out = Vec::with_capacity(x.len());
    for i in 0..x.len() {
        if let Some((a, b)) = pair(i) {
            let (a, b) = (a - first.0, b - first.1);
            c += 1.0;
            sx += a;
            sy += b;
            sxx += a * a;
            syy += b * b;
            sxy += a * b;
        }
        if i >= n
            && let Some((a, b)) = pair(i - n)
        {
            let (a, b) = (a - first.0, b - first.1);
            c -= 1.0;
            sx -= a;
            sy -= b;
            sxx -= a * a;
            syy -= b * b;
            sxy -= a * b;
        }
        let value = (c >= n as f64).then(|| {
            let cov = c * sxy - sx * sy;
            let var = (c * sxx - sx * sx) * (c * syy - sy * sy);
            (var > 0.0).then(|| cov / var.sqrt())
        });
        out.push(value.flatten());
    }
    out
}

/// One of asterflow's window functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Smoothing(Smoothing),
    Forward(Forward),
    Rolling(Rolling),
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Smoothing(kind) => kind.name(),
            Kind::Forward(kind) => kind.name(),
            Kind::Rolling(kind) => kind.name(),
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
        let options = |array: &Float64Array| -> Vec<Option<f64>> {
            (0..num_rows)
                .map(|i| (!array.is_null(i) && array.value(i).is_finite()).then(|| array.value(i)))
                .collect()
        };
        Ok(Arc::new(match self.kind {
            Kind::Smoothing(kind) => smooth(kind, x, length, num_rows),
            Kind::Forward(kind) => forward(kind, x, length, num_rows),
            Kind::Rolling(Rolling::Corr) => {
                let y = arrow::compute::cast(&values[1], &DataType::Float64)?;
                let y = y.as_primitive::<Float64Type>();
                Float64Array::from(rolling_corr(&options(x), &options(y), length))
            }
            Kind::Rolling(kind) => Float64Array::from(rolling(kind, &options(x), length)),
        }))
    }
}

/// Every asterflow window function, ready to register.
pub fn functions() -> Vec<WindowUDF> {
    let kinds = [Smoothing::Ema, Smoothing::Wilder]
        .map(Kind::Smoothing)
        .into_iter()
        .chain([Forward::Value, Forward::Min, Forward::Max].map(Kind::Forward))
        .chain([Rolling::Mean, Rolling::Std, Rolling::StdPop, Rolling::Corr].map(Kind::Rolling));
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
        for n in [5, 20, 100] {
            let means = rolling(Rolling::Mean, &x, n);
            let stds = rolling(Rolling::Std, &x, n);
            for i in 0..x.len() {
                let window: Vec<f64> = x[i.saturating_sub(n - 1)..=i]
                    .iter()
                    .flatten()
                    .copied()
                    .collect();
                let mean = window.iter().sum::<f64>() / window.len() as f64;
                assert!(
                    (means[i].unwrap() - mean).abs() < 1e-9 * mean.abs(),
                    "n {n} row {i}"
                );
                if window.len() >= 2 {
                    let sd = (window.iter().map(|v| (v - mean).powi(2)).sum::<f64>()
                        / (window.len() - 1) as f64)
                        .sqrt();
                    assert!(
                        (stds[i].unwrap() - sd).abs() < 1e-7 * sd.max(1e-12),
                        "n {n} row {i}"
                    );
                }
            }
        }
        let y: Vec<Option<f64>> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v.map(|v| v * 0.5 + (i as f64).cos()))
            .collect();
        let corr = rolling_corr(&x, &y, 12);
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
    fn wilder_skips_leading_nulls_and_holds_state_over_nulls() {
        // n = 2, alpha = 0.5: nulls first; seed (2 + 4) / 2 = 3; null; then 0.5 * 7 + 0.5 * 3 = 5.
        let x = Float64Array::from(vec![None, Some(2.0), Some(4.0), None, Some(7.0)]);
        assert_eq!(
            values(&smooth(Smoothing::Wilder, &x, 2, 5)),
            [None, None, Some(3.0), None, Some(5.0)]
        );
    }
}
