"""Mixed precision, GPU memory growth and XLA: the options for GPUs (and fast
CPUs), checked here without a GPU."""

import os
import signal
import subprocess
import sys
import threading

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pytest

import cifar10
import cifar10_eval
from cifar10_support import classifier as classifier_lib
from cifar10_support import data as data_lib
from cifar10_support import devices
from cifar10_support import params as params_lib
from cifar10_support import quiet
from cifar10_support import runtime
from cifar10_support.quiet import tf
import cifar10_train
from conftest import COUNTS
from conftest import LEARNING_RATE
from conftest import REPO_DIR
from helpers import cross_entropy_on_test_set
from helpers import EVAL_LINE
from helpers import resolved
from helpers import run_main
from helpers import stderr_through_the_quiet_filter


def test_mixed_precision_is_float32_variables_and_low_precision_compute():
  images = np.random.default_rng(0).normal(size=(8, 24, 24, 3))
  with tf.Graph().as_default() as graph:
    logits = cifar10.inference(tf.constant(images, tf.bfloat16),
                               variable_dtype=tf.float32)
    loss = cifar10.loss(logits, tf.constant(np.arange(8) % 10))
    global_step = tf.train.get_or_create_global_step()
    train_op = cifar10.train(loss, global_step)
    variables = tf.global_variables()
    convolutions = [op for op in graph.get_operations() if op.type == 'Conv2D']
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      loss_value = sess.run(loss)
      sess.run(train_op)
      assert sess.run(global_step) == 1
  # Every variable float32 (weights, averages, the loss averages; not the
  # counts of steps and examples); the convolutions in bfloat16; the logits
  # bfloat16, the loss float32.
  assert {v.dtype.base_dtype for v in variables
          if v.op.name not in COUNTS} == {tf.float32}
  assert {op.get_attr('T') for op in convolutions} == {tf.bfloat16}
  assert logits.dtype == tf.bfloat16 and loss.dtype == tf.float32
  assert loss_value == pytest.approx(4.6, abs=0.2)


def _gradients_of_a_confident_model(compute_dtype, loss_scaled):
  """{variable: gradient} of float32 variables, computed in `compute_dtype`,
  for a model that is sure of the right class: tiny gradients."""
  rng = np.random.default_rng(1)
  images = rng.normal(size=(4, 24, 24, 3)).astype(np.float32)
  with tf.Graph().as_default():
    tf.set_random_seed(0)
    logits = cifar10.inference(tf.cast(tf.constant(images), compute_dtype),
                               variable_dtype=tf.float32)
    loss = cifar10.loss(logits, tf.zeros([4], tf.int32))  # All class 0,
    pairs = cifar10.gradients(
        loss, cifar10.float16_loss_scale() if loss_scaled else None)
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      biases, = [v for v in tf.trainable_variables()
                 if v.op.name == 'softmax_linear/biases']
      sess.run(biases.assign([12.0] + [0.0] * 9))  # its likeliest by far.
      values = sess.run([g for g, _ in pairs])
  return {v.op.name: g for (_, v), g in zip(pairs, values)}


def test_float16_on_a_gpu_scales_the_loss_so_small_gradients_survive(
    monkeypatch):
  # Here, with no GPU: bfloat16, which has float32's range; no scaling.
  precision = devices.precision(params_lib.Params(mixed_precision=True))
  assert (precision.variable_dtype, precision.compute_dtype,
          precision.loss_scaled) == (tf.float32, tf.bfloat16, False)
  # Where a GPU is: float16, whose smallest number is 6e-8; the loss, and
  # so its gradients, times TensorFlow's dynamic loss scale, 2**15 at first.
  monkeypatch.setattr(devices, 'gpus',
                      lambda: ['/physical_device:GPU:0'])
  precision = devices.precision(params_lib.Params(mixed_precision=True))
  assert (precision.variable_dtype, precision.compute_dtype,
          precision.loss_scaled) == (tf.float32, tf.float16, True)

  # What it is for: a model sure of its answers has gradients of 1e-7 in its
  # lower layers, which float16 rounds to 0 (measured: 81% of conv1's
  # weights' gradients), unless the loss is scaled, then the gradients
  # unscaled in float32.
  exact = _gradients_of_a_confident_model(tf.float32, False)
  unscaled = _gradients_of_a_confident_model(tf.float16, False)
  scaled = _gradients_of_a_confident_model(tf.float16, True)

  def error(gradients, name):
    return np.abs(gradients[name] - exact[name]).sum() / np.abs(
        exact[name]).sum()

  for name in ['conv1/weights', 'conv1/biases', 'conv2/weights']:
    assert np.abs(exact[name]).mean() < 1e-6, name
    assert error(unscaled, name) > 0.5, name
    assert error(scaled, name) < 0.1, name


