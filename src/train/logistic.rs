//! Multinomial logistic regression by L-BFGS: the `logistic` model's default solver.
//!
//! The objective is linfa-logistic's and scikit-learn's, `sum_i w_i (lse(z_i) - z_i[y_i]) +
//! alpha/2 |W|^2` with `z_i = b + x_i W` and the intercept `b` unpenalised, divided by the total
//! row weight so that the stopping tolerance means the same for any number of rows. argmin's
//! L-BFGS with a More-Thuente line search (what linfa-logistic runs) minimises it; what differs
//! from linfa-logistic 0.8.1 is the evaluation, which is why this exists (measured in
//! BENCHMARKS.md):
//!
//! - the log-sum-exp subtracts each row's own maximum logit. linfa's subtracts the maximum of the
//!   whole logit matrix and clamps each row's sum at 1e-15, so once a confident model spreads its
//!   logits by more than about 35 across rows, those rows' losses and gradients are wrong;
//! - the cost and the gradient come from one pass over the rows (the line search asks for both
//!   at each point), row by row from the `f32` training matrix, split over the cores, instead of
//!   separate passes through an `f64` copy;
//! - rows carry weights, so `balance: weights` works as it does for the networks.
//!
//! `solver: linfa` still fits through linfa-logistic, and the tests check the two against each
//! other where linfa's evaluation is exact.

use std::sync::{Mutex, PoisonError};

use argmin::core::{CostFunction, Executor, Gradient, State, TerminationReason, TerminationStatus};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use ndarray::{Array1, Array2};
use serde::Serialize;

/// Rows are summed in chunks of this many, and the chunks' sums added in chunk order, so the
/// result does not depend on how many cores share the chunks (a fit is the same, to the bit, on
/// any machine).
const CHUNK_ROWS: usize = 16_384;

/// A fitted linear model and how the solver ended.
#[derive(Debug, Clone)]
pub struct LogisticFit {
    /// `inputs x classes`.
    pub weights: Array2<f64>,
    pub intercept: Array1<f64>,
    pub report: SolverReport,
}

/// How an L-BFGS fit ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SolverReport {
    pub iterations: u64,
    /// argmin's words: "Solver converged", "Maximum number of iterations reached", ...
    pub stopped: String,
    #[serde(skip)]
    pub ending: Ending,
    /// The objective (mean weighted loss plus the scaled penalty) at the solution.
    pub cost: f64,
}

/// [`SolverReport::stopped`], for code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The gradient's norm fell below the tolerance, or the cost stopped changing.
    Converged,
    /// `max_iterations` ran out first.
    OutOfIterations,
    /// Anything else argmin reports (a line search that could not go on, ...).
    Other,
}

/// The scaled objective over a row-major `f32` matrix, its labels and row weights.
pub struct Objective<'a> {
    x: &'a [f32],
    y: &'a [u8],
    weights: &'a [f32],
    inputs: usize,
    classes: usize,
    alpha: f64,
    total_weight: f64,
    threads: usize,
    /// The last evaluation: argmin asks for the cost and then the gradient at the same point.
    last: Mutex<Option<Evaluation>>,
}

/// The cost and gradient at a point.
struct Evaluation {
    at: Array1<f64>,
    cost: f64,
    gradient: Array1<f64>,
}

impl<'a> Objective<'a> {
    /// `y` holds class indices below `classes`; `weights` are finite and not negative, with a
    /// positive sum.
    pub fn new(
        x: &'a [f32],
        y: &'a [u8],
        weights: &'a [f32],
        inputs: usize,
        classes: usize,
        alpha: f64,
    ) -> Result<Self, String> {
        let rows = y.len();
        if x.len() != rows * inputs || weights.len() != rows {
            return Err(format!(
                "logistic regression: {} values and {} weights for {rows} rows of {inputs} inputs",
                x.len(),
                weights.len()
            ));
        }
        if let Some(&label) = y.iter().find(|&&label| usize::from(label) >= classes) {
            return Err(format!(
                "logistic regression: label {label} with {classes} classes"
            ));
        }
        if let Some(row) = weights.iter().position(|&w| !(w.is_finite() && w >= 0.0)) {
            return Err(format!(
                "logistic regression: row {row} has weight {}; weights must be finite and not negative",
                weights[row]
            ));
        }
        let total_weight: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        if total_weight <= 0.0 {
            return Err("logistic regression: the row weights sum to zero".into());
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Objective {
            x,
            y,
            weights,
            inputs,
            classes,
            alpha,
            total_weight,
            threads: cores.min(rows.div_ceil(CHUNK_ROWS)).max(1),
            last: Mutex::new(None),
        })
    }

