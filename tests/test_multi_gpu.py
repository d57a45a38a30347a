"""Multi-device training: towers on two CPU devices of this machine."""

import datetime
import os
import re
import shutil

import numpy as np
import pytest

import cifar10
import cifar10_eval
import cifar10_input
import cifar10_multi_gpu_train
from cifar10_support import data as data_lib
from cifar10_support import params as params_lib
from cifar10_support.quiet import tf
import cifar10_train
from conftest import LEARNING_RATE
from conftest import TRAINED_BATCH_SIZE
from conftest import TRAINED_STEPS
import helpers
from helpers import resolved

TWO_CPUS = ['/cpu:0', '/cpu:1']
# CIFAR-10's classes and sizes, for a graph fed with batches of the test's
# own: no file is read.
CIFAR10 = data_lib.DataSet(batches_dir='')


def _two_cpu_config(**kwargs):
  """A session with two CPU devices: real multi-device placement here."""
  return tf.ConfigProto(device_count={'CPU': 2}, **kwargs)


def _shadow(variable):
  """The moving average of a trainable variable."""
  graph_variables = {v.op.name: v for v in tf.global_variables()}
  return graph_variables[variable.op.name + '/ExponentialMovingAverage']


def _one_step(build, initial_values, config):
  """Builds a graph with `build`, sets the weights, runs one training step.

  Args:
    build: Returns (train_op, total_loss, gradient tensors), given the global
      step.
    initial_values: {variable name: value}, or None to keep the initialiser's.
    config: The session's ConfigProto.

  Returns:
    Dict of numpy results: 'initial', 'loss', 'grads', 'after', 'averages'
    (lists in the order of the trainable variables) and 'step'.
  """
  with tf.Graph().as_default():
    global_step = tf.train.get_or_create_global_step()
    train_op, total_loss, grads = build(global_step)
    variables = tf.trainable_variables()
    shadows = [_shadow(v) for v in variables]
    with tf.Session(config=config) as sess:
      sess.run(tf.global_variables_initializer())
      if initial_values:
        for v, shadow in zip(variables, shadows):
          v.load(initial_values[v.op.name], sess)
          shadow.load(initial_values[v.op.name], sess)
      initial = sess.run(variables)
      loss, grad_values = sess.run([total_loss, grads])
      sess.run(train_op)
      after, averages, step = sess.run([variables, shadows, global_step])
  return dict(initial=initial, loss=loss, grads=grad_values, after=after,
              averages=averages, step=step,
              names=[v.op.name for v in variables])


def test_two_towers_of_64_update_as_one_tower_of_128():
  rng = np.random.default_rng(7)
  images = rng.normal(size=(128, 24, 24, 3)).astype(np.float32)
  labels = rng.integers(0, 10, size=128).astype(np.int32)

  def single_tower(global_step):
    logits = cifar10.inference(tf.constant(images))
    total_loss = cifar10.loss(logits, tf.constant(labels))
    train_op = cifar10.train(total_loss, global_step)
    return train_op, total_loss, tf.gradients(total_loss,
                                              tf.trainable_variables())

  def two_towers(global_step):
    def halves(tower):
      part = slice(64 * tower, 64 * (tower + 1))
      return tf.constant(images[part]), tf.constant(labels[part])
    train_op, total_loss, grads = (
        cifar10_multi_gpu_train.build_training_graph(
            halves, TWO_CPUS, global_step, params_lib.Params(batch_size=64),
            CIFAR10, params_lib.Precision()))
    by_variable = {v.op.name: g for g, v in grads}
    return train_op, total_loss, [by_variable[v.op.name]
                                  for v in tf.trainable_variables()]

  single = _one_step(single_tower, None, tf.ConfigProto())
  towers = _one_step(two_towers, dict(zip(single['names'], single['initial'])),
                     _two_cpu_config())

  assert towers['names'] == single['names']
  assert single['step'] == towers['step'] == 1
  assert towers['loss'] == pytest.approx(single['loss'], rel=1e-5)
  for name, g1, g2 in zip(single['names'], single['grads'], towers['grads']):
    scale = np.abs(g1).max()
    np.testing.assert_allclose(g2, g1, rtol=1e-4, atol=1e-5 * scale,
                               err_msg=name)
  for key in ['after', 'averages']:
    for name, v1, v2 in zip(single['names'], single[key], towers[key]):
      np.testing.assert_allclose(v2, v1, rtol=1e-5, atol=1e-7, err_msg=name)


