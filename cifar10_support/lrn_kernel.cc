// Local response normalization and its gradient, each in one pass over the
// activations, on a CPU: what cifar10_support/lrn.py computes with
// TensorFlow's ops in 5 elementwise passes and a band product each way.
//
// For each pixel's channels x[0..depth):
//   denominator[c] = bias + alpha * sum of x[j]^2, |j - c| <= depth_radius
//   normalized[c]  = x[c] * denominator[c]^-beta
// and, given upstream (d loss / d normalized),
//   gradient[c] = upstream[c] * denominator[c]^-beta
//                 - 2 alpha beta x[c] * sum over j in c's window of
//                   upstream[j] * normalized[j] / denominator[j]
// (the window is symmetric). The gradient computes the denominators again
// from x, so that nothing is kept between the passes but x itself. With
// through_relu, x is a relu's output and the gradient goes on through relu's
// in the same pass: 0 where x is not positive.
//
// float32 and bfloat16; bfloat16 is computed in float32 and rounded once.
// Built and loaded with input_kernel.cc, by kernels.py; there are no GPU
// kernels: on a GPU the model uses TensorFlow's ops (lrn.py).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/util/work_sharder.h"

namespace tensorflow {
namespace {

// The settings of both ops, as tf.nn.lrn names them.
#define LRN_SETTINGS                  \
  Attr("T: {float, bfloat16}")        \
      .Attr("depth_radius: int >= 0") \
      .Attr("bias: float")            \
      .Attr("alpha: float")           \
      .Attr("beta: float")

REGISTER_OP("Cifar10Lrn")
    .Input("x: T")
    .Output("normalized: T")
    .LRN_SETTINGS
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      c->set_output(0, x);
      return absl::OkStatus();
    });

REGISTER_OP("Cifar10LrnGrad")
    .Input("upstream: T")
    .Input("x: T")
    .Output("gradient: T")
    .LRN_SETTINGS
    .Attr("through_relu: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &x));
      TF_RETURN_IF_ERROR(c->Merge(x, c->input(0), &x));
      c->set_output(0, x);
      return absl::OkStatus();
    });

// The passes are compiled three times, for x86-64 CPUs with AVX-512, with
// AVX2 and FMA, and for any, and the one the CPU can run is chosen as the
// library loads (GCC's target_clones): one library for every machine, wide
// vectors where there are (on an Intel Xeon with AVX-512, 5-16% faster
// than with SSE2 alone).
#if defined(__x86_64__) && defined(__GNUC__) && __GNUC__ >= 11 && \
    !defined(__clang__) && defined(__GLIBC__)
#define FOR_EACH_X86_LEVEL \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FOR_EACH_X86_LEVEL
#endif

struct Settings {
  int radius;
  float bias, alpha, beta;
  // The gradient's: x is relu's output, and the gradient goes on through
  // relu's (0 where x is not positive), in the same pass.
  bool through_relu = false;
};

// Per pixel: window[radius + c] holds a value of channel c (the radius
// entries on each side stay 0); out[c] = the sum over c's window. With the
// depth and radius known when compiled (kDepth and kRadius, the model's 64
// and 4), each sum is added up in a register; otherwise (kDepth 0) in a pass
// over the channels per offset.
template <int kDepth, int kRadius>
__attribute__((always_inline)) inline void WindowSums(
    const float* __restrict window, int depth, int radius,
    float* __restrict out) {
  if (kDepth) {
    for (int c = 0; c < kDepth; ++c) {
      float sum = 0.f;
      for (int k = 0; k <= 2 * kRadius; ++k) sum += window[c + k];
      out[c] = sum;
    }
    return;
  }
  for (int c = 0; c < depth; ++c) out[c] = window[c];
  for (int k = 1; k <= 2 * radius; ++k)
    for (int c = 0; c < depth; ++c) out[c] += window[c + k];
}

// sums[c] becomes denominator[c]^-beta, and inverse[c] 1 / denominator[c].
__attribute__((always_inline)) inline void Scales(
    const Settings& s, int depth, float* __restrict sums,
    float* __restrict inverse) {
  if (s.beta == 0.75f) {  // The tutorial's: two square roots beat a power.
    for (int c = 0; c < depth; ++c) {
      float inverse_root = 1.f / std::sqrt(s.bias + s.alpha * sums[c]);
      sums[c] = inverse_root * std::sqrt(inverse_root);
      inverse[c] = inverse_root * inverse_root;
    }
  } else {
    for (int c = 0; c < depth; ++c) {
      float denominator = s.bias + s.alpha * sums[c];
      sums[c] = std::pow(denominator, -s.beta);
      inverse[c] = 1.f / denominator;
    }
  }
}

// The passes go a block of kBlock pixels at a time: all the block's windows
// are written before any is summed, for a sum that reads a window just
// written waits for the write to reach the cache (per LRN, 0.3 ms of 1.0
// forward, on an Intel Xeon with AVX-512).
constexpr int64_t kBlock = 16;

