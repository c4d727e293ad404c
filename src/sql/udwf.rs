//! Window functions SQL cannot express.
//!
//! Causal (for features):
//! - `ema(x, n)`: exponential moving average, alpha = 2 / (n + 1);
//! - `wilder(x, n)`: Wilder's smoothing (RSI, ATR), alpha = 1 / n.
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

/// The SQL function for one smoothing.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SmoothingFunction {
    kind: Smoothing,
    signature: Signature,
}

impl WindowUDFImpl for SmoothingFunction {
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

#[derive(Debug)]
struct Evaluator {
    kind: Smoothing,
}

impl PartitionEvaluator for Evaluator {
    fn is_causal(&self) -> bool {
        true
    }

    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let name = self.kind.name();
        let [x, n] = values else {
            return exec_err!("{name}(x, n) takes two arguments");
        };
        let n = match n.data_type() {
            DataType::Int64 => n.as_primitive::<Int64Type>(),
            other => return exec_err!("{name}(x, n): n must be an integer literal, got {other}"),
        };
        if n.is_empty() || n.is_null(0) || n.value(0) < 1 {
            return exec_err!("{name}(x, n): n must be at least 1");
        }
        let n = n.value(0) as usize;
        let x = arrow::compute::cast(x, &DataType::Float64)?;
        let x = x.as_primitive::<Float64Type>();
        Ok(Arc::new(smooth(self.kind, x, n, num_rows)))
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

#[derive(Debug, PartialEq, Eq, Hash)]
struct ForwardFunction {
    kind: Forward,
    signature: Signature,
}

impl WindowUDFImpl for ForwardFunction {
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
        Ok(Box::new(ForwardEvaluator { kind: self.kind }))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(
            field_args.name(),
            DataType::Float64,
            true,
        )))
    }
}

#[derive(Debug)]
struct ForwardEvaluator {
    kind: Forward,
}

impl PartitionEvaluator for ForwardEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let name = self.kind.name();
        let [x, k] = values else {
            return exec_err!("{name}(x, k) takes two arguments");
        };
        let k = arrow::compute::cast(k, &DataType::Int64)?;
        let k = k.as_primitive::<Int64Type>();
        if k.is_empty() || k.is_null(0) || k.value(0) < 1 {
            return exec_err!("{name}(x, k): k must be at least 1");
        }
        let k = k.value(0) as usize;
        let x = arrow::compute::cast(x, &DataType::Float64)?;
        let x = x.as_primitive::<Float64Type>();
        Ok(Arc::new(forward(self.kind, x, k, num_rows)))
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

/// Every asterflow window function, ready to register.
pub fn functions() -> Vec<WindowUDF> {
    let smoothing = [Smoothing::Ema, Smoothing::Wilder].into_iter().map(|kind| {
        WindowUDF::from(SmoothingFunction {
            kind,
            signature: Signature::any(2, Volatility::Immutable),
        })
    });
    let forward = [Forward::Value, Forward::Min, Forward::Max]
        .into_iter()
        .map(|kind| {
            WindowUDF::from(ForwardFunction {
                kind,
                signature: Signature::any(2, Volatility::Immutable),
            })
        });
    smoothing.chain(forward).collect()
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
        let x = Float64Array::from(vec![5.0, 3.0, 4.0, 1.0, 2.0]);
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
