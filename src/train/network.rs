//! The one model shape every trainer produces: an optional ReLU hidden layer and a softmax
//! output layer, its parameters in one flat `f32` vector. `mlp` has the hidden layer; `softmax`
//! and the `logistic` fit do not. The CPU trainer here and the CUDA kernels in
//! `stages/kernels/mlp.cu` share the layout, the initialisation, the minibatch order and the
//! Adam rule, so the same seed gives the same training on either (to rounding).
//!
//! Flat layout: `[W1 (inputs x hidden), b1 (hidden), W2 (fan_in x classes), b2 (classes)]`,
//! row-major, where `fan_in` is `hidden` or, without a hidden layer, `inputs` (and W1, b1 are
//! empty).

use std::ops::Range;

use ndarray::{Array2, ArrayView1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::util::rng::{Rng, mix};

/// A trained or initialised network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Network {
    pub inputs: usize,
    /// Units in the hidden layer; 0 for none.
    pub hidden: usize,
    pub classes: usize,
    pub params: Vec<f32>,
}

/// Where each tensor sits in [`Network::params`].
#[derive(Debug, Clone)]
pub struct Layout {
    pub w1: Range<usize>,
    pub b1: Range<usize>,
    pub w2: Range<usize>,
    pub b2: Range<usize>,
    /// Rows of W2: the hidden width, or the inputs without a hidden layer.
    pub fan_in: usize,
}

impl Layout {
    pub fn new(inputs: usize, hidden: usize, classes: usize) -> Self {
        let w1 = 0..inputs * hidden;
        let b1 = w1.end..w1.end + hidden;
        let fan_in = if hidden > 0 { hidden } else { inputs };
        let w2 = b1.end..b1.end + fan_in * classes;
        let b2 = w2.end..w2.end + classes;
        Self {
            w1,
            b1,
            w2,
            b2,
            fan_in,
        }
    }

    /// The number of parameters.
    pub fn param_count(&self) -> usize {
        self.b2.end
    }
}

impl Network {
    pub fn layout(&self) -> Layout {
        Layout::new(self.inputs, self.hidden, self.classes)
    }

    /// Seeded initialisation: He-uniform for the ReLU layer, Glorot-uniform for the output
    /// layer, zero biases.
    pub fn initialised(inputs: usize, hidden: usize, classes: usize, seed: u64) -> Self {
        let layout = Layout::new(inputs, hidden, classes);
        let mut params = vec![0.0f32; layout.param_count()];
        let mut rng = Rng::new(mix(seed ^ 0x006e_6574_776f_726b));
        let he = (6.0 / inputs as f64).sqrt();
        for value in &mut params[layout.w1.clone()] {
            *value = ((rng.uniform() * 2.0 - 1.0) * he) as f32;
        }
        let glorot = (6.0 / (layout.fan_in + classes) as f64).sqrt();
        for value in &mut params[layout.w2.clone()] {
            *value = ((rng.uniform() * 2.0 - 1.0) * glorot) as f32;
        }
        Self {
            inputs,
            hidden,
            classes,
            params,
        }
    }

    fn matrix(&self, range: Range<usize>, rows: usize, cols: usize) -> ArrayView2<'_, f32> {
        ArrayView2::from_shape((rows, cols), &self.params[range]).expect("layout matches")
    }

    fn vector(&self, range: Range<usize>) -> ArrayView1<'_, f32> {
        ArrayView1::from(&self.params[range])
    }

    /// The hidden activations (or the inputs themselves) and the logits of a batch.
    fn forward(&self, x: ArrayView2<'_, f32>) -> (Option<Array2<f32>>, Array2<f32>) {
        let layout = self.layout();
        let w2 = self.matrix(layout.w2.clone(), layout.fan_in, self.classes);
        let b2 = self.vector(layout.b2.clone());
        if self.hidden > 0 {
            let w1 = self.matrix(layout.w1.clone(), self.inputs, self.hidden);
            let mut h = x.dot(&w1);
            h += &self.vector(layout.b1.clone());
            h.mapv_inplace(|value| value.max(0.0));
            let mut z = h.dot(&w2);
            z += &b2;
            (Some(h), z)
        } else {
            let mut z = x.dot(&w2);
            z += &b2;
            (None, z)
        }
    }

    /// Class probabilities for `rows` rows of `x` (`rows x inputs`, row-major), row-major.
    pub fn predict(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(rows * self.classes);
        const CHUNK: usize = 8192;
        for start in (0..rows).step_by(CHUNK) {
            let end = (start + CHUNK).min(rows);
            let view = ArrayView2::from_shape(
                (end - start, self.inputs),
                &x[start * self.inputs..end * self.inputs],
            )
            .expect("x is rows x inputs");
            let (_, mut z) = self.forward(view);
            for mut row in z.rows_mut() {
                softmax_in_place(row.as_slice_mut().expect("standard layout"));
            }
            out.extend(z.iter());
        }
        out
    }
}