// The buffers of one thread: the windows of a block's pixels (each depth +
// 2 radius long), the scales and inverses of their channels.
struct Scratch {
  Scratch(int depth, int radius)
      : stride(depth + 2 * radius),
        window(kBlock * stride, 0.f),
        scale(kBlock * depth),
        inverse(kBlock * depth) {}
  const int stride;
  std::vector<float> window, scale, inverse;
};

// The squares of the channels of a block's n pixels (x, n * depth values)
// into their windows (window[p * stride + c], the first past each window's
// leading zeros).
template <int kDepth>
__attribute__((always_inline)) inline void SquaresIntoWindows(
    const float* __restrict x, int64_t n, int depth, int stride,
    float* __restrict window) {
  if (kDepth) depth = kDepth;
  for (int64_t p = 0; p < n; ++p)
    for (int c = 0; c < depth; ++c)
      window[p * stride + c] = x[p * depth + c] * x[p * depth + c];
}

// Normalize and Gradient, for a depth and radius known when compiled, or
// (kDepth 0) not.
template <int kDepth, int kRadius>
__attribute__((always_inline)) inline void NormalizeBlocks(
    const Settings& s, const float* __restrict x, int64_t pixels, int depth,
    Scratch* scratch, float* __restrict normalized) {
  if (kDepth) depth = kDepth;
  const int radius = kDepth ? kRadius : s.radius;
  const int stride = scratch->stride;
  float* window = scratch->window.data() + radius;
  float* scale = scratch->scale.data();
  for (int64_t first = 0; first < pixels; first += kBlock) {
    const int64_t n = std::min(kBlock, pixels - first);
    const float* xs = x + first * depth;
    float* outs = normalized + first * depth;
    SquaresIntoWindows<kDepth>(xs, n, depth, stride, window);
    for (int64_t p = 0; p < n; ++p) {
      WindowSums<kDepth, kRadius>(window - radius + p * stride, depth, radius,
                                  scale);
      Scales(s, depth, scale, scratch->inverse.data());
      for (int c = 0; c < depth; ++c)
        outs[p * depth + c] = xs[p * depth + c] * scale[c];
    }
  }
}

template <int kDepth, int kRadius>
__attribute__((always_inline)) inline void GradientBlocks(
    const Settings& s, const float* __restrict upstream,
    const float* __restrict x, int64_t pixels, int depth, Scratch* scratch,
    float* __restrict gradient) {
  if (kDepth) depth = kDepth;
  const int radius = kDepth ? kRadius : s.radius;
  const int stride = scratch->stride;
  float* window = scratch->window.data() + radius;
  float* scale = scratch->scale.data();
  float* inverse = scratch->inverse.data();
  const float weight = 2.f * s.alpha * s.beta;
  for (int64_t first = 0; first < pixels; first += kBlock) {
    const int64_t n = std::min(kBlock, pixels - first), size = n * depth;
    const float* ups = upstream + first * depth;
    const float* xs = x + first * depth;
    float* outs = gradient + first * depth;
    SquaresIntoWindows<kDepth>(xs, n, depth, stride, window);
    for (int64_t p = 0; p < n; ++p) {
      WindowSums<kDepth, kRadius>(window - radius + p * stride, depth, radius,
                                  scale + p * depth);
      Scales(s, depth, scale + p * depth, inverse + p * depth);
    }
    // upstream * normalized / denominator, summed over the windows.
    for (int64_t p = 0; p < n; ++p)
      for (int c = 0; c < depth; ++c) {
        const int64_t i = p * depth + c;
        window[p * stride + c] = ups[i] * xs[i] * scale[i] * inverse[i];
      }
    for (int64_t p = 0; p < n; ++p)
      WindowSums<kDepth, kRadius>(window - radius + p * stride, depth, radius,
                                  outs + p * depth);
    for (int64_t i = 0; i < size; ++i) {
      const float through_lrn = ups[i] * scale[i] - weight * xs[i] * outs[i];
      outs[i] = !s.through_relu || xs[i] > 0.f ? through_lrn : 0.f;
    }
  }
}

FOR_EACH_X86_LEVEL void Normalize(const Settings& s,
                                  const float* __restrict x, int64_t pixels,
                                  int depth, Scratch* scratch,
                                  float* __restrict normalized) {
  if (depth == 64 && s.radius == 4) {
    NormalizeBlocks<64, 4>(s, x, pixels, depth, scratch, normalized);
  } else {
    NormalizeBlocks<0, 0>(s, x, pixels, depth, scratch, normalized);
  }
}

FOR_EACH_X86_LEVEL void Gradient(const Settings& s,
                                 const float* __restrict upstream,
                                 const float* __restrict x, int64_t pixels,
                                 int depth, Scratch* scratch,
                                 float* __restrict gradient) {
  if (depth == 64 && s.radius == 4) {
    GradientBlocks<64, 4>(s, upstream, x, pixels, depth, scratch, gradient);
  } else {
    GradientBlocks<0, 0>(s, upstream, x, pixels, depth, scratch, gradient);
  }
}