    /// Number of parameters: the weights, class by class, then the intercepts.
    pub fn parameters(&self) -> usize {
        (self.inputs + 1) * self.classes
    }

    /// The scaled cost and its gradient at `params`.
    pub fn evaluate(&self, params: &[f64]) -> (f64, Vec<f64>) {
        assert_eq!(params.len(), self.parameters(), "parameter vector length");
        let rows = self.y.len();
        let chunks = rows.div_ceil(CHUNK_ROWS);
        let chunk = |index: usize| index * CHUNK_ROWS..((index + 1) * CHUNK_ROWS).min(rows);
        // Chunks over the threads; the sums are then added in chunk order.
        let parts = crate::util::parallel::map(chunks, self.threads, |index| {
            self.partial(params, chunk(index))
        });
        let mut loss = 0.0;
        let mut gradient = vec![0.0; params.len()];
        for (part_loss, part_gradient) in parts {
            loss += part_loss;
            for (sum, value) in gradient.iter_mut().zip(part_gradient) {
                *sum += value;
            }
        }
        let penalised = self.inputs * self.classes;
        for (gradient, &weight) in gradient[..penalised].iter_mut().zip(params) {
            loss += 0.5 * self.alpha * weight * weight;
            *gradient += self.alpha * weight;
        }
        let scale = 1.0 / self.total_weight;
        gradient.iter_mut().for_each(|value| *value *= scale);
        (loss * scale, gradient)
    }

    /// Unscaled, unpenalised loss and gradient of `rows`. Parameters are class-major (each
    /// class's `inputs` weights in turn, then the intercepts), so that both the logits and the
    /// gradient are contiguous runs over the inputs, which vectorise.
    fn partial(&self, params: &[f64], rows: std::ops::Range<usize>) -> (f64, Vec<f64>) {
        let (inputs, classes) = (self.inputs, self.classes);
        let (weights, intercept) = params.split_at(inputs * classes);
        let mut gradient = vec![0.0; params.len()];
        let (weight_gradient, intercept_gradient) = gradient.split_at_mut(inputs * classes);
        let mut loss = 0.0;
        let mut z = vec![0.0; classes];
        let mut x = vec![0.0; inputs];
        let mut logs = vec![LogProduct::new(1.0); classes];
        let block = LogProduct::block(classes);
        for row in rows {
            let weight = f64::from(self.weights[row]);
            if weight == 0.0 {
                continue;
            }
            for (wide, &value) in x.iter_mut().zip(&self.x[row * inputs..(row + 1) * inputs]) {
                *wide = f64::from(value);
            }
            for ((logit, w), &b) in z
                .iter_mut()
                .zip(weights.chunks_exact(inputs))
                .zip(intercept)
            {
                *logit = b + dot(&x, w);
            }
            let label = usize::from(self.y[row]);
            let (top, max) =
                z.iter()
                    .enumerate()
                    .fold((0, f64::NEG_INFINITY), |(top, max), (class, &logit)| {
                        if logit > max {
                            (class, logit)
                        } else {
                            (top, max)
                        }
                    });
            let labelled = z[label];
            let mut sum = 0.0;
            for (class, logit) in z.iter_mut().enumerate() {
                // exp(0) for the largest logit: one `exp` fewer per row.
                *logit = if class == top {
                    1.0
                } else {
                    (*logit - max).exp()
                };
                sum += *logit;
            }
            // The row's loss: w (max + ln(sum) - z_label), the logarithm taken in blocks.
            loss += weight * (max - labelled);
            loss += logs[label].push(weight, sum, block);
            // z becomes w_i (p - onehot(y)), the loss's derivative in the logits.
            let scale = weight / sum;
            for logit in z.iter_mut() {
                *logit *= scale;
            }
            z[label] -= weight;
            for ((&d, g), b) in z
                .iter()
                .zip(weight_gradient.chunks_exact_mut(inputs))
                .zip(intercept_gradient.iter_mut())
            {
                for (g, &value) in g.iter_mut().zip(&x) {
                    *g += d * value;
                }
                *b += d;
            }
        }
        let rest: f64 = logs.iter().map(LogProduct::value).sum();
        (loss + rest, gradient)
    }