def test_variables_live_once_on_the_cpu_and_towers_on_their_devices(
    quick_params, tmp_path):
  with tf.Graph().as_default() as graph, tf.device('/cpu:0'):
    global_step = tf.train.get_or_create_global_step()
    params, data, precision = resolved(quick_params)
    images, labels = cifar10.distorted_inputs(
        data, params.batch_size, min_fraction_of_examples_in_queue=(
            params.min_fraction_of_examples_in_queue))
    batch_queue = cifar10_input.prefetch_batches(
        [images, labels], capacity=4)
    train_op, _, _ = cifar10_multi_gpu_train.build_training_graph(
        lambda tower: batch_queue.dequeue(), TWO_CPUS, global_step, params,
        data, precision)
    variables = tf.global_variables()
    trainable = tf.trainable_variables()
    op_types = [op.type for op in graph.get_operations()]
    queue_names = [runner.queue.name for runner in
                   tf.get_collection(tf.GraphKeys.QUEUE_RUNNERS)]
    saver = tf.train.Saver()
    with tf.Session(config=_two_cpu_config()) as sess:
      sess.run(tf.global_variables_initializer())
      coord = tf.train.Coordinator()
      threads = tf.train.start_queue_runners(sess, coord)
      run_metadata = tf.RunMetadata()
      sess.run(train_op, options=tf.RunOptions(
          trace_level=tf.RunOptions.FULL_TRACE), run_metadata=run_metadata)
      saved = saver.save(sess, str(tmp_path / 'model.ckpt'))
      coord.request_stop()
      coord.join(threads, stop_grace_period_secs=5)

  names = [v.op.name for v in variables]
  assert len(names) == len(set(names))
  assert not [n for n in names if n.startswith('tower_')]
  assert len(trainable) == 10
  for v in variables:
    assert v.device.upper().endswith('CPU:0'), (v.op.name, v.device)
  # In the checkpoint too, every variable once, under its plain name.
  stored = [name for name, _ in tf.train.list_variables(saved)]
  assert sorted(stored) == sorted(names)

  # Where the ops ran: each tower's convolutions on its own device.
  placed = {}
  for device in run_metadata.step_stats.dev_stats:
    for node in device.node_stats:
      placed[node.node_name] = device.device.upper()
  for tower, device in enumerate(['CPU:0', 'CPU:1']):
    convolutions = [n for n in placed if n.startswith('tower_%d/' % tower) and
                    n.endswith(('Conv2D', 'Conv2DBackpropFilter',
                                'Conv2DBackpropInput'))]
    assert len(convolutions) >= 3, sorted(placed)
    assert {placed[n][-5:] for n in convolutions} == {device}
  # One input pipeline: one reader, and three queues: of file names, of
  # shuffled images, of whole batches.
  assert op_types.count('FixedLengthRecordReaderV2') == 1
  assert sorted(queue_names) == ['batch_prefetch/fifo_queue',
                                 'input_producer',
                                 'shuffle_batch/random_shuffle_queue']


def test_two_tower_training_learns_and_is_evaluated(quick_params, capsys):
  # Per tower.
  params = quick_params.replace(
      batch_size=TRAINED_BATCH_SIZE // 2, max_steps=TRAINED_STEPS,
      initial_learning_rate=LEARNING_RATE)
  cifar10_multi_gpu_train.train(
      *resolved(params), TWO_CPUS, _two_cpu_config(allow_soft_placement=True))
  lines = capsys.readouterr().out.splitlines()
  # The shared queue is filled once, for both towers.
  assert [l for l in lines if l.startswith('Filling the input queue with')] == [
      'Filling the input queue with 200 CIFAR images before starting to train.']
  logged = [(l, helpers.LOG_LINE.match(l)) for l in lines]
  logged = [(l, m) for l, m in logged if m]
  assert [int(m.group(1)) for _, m in logged] == list(
      range(10, TRAINED_STEPS + 1, 10))
  # examples/sec counts both towers' images, sec/batch both towers'
  # batches: checked against the clock. Each line says when it was printed,
  # and covers the 10 steps since the line before (the first, steps 2 to
  # 10): over all lines but the first, the figures printed must add up to
  # the time between the first and the last.
  printed_at = [datetime.datetime.strptime(l.split(': step')[0],
                                           '%Y-%m-%d %H:%M:%S.%f')
                for l, _ in logged]
  elapsed = (printed_at[-1] - printed_at[0]).total_seconds()
  later = [m for _, m in logged[1:]]
  by_examples_per_sec = sum(10 * 2 * 32 / float(m.group(3)) for m in later)
  by_sec_per_batch = sum(10 * 2 * float(m.group(4)) for m in later)
  assert by_examples_per_sec == pytest.approx(elapsed, rel=0.1)
  assert by_sec_per_batch == pytest.approx(elapsed, rel=0.1)

  last = os.path.join(params.train_dir, 'model.ckpt-%d' % TRAINED_STEPS)
  initial = helpers.cross_entropy_on_test_set(
      os.path.join(params.train_dir, 'model.ckpt-0'), params.data_dir)
  final = helpers.cross_entropy_on_test_set(last, params.data_dir)
  assert final < 0.5 * initial

  cifar10_eval.evaluate(*resolved(params))
  match = helpers.EVAL_LINE.match(capsys.readouterr().out.splitlines()[0])
  assert match
  assert match.group(3, 4) == ('250', str(TRAINED_STEPS))
  assert float(match.group(1)) > 0.5