def _float16_step(inputs):
  """A float16 computation of one float32 variable w = [1, 1, 1, 1], with
  the loss sum(w * inputs), trained by cifar10.train with the float16 loss
  scale: (session, train op, w, global step, the scale's two variables, the
  summaries)."""
  with tf.device('/cpu:0'):
    global_step = tf.train.get_or_create_global_step()
  weights = tf.get_variable('w', initializer=tf.ones([4]))
  product = tf.cast(weights, tf.float16) * tf.constant(inputs, tf.float16)
  loss = tf.reduce_sum(tf.cast(product, tf.float32))
  loss_scale = cifar10.float16_loss_scale()
  train_op = cifar10.train(loss, global_step, examples_per_step=4,
                           examples_per_epoch=4, loss_scale=loss_scale)
  by_name = {v.op.name: v for v in tf.global_variables()}
  return (train_op, weights, global_step,
          by_name['loss_scale/current_loss_scale'],
          by_name['loss_scale/good_steps'], tf.summary.merge_all())


def test_a_float16_step_whose_gradients_overflow_is_skipped():
  # The gradient of w is the loss scale (2**15 at first) times the inputs,
  # in float16: at 3, 98304, past float16's largest number (65504): not
  # finite. That step makes no update (w and the global step unchanged) and
  # halves the scale; the next, at 2**14 x 3, is applied, unscaled.
  with tf.Graph().as_default():
    train_op, weights, global_step, scale, good_steps, summaries = (
        _float16_step([3.0, 3.0, 3.0, 3.0]))
    fetch = [weights, global_step, scale, good_steps]
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      assert sess.run(scale) == 2.0 ** 15
      # With the summaries: the gradients' histograms show what is applied
      # (no inf, which a histogram refuses).
      sess.run([train_op, summaries])
      w, step, current, good = sess.run(fetch)
      np.testing.assert_array_equal(w, [1, 1, 1, 1])
      assert (step, current, good) == (0, 2.0 ** 14, 0)
      sess.run([train_op, summaries])
      w, step, current, good = sess.run(fetch)
      np.testing.assert_allclose(w, [1 - 0.1 * 3] * 4, rtol=1e-6)
      assert (step, current, good) == (1, 2.0 ** 14, 1)


def _train_float16(params):
  """Trains _float16_step's computation (its gradients overflow at a loss
  scale of 2**15) to params.max_steps; returns the checkpoint's (global
  step, loss scale, good steps)."""
  with tf.Graph().as_default():
    train_op, weights, *_ = _float16_step([3.0, 3.0, 3.0, 3.0])
    loss = tf.reduce_sum(weights)
    runtime.run_training(train_op, loss, params)
  latest = tf.train.latest_checkpoint(params.train_dir)
  return tuple(tf.train.load_variable(latest, name) for name in (
      'global_step', 'loss_scale/current_loss_scale', 'loss_scale/good_steps'))


def test_the_float16_loss_scale_goes_with_the_checkpoints(quick_params):
  params = quick_params.replace(max_steps=1)
  # The first step overflows (skipped, the scale halved), the second makes
  # the update of step 1.
  assert _train_float16(params) == (1, 2.0 ** 14, 1)
  # Resumed, it keeps its scale: no step overflows again.
  assert _train_float16(params.replace(max_steps=2)) == (2, 2.0 ** 14, 2)
  # A checkpoint without one (of float32 training) starts at 2**15.
  fresh = quick_params.replace(train_dir=quick_params.train_dir + '_float32',
                               max_steps=1)
  with tf.Graph().as_default():
    with tf.device('/cpu:0'):
      global_step = tf.train.get_or_create_global_step()
    weights = tf.get_variable('w', initializer=tf.ones([4]))
    loss = tf.reduce_sum(weights * 3.0)
    runtime.run_training(
        cifar10.train(loss, global_step, examples_per_step=4,
                      examples_per_epoch=4), loss, fresh)
  assert 'loss_scale/current_loss_scale' not in (
      tf.train.load_checkpoint(tf.train.latest_checkpoint(
          fresh.train_dir)).get_variable_to_shape_map())
  assert _train_float16(fresh.replace(max_steps=2)) == (2, 2.0 ** 14, 1)


