"""Local response normalization, fast: tf.nn.lrn in one pass, or as a product.

The model's norm1 and norm2 (cifar10.inference) compute what tf.nn.lrn
computes, with the tutorial's settings, in float32 and bfloat16, and in
float32 for float16 models, whose range it would overflow
(tests/test_same_computation.py holds both ways to tf.nn.lrn):

- on a CPU, with lrn_kernel.cc, a kernel of this project's own that computes
  the normalization, and its gradient, in one pass each over the
  activations, on every core (compiled on first use: kernels.py);
- on a GPU, where it cannot be built, and inside
  kernels.tensorflow_ops_only() (a SavedModel that loads without this
  code), with TensorFlow's own ops: the windowed sum as a product with a
  band matrix.
"""

import numpy as np

from cifar10_support import kernels
from cifar10_support.quiet import tf


def _settings_of(kernel_op):
  """A Cifar10Lrn op's settings, as its gradient op takes them."""
  return {name: kernel_op.get_attr(name)
          for name in ('depth_radius', 'bias', 'alpha', 'beta')}


@tf.RegisterGradient('Cifar10Lrn')
def _fused_kernels_gradient(op, upstream):
  """Cifar10Lrn's gradient: Cifar10LrnGrad, with the same settings."""
  return kernels.library().cifar10_lrn_grad(upstream, op.inputs[0],
                                            **_settings_of(op))


def local_response_normalization(x, depth_radius, bias, alpha, beta, name):
  """tf.nn.lrn, computed faster: the same values to float rounding.

  Each output is x / (bias + alpha * sum of x**2 over the channels within
  depth_radius of its own) ** beta, as tf.nn.lrn defines it. TensorFlow's CPU
  kernels for LRN and its gradient run on one thread. On a CPU, the fused
  kernel (lrn_kernel.cc) computes each in one pass on every core. Otherwise
  the windowed sum of squares is a product with a band matrix, which oneDNN
  or the GPU multiplies on every core; elementwise ops cost more than their
  FLOPs, so there are few: alpha and the bias go into the product, and the
  gradient is written out (5 elementwise ops and one product, where
  differentiating op by op runs 13). Both are tf.nn.lrn's to float rounding
  (test_same_computation.py).

  Args:
    x: A 4-D [batch, height, width, channels] Tensor.
    depth_radius: Half-width of the window of channels.
    bias: Added to the weighted sum of squares.
    alpha: Weight of the sum of squares.
    beta: Exponent.
    name: Name of the result.

  Returns:
    A Tensor of the shape of `x`.
  """
  depth = x.get_shape()[-1]
  channel = np.arange(depth)
  window = np.abs(channel[:, None] - channel[None, :]) <= depth_radius

  def windowed_sum(values, weight, offset=None):
    """weight * the sum of `values` over each channel's window (+ offset),
    with no elementwise op: the weight is in the band matrix, and TensorFlow
    fuses the offset's bias_add into the multiply."""
    flat = tf.matmul(tf.reshape(values, [-1, depth]),
                     tf.constant(weight * window, dtype=values.dtype))
    if offset is not None:
      flat = tf.nn.bias_add(flat, tf.constant(offset, values.dtype, [depth]))
    return tf.reshape(flat, tf.shape(values))

  @tf.custom_gradient
  def normalize(x):
    denominator = windowed_sum(tf.square(x), alpha, offset=bias)
    if beta == 0.75:  # The tutorial's: two square roots beat a power.
      inverse_root = tf.math.rsqrt(denominator)
      scale = inverse_root * tf.sqrt(inverse_root)
    else:
      scale = tf.pow(denominator, -beta)
    normalized = x * scale

    def gradient(upstream):
      # d normalized_i / d x_j = scale_i [i == j] - 2 alpha beta x_i x_j
      # scale_i / denominator_i [j in the window of i]; the window is
      # symmetric.
      through_denominator = windowed_sum(upstream * normalized / denominator,
                                         2.0 * alpha * beta)
      return upstream * scale - x * through_denominator

    return normalized, gradient

  def normalize_here(x):
    kernel = kernels.for_ops_on(x)
    if kernel is None:
      return normalize(x)
    return kernel.cifar10_lrn(x, depth_radius=depth_radius, bias=bias,
                              alpha=alpha, beta=beta)

  with tf.name_scope(name + '_terms'):
    if x.dtype.base_dtype == tf.float16:
      # float16's range ends at 65504: the square of an activation above 256
      # would be infinite (and inf x 0 in the band product NaN), 1 + alpha
      # times the sum near its rounding step, and the gradient's 2 alpha
      # beta (1e-4) x ... below its smallest numbers. So in float32, as
      # TensorFlow's GPU kernels compute it; the result is float16 again.
      # (bfloat16 has float32's range: it stays bfloat16, for speed.)
      normalized = tf.cast(normalize_here(tf.cast(x, tf.float32)),
                           tf.float16)
    else:
      normalized = normalize_here(x)
  return tf.identity(normalized, name=name)


def gradient_through_relu(x, normalized, upstream):
  """The gradient of local_response_normalization's `normalized` (of `x`,
  given `upstream`), on through the relu whose output `x` is: for a caller
  whose own gradient goes past that relu (cifar10's norm2; and norm1, whose
  input, pool1's maxima of relu's outputs, is relu's output too).

  Where the fused kernel normalized x, its gradient applies relu's in its
  own pass (0 where x is not positive): a pass over the activations fewer
  than relu's gradient after it. Otherwise, TensorFlow's gradient of the
  normalization, then relu's.

  Args:
    x: The normalization's input, relu's output.
    normalized: local_response_normalization(x, ...).
    upstream: The gradient of the loss with respect to `normalized`.

  Returns:
    The gradient with respect to relu's input, of the shape of `x`.
  """
  kernel_op = normalized.op.inputs[0].op  # normalized is its identity.
  if kernel_op.type == 'Cifar10Lrn':
    return kernels.library().cifar10_lrn_grad(upstream, x, through_relu=True,
                                              **_settings_of(kernel_op))
  through_normalization, = tf.gradients(normalized, x, grad_ys=upstream)
  return tf.raw_ops.ReluGrad(gradients=through_normalization, features=x)
