//! The CUDA trainer: `stages/kernels/mlp.cu` launched through cudarc, step for step the CPU
//! trainer of `train::network` (same layout, initialisation, minibatch order and Adam rule).
//!
//! The training matrix, labels, weights and all parameters stay on the device for the whole
//! fit; per epoch the host uploads the row order (4 bytes a row) and reads back the per-row
//! losses (4 bytes a row), so the loss curve costs no synchronisation inside the epoch.

use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg,
};

use super::Gpu;
use crate::train::network::{AdamConfig, Layout, Network, Trainer, TrainingSet};

const THREADS: u32 = 256;

fn grid(elements: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((elements as u32).div_ceil(THREADS).max(1), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn failed(what: &'static str) -> impl Fn(DriverError) -> String {
    move |error| format!("GPU {what}: {error:?}")
}

struct Kernels {
    dense_forward: CudaFunction,
    softmax_xent: CudaFunction,
    dense_backward: CudaFunction,
    relu_backward: CudaFunction,
    adam: CudaFunction,
    softmax_rows: CudaFunction,
}

/// A network training on the device.
pub struct GpuTrainer {
    gpu: Arc<Gpu>,
    kernels: Kernels,
    inputs: usize,
    hidden: usize,
    classes: usize,
    layout: Layout,
    batch_size: usize,
    adam: AdamConfig,
    step: u32,
    rows: usize,
    x: CudaSlice<f32>,
    y: CudaSlice<u8>,
    weights: CudaSlice<f32>,
    order: CudaSlice<u32>,
    row_loss: CudaSlice<f32>,
    params: CudaSlice<f32>,
    grad: CudaSlice<f32>,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    /// Batch-local activations, logits (then dL/dz) and hidden gradients.
    h: CudaSlice<f32>,
    z: CudaSlice<f32>,
    dh: CudaSlice<f32>,
}

impl GpuTrainer {
    /// Compiles `source` (the kernels file) for the device and uploads the training set and the
    /// initial network.
    pub fn new(
        gpu: Arc<Gpu>,
        source: &str,
        network: &Network,
        data: &TrainingSet,
        batch_size: usize,
        adam: AdamConfig,
    ) -> Result<Self, String> {
        let ptx = gpu.compile(source, "mlp.cu")?;
        let module = gpu
            .context
            .load_module(ptx)
            .map_err(failed("module load"))?;
        let load = |name: &str| {
            module
                .load_function(name)
                .map_err(|error| format!("kernel `{name}` in mlp.cu: {error:?}"))
        };
        let kernels = Kernels {
            dense_forward: load("dense_forward")?,
            softmax_xent: load("softmax_xent")?,
            dense_backward: load("dense_backward")?,
            relu_backward: load("relu_backward")?,
            adam: load("adam")?,
            softmax_rows: load("softmax_rows")?,
        };
        let stream = gpu.stream.clone();
        let upload = failed("upload");
        let n = network.params.len();
        let batch = batch_size.max(1);
        let hidden_len = (batch * network.hidden).max(1);
        Ok(Self {
            x: stream.clone_htod(&data.x).map_err(&upload)?,
            y: stream.clone_htod(&data.y).map_err(&upload)?,
            weights: stream.clone_htod(&data.weights).map_err(&upload)?,
            order: stream.alloc_zeros(data.rows.max(1)).map_err(&upload)?,
            row_loss: stream.alloc_zeros(data.rows.max(1)).map_err(&upload)?,
            params: stream.clone_htod(&network.params).map_err(&upload)?,
            grad: stream.alloc_zeros(n).map_err(&upload)?,
            m: stream.alloc_zeros(n).map_err(&upload)?,
            v: stream.alloc_zeros(n).map_err(&upload)?,
            h: stream.alloc_zeros(hidden_len).map_err(&upload)?,
            z: stream
                .alloc_zeros(batch * network.classes)
                .map_err(&upload)?,
            dh: stream.alloc_zeros(hidden_len).map_err(&upload)?,
            gpu,
            kernels,
            inputs: network.inputs,
            hidden: network.hidden,
            classes: network.classes,
            layout: network.layout(),
            batch_size: batch,
            adam,
            step: 0,
            rows: data.rows,
        })
    }

    /// One minibatch: forward, loss gradient, backward, Adam.
    fn batch(&mut self, offset: usize, rows: usize) -> Result<(), DriverError> {
        let stream = self.gpu.stream.clone();
        let k = &self.kernels;
        let layout = &self.layout;
        let offset = offset as u32;
        // The first layer reads training rows through the epoch order; the output layer reads
        // the hidden activations (or, without a hidden layer, the training rows).
        let input = Layer {
            input: &self.x,
            gather: true,
            offset,
            rows,
            ins: self.inputs,
            w_off: layout.w1.start,
            b_off: layout.b1.start,
            outs: self.hidden,
        };
        if self.hidden > 0 {
            forward(
                &stream,
                k,
                &self.order,
                &self.params,
                &input,
                true,
                &mut self.h,
            )?;
        }
        let hidden = self.hidden > 0;
        let output = Layer {
            input: if hidden { &self.h } else { &self.x },
            gather: !hidden,
            offset: if hidden { 0 } else { offset },
            rows,
            ins: if hidden { self.hidden } else { self.inputs },
            w_off: layout.w2.start,
            b_off: layout.b2.start,
            outs: self.classes,
        };
        forward(
            &stream,
            k,
            &self.order,
            &self.params,
            &output,
            false,
            &mut self.z,
        )?;
        let (rows_u, classes) = (rows as u32, self.classes as u32);
        let mut launch = stream.launch_builder(&k.softmax_xent);
        launch
            .arg(&mut self.z)
            .arg(&rows_u)
            .arg(&classes)
            .arg(&self.y)
            .arg(&self.weights)
            .arg(&self.order)
            .arg(&offset)
            .arg(&mut self.row_loss);
        // SAFETY: matches softmax_xent's signature; z holds `rows` rows of `classes`.
        unsafe { launch.launch(grid(rows)) }?;
        backward(&stream, k, &self.order, &output, &self.z, &mut self.grad)?;
        if self.hidden > 0 {
            let (hidden, w2) = (self.hidden as u32, layout.w2.start as u32);
            let mut launch = stream.launch_builder(&k.relu_backward);
            launch
                .arg(&self.z)
                .arg(&self.params)
                .arg(&w2)
                .arg(&self.h)
                .arg(&rows_u)
                .arg(&hidden)
                .arg(&classes)
                .arg(&mut self.dh);
            // SAFETY: matches relu_backward's signature; h and dh hold `rows` rows of `hidden`.
            unsafe { launch.launch(grid(rows * self.hidden)) }?;
            backward(&stream, k, &self.order, &input, &self.dh, &mut self.grad)?;
        }
        self.step += 1;
        let (c1, c2) = self.adam.corrections(self.step);
        let n = layout.param_count() as u32;
        let adam = self.adam;
        let mut launch = stream.launch_builder(&k.adam);
        launch
            .arg(&mut self.params)
            .arg(&self.grad)
            .arg(&mut self.m)
            .arg(&mut self.v)
            .arg(&n)
            .arg(&adam.learning_rate)
            .arg(&adam.beta1)
            .arg(&adam.beta2)
            .arg(&adam.epsilon)
            .arg(&c1)
            .arg(&c2);
        // SAFETY: matches adam's signature; all four buffers hold `n` parameters.
        unsafe { launch.launch(grid(layout.param_count())) }?;
        Ok(())
    }
}

/// A dense layer applied to `rows` rows of `input`: through the epoch order from `offset`
/// (`gather`), or rows `offset..` of `input` as stored.
#[derive(Clone, Copy)]
struct Layer<'a> {
    input: &'a CudaSlice<f32>,
    gather: bool,
    offset: u32,
    rows: usize,
    ins: usize,
    w_off: usize,
    b_off: usize,
    outs: usize,
}

/// `out = act(input W + b)`: one `dense_forward` launch.
fn forward(
    stream: &CudaStream,
    kernels: &Kernels,
    order: &CudaSlice<u32>,
    params: &CudaSlice<f32>,
    layer: &Layer<'_>,
    relu: bool,
    out: &mut CudaSlice<f32>,
) -> Result<(), DriverError> {
    let (gather, relu) = (i32::from(layer.gather), i32::from(relu));
    let (rows, ins, outs) = (layer.rows as u32, layer.ins as u32, layer.outs as u32);
    let (w_off, b_off) = (layer.w_off as u32, layer.b_off as u32);
    let mut launch = stream.launch_builder(&kernels.dense_forward);
    launch
        .arg(layer.input)
        .arg(order)
        .arg(&layer.offset)
        .arg(&gather)
        .arg(&rows)
        .arg(&ins)
        .arg(params)
        .arg(&w_off)
        .arg(&b_off)
        .arg(&outs)
        .arg(&relu)
        .arg(out);
    // SAFETY: matches dense_forward's signature; `out` holds `rows x outs` and every row the
    // kernel reads exists in `input`.
    unsafe { launch.launch(grid(layer.rows * layer.outs)) }.map(drop)
}

/// The layer's weight and bias gradients from the gradient at its output: one `dense_backward`.
fn backward(
    stream: &CudaStream,
    kernels: &Kernels,
    order: &CudaSlice<u32>,
    layer: &Layer<'_>,
    upstream: &CudaSlice<f32>,
    grad: &mut CudaSlice<f32>,
) -> Result<(), DriverError> {
    let gather = i32::from(layer.gather);
    let (rows, ins, outs) = (layer.rows as u32, layer.ins as u32, layer.outs as u32);
    let (w_off, b_off) = (layer.w_off as u32, layer.b_off as u32);
    let mut launch = stream.launch_builder(&kernels.dense_backward);
    launch
        .arg(layer.input)
        .arg(order)
        .arg(&layer.offset)
        .arg(&gather)
        .arg(&rows)
        .arg(&ins)
        .arg(upstream)
        .arg(&outs)
        .arg(grad)
        .arg(&w_off)
        .arg(&b_off);
    // SAFETY: matches dense_backward's signature; `grad` holds the whole parameter vector.
    unsafe { launch.launch(grid((layer.ins + 1) * layer.outs)) }.map(drop)
}

impl Trainer for GpuTrainer {
    fn epoch(&mut self, order: &[u32]) -> Result<f64, String> {
        let stream = self.gpu.stream.clone();
        stream
            .memcpy_htod(order, &mut self.order)
            .map_err(failed("upload"))?;
        for offset in (0..order.len()).step_by(self.batch_size) {
            let rows = self.batch_size.min(order.len() - offset);
            self.batch(offset, rows).map_err(failed("training step"))?;
        }
        let losses = stream
            .clone_dtoh(&self.row_loss)
            .map_err(failed("download"))?;
        let total: f64 = losses[..order.len()]
            .iter()
            .map(|&loss| f64::from(loss))
            .sum();
        Ok(total / self.rows.max(1) as f64)
    }

    fn network(&mut self) -> Result<Network, String> {
        let params = self
            .gpu
            .stream
            .clone_dtoh(&self.params)
            .map_err(failed("download"))?;
        Ok(Network {
            inputs: self.inputs,
            hidden: self.hidden,
            classes: self.classes,
            params,
        })
    }

    fn predict(&mut self, x: &[f32], rows: usize) -> Result<Vec<f32>, String> {
        let stream = self.gpu.stream.clone();
        let k = &self.kernels;
        let layout = &self.layout;
        let run = failed("prediction");
        let chunk = 65_536usize;
        let mut out = Vec::with_capacity(rows * self.classes);
        let mut h = stream
            .alloc_zeros::<f32>((chunk * self.hidden).max(1))
            .map_err(&run)?;
        let mut z = stream
            .alloc_zeros::<f32>(chunk * self.classes)
            .map_err(&run)?;
        for start in (0..rows).step_by(chunk) {
            let n = chunk.min(rows - start);
            let xs = stream
                .clone_htod(&x[start * self.inputs..(start + n) * self.inputs])
                .map_err(&run)?;
            let input = Layer {
                input: &xs,
                gather: false,
                offset: 0,
                rows: n,
                ins: self.inputs,
                w_off: layout.w1.start,
                b_off: layout.b1.start,
                outs: self.hidden,
            };
            if self.hidden > 0 {
                forward(&stream, k, &self.order, &self.params, &input, true, &mut h)
                    .map_err(&run)?;
            }
            let output = Layer {
                input: if self.hidden > 0 { &h } else { &xs },
                ins: if self.hidden > 0 {
                    self.hidden
                } else {
                    self.inputs
                },
                w_off: layout.w2.start,
                b_off: layout.b2.start,
                outs: self.classes,
                ..input
            };
            forward(
                &stream,
                k,
                &self.order,
                &self.params,
                &output,
                false,
                &mut z,
            )
            .map_err(&run)?;
            let (n_u, classes) = (n as u32, self.classes as u32);
            let mut launch = stream.launch_builder(&k.softmax_rows);
            launch.arg(&mut z).arg(&n_u).arg(&classes);
            // SAFETY: matches softmax_rows' signature; z holds `chunk >= n` rows.
            unsafe { launch.launch(grid(n)) }.map_err(&run)?;
            let probabilities = stream.clone_dtoh(&z).map_err(&run)?;
            out.extend_from_slice(&probabilities[..n * self.classes]);
        }
        Ok(out)
    }
}
