"""The model of cifar10.py: layers, parameters, losses, learning rate, update."""

import json
import subprocess
import sys

import numpy as np
import pytest
from tensorflow.python.ops import op_selector

import cifar10
import cifar10_distributed_train
import cifar10_multi_gpu_train
from cifar10_support import params as params_lib
from cifar10_support import runtime
from cifar10_support.quiet import tf
import cifar10_train
from conftest import REPO_DIR
from helpers import resolved

BATCH = 8
DECAY_STEPS = 136718  # int(50,000 / 128 * 350): 350 epochs of batch 128.


def _random_images(batch=BATCH, seed=0):
  return np.random.default_rng(seed).normal(
      size=(batch, 24, 24, 3)).astype(np.float32)


def test_parameter_count_and_variable_shapes():
  with tf.Graph().as_default():
    cifar10.inference(tf.placeholder(tf.float32, [None, 24, 24, 3]))
    shapes = {v.op.name: v.shape.as_list() for v in tf.trainable_variables()}
    total = sum(np.prod(s) for s in shapes.values())
  assert shapes == {
      'conv1/weights': [5, 5, 3, 64], 'conv1/biases': [64],
      'conv2/weights': [5, 5, 64, 64], 'conv2/biases': [64],
      'local3/weights': [2304, 384], 'local3/biases': [384],
      'local4/weights': [384, 192], 'local4/biases': [192],
      'softmax_linear/weights': [192, 10], 'softmax_linear/biases': [10],
  }
  assert total == 1068298


def test_layer_shapes_and_logits():
  with tf.Graph().as_default() as graph:
    images = tf.constant(_random_images())
    logits = cifar10.inference(images)
    shapes = {name: graph.get_tensor_by_name(name + ':0').shape.as_list()
              for name in ['conv1/conv1', 'pool1', 'norm1', 'conv2/conv2',
                           'norm2', 'pool2', 'local3/local3', 'local4/local4',
                           'softmax_linear/softmax_linear']}
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      logits_value = sess.run(logits)
  assert shapes == {
      'conv1/conv1': [BATCH, 24, 24, 64], 'pool1': [BATCH, 12, 12, 64],
      'norm1': [BATCH, 12, 12, 64], 'conv2/conv2': [BATCH, 12, 12, 64],
      'norm2': [BATCH, 12, 12, 64], 'pool2': [BATCH, 6, 6, 64],
      'local3/local3': [BATCH, 384], 'local4/local4': [BATCH, 192],
      'softmax_linear/softmax_linear': [BATCH, 10],
  }
  # Un-normalised logits, finite, near zero at initialisation.
  assert logits_value.shape == (BATCH, 10)
  assert np.all(np.isfinite(logits_value))
  assert not np.allclose(logits_value.sum(axis=1), 1.0)


def _computed_from(op):
  """The names of the ops whose outputs `op` is computed from."""
  return {source.name for source in op_selector.get_backward_walk_ops(
      [op], inclusive=False)}