def test_mixed_precision_training_writes_float32_checkpoints(data_dir,
                                                            tmp_path):
  # Trained with --mixed_precision (bfloat16 on this CPU), the checkpoints
  # are those of float32 training: evaluation, prediction and export read
  # them without the option.
  # At the tutorial's 0.1, batches of 32 learnt at a random moment, or not
  # by step 150 (9 of 12 runs), and once diverged (NaN at step 116, in CI);
  # at LEARNING_RATE, 20 of 20 learnt (10 by step 60; 10 more to a test
  # cross entropy of 0.003 by step 150).
  train_dir = str(tmp_path / 'train')
  train = run_main('cifar10_train.py', '--mixed_precision',
                   '--initial_learning_rate=%g' % LEARNING_RATE,
                   '--train_dir=' + train_dir, '--data_dir=' + data_dir,
                   '--batch_size=32', '--max_steps=150',
                   '--min_fraction_of_examples_in_queue=0.625')
  assert train.returncode == 0, train.stderr
  checkpoint = tf.train.latest_checkpoint(train_dir)
  assert checkpoint.endswith('model.ckpt-150')
  stored = tf.train.load_checkpoint(checkpoint).get_variable_to_dtype_map()
  assert {dtype for name, dtype in stored.items()
          if name not in COUNTS} == {tf.float32}
  initial = cross_entropy_on_test_set(os.path.join(train_dir, 'model.ckpt-0'),
                                      data_dir)
  assert cross_entropy_on_test_set(checkpoint, data_dir) < 0.5 * initial

  evaluation = run_main('cifar10_eval.py', '--run_once',
                        '--checkpoint_dir=' + train_dir,
                        '--eval_dir=' + str(tmp_path / 'eval'),
                        '--data_dir=' + data_dir)
  assert evaluation.returncode == 0, evaluation.stderr
  match = EVAL_LINE.match(evaluation.stdout.splitlines()[0])
  assert match.group(3, 4) == ('250', '150')
  assert float(match.group(1)) > 0.5


def test_session_configuration_of_the_options():
  config = devices.session_config(params_lib.Params())
  assert config.gpu_options.allow_growth  # By default: eval fits beside.
  assert config.graph_options.optimizer_options.global_jit_level == (
      tf.OptimizerOptions.DEFAULT)
  config = devices.session_config(params_lib.Params(
      gpu_memory_growth=False, xla=True))
  assert not config.gpu_options.allow_growth
  assert config.graph_options.optimizer_options.global_jit_level == (
      tf.OptimizerOptions.ON_1)


def _recorded_configs(monkeypatch):
  """Records the configuration of every session and server made: a list of
  (what, config)."""
  seen = []
  session_init = tf.Session.__init__
  server_init = tf.train.Server.__init__

  def recording_session_init(self, target='', graph=None, config=None):
    seen.append(('session', config))
    session_init(self, target, graph, config)

  def recording_server_init(self, server_or_cluster_def, job_name=None,
                            task_index=None, protocol=None, config=None,
                            start=True):
    seen.append(('server', config))
    server_init(self, server_or_cluster_def, job_name, task_index, protocol,
                config, start)

  monkeypatch.setattr(tf.Session, '__init__', recording_session_init)
  monkeypatch.setattr(tf.train.Server, '__init__', recording_server_init)
  return seen


def _takes_the_gpus_as_set(config, gpu_memory_growth, xla):
  """Whether a session's configuration is the scripts', with these options,
  or one that leaves the GPUs alone."""
  assert config is not None  # TensorFlow's default maps every GPU's memory.
  if config.device_count.get('GPU') == 0:
    return True
  jit = config.graph_options.optimizer_options.global_jit_level
  return (config.gpu_options.allow_growth == gpu_memory_growth and
          (jit == tf.OptimizerOptions.ON_1) == xla)


