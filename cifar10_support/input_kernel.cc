// The training images' distortions, each in one pass over the images, on a
// CPU: what cifar10_input.py computes with TensorFlow's ops in several.
//
// Cifar10CropAndFlip: from images in the records' layout, a plane of each
// channel ([n, depth, height, width], uint8), a size x size window of each at
// its offsets (first row, first column), flipped left to right where flips
// says, in the model's layout ([n, size, size, depth]): the transpose, the
// crop and the flip at once.
//
// Cifar10AdjustContrastAndStandardize: each image ([n, height, width,
// depth], uint8) with its contrast changed by its factor about each
// channel's mean (tf.image.adjust_contrast), then standardised
// (tf.image.per_image_standardization: minus the image's mean, over its
// standard deviation, or over 1 / sqrt(its number of values) if that is
// larger), in float32. The image's moments come from each channel's sums of
// its values and of their squares, which are exact in integers; the values
// are computed in double and rounded once.
//
// Built and loaded with lrn_kernel.cc, by kernels.py; there are no GPU
// kernels: the input pipeline runs on the CPU.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/util/work_sharder.h"

namespace tensorflow {
namespace {

REGISTER_OP("Cifar10CropAndFlip")
    .Input("depth_major: uint8")
    .Input("offsets: int32")
    .Input("flips: bool")
    .Output("crops: uint8")
    .Attr("size: int >= 1")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle images, offsets, flips;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &images));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &offsets));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &flips));
      int size;
      TF_RETURN_IF_ERROR(c->GetAttr("size", &size));
      c->set_output(0, c->MakeShape({c->Dim(images, 0), size, size,
                                     c->Dim(images, 1)}));
      return absl::OkStatus();
    });

REGISTER_OP("Cifar10AdjustContrastAndStandardize")
    .Input("images: uint8")
    .Input("contrast_factors: float")
    .Output("standardized: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle images, factors;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &images));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &factors));
      c->set_output(0, images);
      return absl::OkStatus();
    });

// Shards images over the CPU's threads, `cost` operations each.
template <typename Work>
void ForEachImage(OpKernelContext* context, int64_t images, int64_t cost,
                  Work work) {
  const auto* workers = context->device()->tensorflow_cpu_worker_threads();
  Shard(workers->num_threads, workers->workers, images, cost,
        [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) work(i);
        });
}

class CropAndFlipOp : public OpKernel {
 public:
  explicit CropAndFlipOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("size", &size_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& images = context->input(0);
    const Tensor& offsets = context->input(1);
    const Tensor& flips = context->input(2);
    OP_REQUIRES(context, images.dims() == 4,
                errors::InvalidArgument(
                    "Crops take images [n, depth, height, width], got ",
                    images.shape().DebugString()));
    const int64_t n = images.dim_size(0), depth = images.dim_size(1),
                  height = images.dim_size(2), width = images.dim_size(3);
    OP_REQUIRES(context, size_ <= height && size_ <= width,
                errors::InvalidArgument("Crops of ", size_, "x", size_,
                                        " from images of ", height, "x",
                                        width));
    OP_REQUIRES(context,
                offsets.shape() == TensorShape({n, 2}) &&
                    flips.shape() == TensorShape({n}),
                errors::InvalidArgument(
                    "Crops of ", n, " images take offsets [", n,
                    ", 2] and flips [", n, "], got ",
                    offsets.shape().DebugString(), " and ",
                    flips.shape().DebugString()));
    const int32_t* offset = offsets.flat<int32_t>().data();
    for (int64_t i = 0; i < n; ++i) {
      const int32_t row = offset[2 * i], column = offset[2 * i + 1];
      OP_REQUIRES(context,
                  row >= 0 && row <= height - size_ && column >= 0 &&
                      column <= width - size_,
                  errors::InvalidArgument(
                      "Image ", i, "'s ", size_, "x", size_, " crop at row ",
                      row, ", column ", column, " leaves its ", height, "x",
                      width, " pixels (rows from 0 to ", height - size_,
                      ", columns from 0 to ", width - size_, ")"));
    }
    Tensor* crops = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(
                                0, TensorShape({n, size_, size_, depth}),
                                &crops));
    const uint8_t* in = images.flat<uint8_t>().data();
    const bool* flip = flips.flat<bool>().data();
    uint8_t* out = crops->flat<uint8_t>().data();
    const int64_t size = size_;
    ForEachImage(context, n, size * size * depth * 4, [&](int64_t i) {
      const uint8_t* image = in + i * depth * height * width;
      uint8_t* crop = out + i * size * size * depth;
      for (int64_t c = 0; c < depth; ++c) {
        for (int64_t y = 0; y < size; ++y) {
          const uint8_t* source =
              image + (c * height + offset[2 * i] + y) * width +
              offset[2 * i + 1];
          uint8_t* target = crop + y * size * depth + c;
          if (flip[i]) {
            for (int64_t x = 0; x < size; ++x)
              target[x * depth] = source[size - 1 - x];
          } else {
            for (int64_t x = 0; x < size; ++x) target[x * depth] = source[x];
          }
        }
      }
    });
  }

 private:
  int size_;
};