def test_layers_are_the_tutorials():
  with tf.Graph().as_default() as graph:
    cifar10.inference(tf.constant(_random_images() * 3))
    ops = {op.name: op for op in graph.get_operations()}
  for pool in ['pool1', 'pool2']:
    assert ops[pool].type == 'MaxPool'
    assert ops[pool].get_attr('ksize') == [1, 3, 3, 1]
    assert ops[pool].get_attr('strides') == [1, 2, 2, 1]
    assert ops[pool].get_attr('padding') == b'SAME'
  # Order: pool1 -> norm1 -> conv2 -> norm2 -> pool2.
  assert 'pool1' in _computed_from(ops['norm1'])
  assert 'conv2/conv2' not in _computed_from(ops['norm1'])
  assert 'norm1' in _computed_from(ops['conv2/conv2'])
  assert 'conv2/conv2' in _computed_from(ops['norm2'])
  # pool2 takes norm2, through the IdentityN of tf.custom_gradient (norm2's
  # gradient goes past conv2's relu: cifar10._normalization_of_relu).
  taken = ops['pool2'].inputs[0].op
  assert taken.type == 'IdentityN' and taken.inputs[0].op.name == 'norm2'
  # The normalisations are the tutorial's LRN: depth radius 4, bias 1.0,
  # alpha 0.001 / 9, beta 0.75 (computed by a matrix multiply, see
  # test_same_computation.py).
  with graph.as_default():
    expected = [tf.nn.lrn(ops[source].outputs[0], 4, bias=1.0,
                          alpha=0.001 / 9.0, beta=0.75)
                for source in ['pool1', 'conv2/conv2']]
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      values = sess.run([ops['norm1'].outputs[0], ops['norm2'].outputs[0]] +
                        expected)
  np.testing.assert_allclose(values[0], values[2], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(values[1], values[3], rtol=1e-5, atol=1e-6)


def test_initial_values_and_placement():
  with tf.Graph().as_default():
    cifar10.inference(tf.placeholder(tf.float32, [None, 24, 24, 3]))
    variables = tf.trainable_variables()
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      values = dict(zip([v.op.name for v in variables], sess.run(variables)))
  for v in variables:
    assert 'CPU:0' in v.device.upper(), v.device
  expected_biases = {'conv1': 0.0, 'conv2': 0.1, 'local3': 0.1, 'local4': 0.1,
                     'softmax_linear': 0.0}
  for layer, bias in expected_biases.items():
    np.testing.assert_array_equal(values[layer + '/biases'], np.float32(bias))
  # A truncated normal (cut at 2 stddevs) has 0.8796 of the stddev given.
  expected_stddevs = {'conv1': 5e-2, 'conv2': 5e-2, 'local3': 0.04,
                      'local4': 0.04, 'softmax_linear': 1 / 192.0}
  for layer, stddev in expected_stddevs.items():
    weights = values[layer + '/weights']
    assert np.abs(weights).max() <= 2 * stddev + 1e-7
    assert weights.std() == pytest.approx(0.8796 * stddev, rel=0.1), layer


def test_loss_is_cross_entropy_plus_weight_decay_of_local3_and_local4():
  labels = np.arange(BATCH) % 10
  with tf.Graph().as_default() as graph:
    logits = cifar10.inference(tf.constant(_random_images()))
    total_loss = cifar10.loss(logits, tf.constant(labels, tf.int32))
    loss_names = sorted(l.op.name for l in tf.get_collection('losses'))
    cross_entropy = graph.get_tensor_by_name('cross_entropy:0')
    variables = {v.op.name: v for v in tf.trainable_variables()}
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      values = dict(zip(
          ['total', 'cross_entropy', 'logits', 'local3', 'local4'],
          sess.run([total_loss, cross_entropy, logits,
                    variables['local3/weights'],
                    variables['local4/weights']])))
  assert loss_names == ['cross_entropy', 'local3/weight_loss',
                        'local4/weight_loss']
  logits_value = values['logits'].astype(np.float64)
  log_softmax = logits_value - np.log(
      np.exp(logits_value).sum(axis=1, keepdims=True))
  expected_cross_entropy = -log_softmax[np.arange(BATCH), labels].mean()
  assert values['cross_entropy'] == pytest.approx(expected_cross_entropy,
                                                  rel=1e-5)
  weight_decay = 0.004 * sum(
      np.sum(values[name].astype(np.float64) ** 2) / 2
      for name in ['local3', 'local4'])
  assert values['total'] - values['cross_entropy'] == pytest.approx(
      weight_decay, rel=1e-5)


def test_initial_loss_is_near_4_6():
  # As the README says: about 2.3 of cross entropy (ln 10, for logits near 0)
  # and about 2.3 of weight decay (local3's 2.2 and local4's 0.2).
  with tf.Graph().as_default() as graph:
    logits = cifar10.inference(tf.constant(_random_images(128)))
    total_loss = cifar10.loss(logits, tf.constant(np.arange(128) % 10))
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      total, cross_entropy = sess.run(
          [total_loss, graph.get_tensor_by_name('cross_entropy:0')])
  assert cross_entropy == pytest.approx(np.log(10), abs=0.05)
  assert total - cross_entropy == pytest.approx(2.37, abs=0.05)
  assert total == pytest.approx(4.6, abs=0.15)


def test_the_losses_curves_are_averages_decaying_by_0_9():
  # What TensorBoard plots under each loss's name: its moving average,
  # decay 0.9, zero-debiased (the first point is the first loss); under
  # "(raw)", the loss itself.
  raw = [4.0, 3.0, 5.0, 2.5, 2.0, 1.0, 3.5]
  with tf.Graph().as_default():
    value = tf.placeholder(tf.float32, [])
    cross_entropy = tf.identity(value, name='cross_entropy')
    total_loss = tf.add(cross_entropy, 1.0, name='total_loss')
    averages_op = cifar10.add_loss_summaries(total_loss, [cross_entropy])
    merged = tf.summary.merge_all()
    plotted = []
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      for loss in raw:
        summary = tf.Summary.FromString(
            sess.run([merged, averages_op], {value: loss})[0])
        plotted.append({v.tag: v.simple_value for v in summary.value})
  biased, expected = 0.0, []
  for step, loss in enumerate(raw, 1):
    biased = 0.9 * biased + 0.1 * loss
    expected.append(biased / (1 - 0.9 ** step))
  assert [p['cross_entropy (raw)'] for p in plotted] == raw
  assert [p['cross_entropy'] for p in plotted] == pytest.approx(expected,
                                                               rel=1e-5)
  assert [p['total_loss'] for p in plotted] == pytest.approx(
      [e + 1 for e in expected], rel=1e-5)


@pytest.mark.parametrize('step, rate', [
    (0, 0.1), (DECAY_STEPS - 1, 0.1), (DECAY_STEPS, 0.01),
    (2 * DECAY_STEPS - 1, 0.01), (2 * DECAY_STEPS, 0.001)])
def test_learning_rate_decays_tenfold_every_350_epochs(step, rate):
  # By the examples trained on, in steps of a batch (128): for a training of
  # batches of 128 throughout, its steps.
  with tf.Graph().as_default():
    examples = tf.placeholder(tf.int64, [])
    lr = cifar10.learning_rate(examples)
    with tf.Session() as sess:
      assert sess.run(lr, {examples: step * 128}) == pytest.approx(rate,
                                                                rel=1e-6)


def test_train_op_is_gradient_descent_then_moving_averages():
  labels = np.arange(BATCH) % 10
  with tf.Graph().as_default():
    global_step = tf.train.get_or_create_global_step()
    logits = cifar10.inference(tf.constant(_random_images()))
    total_loss = cifar10.loss(logits, tf.constant(labels, tf.int32))
    train_op = cifar10.train(total_loss, global_step)
    variables = tf.trainable_variables()
    names = [v.op.name for v in variables]
    gradients = tf.gradients(total_loss, variables)
    graph_variables = {v.op.name: v for v in tf.global_variables()}
    average_variables = [
        graph_variables[v.op.name + '/ExponentialMovingAverage']
        for v in variables]
    summary_op = tf.summary.merge_all()
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      before, grads = sess.run([variables, gradients])
      sess.run(train_op)
      after, averaged, step = sess.run([variables, average_variables,
                                        global_step])
      summaries = {value.tag: value for value in
                   tf.Summary.FromString(sess.run(summary_op)).value}
      # Late in training, from step 89,991 on, the decay is 0.9999 itself.
      sess.run(global_step.assign(100000))
      late_weights, late_averages = sess.run([variables, average_variables])
      sess.run(train_op)
      late_after, late_averaged = sess.run([variables, average_variables])
  assert step == 1
  for name, w0, g, w1 in zip(names, before, grads, after):
    np.testing.assert_allclose(w1, w0 - 0.1 * g, rtol=1e-5, atol=1e-7)
    assert np.abs(w1 - w0).max() > 1e-6, name  # Every variable learns.
  # The averages start at the initial values and decay by
  # min(0.9999, (1 + step) / (10 + step)), with the step after the update:
  # 2/11 at step 1.
  decay = min(cifar10.MOVING_AVERAGE_DECAY, (1 + 1) / (10 + 1))
  assert decay == pytest.approx(2 / 11)
  for w0, w1, avg in zip(before, after, averaged):
    np.testing.assert_allclose(avg, decay * w0 + (1 - decay) * w1,
                               rtol=1e-5, atol=1e-7)
  assert cifar10.MOVING_AVERAGE_DECAY == 0.9999
  for name, average, w1, avg in zip(names, late_averages, late_after,
                                    late_averaged):
    np.testing.assert_allclose(avg, 0.9999 * average + 0.0001 * w1,
                               rtol=1e-5, atol=1e-7, err_msg=name)
  assert [np.abs(w1 - w0).max() > 1e-6
          for w0, w1 in zip(late_weights, late_after)] == [True] * 10
  # Losses raw and averaged, and the learning rate, are summarised.
  for tag in ['cross_entropy', 'cross_entropy (raw)', 'total_loss',
              'total_loss (raw)', 'local3/weight_loss',
              'local3/weight_loss (raw)', 'local4/weight_loss',
              'local4/weight_loss (raw)', 'learning_rate']:
    assert np.isfinite(summaries[tag].simple_value), tag
  assert summaries['learning_rate'].simple_value == pytest.approx(0.1)
  for layer in ['conv1', 'conv2', 'local3', 'local4', 'softmax_linear']:
    activations = '%s/%s/' % (layer, layer)  # The layer's output op.
    assert 0 <= summaries[activations + 'sparsity'].simple_value <= 1
    assert summaries[activations + 'activations'].histo.num == (
        np.prod(graph_layer_size(layer)) * BATCH)
    assert summaries[layer + '/weights'].histo.num > 0
    assert summaries[layer + '/weights/gradients'].histo.num > 0


def graph_layer_size(layer):
  """Activations per image of a layer."""
  return {'conv1': [24, 24, 64], 'conv2': [12, 12, 64], 'local3': [384],
          'local4': [192], 'softmax_linear': [10]}[layer]


def _one_step(dtype, initial=None):
  """One training step of the model in `dtype` (variables and computation),
  from `initial` weights or the seeded initialiser's: {name: (weights,
  gradient, weights after the step)}."""
  with tf.Graph().as_default():
    tf.set_random_seed(0)
    global_step = tf.train.get_or_create_global_step()
    images = tf.cast(tf.constant(_random_images()), dtype)
    logits = cifar10.inference(images)
    total_loss = cifar10.loss(logits, tf.constant(np.arange(BATCH) % 10))
    train_op = cifar10.train(total_loss, global_step)
    variables = tf.trainable_variables()
    gradients = tf.gradients(total_loss, variables)
    assert {v.dtype.base_dtype for v in variables} == {dtype}
    assert logits.dtype == dtype
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      for v in variables if initial else []:
        sess.run(v.assign(initial[v.op.name][0].astype(dtype.as_numpy_dtype)))
      before, grads = sess.run([variables, gradients])
      sess.run(train_op)
      assert sess.run(global_step) == 1
      after = sess.run(variables)
  return {v.op.name: values for v, values in zip(variables,
                                                 zip(before, grads, after))}


def test_fp16_step_is_the_float32_step():
  # The tutorial's --use_fp16: float16 variables and computation. Its
  # gradients are float32's, to float16's precision (measured, over 10
  # seeds: at most 9.7% off in all, conv1's), and its update is gradient
  # descent, computed in float16 (measured: exactly).
  fp16 = _one_step(tf.float16)
  float32 = _one_step(tf.float32, initial=fp16)
  for name, (weights, gradient, after) in fp16.items():
    exact = float32[name][1]
    assert np.abs(gradient.astype(np.float32) - exact).sum() < (
        0.2 * np.abs(exact).sum()), name
    descent = (weights - np.float16(0.1) * gradient).astype(np.float16)
    np.testing.assert_allclose(after.astype(np.float32),
                               descent.astype(np.float32), rtol=0,
                               atol=np.spacing(np.abs(descent)).max(),
                               err_msg=name)
    assert not np.array_equal(after, weights), name


def learning_rate_of(graph):
  """The learning rate tensor of a training graph: what it summarises."""
  for op in graph.get_operations():
    if (op.type == 'ScalarSummary' and
        tf.get_static_value(op.inputs[0]) == b'learning_rate'):
      return op.inputs[1]
  raise AssertionError('no learning_rate summary')


def _training_graph(kind, params, monkeypatch):
  """The graph the scripts build to train `kind`; returns it, unrun."""
  built = []
  monkeypatch.setattr(runtime, 'run_training',
                      lambda *args, **kwargs: built.append(
                          tf.get_default_graph()))
  if kind == 'one device':
    cifar10_train.train(*resolved(params))
  elif kind == 'two towers':
    cifar10_multi_gpu_train.train(*resolved(params), ['/cpu:0', '/cpu:0'])
  else:  # Two workers, synchronous: one update per two workers' batches.
    params, data, precision = resolved(params)
    optimizers = []
    real_optimizer = tf.train.SyncReplicasOptimizer

    def kept_optimizer(*args, **kwargs):
      optimizers.append(real_optimizer(*args, **kwargs))
      return optimizers[-1]

    monkeypatch.setattr(tf.train, 'SyncReplicasOptimizer', kept_optimizer)
    with tf.Graph().as_default() as graph:
      images, labels = cifar10.distorted_inputs(data, params.batch_size)
      cifar10_distributed_train.build_train_op(
          cifar10.loss(cifar10.inference(images), labels),
          tf.train.get_or_create_global_step(), params,
          data.num_train_examples, precision, is_chief=True, num_workers=2,
          replicas_to_aggregate=2)
    # A session would run its readiness check; this graph is never run
    # (TensorFlow logs an error for a check collected unused).
    for optimizer in optimizers:
      optimizer.ready_for_local_init_op.mark_used()
    built.append(graph)
  return built[0]


@pytest.mark.parametrize('kind, examples_per_step', [
    ('one device', 32), ('two towers', 64), ('two synchronous workers', 64)])
def test_learning_rate_decays_with_the_epochs_of_the_data_used(
    kind, examples_per_step, data_dir, monkeypatch):
  # The tests' data: 5 x 64 = 320 training images, so an epoch is 10 steps
  # of 32 images, or 5 of 64: the rate falls tenfold after 3,500 or 1,750
  # steps (350 epochs), not after CIFAR-10's 136,718.
  params = params_lib.Params(data_dir=data_dir, batch_size=32)
  decay_steps = int(320 / examples_per_step * 350)
  graph = _training_graph(kind, params, monkeypatch)
  with graph.as_default():
    lr = learning_rate_of(graph)
    examples, = [v for v in tf.global_variables()
                 if v.op.name == 'examples_seen']
    with tf.Session() as sess:
      rates = []
      for step in [0, decay_steps - 1, decay_steps, 2 * decay_steps]:
        sess.run(examples.initializer)
        sess.run(examples.assign(step * examples_per_step))
        rates.append(sess.run(lr))
  assert rates == pytest.approx([0.1, 0.1, 0.01, 0.001], rel=1e-6)


LIBRARY_WITHOUT_FLAGS = '''
import cifar10
import json, sys
import numpy as np
import tensorflow.compat.v1 as tf  # cifar10 turned eager execution off.

images = tf.placeholder(tf.float32, [None, 24, 24, 3])
logits = cifar10.inference(images)
parameters = sum(np.prod(v.shape.as_list()) for v in tf.trainable_variables())

data = cifar10.maybe_download_and_extract(sys.argv[1])  # There already.
with tf.Graph().as_default():
  train_images, labels = cifar10.distorted_inputs(
      data, batch_size=16, min_fraction_of_examples_in_queue=0.1)
  eval_images, _ = cifar10.inputs(eval_data=True, data=data, batch_size=16)
  total_loss = cifar10.loss(cifar10.inference(train_images), labels)
  global_step = tf.train.get_or_create_global_step()
  train_op = cifar10.train(total_loss, global_step)
  with tf.train.MonitoredSession() as sess:
    loss, _ = sess.run([total_loss, train_op])
    step = sess.run(global_step)
print(json.dumps({'parameters': int(parameters), 'loss': float(loss),
                  'step': int(step),
                  'shapes': [train_images.shape.as_list(),
                             eval_images.shape.as_list()]}))
'''


def test_the_library_needs_no_flags(data_dir):
  # As from a notebook or a program of one's own: import cifar10 and build,
  # in a fresh Python process, with no flag parsed anywhere.
  result = subprocess.run([sys.executable, '-c', LIBRARY_WITHOUT_FLAGS,
                           data_dir], cwd=REPO_DIR, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  figures = json.loads(result.stdout.splitlines()[-1])
  assert figures['parameters'] == 1068298
  assert figures['step'] == 1
  assert 3 < figures['loss'] < 6
  assert figures['shapes'] == [[16, 24, 24, 3], [None, 24, 24, 3]]
