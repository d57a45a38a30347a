"""This project's CPU kernels: built once, used where the ops run on a CPU,
and, where they cannot be built, TensorFlow's ops instead, said once.

(That they compute tf.nn.lrn and its gradient, and the tutorial's
distortions: test_same_computation.py.)
"""

import logging
import os
import shutil
import stat
import subprocess

import numpy as np
import pytest

import conftest
import helpers
from cifar10_support import devices
from cifar10_support import kernels
from cifar10_support import lrn
from cifar10_support.quiet import tf


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
  """library() asked again, with its cache in tmp_path/cache; the process's
  own library again afterwards."""
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
  kernels.library.cache_clear()
  yield tmp_path / 'cache' / 'cifar10'
  monkeypatch.undo()
  kernels.library.cache_clear()


def _kernels_in(build):
  """The types of the LRN ops that build() puts in a new graph."""
  with tf.Graph().as_default() as graph:
    build()
  return sorted({op.type for op in graph.get_operations()
                 if op.type.startswith('Cifar10Lrn') or op.type == 'MatMul'})


def _normalize(x):
  return lrn.local_response_normalization(x, 4, bias=1.0, alpha=0.001 / 9.0,
                                          beta=0.75, name='norm')


def _normalize_with_gradient():
  x = tf.zeros([2, 3, 3, 64])
  tf.gradients(_normalize(x), x)


# Two runs of a program that uses LRN, one after the other, each a process.
_A_RUN = """
from absl import logging
import numpy as np
from cifar10_support import lrn
from cifar10_support.quiet import tf
logging.set_verbosity(logging.INFO)
x = tf.constant(np.ones([1, 1, 1, 3], np.float32))
y = lrn.local_response_normalization(x, 1, bias=1.0, alpha=1.0, beta=0.5,
                                     name='norm')
tf.gradients(y, x)
print(sorted(op.type for op in tf.get_default_graph().get_operations()
             if op.type.startswith('Cifar10')))
print(tf.Session().run(y).ravel().astype(float).round(4).tolist())
"""


def test_the_kernels_are_compiled_once_and_kept(tmp_path):
  helpers.require_kernels()
  env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
  cache = tmp_path / 'cifar10'
  first = helpers.run_program(_A_RUN, env=env)
  built, = os.listdir(cache)
  assert built.startswith('cifar10_kernels-') and built.endswith('.so')
  assert ("CPU kernels: compiling this project's kernels (once, about 20 "
          'seconds): %s' % (cache / built)) in first.stderr
  modified = os.stat(cache / built).st_mtime_ns
  second = helpers.run_program(_A_RUN, env=env)
  assert 'compiling' not in second.stderr
  assert os.listdir(cache) == [built]
  assert os.stat(cache / built).st_mtime_ns == modified
  for run in [first, second]:
    # The kernel and its gradient; 1 / (1 + the window's sum of squares)
    # ** 0.5, for windows of 2, 3, 2 ones.
    assert run.stdout.splitlines() == ["['Cifar10Lrn', 'Cifar10LrnGrad']",
                                       '[0.5774, 0.5, 0.5774]'], run.stderr


def test_without_a_compiler_tensorflows_ops_and_one_warning(
    fresh_build, monkeypatch, caplog):
  monkeypatch.setenv('CXX', '/nonexistent/c++')
  with caplog.at_level(logging.WARNING):
    assert kernels.library() is None
    assert _kernels_in(_normalize_with_gradient) == ['MatMul']
    assert kernels.library() is None  # Asked again: said once.
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING]
  assert len(warnings) == 1
  assert warnings[0].startswith(
      'CPU kernels: no C++ compiler (/nonexistent/c++: ')
  assert "using TensorFlow's ops" in warnings[0]
  assert not os.path.exists(fresh_build)


def test_a_compilers_error_is_said_and_nothing_is_left(
    fresh_build, monkeypatch, tmp_path, caplog):
  compiler = tmp_path / 'broken-c++'
  compiler.write_text('#!/bin/sh\n'
                      '[ "$1" = --version ] && { echo broken 1.0; exit 0; }\n'
                      'echo "lrn_kernel.cc:1: error: no headers here" >&2\n'
                      'exit 1\n')
  compiler.chmod(compiler.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv('CXX', str(compiler))
  with caplog.at_level(logging.WARNING):
    assert kernels.library() is None
  assert ('CPU kernels: %s could not compile %s' % (
      compiler, ' '.join(kernels.SOURCES)) in caplog.text)
  assert 'error: no headers here' in caplog.text
  assert os.listdir(fresh_build) == []  # No half-built library.


def test_a_damaged_library_is_named_and_not_loaded(fresh_build, caplog):
  conftest.require(shutil.which(kernels.compiler()),
                   'no C++ compiler here (%s)' % kernels.compiler())
  version = subprocess.run([kernels.compiler(), '--version'],
                           capture_output=True, text=True).stdout
  damaged = kernels.library_path(version)
  os.makedirs(os.path.dirname(damaged))
  with open(damaged, 'w') as f:
    f.write('not a shared library')
  with caplog.at_level(logging.WARNING):
    assert kernels.library() is None
  assert ('CPU kernels: cannot load %s (' % damaged) in caplog.text
  assert 'Remove it to build it again.' in caplog.text


def test_a_cache_it_cannot_write_is_named(fresh_build, monkeypatch, tmp_path,
                                          caplog):
  # The cache's parent is a file: no folder can be made there, root or not.
  (tmp_path / 'not_a_folder').write_text('')
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'not_a_folder'))
  with caplog.at_level(logging.WARNING):
    assert kernels.library() is None
  assert ('CPU kernels: cannot build them in %s'
          % (tmp_path / 'not_a_folder' / 'cifar10') in caplog.text)


