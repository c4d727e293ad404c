// Training kernels for the `mlp` and `softmax` models of the `train` stage, compiled at run time
// by NVRTC for the device's architecture and launched through cudarc (src/gpu/trainer.rs).
//
// They mirror the CPU trainer in src/train/network.rs step for step: the same flat parameter
// layout [W1 (ins x hidden), b1, W2 (fan_in x classes), b2], row-major; the same minibatch order
// (the host uploads each epoch's permutation); the mean weighted softmax cross-entropy; the same
// Adam rule with the host's bias corrections. No atomics: every sum runs in a fixed order, so
// a run is repeatable.
//
// A minibatch of `rows` rows starts at position `offset` of the epoch order. Kernels that read
// the training matrix go through `order` (gather = 1); kernels that read a batch-local buffer,
// or rows in storage order (prediction), do not (gather = 0, then row = offset + r).

__device__ __forceinline__ unsigned row_of(const unsigned* order, unsigned offset, int gather, unsigned r)
{
    return gather ? order[offset + r] : offset + r;
}

// out[r, o] = act(sum_i a[row(r), i] * W[i, o] + b[o]), W and b at w_off and b_off in params.
// One thread per output element; act is ReLU when relu != 0.
extern "C" __global__ void dense_forward(
    const float* a, const unsigned* order, unsigned offset, int gather,
    unsigned rows, unsigned ins,
    const float* params, unsigned w_off, unsigned b_off, unsigned outs,
    int relu, float* out)
{
    unsigned idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= rows * outs) {
        return;
    }
    unsigned r = idx / outs;
    unsigned o = idx - r * outs;
    const float* x = a + (size_t)row_of(order, offset, gather, r) * ins;
    const float* w = params + w_off;
    float acc = 0.0f;
    for (unsigned i = 0; i < ins; ++i) {
        acc += x[i] * w[(size_t)i * outs + o];
    }
    acc += params[b_off + o];
    out[idx] = relu ? fmaxf(acc, 0.0f) : acc;
}

// Softmax of one row in place; returns the log-partition max + log(sum(exp(z - max))).
__device__ float softmax_row(float* zr, unsigned classes)
{
    float mx = -3.402823466e38f; // -FLT_MAX: NVRTC has no <math.h>
    for (unsigned c = 0; c < classes; ++c) {
        mx = fmaxf(mx, zr[c]);
    }
    float sum = 0.0f;
    for (unsigned c = 0; c < classes; ++c) {
        float e = expf(zr[c] - mx);
        zr[c] = e;
        sum += e;
    }
    for (unsigned c = 0; c < classes; ++c) {
        zr[c] /= sum;
    }
    return mx + logf(sum);
}

// One thread per batch row: turns the logits z[r, :] into dL/dz for the mean weighted
// cross-entropy, w * (softmax(z) - onehot(y)) / rows, and records the row's weighted loss at its
// position in the epoch order.
extern "C" __global__ void softmax_xent(
    float* z, unsigned rows, unsigned classes,
    const unsigned char* labels, const float* weights,
    const unsigned* order, unsigned offset, float* row_loss)
{
    unsigned r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) {
        return;
    }
    unsigned row = order[offset + r];
    float* zr = z + (size_t)r * classes;
    unsigned label = labels[row];
    float weight = weights[row];
    float label_logit = zr[label];
    float log_partition = softmax_row(zr, classes);
    row_loss[offset + r] = weight * -(label_logit - log_partition);
    float scale = 1.0f / (float)rows;
    for (unsigned c = 0; c < classes; ++c) {
        float target = c == label ? 1.0f : 0.0f;
        zr[c] = weight * (zr[c] - target) * scale;
    }
}

// The weight and bias gradients of a dense layer: gW[i, o] = sum_r a[row(r), i] * d[r, o] and
// gb[o] = sum_r d[r, o], written at w_off and b_off in grad. One thread per (i, o) and one per
// bias, each summing over the batch in row order.
extern "C" __global__ void dense_backward(
    const float* a, const unsigned* order, unsigned offset, int gather,
    unsigned rows, unsigned ins,
    const float* d, unsigned outs,
    float* grad, unsigned w_off, unsigned b_off)
{
    unsigned idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (ins + 1) * outs) {
        return;
    }
    unsigned i = idx / outs;
    unsigned o = idx - i * outs;
    float acc = 0.0f;
    if (i == ins) {
        for (unsigned r = 0; r < rows; ++r) {
            acc += d[(size_t)r * outs + o];
        }
        grad[b_off + o] = acc;
    } else {
        for (unsigned r = 0; r < rows; ++r) {
            acc += a[(size_t)row_of(order, offset, gather, r) * ins + i] * d[(size_t)r * outs + o];
        }
        grad[w_off + (size_t)i * outs + o] = acc;
    }
}

// Back through the output layer and the ReLU: dh[r, j] = sum_c dz[r, c] * W2[j, c] where the
// hidden unit was active (h > 0), else 0.
extern "C" __global__ void relu_backward(
    const float* dz, const float* params, unsigned w2_off,
    const float* h, unsigned rows, unsigned hidden, unsigned classes, float* dh)
{
    unsigned idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= rows * hidden) {
        return;
    }
    unsigned r = idx / hidden;
    unsigned j = idx - r * hidden;
    float acc = 0.0f;
    for (unsigned c = 0; c < classes; ++c) {
        acc += dz[(size_t)r * classes + c] * params[w2_off + (size_t)j * classes + c];
    }
    dh[idx] = h[idx] > 0.0f ? acc : 0.0f;
}

// Adam over the flat parameter vector; c1 and c2 are the host's bias corrections 1 - beta^t.
extern "C" __global__ void adam(
    float* p, const float* g, float* m, float* v, unsigned n,
    float lr, float beta1, float beta2, float eps, float c1, float c2)
{
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    float gi = g[i];
    float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= lr * (mi / c1) / (sqrtf(vi / c2) + eps);
}

// Softmax of each row of z in place (prediction).
extern "C" __global__ void softmax_rows(float* z, unsigned rows, unsigned classes)
{
    unsigned r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r < rows) {
        softmax_row(z + (size_t)r * classes, classes);
    }
}