    fn cached(&self, params: &Array1<f64>) -> (f64, Array1<f64>) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(last) = last.as_ref()
            && last.at == *params
        {
            return (last.cost, last.gradient.clone());
        }
        let (cost, gradient) = self.evaluate(params.as_slice().expect("a contiguous vector"));
        let gradient = Array1::from(gradient);
        *last = Some(Evaluation {
            at: params.clone(),
            cost,
            gradient: gradient.clone(),
        });
        (cost, gradient)
    }
}

impl CostFunction for Objective<'_> {
    type Param = Array1<f64>;
    type Output = f64;

    fn cost(&self, params: &Self::Param) -> Result<f64, argmin::core::Error> {
        Ok(self.cached(params).0)
    }
}

impl Gradient for Objective<'_> {
    type Param = Array1<f64>;
    type Gradient = Array1<f64>;

    fn gradient(&self, params: &Self::Param) -> Result<Array1<f64>, argmin::core::Error> {
        Ok(self.cached(params).1)
    }
}

/// Minimises `objective` from zero until the gradient's norm falls below `tolerance` (or the
/// cost stops changing, or `max_iterations` pass).
pub fn minimise(
    objective: Objective<'_>,
    max_iterations: u64,
    tolerance: f64,
) -> Result<LogisticFit, String> {
    let (inputs, classes) = (objective.inputs, objective.classes);
    let start = Array1::zeros(objective.parameters());
    let solver = LBFGS::new(MoreThuenteLineSearch::new(), 10)
        .with_tolerance_grad(tolerance)
        .and_then(|solver| solver.with_tolerance_cost(64.0 * f64::EPSILON))
        .map_err(|error| format!("logistic regression: {error}"))?;
    let result = Executor::new(objective, solver)
        .configure(|state| state.param(start).max_iters(max_iterations))
        .run()
        .map_err(|error| format!("logistic regression: {error}"))?;
    let state = result.state();
    let params = state
        .get_best_param()
        .ok_or("logistic regression: the solver returned no parameters")?;
    // Class-major in the solver; `inputs x classes` out.
    let weights = Array2::from_shape_vec(
        (classes, inputs),
        params.as_slice().expect("contiguous")[..inputs * classes].to_vec(),
    )
    .map_err(|error| error.to_string())?
    .reversed_axes();
    let intercept =
        Array1::from(params.as_slice().expect("contiguous")[inputs * classes..].to_vec());
    let (stopped, ending) = match state.get_termination_status() {
        TerminationStatus::Terminated(reason) => (
            reason.to_string(),
            match reason {
                TerminationReason::SolverConverged => Ending::Converged,
                TerminationReason::MaxItersReached => Ending::OutOfIterations,
                _ => Ending::Other,
            },
        ),
        TerminationStatus::NotTerminated => ("not terminated".into(), Ending::Other),
    };
    Ok(LogisticFit {
        weights,
        intercept,
        report: SolverReport {
            iterations: state.get_iter(),
            stopped,
            ending,
            cost: state.get_best_cost(),
        },
    })
}

/// `sum of w ln(s)` over rows of one weight `w`, with one logarithm per `block` rows instead of
/// one per row (a `ln` per row cost a tenth of the fit). Each `s` is a row's sum of
/// `exp(logit - max)`, in `[1, classes]`, so a product of `block` of them neither underflows
/// nor overflows. Rows are kept per label because balanced class weights are the same within
/// a label; rows of a new weight close the product first, so any weights give the right sum.
#[derive(Debug, Clone, Copy)]
struct LogProduct {
    weight: f64,
    product: f64,
    count: usize,
}

