// The smoke kernel: run once on a device before it is trusted with training (`device: auto`,
// `asterflow doctor`). It proves that NVRTC compiled for the device's own architecture, that the
// driver loaded the module and that a launch computes what the CPU computes:
// out[i] = a * x[i] + y[i], exact in f32 for the small integers the host sends.
extern "C" __global__ void smoke(const float* x, const float* y, float a, float* out, unsigned n)
{
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        out[i] = a * x[i] + y[i];
    }
}