def test_checkpoints_are_interchangeable_with_single_device_training(
    trained, quick_params, capsys):
  data_dir, single_device_dir, _ = trained
  params = quick_params.replace(data_dir=data_dir,
                                max_steps=TRAINED_STEPS + 20)
  shutil.copytree(single_device_dir, params.train_dir)
  cifar10_multi_gpu_train.train(
      *resolved(params), TWO_CPUS, _two_cpu_config(allow_soft_placement=True))
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == 'Resuming from %s, at step %d.' % (
      os.path.join(params.train_dir, 'model.ckpt-%d' % TRAINED_STEPS),
      TRAINED_STEPS)
  assert tf.train.load_variable(tf.train.latest_checkpoint(params.train_dir),
                                'global_step') == TRAINED_STEPS + 20
  params = params.replace(max_steps=TRAINED_STEPS + 30)
  cifar10_train.train(*resolved(params))
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == 'Resuming from %s, at step %d.' % (
      os.path.join(params.train_dir, 'model.ckpt-%d' % (TRAINED_STEPS + 20)),
      TRAINED_STEPS + 20)
  assert lines[-1].startswith('Done training: step %d;' % (TRAINED_STEPS + 30))


def test_script_on_a_machine_without_gpus(data_dir, tmp_path):
  result = helpers.run_script(
      'cifar10_multi_gpu_train.py', '--num_gpus=2', '--max_steps=10',
      '--train_dir=' + str(tmp_path / 'train'),
      *helpers.quick_args(data_dir))
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''
  lines = result.stdout.splitlines()
  assert lines[0] == ('--num_gpus=2, but no GPU found: all 2 towers run on '
                      'the CPU.')
  assert sum('GPU' in l for l in lines) == 1
  assert re.match(r'.*: step 10, loss = ', lines[-2])
  assert lines[-1].startswith('Done training: step 10;')


def test_num_gpus_below_one_is_refused():
  result = helpers.run_main('cifar10_multi_gpu_train.py', '--num_gpus=0')
  assert result.returncode == 2
  assert result.stderr == ('Error: flag --num_gpus=0: 0 is not a positive '
                           'integer (see --helpshort)\n')


def _rewritten(checkpoint, train_dir, changes, dropped=()):
  """A copy of `checkpoint` into train_dir, some values changed, some
  variables dropped (as a checkpoint of an earlier version lacks them);
  returns its path."""
  reader = tf.train.load_checkpoint(checkpoint)
  with tf.Graph().as_default():
    variables = [tf.Variable(changes.get(name, reader.get_tensor(name)),
                             name=name)
                 for name in sorted(reader.get_variable_to_shape_map())
                 if name not in dropped]
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      return tf.train.Saver(variables).save(
          sess, os.path.join(train_dir, 'model.ckpt'),
          global_step=changes['global_step'])


def _learning_rates(train_dir):
  """{step: the learning rate summarised at it}."""
  rates = {}
  for path in helpers.event_files(train_dir):
    for event in tf.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == 'learning_rate':
          rates[event.step] = value.simple_value
  return rates


@pytest.mark.parametrize('counted', [True, False])
def test_resumed_with_more_examples_per_step_the_schedule_keeps_to_the_epochs(
    counted, trained, quick_params):
  # A checkpoint of 1,800 steps of 64 images (cifar10_train.py's, at
  # TRAINED_BATCH_SIZE): 115,200 images, 360 epochs of the small data, past
  # the first tenfold decay (at 350). Resumed by two towers of 64 (128 an
  # update), the rate is where the epochs say: decayed once, not twice (as
  # 1,800 steps of 128, 720 epochs, would say). A checkpoint of an earlier
  # version counted no examples: its steps are taken as the resumed
  # training's, as that version did.
  data_dir, single_device_dir, _ = trained
  assert TRAINED_BATCH_SIZE == 64
  params = quick_params.replace(
      data_dir=data_dir, batch_size=64, max_steps=1801,
      save_summaries_steps=1, initial_learning_rate=LEARNING_RATE)
  os.makedirs(params.train_dir)
  shutil.copy(os.path.join(single_device_dir, 'batches.meta.txt'),
              params.train_dir)
  _rewritten(tf.train.latest_checkpoint(single_device_dir), params.train_dir,
             {'global_step': np.int64(1800),
              'examples_seen': np.int64(1800 * 64)},
             dropped=() if counted else ('examples_seen',))
  cifar10_multi_gpu_train.train(
      *resolved(params), TWO_CPUS, _two_cpu_config(allow_soft_placement=True))
  decays = 1 if counted else 2
  assert _learning_rates(params.train_dir)[1801] == pytest.approx(
      LEARNING_RATE * 0.1 ** decays, rel=1e-5)
  # Counted on from there: 128 examples the update.
  assert tf.train.load_variable(
      tf.train.latest_checkpoint(params.train_dir), 'examples_seen') == (
          1800 * (64 if counted else 128) + 128)