impl LogProduct {
    fn new(weight: f64) -> Self {
        LogProduct {
            weight,
            product: 1.0,
            count: 0,
        }
    }

    /// Rows per logarithm for `classes` classes: the product stays below 2^1000.
    fn block(classes: usize) -> usize {
        (1000.0 / (classes as f64).log2()).floor().max(1.0) as usize
    }

    /// Adds `weight x ln(sum)`; returns the part of the sum now taken out of the product.
    fn push(&mut self, weight: f64, sum: f64, block: usize) -> f64 {
        let mut done = 0.0;
        if weight != self.weight || self.count == block {
            done = self.value();
            *self = LogProduct::new(weight);
        }
        self.product *= sum;
        self.count += 1;
        done
    }

    fn value(&self) -> f64 {
        self.weight * self.product.ln()
    }
}

/// `a . b` with four running sums, so the compiler may keep them in vector lanes (one sum
/// would pin the additions to their written order).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut sums = [0.0; 4];
    let (a4, a_rest) = a.split_at(a.len() / 4 * 4);
    let (b4, b_rest) = b.split_at(a4.len());
    for (a, b) in a4.chunks_exact(4).zip(b4.chunks_exact(4)) {
        for lane in 0..4 {
            sums[lane] += a[lane] * b[lane];
        }
    }
    let tail: f64 = a_rest.iter().zip(b_rest).map(|(a, b)| a * b).sum();
    (sums[0] + sums[1]) + (sums[2] + sums[3]) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem() -> (Vec<f32>, Vec<u8>, Vec<f32>) {
        // 3 inputs, 3 classes, 6 rows with uneven weights.
        let x = vec![
            0.5, -1.0, 2.0, //
            1.5, 0.25, -0.5, //
            -2.0, 1.0, 0.0, //
            0.0, 0.0, 1.0, //
            3.0, -2.5, 0.75, //
            -0.25, 0.5, -1.5,
        ];
        let y = vec![0, 1, 2, 2, 0, 1];
        let w = vec![1.0, 0.5, 2.0, 1.0, 0.0, 3.0];
        (x, y, w)
    }

    #[test]
    fn the_gradient_matches_finite_differences() {
        let (x, y, w) = problem();
        let objective = Objective::new(&x, &y, &w, 3, 3, 0.7).unwrap();
        let params: Vec<f64> = (0..objective.parameters())
            .map(|i| ((i * 7 % 11) as f64 - 5.0) * 0.3)
            .collect();
        let (_, gradient) = objective.evaluate(&params);
        for i in 0..params.len() {
            let step = 1e-6;
            let mut up = params.clone();
            up[i] += step;
            let mut down = params.clone();
            down[i] -= step;
            let numeric = (objective.evaluate(&up).0 - objective.evaluate(&down).0) / (2.0 * step);
            assert!(
                (numeric - gradient[i]).abs() < 1e-7,
                "parameter {i}: analytic {} numeric {numeric}",
                gradient[i]
            );
        }
    }

    #[test]
    fn the_cost_is_the_weighted_cross_entropy_plus_the_penalty() {
        let (x, y, w) = problem();
        let objective = Objective::new(&x, &y, &w, 3, 3, 0.5).unwrap();
        let mut params = vec![0.0; objective.parameters()];
        params[0] = 2.0; // input 0, class 0
        params[10] = 1.0; // intercept of class 1
        let (cost, _) = objective.evaluate(&params);
        // Computed directly: logits (2 x0, 1, 0) per row.
        let mut loss = 0.0;
        for row in 0..6 {
            let z = [2.0 * f64::from(x[row * 3]), 1.0, 0.0];
            let lse = z.iter().map(|v: &f64| v.exp()).sum::<f64>().ln();
            loss += f64::from(w[row]) * (lse - z[y[row] as usize]);
        }
        let expected = (loss + 0.5 * 0.5 * 4.0) / 7.5;
        assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");
    }

    #[test]
    fn the_blocked_logarithms_match_the_row_by_row_loss() {
        // 5,000 rows: several blocks of multiplied sums and a partial one, under unit weights,
        // weights by label (what `balance: weights` gives) and weights that change every row.
        let data = crate::train::synthetic::separable(1000, 5, 4, 2, 8);
        let rows = data.y.len();
        let schemes: [Vec<f32>; 3] = [
            vec![1.0; rows],
            data.y
                .iter()
                .map(|&label| [0.7, 1.9, 1.1][usize::from(label)])
                .collect(),
            (0..rows).map(|row| 0.25 + (row % 7) as f32 * 0.5).collect(),
        ];
        for w in &schemes {
            let objective = Objective::new(&data.x, &data.y, w, 4, 3, 0.0).unwrap();
            let params: Vec<f64> = (0..objective.parameters())
                .map(|i| ((i * 5 % 7) as f64 - 3.0) * 0.8)
                .collect();
            let (cost, _) = objective.evaluate(&params);
            let (mut loss, mut total) = (0.0, 0.0);
            for row in 0..rows {
                let x = &data.x[row * 4..row * 4 + 4];
                let z: Vec<f64> = (0..3)
                    .map(|class| {
                        params[12 + class]
                            + (0..4)
                                .map(|j| f64::from(x[j]) * params[class * 4 + j])
                                .sum::<f64>()
                    })
                    .collect();
                let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                loss += f64::from(w[row]) * (lse - z[usize::from(data.y[row])]);
                total += f64::from(w[row]);
            }
            let expected = loss / total;
            assert!(
                (cost - expected).abs() < 1e-12 * expected,
                "{cost} vs {expected}"
            );
        }
    }

    #[test]
    fn huge_logits_keep_the_loss_finite_and_exact() {
        // Rows whose logits are 1000 apart: a naive exp overflows, and a maximum taken over
        // the whole data loses the row whose largest logit is far below it.
        let x = vec![1.0f32, -1.0];
        let y = vec![0, 0];
        let w = vec![1.0, 1.0];
        let objective = Objective::new(&x, &y, &w, 1, 2, 0.0).unwrap();
        // Weights (500, -500), intercepts 0: row 0 logits (500, -500), row 1 (-500, 500).
        let (cost, gradient) = objective.evaluate(&[500.0, -500.0, 0.0, 0.0]);
        // Row 0 is right with certainty (loss 0); row 1 is wrong by 1000.
        assert!((cost - 500.0).abs() < 1e-9, "{cost}");
        assert!(gradient.iter().all(|g| g.is_finite()));
    }

    #[test]
    fn splitting_the_rows_over_threads_changes_nothing() {
        // 40,000 rows: three chunks, the last one short.
        let data = crate::train::synthetic::separable(400, 100, 5, 4, 3);
        let w: Vec<f32> = (0..data.y.len())
            .map(|row| 0.5 + (row % 3) as f32)
            .collect();
        let mut objective = Objective::new(&data.x, &data.y, &w, 5, 3, 1.0).unwrap();
        let params: Vec<f64> = (0..objective.parameters())
            .map(|i| i as f64 * 0.01)
            .collect();
        objective.threads = 1;
        let one = objective.evaluate(&params);
        for threads in [2, 3, 8] {
            objective.threads = threads;
            // The same to the bit: the chunks' sums are added in the same order.
            assert_eq!(objective.evaluate(&params), one, "{threads} threads");
        }
    }

    #[test]
    fn the_solver_stops_on_the_gradient_tolerance() {
        let data = crate::train::synthetic::separable(300, 10, 4, 2, 5);
        let w = vec![1.0f32; data.y.len()];
        let objective = Objective::new(&data.x, &data.y, &w, 4, 3, 1.0).unwrap();
        let fit = minimise(objective, 200, 1e-6).unwrap();
        assert_eq!(fit.report.ending, Ending::Converged, "{fit:?}");
        let objective = Objective::new(&data.x, &data.y, &w, 4, 3, 1.0).unwrap();
        let mut params: Vec<f64> = fit.weights.t().iter().copied().collect();
        params.extend(fit.intercept.iter());
        let (_, gradient) = objective.evaluate(&params);
        let norm = gradient.iter().map(|g| g * g).sum::<f64>().sqrt();
        assert!(norm < 1e-6, "gradient norm {norm}");
    }
}
