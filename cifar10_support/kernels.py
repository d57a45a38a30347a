"""This project's CPU kernels: TensorFlow ops of its own, compiled on first use.

Two sources, compiled into one library:
- lrn_kernel.cc: local response normalization, and its gradient, each in one
  pass over the activations (lrn.py: the model's norm1 and norm2);
- input_kernel.cc: the training images' crop and flip, and their contrast
  and standardisation, each in one pass over the images (cifar10_input.py).

The library is compiled the first time it is asked for, with the C++
compiler ($CXX, g++ by default) and TensorFlow's headers, and kept in
~/.cache/cifar10 ($XDG_CACHE_HOME/cifar10) for the next runs. Where it cannot
be built, one warning says why, and the graph builders use TensorFlow's own
ops instead: the same values, more slowly. They use TensorFlow's ops on a GPU
too (there are no GPU kernels here), and inside tensorflow_ops_only(), for a
graph that must run without this code (a SavedModel).
"""

import contextlib
import functools
import hashlib
import os
import subprocess
import tempfile

from absl import logging

from cifar10_support import devices
from cifar10_support.quiet import tf

_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [os.path.join(_HERE, 'lrn_kernel.cc'),
           os.path.join(_HERE, 'input_kernel.cc')]
# -fno-math-errno lets the compiler vectorise the square roots. No
# -march=native: the library may be shared by machines of other kinds.
_FLAGS = ['-shared', '-fPIC', '-O3', '-fno-math-errno', '-fno-trapping-math',
          '-w']
_tensorflow_ops_only = False


def cache_dir():
  """Where the compiled library is kept: $XDG_CACHE_HOME/cifar10, or
  ~/.cache/cifar10."""
  cache_home = (os.environ.get('XDG_CACHE_HOME') or
                os.path.join(os.path.expanduser('~'), '.cache'))
  return os.path.join(cache_home, 'cifar10')


def compiler():
  """The C++ compiler that builds the library: $CXX, or g++."""
  return os.environ.get('CXX') or 'g++'


def _flags():
  """The compiler's flags: (before the sources, after them)."""
  return (_FLAGS + tf.sysconfig.get_compile_flags(),
          tf.sysconfig.get_link_flags())


def library_path(compiler_version):
  """The compiled library's file in cache_dir(): one for each set of sources,
  flags, version of TensorFlow and compiler (`compiler_version`, what it says
  to --version)."""
  sources = []
  for source in SOURCES:
    with open(source, 'rb') as f:
      sources.append(f.read())
  key = hashlib.sha256(repr((sources, _flags(), compiler_version,
                             tf.__version__)).encode()).hexdigest()[:16]
  return os.path.join(cache_dir(), 'cifar10_kernels-%s.so' % key)


@functools.lru_cache(maxsize=None)
def library():
  """The ops of SOURCES (cifar10_lrn, cifar10_lrn_grad, cifar10_crop_and_flip,
  cifar10_adjust_contrast_and_standardize), or None.

  Compiled the first time (about 20 seconds), once for each version of the
  sources, TensorFlow and the compiler, into cache_dir(); loaded once a
  process. Where it cannot be built (no C++ compiler, a cache folder it
  cannot write, a compiler's error), says why, once, and returns None: the
  graph builders then use TensorFlow's ops, the same values more slowly.
  """
  cxx = compiler()
  try:
    version = subprocess.run([cxx, '--version'], capture_output=True,
                             text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError) as e:
    logging.warning('CPU kernels: no C++ compiler (%s: %s); using '
                    'TensorFlow\'s ops (slower on a CPU; set CXX to a '
                    'compiler to build this project\'s kernels).', cxx, e)
    return None
  flags = _flags()
  path = library_path(version)
  if not os.path.exists(path):
    logging.info('CPU kernels: compiling this project\'s kernels (once, '
                 'about 20 seconds): %s', path)
    try:
      os.makedirs(cache_dir(), exist_ok=True)
      # Compiled beside its place, then moved there in one step: processes
      # that build it at once never load half a file.
      handle, building = tempfile.mkstemp(suffix='.so', dir=cache_dir())
      os.close(handle)
      try:
        subprocess.run([cxx] + flags[0] + SOURCES + ['-o', building]
                       + flags[1], capture_output=True, text=True, check=True)
        os.replace(building, path)
      finally:
        if os.path.exists(building):
          os.remove(building)
    except OSError as e:
      logging.warning('CPU kernels: cannot build them in %s (%s); using '
                      'TensorFlow\'s ops (slower on a CPU).', cache_dir(), e)
      return None
    except subprocess.CalledProcessError as e:
      logging.warning('CPU kernels: %s could not compile %s; using '
                      'TensorFlow\'s ops (slower on a CPU). Its last lines:'
                      '\n%s', cxx, ' '.join(SOURCES),
                      '\n'.join(e.stderr.splitlines()[-5:]))
      return None
  try:
    return tf.load_op_library(path)
  except tf.errors.OpError as e:  # Damaged, or built for another system.
    logging.warning('CPU kernels: cannot load %s (%s); using TensorFlow\'s '
                    'ops (slower on a CPU). Remove it to build it again.',
                    path, e.message)
    return None


@contextlib.contextmanager
def tensorflow_ops_only():
  """Within it, the graph builders use TensorFlow's own ops only: for a graph
  that must run without this code (a SavedModel)."""
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


def for_ops_on(x):
  """library(), to build ops that take `x`, if they run on a CPU and not
  inside tensorflow_ops_only(); otherwise (or if it cannot be built) None:
  build TensorFlow's ops."""
  if _tensorflow_ops_only or not _runs_on_a_cpu(x):
    return None
  return library()