class AdjustContrastAndStandardizeOp : public OpKernel {
 public:
  using OpKernel::OpKernel;

  void Compute(OpKernelContext* context) override {
    const Tensor& images = context->input(0);
    const Tensor& factors = context->input(1);
    OP_REQUIRES(context, images.dims() == 4,
                errors::InvalidArgument(
                    "Standardisation takes images [n, height, width, depth], "
                    "got ", images.shape().DebugString()));
    const int64_t n = images.dim_size(0), depth = images.dim_size(3),
                  pixels = images.dim_size(1) * images.dim_size(2);
    OP_REQUIRES(context, factors.shape() == TensorShape({n}),
                errors::InvalidArgument(
                    "Contrast factors of ", n, " images are [", n, "], got ",
                    factors.shape().DebugString()));
    Tensor* standardized = nullptr;
    OP_REQUIRES_OK(context,
                   context->allocate_output(0, images.shape(), &standardized));
    const int64_t values = pixels * depth;
    if (values == 0) return;
    const uint8_t* in = images.flat<uint8_t>().data();
    const float* factor = factors.flat<float>().data();
    float* out = standardized->flat<float>().data();
    ForEachImage(context, n, values * 6, [&](int64_t i) {
      const uint8_t* image = in + i * values;
      std::vector<int64_t> sums(depth, 0), squares(depth, 0);
      for (int64_t p = 0; p < pixels; ++p) {
        for (int64_t c = 0; c < depth; ++c) {
          const int64_t value = image[p * depth + c];
          sums[c] += value;
          squares[c] += value * value;
        }
      }
      // With contrast k, each value v of channel c becomes
      // (v - mean_c) k + mean_c: its mean is mean_c, its variance k^2 that
      // of c, so the image's variance is the mean over channels of
      // k^2 variance_c + (mean_c - mean)^2.
      const double k = factor[i];
      double mean = 0;
      for (int64_t c = 0; c < depth; ++c) mean += sums[c];
      mean /= values;
      double variance = 0;
      std::vector<double> channel_means(depth);
      for (int64_t c = 0; c < depth; ++c) {
        const double mean_c = static_cast<double>(sums[c]) / pixels;
        const double variance_c =
            std::max(0.0, static_cast<double>(squares[c]) / pixels -
                              mean_c * mean_c);
        variance += k * k * variance_c + (mean_c - mean) * (mean_c - mean);
        channel_means[c] = mean_c;
      }
      variance /= depth;
      const double deviation = std::max(
          std::sqrt(variance), 1.0 / std::sqrt(static_cast<double>(values)));
      // standardized = v k / deviation + (mean_c (1 - k) - mean) / deviation
      std::vector<double> offsets(depth);
      for (int64_t c = 0; c < depth; ++c)
        offsets[c] = (channel_means[c] * (1 - k) - mean) / deviation;
      const double scale = k / deviation;
      float* result = out + i * values;
      for (int64_t p = 0; p < pixels; ++p) {
        for (int64_t c = 0; c < depth; ++c) {
          result[p * depth + c] = static_cast<float>(
              image[p * depth + c] * scale + offsets[c]);
        }
      }
    });
  }
};

REGISTER_KERNEL_BUILDER(Name("Cifar10CropAndFlip").Device(DEVICE_CPU),
                        CropAndFlipOp);
REGISTER_KERNEL_BUILDER(
    Name("Cifar10AdjustContrastAndStandardize").Device(DEVICE_CPU),
    AdjustContrastAndStandardizeOp);

}  // namespace
}  // namespace tensorflow