def test_every_session_of_the_scripts_takes_their_configuration(
    trained, tmp_path, monkeypatch):
  # Training (on one device, in towers, a distributed worker and its
  # parameter server), evaluation, prediction and export open their sessions
  # and servers with the scripts' configuration (GPU memory growth, XLA), or
  # one that leaves the GPUs alone, none with TensorFlow's default, which
  # maps every GPU's memory at once.
  import cifar10_distributed_train  # pylint: disable=g-import-not-at-top
  import cifar10_multi_gpu_train  # pylint: disable=g-import-not-at-top
  from cifar10_support import images as images_lib  # pylint: disable=g-import-not-at-top
  from helpers import free_ports  # pylint: disable=g-import-not-at-top
  data_dir, train_dir, _ = trained
  seen = _recorded_configs(monkeypatch)
  params = params_lib.Params(
      data_dir=data_dir, checkpoint_dir=train_dir, run_once=True,
      eval_dir=str(tmp_path / 'eval'), gpu_memory_growth=False, xla=True,
      train_dir=str(tmp_path / 'train'), max_steps=1, batch_size=16,
      min_fraction_of_examples_in_queue=0.1)
  cifar10_train.train(*resolved(params))
  cifar10_multi_gpu_train.train(*resolved(params.replace(
      train_dir=str(tmp_path / 'towers'))), ['/cpu:0', '/cpu:0'])
  cifar10_eval.evaluate(*resolved(params))
  classifier_lib.Classifier(
      train_dir, cifar10.model_as_trained(params, params_lib.Precision()),
      config=devices.session_config(params)).close()
  images_lib.ImageDecoder().close()
  # A cluster of one parameter server (serving in a thread) and one worker.
  cluster = tf.train.ClusterSpec({
      'ps': ['127.0.0.1:%d' % free_ports(1)[0]],
      'worker': ['127.0.0.1:%d' % free_ports(1)[0]]})
  distributed = params.replace(train_dir=str(tmp_path / 'distributed'))
  ps = cifar10_distributed_train.start_server(cluster, 'ps', 0, distributed)
  served = threading.Thread(target=cifar10_distributed_train.serve,
                            args=(ps, cluster, 0), daemon=True)
  served.start()
  worker = cifar10_distributed_train.start_server(cluster, 'worker', 0,
                                                  distributed)
  cifar10_distributed_train.train(distributed, data_lib.read(data_dir), worker,
                                  cluster, 0)
  served.join(30)
  assert not served.is_alive()  # The worker said it was done.
  kinds = [kind for kind, _ in seen]
  assert kinds.count('server') == 2 and kinds.count('session') >= 8
  for kind, config in seen:
    assert _takes_the_gpus_as_set(config, gpu_memory_growth=False,
                                  xla=True), (kind, config)


def test_every_session_of_the_tools_takes_memory_as_needed(data_dir,
                                                           monkeypatch):
  # The benchmark's and the GPU check's sessions, beside a training on the
  # same GPU, must not take all its memory either.
  import benchmark  # pylint: disable=g-import-not-at-top
  import gpu_check  # pylint: disable=g-import-not-at-top
  seen = _recorded_configs(monkeypatch)
  with flagsaver.flagsaver():
    flags.FLAGS(['benchmark.py', '--data_dir=' + data_dir, '--batch_size=8'])
    session, _, coord = benchmark._start('step_with_input')  # pylint: disable=protected-access
    coord.request_stop()
    session.close()
  benchmark._convolutions_gflops(batch=2, runs=1, repeats=1)  # pylint: disable=protected-access
  float32 = params_lib.Precision()
  gpu_check.towers_equal_one(['/cpu:0', '/cpu:0'], float32, images_per_step=4)
  gpu_check.placement_of_a_step(data_lib.read(data_dir), '/cpu:0', float32,
                                batch_size=8)
  assert len(seen) >= 5
  for kind, config in seen:
    assert _takes_the_gpus_as_set(config, gpu_memory_growth=True,
                                  xla=False), (kind, config)


@pytest.mark.parametrize('gpu_device_files, cuda_visible_devices, noise', [
    ([], None, True),  # No GPU installed: CUDA cannot start, as expected.
    ([], '0', True),
    (['/dev/nvidia0'], '', True),  # GPUs hidden by the user, on purpose.
    (['/dev/nvidia0'], '-1', True),
    (['/dev/nvidia0'], None, False),  # GPUs meant to be used: a real error.
    (['/dev/nvidia0'], '0', False),
])
def test_cuda_errors_are_shown_where_gpus_are_meant_to_be_used(
    gpu_device_files, cuda_visible_devices, noise):
  assert quiet.cuda_error_is_noise(
      gpu_device_files, cuda_visible_devices) == noise