/// `exp(z - max) / sum`, in place; returns the log-partition `max + ln(sum)` for the
/// cross-entropy (as the kernels' `softmax_row` does).
pub fn softmax_in_place(z: &mut [f32]) -> f32 {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for value in z.iter_mut() {
        *value = (*value - max).exp();
        sum += *value;
    }
    for value in z.iter_mut() {
        *value /= sum;
    }
    max + sum.ln()
}

/// Adam's settings.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AdamConfig {
    pub learning_rate: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub epsilon: f32,
}

impl AdamConfig {
    pub fn new(learning_rate: f32) -> Self {
        Self {
            learning_rate,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
        }
    }

    /// The bias corrections `1 - beta^t` for step `t` (from 1), computed once on the host for
    /// both the CPU loop and the GPU kernel.
    pub fn corrections(&self, step: u32) -> (f32, f32) {
        let step = step as i32;
        (1.0 - self.beta1.powi(step), 1.0 - self.beta2.powi(step))
    }
}

/// One Adam update of `params` from `grad`, with moments `m` and `v`. The same arithmetic as the
/// `adam` kernel.
pub fn adam_update(
    params: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    config: &AdamConfig,
    corrections: (f32, f32),
) {
    let (c1, c2) = corrections;
    for i in 0..params.len() {
        let g = grad[i];
        m[i] = config.beta1 * m[i] + (1.0 - config.beta1) * g;
        v[i] = config.beta2 * v[i] + (1.0 - config.beta2) * g * g;
        let m_hat = m[i] / c1;
        let v_hat = v[i] / c2;
        params[i] -= config.learning_rate * m_hat / (v_hat.sqrt() + config.epsilon);
    }
}

/// The order an epoch visits the training rows: a seeded Fisher-Yates shuffle, the same for
/// every backend. (Rows shuffle within the training span only; the split is by time.)
pub fn epoch_order(rows: usize, seed: u64, epoch: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..rows as u32).collect();
    let mut rng = Rng::new(mix(seed ^ mix(epoch as u64 + 1)));
    for i in (1..rows).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Training rows on the host: standardised features, class indices, per-row loss weights.
#[derive(Debug, Clone)]
pub struct TrainingSet {
    pub x: Vec<f32>,
    pub y: Vec<u8>,
    pub weights: Vec<f32>,
    pub rows: usize,
    pub inputs: usize,
}

/// What trains a [`Network`]: the CPU loop below, or the CUDA kernels (`crate::train::gpu`).
pub trait Trainer {
    /// One pass over the training rows in `order`, minibatch by minibatch; the mean weighted
    /// cross-entropy of the batches before each update.
    fn epoch(&mut self, order: &[u32]) -> Result<f64, String>;
    /// The network as trained so far.
    fn network(&mut self) -> Result<Network, String>;
    /// Class probabilities for `rows` rows of standardised `x`.
    fn predict(&mut self, x: &[f32], rows: usize) -> Result<Vec<f32>, String>;
}

/// The CPU trainer: ndarray matrix products, single-threaded and deterministic.
pub struct CpuTrainer<'a> {
    network: Network,
    data: &'a TrainingSet,
    batch_size: usize,
    adam: AdamConfig,
    m: Vec<f32>,
    v: Vec<f32>,
    grad: Vec<f32>,
    step: u32,
}

impl<'a> CpuTrainer<'a> {
    pub fn new(
        network: Network,
        data: &'a TrainingSet,
        batch_size: usize,
        adam: AdamConfig,
    ) -> Self {
        let n = network.params.len();
        Self {
            network,
            data,
            batch_size,
            adam,
            m: vec![0.0; n],
            v: vec![0.0; n],
            grad: vec![0.0; n],
            step: 0,
        }
    }