FOR_EACH_X86_LEVEL void BFloat16ToFloat(const uint16_t* __restrict in,
                                        int64_t n, float* __restrict out) {
  uint32_t* bits = reinterpret_cast<uint32_t*>(out);
  for (int64_t i = 0; i < n; ++i) bits[i] = static_cast<uint32_t>(in[i]) << 16;
}

// Rounds to nearest, ties to even, as Eigen::bfloat16 does; a NaN stays a
// (quiet) NaN.
FOR_EACH_X86_LEVEL void FloatToBFloat16(const float* __restrict in,
                                        int64_t n, uint16_t* __restrict out) {
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(in);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = bits[i];
    const bool nan = (b & 0x7FFFFFFFu) > 0x7F800000u;
    const uint32_t rounded = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
    out[i] = static_cast<uint16_t>(nan ? (b >> 16) | 0x40u : rounded);
  }
}

// Cifar10Lrn (one input) and Cifar10LrnGrad (upstream, x).
template <typename T>
class LrnOp : public OpKernel {
 public:
  explicit LrnOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context,
                   context->GetAttr("depth_radius", &settings_.radius));
    OP_REQUIRES_OK(context, context->GetAttr("bias", &settings_.bias));
    OP_REQUIRES_OK(context, context->GetAttr("alpha", &settings_.alpha));
    OP_REQUIRES_OK(context, context->GetAttr("beta", &settings_.beta));
    if (context->num_inputs() == 2) {
      OP_REQUIRES_OK(context, context->GetAttr("through_relu",
                                               &settings_.through_relu));
    }
  }

  void Compute(OpKernelContext* context) override {
    const bool gradient = context->num_inputs() == 2;
    const Tensor& x = context->input(gradient ? 1 : 0);
    OP_REQUIRES(context, x.dims() == 4,
                errors::InvalidArgument("LRN takes 4-D activations, got ",
                                        x.shape().DebugString()));
    OP_REQUIRES(context,
                !gradient || context->input(0).shape() == x.shape(),
                errors::InvalidArgument("LRN's gradient: upstream ",
                                        context->input(0).shape().DebugString(),
                                        " and activations ",
                                        x.shape().DebugString(), " differ"));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &out));
    const int depth = static_cast<int>(x.dim_size(3));
    if (x.NumElements() == 0) return;
    const int64_t pixels = x.NumElements() / depth;
    const T* x_data = x.flat<T>().data();
    const T* upstream_data =
        gradient ? context->input(0).flat<T>().data() : nullptr;
    T* out_data = out->flat<T>().data();
    const Settings s = settings_;

    auto work = [&](int64_t begin, int64_t end) {
      Scratch scratch(depth, s.radius);
      if (std::is_same<T, float>::value) {
        const int64_t first = begin * depth;
        const float* xf = reinterpret_cast<const float*>(x_data) + first;
        float* outf = reinterpret_cast<float*>(out_data) + first;
        if (gradient) {
          Gradient(s, reinterpret_cast<const float*>(upstream_data) + first,
                   xf, end - begin, depth, &scratch, outf);
        } else {
          Normalize(s, xf, end - begin, depth, &scratch, outf);
        }
        return;
      }
      // bfloat16: a block of pixels at a time in float32.
      std::vector<float> xs(kBlock * depth), upstreams, outs(kBlock * depth);
      if (gradient) upstreams.resize(kBlock * depth);
      const uint16_t* x16 = reinterpret_cast<const uint16_t*>(x_data);
      const uint16_t* up16 = reinterpret_cast<const uint16_t*>(upstream_data);
      uint16_t* out16 = reinterpret_cast<uint16_t*>(out_data);
      for (int64_t p = begin; p < end; p += kBlock) {
        const int64_t n = std::min(kBlock, end - p), first = p * depth;
        BFloat16ToFloat(x16 + first, n * depth, xs.data());
        if (gradient) {
          BFloat16ToFloat(up16 + first, n * depth, upstreams.data());
          Gradient(s, upstreams.data(), xs.data(), n, depth, &scratch,
                   outs.data());
        } else {
          Normalize(s, xs.data(), n, depth, &scratch, outs.data());
        }
        FloatToBFloat16(outs.data(), n * depth, out16 + first);
      }
    };
    // Cost per pixel, in the units Shard splits by: about 20 operations a
    // value forward, twice that for the gradient.
    const auto* workers = context->device()->tensorflow_cpu_worker_threads();
    Shard(workers->num_threads, workers->workers, pixels,
          (gradient ? 40 : 20) * depth * (2 * s.radius + 1) / 9, work);
  }

 private:
  Settings settings_;
};

#define REGISTER_LRN(T)                                                    \
  REGISTER_KERNEL_BUILDER(                                                 \
      Name("Cifar10Lrn").Device(DEVICE_CPU).TypeConstraint<T>("T"),        \
      LrnOp<T>);                                                           \
  REGISTER_KERNEL_BUILDER(                                                 \
      Name("Cifar10LrnGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),    \
      LrnOp<T>);

REGISTER_LRN(float)
REGISTER_LRN(Eigen::bfloat16)

}  // namespace
}  // namespace tensorflow