# The code this TensorFlow has for GPUs (tf.sysconfig.get_build_info()).
BUILT_FOR = ['sm_60', 'sm_70', 'sm_80', 'sm_89', 'compute_90']


@pytest.mark.parametrize('capabilities, without', [
    ({'/physical_device:GPU:0': (8, 0)}, None),  # A100: its own code.
    ({'/physical_device:GPU:0': (8, 6)}, None),  # RTX 30: 8.0's code runs.
    ({'/physical_device:GPU:0': (7, 5)}, None),  # T4: 7.0's code runs.
    ({'/physical_device:GPU:0': (9, 0)}, ('/physical_device:GPU:0', '9.0')),
    ({'/physical_device:GPU:0': (12, 0), '/physical_device:GPU:1': (12, 0)},
     ('/physical_device:GPU:0, /physical_device:GPU:1', '12.0')),
])
def test_gpus_without_compiled_code_are_said_once_in_plain_words(
    capabilities, without):
  warning = devices.gpu_code_warning(capabilities, BUILT_FOR)
  if without is None:
    assert warning is None
    return
  assert warning == (
      '%s: compute capability %s, for which this TensorFlow has no compiled '
      'GPU code (it has code for 6.0, 7.0, 8.0, 8.9; PTX for 9.0). CUDA '
      'compiles it from PTX as each process starts: the first start can take '
      'many minutes, and TensorFlow warns about it in every session. To '
      'compile once, let CUDA keep what it compiles: export '
      'CUDA_CACHE_MAXSIZE=4294967296 (cached in ~/.nv/ComputeCache). Or '
      'install a TensorFlow built for this GPU.' % without)
  # A build without CUDA has no GPU code to speak of.
  assert devices.gpu_code_warning(capabilities, []) is None


def test_a_script_says_it_and_tensorflows_warning_is_dropped_after(
    monkeypatch):
  # The script's warning, at its start (command_line.params, which every
  # script's main calls)...
  monkeypatch.setattr(devices, 'gpus',
                      lambda: ['/physical_device:GPU:0'])
  monkeypatch.setattr(devices, 'gpu_compute_capabilities',
                      lambda: {'/physical_device:GPU:0': (12, 0)})
  monkeypatch.setattr(devices, 'build_compute_capabilities',
                      lambda: BUILT_FOR)
  warnings = devices.warnings(params_lib.Params())
  assert len(warnings) == 1 and warnings[0].startswith(
      '/physical_device:GPU:0: compute capability 12.0, for which')
  # ... then TensorFlow's, in every session: dropped from the scripts'
  # stderr once the script has said it (and kept before, or without it).
  tensorflow_says = (
      'W0000 00:00:1796600000.000000 1234 gpu_device.cc:2431] TensorFlow was '
      'not built with CUDA kernel binaries compatible with compute capability '
      '12.0. CUDA kernels will be jit-compiled from PTX, which could take 30 '
      'minutes or longer.\n')
  warned = 'Warning: %s\n' % warnings[0]
  assert stderr_through_the_quiet_filter(
      tensorflow_says, warned, tensorflow_says, tensorflow_says) == (
          tensorflow_says + warned)


def test_a_process_that_dies_while_tensorflow_loads_shows_why():
  # A fatal error while TensorFlow's libraries load (a CUDA or cuDNN
  # mismatch aborts the process) is written to descriptor 2 while the
  # import is filtered: it still reaches the user, the banners do not.
  fatal = ('F0000 00:00:1796600000.000000 1234 cuda_dnn.cc:522] Loaded '
           'runtime CuDNN library: 9.1.0 but source was compiled with: '
           '9.3.0.\n')
  program = (
      'import importlib.abc, os, sys\n'
      'class DieWhileLoading(importlib.abc.MetaPathFinder):\n'
      '  def find_spec(self, name, path, target=None):\n'
      '    if name == "tensorflow.compat":  # Once the libraries print.\n'
      '      os.write(2, %r)\n'
      '      os.abort()\n'
      'sys.meta_path.insert(0, DieWhileLoading())\n'
      'from cifar10_support import quiet\n' % fatal.encode())
  result = subprocess.run([sys.executable, '-c', program], cwd=REPO_DIR,
                          capture_output=True, text=True)
  assert result.returncode == -signal.SIGABRT
  assert result.stderr == fatal