def test_the_kernel_on_a_cpu_tensorflows_ops_on_a_gpu_and_in_a_savedmodel(
    monkeypatch):
  helpers.require_kernels()

  def on(device):
    def build():
      with tf.device(device):
        _normalize_with_gradient()
    return build

  kernel, tensorflows = ['Cifar10Lrn', 'Cifar10LrnGrad'], ['MatMul']
  assert _kernels_in(on('/cpu:0')) == kernel
  assert _kernels_in(on('/job:worker/task:1')) == kernel
  # A GPU this machine does not have: soft placement puts it on the CPU
  # (cifar10_multi_gpu_train.py's towers, where GPUs are fewer).
  assert _kernels_in(on('/gpu:0')) == kernel

  def in_a_savedmodel():
    with kernels.tensorflow_ops_only():
      _normalize(tf.zeros([2, 3, 3, 64]))

  assert _kernels_in(in_a_savedmodel) == tensorflows
  # On a machine with one GPU: there, and where no device is named (TensorFlow
  # places it on the GPU); a second GPU's tower runs on the CPU.
  monkeypatch.setattr(devices, 'gpus', lambda: ['/physical_device:GPU:0'])
  assert _kernels_in(on('/gpu:0')) == tensorflows
  assert _kernels_in(on('/job:worker/task:1')) == tensorflows
  assert _kernels_in(on('/gpu:1')) == kernel
  assert _kernels_in(on('/cpu:0')) == kernel


def test_a_saved_graph_with_the_kernel_imports_once_it_is_loaded(tmp_path):
  # The README's way to import a CPU training's model.ckpt-N.meta.
  helpers.require_kernels()
  meta = str(tmp_path / 'model.ckpt-0.meta')
  with tf.Graph().as_default():
    _normalize_with_gradient()
    tf.train.export_meta_graph(meta)
  with tf.Graph().as_default() as graph:
    kernels.library()
    tf.train.import_meta_graph(meta)
    assert 'Cifar10LrnGrad' in {op.type for op in graph.get_operations()}


def test_bad_shapes_are_refused_by_name():
  kernel = helpers.require_kernels()
  settings = dict(depth_radius=4, bias=1.0, alpha=1e-4, beta=0.75)
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match='must be rank 4'):
      kernel.cifar10_lrn(tf.zeros([3, 64]), **settings)
    upstream = tf.placeholder(tf.float32, [None, 3, 3, 64])
    gradient = kernel.cifar10_lrn_grad(upstream, tf.zeros([2, 3, 3, 64]),
                                       **settings)
    with tf.Session() as sess:
      with pytest.raises(tf.errors.InvalidArgumentError,
                         match=r"LRN's gradient: upstream \[1,3,3,64\] and "
                               r'activations \[2,3,3,64\] differ'):
        sess.run(gradient, {upstream: np.zeros([1, 3, 3, 64])})


def test_bad_crops_and_factors_are_refused_by_name():
  library = helpers.require_kernels()
  with tf.Graph().as_default():
    offsets = tf.placeholder(tf.int32, [None, 2])
    crops = library.cifar10_crop_and_flip(tf.zeros([2, 3, 32, 32], tf.uint8),
                                          offsets, [False, True], size=24)
    factors = tf.placeholder(tf.float32, [None])
    standardized = library.cifar10_adjust_contrast_and_standardize(
        tf.zeros([2, 24, 24, 3], tf.uint8), factors)
    with tf.Session() as sess:
      with pytest.raises(tf.errors.InvalidArgumentError,
                         match=r"Image 1's 24x24 crop at row 3, column 9 "
                               r'leaves its 32x32 pixels \(rows from 0 to 8, '
                               r'columns from 0 to 8\)'):
        sess.run(crops, {offsets: [[0, 0], [3, 9]]})
      with pytest.raises(tf.errors.InvalidArgumentError,
                         match=r'Crops of 2 images take offsets \[2, 2\] and '
                               r'flips \[2\], got \[1,2\] and \[2\]'):
        sess.run(crops, {offsets: [[0, 0]]})
      with pytest.raises(tf.errors.InvalidArgumentError,
                         match=r'Contrast factors of 2 images are \[2\], got '
                               r'\[3\]'):
        sess.run(standardized, {factors: [1.0, 1.0, 1.0]})
    with pytest.raises(ValueError, match='must be rank 4'):
      library.cifar10_crop_and_flip(tf.zeros([3, 32, 32], tf.uint8),
                                    [[0, 0]], [False], size=24)
