"""Mixed precision, GPU memory growth and XLA: the options for GPUs (and fast
CPUs), checked here without a GPU."""

import os

import numpy as np
import pytest

import cifar10
import cifar10_classifier
import cifar10_eval
import cifar10_params
import cifar10_quiet
import cifar10_train
from cifar10_quiet import tf
from conftest import LEARNING_RATE
from helpers import cross_entropy_on_test_set
from helpers import EVAL_LINE
from helpers import run_main
from helpers import run_script


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
  # Every variable float32 (weights, averages, the loss averages); the
  # convolutions in bfloat16; the logits bfloat16, the loss float32.
  assert {v.dtype.base_dtype for v in variables
          if v.op.name != 'global_step'} == {tf.float32}
  assert {op.get_attr('T') for op in convolutions} == {tf.bfloat16}
  assert logits.dtype == tf.bfloat16 and loss.dtype == tf.float32
  assert loss_value == pytest.approx(4.6, abs=0.2)


def _gradients_of_a_confident_model(compute_dtype, loss_scale):
  """{variable: gradient} of float32 variables, computed in `compute_dtype`,
  for a model that is sure of the right class: tiny gradients."""
  rng = np.random.default_rng(1)
  images = rng.normal(size=(4, 24, 24, 3)).astype(np.float32)
  with tf.Graph().as_default():
    tf.set_random_seed(0)
    logits = cifar10.inference(tf.cast(tf.constant(images), compute_dtype),
                               variable_dtype=tf.float32)
    loss = cifar10.loss(logits, tf.zeros([4], tf.int32))  # All class 0,
    pairs = cifar10.gradients(loss, loss_scale)
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
  params = cifar10_params.Params(mixed_precision=True)
  assert (params.variable_dtype, params.compute_dtype,
          params.loss_scale) == (tf.float32, tf.bfloat16, 1.0)
  # Where a GPU is: float16, whose smallest number is 6e-8; the loss, and
  # so its gradients, times 128.
  monkeypatch.setattr(cifar10_params, 'gpus',
                      lambda: ['/physical_device:GPU:0'])
  params = cifar10_params.Params(mixed_precision=True)
  assert (params.variable_dtype, params.compute_dtype,
          params.loss_scale) == (tf.float32, tf.float16, 128.0)
  assert cifar10.FLOAT16_LOSS_SCALE == 128.0

  # What it is for: a model sure of its answers has gradients of 1e-7 in its
  # lower layers, which float16 rounds to 0 (measured: 81% of conv1's
  # weights' gradients), unless the loss is scaled, then the gradients
  # unscaled in float32 (then off float32's by 6%, 1% for conv2).
  exact = _gradients_of_a_confident_model(tf.float32, 1.0)
  unscaled = _gradients_of_a_confident_model(tf.float16, 1.0)
  scaled = _gradients_of_a_confident_model(tf.float16,
                                           cifar10.FLOAT16_LOSS_SCALE)

  def error(gradients, name):
    return np.abs(gradients[name] - exact[name]).sum() / np.abs(
        exact[name]).sum()

  for name in ['conv1/weights', 'conv1/biases', 'conv2/weights']:
    assert np.abs(exact[name]).mean() < 1e-6, name
    assert error(unscaled, name) > 0.5, name
    assert error(scaled, name) < 0.1, name


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
          if name != 'global_step'} == {tf.float32}
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
  config = cifar10_params.session_config(cifar10_params.Params())
  assert config.gpu_options.allow_growth  # By default: eval fits beside.
  assert config.graph_options.optimizer_options.global_jit_level == (
      tf.OptimizerOptions.DEFAULT)
  config = cifar10_params.session_config(cifar10_params.Params(
      gpu_memory_growth=False, xla=True))
  assert not config.gpu_options.allow_growth
  assert config.graph_options.optimizer_options.global_jit_level == (
      tf.OptimizerOptions.ON_1)


def test_every_session_takes_the_configuration(trained, tmp_path,
                                               monkeypatch):
  # Training, evaluation and prediction each open their sessions with the
  # scripts' configuration (GPU memory growth, XLA), none with TensorFlow's
  # default, which maps every GPU's memory at once.
  data_dir, train_dir, _ = trained
  seen = []
  session_init = tf.Session.__init__

  def recording_init(self, target='', graph=None, config=None):
    seen.append(config)
    session_init(self, target, graph, config)

  monkeypatch.setattr(tf.Session, '__init__', recording_init)
  params = cifar10_params.Params(
      data_dir=data_dir, checkpoint_dir=train_dir, run_once=True,
      eval_dir=str(tmp_path / 'eval'), gpu_memory_growth=False, xla=True,
      train_dir=str(tmp_path / 'train'), max_steps=1, batch_size=16,
      min_fraction_of_examples_in_queue=0.1)
  cifar10_train.train(params)
  cifar10_eval.evaluate(params)
  cifar10_classifier.Classifier(train_dir, params=params).close()
  assert len(seen) >= 3
  for config in seen:
    assert config is not None
    assert not config.gpu_options.allow_growth
    assert config.graph_options.optimizer_options.global_jit_level == (
        tf.OptimizerOptions.ON_1)


def test_gpu_check_without_a_gpu_says_so_and_succeeds():
  result = run_script('gpu_check.py')
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''
  assert result.stdout == (
      'No GPU found: nothing to check on this machine (the checks that need '
      'none are tests/test_gpu_placement.py).\n')


@pytest.mark.parametrize('mixed_precision', [False, True])
def test_gpu_checks_parts_that_run_on_a_cpu(mixed_precision, data_dir):
  # What gpu_check.py runs on GPUs, run on this machine's CPU: a traced
  # step, and two towers against one (on one CPU device here).
  import gpu_check  # pylint: disable=g-import-not-at-top
  counts = gpu_check.placement_of_a_step(data_dir, '/cpu:0', mixed_precision)
  assert set(counts) == {'CPU'} and counts['CPU'] > 100
  difference = gpu_check.towers_equal_one(['/cpu:0', '/cpu:0'],
                                          mixed_precision)
  # bfloat16 keeps 8 bits of mantissa: the halves round differently (0.006
  # here, against 2e-6 in float32).
  assert difference < (0.02 if mixed_precision else 1e-4)


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
  assert cifar10_quiet.cuda_error_is_noise(
      gpu_device_files, cuda_visible_devices) == noise
