"""Local response normalization, fast: tf.nn.lrn in one pass, or as a product.

The model's norm1 and norm2 (cifar10.inference) compute what tf.nn.lrn
computes, with the tutorial's settings, in float32 and bfloat16, and in
float32 for float16 models, whose range it would overflow
(tests/test_same_computation.py holds both ways to tf.nn.lrn):

- on a CPU, with lrn_kernel.cc, a kernel of this project's own that computes
  the normalization, and its gradient, in one pass each over the
  activations, on every core. It is compiled on first use with the C++
  compiler ($CXX, g++ by default) and TensorFlow's headers, and kept in
  ~/.cache/cifar10 ($XDG_CACHE_HOME/cifar10) for the next runs;
- on a GPU, where it cannot be built, and inside tensorflow_ops_only() (a
  SavedModel that loads without this code), with TensorFlow's own ops: the
  windowed sum as a product with a band matrix.
"""

import contextlib
import functools
import hashlib
import os
import subprocess
import tempfile

from absl import logging
import numpy as np

from cifar10_support import devices
from cifar10_support.quiet import tf

KERNEL_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             'lrn_kernel.cc')
# -fno-math-errno lets the compiler vectorise the square roots. No
# -march=native: the library may be shared by machines of other kinds.
_KERNEL_FLAGS = ['-shared', '-fPIC', '-O3', '-fno-math-errno',
                 '-fno-trapping-math', '-w']
_tensorflow_ops_only = False


def kernel_cache_dir():
  """Where the compiled kernel is kept: $XDG_CACHE_HOME/cifar10, or
  ~/.cache/cifar10."""
  cache_home = (os.environ.get('XDG_CACHE_HOME') or
                os.path.join(os.path.expanduser('~'), '.cache'))
  return os.path.join(cache_home, 'cifar10')


def kernel_compiler():
  """The C++ compiler that builds the kernel: $CXX, or g++."""
  return os.environ.get('CXX') or 'g++'


def _kernel_flags():
  """The compiler's flags: (before the source, after it)."""
  return (_KERNEL_FLAGS + tf.sysconfig.get_compile_flags(),
          tf.sysconfig.get_link_flags())


def kernel_library(compiler_version):
  """The compiled kernel's file in kernel_cache_dir(): one for each source,
  flags, version of TensorFlow and compiler (`compiler_version`, what it
  says to --version)."""
  with open(KERNEL_SOURCE, 'rb') as f:
    source = f.read()
  key = hashlib.sha256(repr((source, _kernel_flags(), compiler_version,
                             tf.__version__)).encode()).hexdigest()[:16]
  return os.path.join(kernel_cache_dir(), 'lrn_kernel-%s.so' % key)


@functools.lru_cache(maxsize=None)
def fused_kernel():
  """The ops of lrn_kernel.cc (cifar10_lrn, cifar10_lrn_grad), or None.

  Compiled the first time (about 5 seconds), once for each source, version of
  TensorFlow and compiler, into kernel_cache_dir(); loaded once a process.
  Where it cannot be built (no C++ compiler, a cache folder it cannot write,
  a compiler's error), says why, once, and returns None: the model then uses
  TensorFlow's ops, the same values a little slower.
  """
  compiler = kernel_compiler()
  try:
    version = subprocess.run([compiler, '--version'], capture_output=True,
                             text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError) as e:
    logging.warning('LRN: no C++ compiler (%s: %s); using TensorFlow\'s ops '
                    '(slower on a CPU; set CXX to a compiler to build the '
                    'fused kernel).', compiler, e)
    return None
  flags = _kernel_flags()
  library = kernel_library(version)
  if not os.path.exists(library):
    logging.info('LRN: compiling the fused CPU kernel (once, a few seconds): '
                 '%s', library)
    try:
      os.makedirs(kernel_cache_dir(), exist_ok=True)
      # Compiled beside its place, then moved there in one step: processes
      # that build it at once never load half a file.
      handle, building = tempfile.mkstemp(suffix='.so',
                                          dir=kernel_cache_dir())
      os.close(handle)
      try:
        subprocess.run([compiler] + flags[0] + [KERNEL_SOURCE, '-o', building]
                       + flags[1], capture_output=True, text=True, check=True)
        os.replace(building, library)
      finally:
        if os.path.exists(building):
          os.remove(building)
    except OSError as e:
      logging.warning('LRN: cannot build the fused kernel in %s (%s); using '
                      'TensorFlow\'s ops (slower on a CPU).',
                      kernel_cache_dir(), e)
      return None
    except subprocess.CalledProcessError as e:
      logging.warning('LRN: %s could not compile %s; using TensorFlow\'s ops '
                      '(slower on a CPU). Its last lines:\n%s', compiler,
                      KERNEL_SOURCE, '\n'.join(e.stderr.splitlines()[-5:]))
      return None
  try:
    return tf.load_op_library(library)
  except tf.errors.OpError as e:  # Damaged, or built for another system.
    logging.warning('LRN: cannot load %s (%s); using TensorFlow\'s ops '
                    '(slower on a CPU). Remove it to build it again.',
                    library, e.message)
    return None


@tf.RegisterGradient('Cifar10Lrn')
def _fused_kernels_gradient(op, upstream):
  """Cifar10Lrn's gradient: Cifar10LrnGrad, with the same settings."""
  settings = {name: op.get_attr(name)
              for name in ('depth_radius', 'bias', 'alpha', 'beta')}
  return fused_kernel().cifar10_lrn_grad(upstream, op.inputs[0], **settings)


@contextlib.contextmanager
def tensorflow_ops_only():
  """Within it, local_response_normalization() builds TensorFlow's own ops
  only: for a graph that must run without this code (a SavedModel)."""
  global _tensorflow_ops_only
  before, _tensorflow_ops_only = _tensorflow_ops_only, True
  try:
    yield
  finally:
    _tensorflow_ops_only = before


def _runs_on_a_cpu(x):
  """Whether ops that take `x` run on a CPU: where its device says, if this
  machine has that device (a GPU it lacks means the CPU: soft placement),
  or, if it names none, where TensorFlow puts them (a GPU, if there is one).
  """
  device = tf.DeviceSpec.from_string(x.device or '')
  gpus = len(devices.gpus())
  if device.device_type == 'GPU':
    return (device.device_index or 0) >= gpus
  if device.device_type:
    return device.device_type == 'CPU'
  return gpus == 0


def local_response_normalization(x, depth_radius, bias, alpha, beta, name):
  """tf.nn.lrn, computed faster: the same values to float rounding.

  Each output is x / (bias + alpha * sum of x**2 over the channels within
  depth_radius of its own) ** beta, as tf.nn.lrn defines it. TensorFlow's CPU
  kernels for LRN and its gradient run on one thread. On a CPU, the fused
  kernel (fused_kernel()) computes each in one pass on every core. Otherwise
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
    kernel = (None if _tensorflow_ops_only or not _runs_on_a_cpu(x)
              else fused_kernel())
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