    /// Gradient of the batch's mean weighted cross-entropy into `self.grad`; returns the sum
    /// of the rows' weighted losses.
    fn gradient(&mut self, rows: &[u32]) -> f64 {
        let inputs = self.data.inputs;
        let batch = rows.len();
        let mut xb = Array2::<f32>::zeros((batch, inputs));
        for (r, &row) in rows.iter().enumerate() {
            let row = row as usize;
            xb.row_mut(r)
                .as_slice_mut()
                .expect("standard layout")
                .copy_from_slice(&self.data.x[row * inputs..(row + 1) * inputs]);
        }
        let (hidden, mut z) = self.network.forward(xb.view());
        let mut loss = 0.0f64;
        let scale = 1.0 / batch as f32;
        for (r, &row) in rows.iter().enumerate() {
            let row = row as usize;
            let label = self.data.y[row] as usize;
            let weight = self.data.weights[row];
            let logits = z.row_mut(r).into_slice().expect("standard layout");
            let label_logit = logits[label];
            let log_partition = softmax_in_place(logits);
            loss += f64::from(weight * -(label_logit - log_partition));
            for (class, value) in logits.iter_mut().enumerate() {
                let target = if class == label { 1.0 } else { 0.0 };
                *value = weight * (*value - target) * scale;
            }
        }
        let dz = z;
        let layout = self.network.layout();
        let a = hidden.as_ref().map_or(xb.view(), |h| h.view());
        let gw2 = a.t().dot(&dz);
        let gb2 = dz.sum_axis(Axis(0));
        self.grad[layout.w2.clone()].copy_from_slice(gw2.as_slice().expect("standard layout"));
        self.grad[layout.b2.clone()].copy_from_slice(gb2.as_slice().expect("standard layout"));
        if let Some(h) = &hidden {
            let w2 = self
                .network
                .matrix(layout.w2.clone(), layout.fan_in, self.network.classes);
            let mut dh = dz.dot(&w2.t());
            dh.zip_mut_with(h, |g, &activation| {
                if activation <= 0.0 {
                    *g = 0.0;
                }
            });
            let gw1 = xb.t().dot(&dh);
            let gb1 = dh.sum_axis(Axis(0));
            self.grad[layout.w1.clone()].copy_from_slice(gw1.as_slice().expect("standard layout"));
            self.grad[layout.b1.clone()].copy_from_slice(gb1.as_slice().expect("standard layout"));
        }
        loss
    }
}

impl Trainer for CpuTrainer<'_> {
    fn epoch(&mut self, order: &[u32]) -> Result<f64, String> {
        let mut total = 0.0f64;
        for rows in order.chunks(self.batch_size) {
            total += self.gradient(rows);
            self.step += 1;
            let corrections = self.adam.corrections(self.step);
            adam_update(
                &mut self.network.params,
                &self.grad,
                &mut self.m,
                &mut self.v,
                &self.adam,
                corrections,
            );
        }
        Ok(total / order.len().max(1) as f64)
    }

    fn network(&mut self) -> Result<Network, String> {
        Ok(self.network.clone())
    }

    fn predict(&mut self, x: &[f32], rows: usize) -> Result<Vec<f32>, String> {
        Ok(self.network.predict(x, rows))
    }
}

/// Builds a network from a linear model's weights (`inputs x classes`) and intercepts.
pub fn linear(weights: ArrayView2<'_, f64>, intercept: ArrayView1<'_, f64>) -> Network {
    let (inputs, classes) = weights.dim();
    let layout = Layout::new(inputs, 0, classes);
    let mut params = vec![0.0f32; layout.param_count()];
    for (target, value) in params[layout.w2.clone()].iter_mut().zip(weights.iter()) {
        *target = *value as f32;
    }
    for (target, value) in params[layout.b2.clone()].iter_mut().zip(intercept.iter()) {
        *target = *value as f32;
    }
    Network {
        inputs,
        hidden: 0,
        classes,
        params,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The analytic gradient against central differences of the loss.
    #[test]
    fn gradients_match_finite_differences() {
        let inputs = 3;
        let rows = 5;
        let mut rng = Rng::new(3);
        let data = TrainingSet {
            x: (0..rows * inputs).map(|_| rng.normal() as f32).collect(),
            y: vec![0, 1, 2, 1, 0],
            weights: vec![1.0, 2.0, 0.5, 1.0, 1.5],
            rows,
            inputs,
        };
        for hidden in [0, 4] {
            let network = Network::initialised(inputs, hidden, 3, 11);
            let mut trainer = CpuTrainer::new(network.clone(), &data, rows, AdamConfig::new(0.01));
            let order: Vec<u32> = (0..rows as u32).collect();
            trainer.gradient(&order);
            let analytic = trainer.grad.clone();
            let loss = |params: &[f32]| -> f64 {
                let net = Network {
                    params: params.to_vec(),
                    ..network.clone()
                };
                let p = net.predict(&data.x, rows);
                (0..rows)
                    .map(|r| {
                        -f64::from(data.weights[r]) * f64::from(p[r * 3 + data.y[r] as usize]).ln()
                    })
                    .sum::<f64>()
                    / rows as f64
            };
            for i in 0..network.params.len() {
                let mut plus = network.params.clone();
                let mut minus = network.params.clone();
                plus[i] += 1e-2;
                minus[i] -= 1e-2;
                let numeric = (loss(&plus) - loss(&minus)) / 2e-2;
                assert!(
                    (numeric - f64::from(analytic[i])).abs() < 2e-3,
                    "hidden {hidden}, param {i}: numeric {numeric}, analytic {}",
                    analytic[i]
                );
            }
        }
    }

    #[test]
    fn epoch_orders_are_seeded_permutations() {
        let a = epoch_order(1000, 7, 0);
        assert_eq!(a, epoch_order(1000, 7, 0));
        assert_ne!(a, epoch_order(1000, 7, 1));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<u32>>());
    }
}
