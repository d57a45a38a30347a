"""Faults the scripts survive, and bad input they answer clearly.

Each failure test checks the message a user sees and that nothing was lost.
"""

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import cifar10
import cifar10_eval
import cifar10_multi_gpu_train
from cifar10_support import checkpoints
from cifar10_support import files
from cifar10_support import runtime
from cifar10_support import scripts
from cifar10_support.quiet import tf
import cifar10_train
from conftest import TRAINED_STEPS
import helpers
from helpers import quick_args
from helpers import resolved
from helpers import run_main

STOP_LINE = r'^Stopped by (SIG\w+) at step (\d+); checkpoint (\S+) saved\.$'


def _snapshot(directory):
  """{file: (size, mtime)} of every file under `directory`."""
  found = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      found[os.path.relpath(path, directory)] = (os.path.getsize(path),
                                                 os.path.getmtime(path))
  return found


def _copy_trained(trained, tmp_path):
  """A copy of the shared training's dir, to change."""
  _, train_dir, _ = trained
  copy = str(tmp_path / 'train')
  shutil.copytree(train_dir, copy)
  return copy


def _checkpoints(train_dir):
  state = tf.train.get_checkpoint_state(train_dir)
  return list(state.all_model_checkpoint_paths) if state else []


# Faults.


def test_sigkill_mid_run_resumes_from_the_newest_complete_checkpoint(
    data_dir, tmp_path, processes):
  train_dir = str(tmp_path / 'train')
  training = processes('cifar10_train.py', '--train_dir=' + train_dir,
                       *helpers.UNTIL_STOPPED, '--save_checkpoint_secs=1',
                       *quick_args(data_dir))
  deadline = time.time() + 90
  while len(_checkpoints(train_dir)) < 3 and time.time() < deadline:
    time.sleep(0.2)
  assert len(_checkpoints(train_dir)) >= 3, training.lines
  os.kill(training.process.pid, signal.SIGKILL)
  assert training.finish() == -signal.SIGKILL

  # Every checkpoint listed is complete; the newest is resumed, at its step,
  # with its moving averages.
  latest = tf.train.latest_checkpoint(train_dir)
  for path in _checkpoints(train_dir):
    helpers.assert_readable(path)
  step = int(tf.train.load_variable(latest, 'global_step'))
  resumed = run_main('cifar10_train.py', '--train_dir=' + train_dir,
                     '--max_steps=%d' % (step + 1), *quick_args(data_dir))
  assert resumed.returncode == 0, resumed.stderr
  assert resumed.stderr == ''
  assert resumed.stdout.splitlines()[0] == 'Resuming from %s, at step %d.' % (
      latest, step)
  after = os.path.join(train_dir, 'model.ckpt-%d' % (step + 1))
  # One update of the averages, with decay min(0.9999, (1 + s) / (10 + s)).
  decay = min(0.9999, (1.0 + step + 1) / (10.0 + step + 1))
  for name in ['local4/weights', 'conv1/biases']:
    average_before = tf.train.load_variable(
        latest, name + '/ExponentialMovingAverage')
    weights_after = tf.train.load_variable(after, name)
    np.testing.assert_allclose(
        tf.train.load_variable(after, name + '/ExponentialMovingAverage'),
        decay * average_before + (1 - decay) * weights_after,
        rtol=1e-5, atol=1e-7)


def test_a_signal_stops_training_with_a_checkpoint_of_the_current_step(
    data_dir, tmp_path, processes):
  # Three trainings at once, each stopped by a signal once it logs.
  runs = [('cifar10_train.py', signal.SIGTERM),
          ('cifar10_train.py', signal.SIGINT),
          ('cifar10_multi_gpu_train.py', signal.SIGTERM)]
  train_dirs = [str(tmp_path / ('train_%d' % i)) for i in range(len(runs))]
  trainings = [processes(script, '--train_dir=' + train_dir,
                         *helpers.UNTIL_STOPPED, *quick_args(data_dir))
               for (script, _), train_dir in zip(runs, train_dirs)]
  for (_, stop_signal), training in zip(runs, trainings):
    training.wait_for_line(helpers.LOG_LINE.pattern)
    os.kill(training.process.pid, stop_signal)
  for (script, stop_signal), training, train_dir in zip(runs, trainings,
                                                        train_dirs):
    assert training.finish() == 128 + stop_signal, script
    assert training.stderr() == ''  # No traceback, from any thread.
    stop = training.wait_for_line(STOP_LINE)
    assert stop.group(1) == stop_signal.name
    step = int(stop.group(2))
    assert stop.group(3) == os.path.join(train_dir, 'model.ckpt-%d' % step)
    assert tf.train.latest_checkpoint(train_dir) == stop.group(3)
    assert tf.train.load_variable(stop.group(3), 'global_step') == step
    # The signal is said once, when it is taken in; the step under way may
    # still log its line before the last one.
    caught = ('Caught %s: stopping cleanly (send it again to stop at once).' %
              stop_signal.name)
    assert training.lines.count(caught) == 1, training.lines
    after = training.lines[training.lines.index(caught) + 1:-1]
    assert all(helpers.LOG_LINE.match(line) for line in after), after


def test_evaluation_beside_training_evaluates_each_checkpoint_once(
    data_dir, tmp_path, processes):
  train_dir = str(tmp_path / 'train')
  evaluation = processes('cifar10_eval.py', '--checkpoint_dir=' + train_dir,
                         '--eval_dir=' + str(tmp_path / 'eval'),
                         '--eval_interval_secs=1',
                         *quick_args(data_dir, training=False))
  evaluation.wait_for_line(r'.*: no checkpoint in --checkpoint_dir=%s yet: '
                           r'train first .* Waiting\.$' % train_dir)
  # Training writes checkpoints as evaluation looks: each run of training
  # adds one (its last), and evaluation must find each, once, in order.
  # Waiting for each evaluation before training on makes this independent
  # of the machine's speed.
  for max_steps in [20, 40]:
    training = run_main('cifar10_train.py', '--train_dir=' + train_dir,
                        '--max_steps=%d' % max_steps,
                        '--save_checkpoint_secs=3600', *quick_args(data_dir))
    assert training.returncode == 0, training.stderr
    evaluation.wait_for_line(r'.*: precision @ 1 = .*, step %d; ' % max_steps)
  time.sleep(2.5)  # More looks at the checkpoints: nothing new to evaluate.
  os.kill(evaluation.process.pid, signal.SIGTERM)
  assert evaluation.finish() == 128 + signal.SIGTERM
  assert evaluation.stderr() == ''
  assert evaluation.lines[-1] == 'Evaluation stopped by SIGTERM.'
  steps = [int(m.group(4)) for m in map(helpers.EVAL_LINE.match,
                                        evaluation.lines) if m]
  # Step 0's checkpoint, written as the first training started, may or may
  # not have been seen before step 20's: nothing else is left to chance.
  assert steps in ([20, 40], [0, 20, 40])


def test_evaluation_skips_a_checkpoint_deleted_before_it_is_read(
    trained, quick_params, tmp_path, capsys, monkeypatch):
  params = quick_params.replace(
      data_dir=trained[0], checkpoint_dir=_copy_trained(trained, tmp_path),
      run_once=False, eval_interval_secs=1)
  newest = os.path.join(params.checkpoint_dir, 'model.ckpt-%d' % TRAINED_STEPS)
  moved = str(tmp_path / 'moved')
  os.makedirs(moved)
  list_newest = tf.train.latest_checkpoint
  looks = []

  def racing_training(checkpoint_dir):
    """The newest checkpoint, as training changes them at the worst times."""
    if len(looks) == 1:
      # ... which appears by the next look.
      for name in os.listdir(moved):
        shutil.move(os.path.join(moved, name), os.path.join(
            checkpoint_dir, name.replace('ckpt-%d' % TRAINED_STEPS,
                                         'ckpt-999')))
      with open(os.path.join(checkpoint_dir, 'checkpoint'), 'w') as f:
        f.write('model_checkpoint_path: "model.ckpt-999"\n'
                'all_model_checkpoint_paths: "model.ckpt-0"\n'
                'all_model_checkpoint_paths: "model.ckpt-999"\n')
    looks.append(list_newest(checkpoint_dir))
    if len(looks) == 1:
      # Keep-last-N deletes the checkpoint just listed, as a newer one is
      # being written...
      for name in os.listdir(checkpoint_dir):
        if name.startswith('model.ckpt-%d.' % TRAINED_STEPS):
          shutil.move(os.path.join(checkpoint_dir, name), moved)
    elif len(looks) == 4:
      os.kill(os.getpid(), signal.SIGINT)  # As a user would, with Ctrl-C.
    return looks[-1]

  monkeypatch.setattr(tf.train, 'latest_checkpoint', racing_training)
  with pytest.raises(scripts.Interrupted) as stop:
    cifar10_eval.evaluate(*resolved(params))
  assert str(stop.value) == 'Evaluation stopped by SIGINT.'
  assert stop.value.signum == signal.SIGINT
  lines = capsys.readouterr().out.splitlines()
  assert re.match(r'^[\d:. -]+: skipping checkpoint %s cannot be read: .+; '
                  r'waiting for the next checkpoint\.$' % newest, lines[0])
  assert helpers.EVAL_LINE.match(lines[1]).group(4) == str(TRAINED_STEPS)
  assert lines[2].startswith('  by class: airplane ')
  assert lines[3] == ('Caught SIGINT: stopping cleanly (send it again to '
                      'stop at once).')
  assert len(lines) == 4  # The new checkpoint was evaluated once.
  assert looks[1:] == [os.path.join(params.checkpoint_dir,
                                    'model.ckpt-999')] * 3


def test_unreadable_newest_checkpoint_is_skipped_not_trusted(
    trained, quick_params, tmp_path, capsys):
  params = quick_params.replace(
      data_dir=trained[0], train_dir=_copy_trained(trained, tmp_path))
  newest = os.path.join(params.train_dir, 'model.ckpt-%d' % TRAINED_STEPS)
  data_file = newest + '.data-00000-of-00001'
  with open(data_file, 'r+b') as f:
    f.truncate(os.path.getsize(data_file) // 2)
  damaged = _snapshot(params.train_dir)[os.path.basename(data_file)]
  params = params.replace(max_steps=5)
  cifar10_train.train(*resolved(params))
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith('Skipping checkpoint %s cannot be read: ' % newest)
  assert lines[1] == 'Resuming from %s, at step 0.' % os.path.join(
      params.train_dir, 'model.ckpt-0')
  assert lines[-1].startswith('Done training: step 5;')
  # The damaged checkpoint is left where it was, for the user to look at.
  assert _snapshot(params.train_dir)[os.path.basename(data_file)] == damaged


def test_no_readable_checkpoint_stops_before_touching_them(
    trained, quick_params, tmp_path):
  params = quick_params.replace(
      data_dir=trained[0], train_dir=_copy_trained(trained, tmp_path))
  for path in _checkpoints(params.train_dir):
    os.remove(path + '.index')
  before = _snapshot(params.train_dir)
  with pytest.raises(checkpoints.CheckpointError) as error:
    cifar10_train.train(*resolved(params))
  assert str(error.value) == (
      'none of the checkpoints in --train_dir=%s can be read (see above). '
      'They were kept: move them away to train from scratch there.' %
      params.train_dir)
  assert _snapshot(params.train_dir) == before


def test_nan_loss_in_multi_device_training(quick_params, capsys):
  params = quick_params.replace(initial_learning_rate=1e9, max_steps=1000)
  with pytest.raises(runtime.NanLossError) as error:
    cifar10_multi_gpu_train.train(
        *resolved(params), devices=['/cpu:0', '/cpu:1'],
        config=tf.ConfigProto(device_count={'CPU': 2},
                              allow_soft_placement=True))
  assert str(error.value).startswith('loss is NaN at step ')
  assert 'the last checkpoint, %s, is kept' % os.path.join(
      params.train_dir, 'model.ckpt-0') in str(error.value)
  assert tf.train.latest_checkpoint(params.train_dir) == os.path.join(
      params.train_dir, 'model.ckpt-0')


def test_an_infinite_loss_stops_training_as_a_nan_does(quick_params):
  # A loss that overflows to inf (float16 computation, a huge logit) stops
  # training at once, as a NaN does: nothing saved after it.
  with tf.Graph().as_default():
    with tf.device('/cpu:0'):
      global_step = tf.train.get_or_create_global_step()
    weights = tf.get_variable('w', initializer=tf.ones([4]))
    loss = tf.reduce_sum(weights) * float('inf')
    train_op = cifar10.train(loss, global_step, examples_per_step=4,
                             examples_per_epoch=4)
    with pytest.raises(runtime.NanLossError) as error:
      runtime.run_training(train_op, loss,
                           quick_params.replace(max_steps=10))
  kept = os.path.join(quick_params.train_dir, 'model.ckpt-0')
  assert str(error.value) == (
      'loss is infinite at step 1: training diverged and was stopped; the '
      'last checkpoint, %s, is kept. Lower the learning rate, or check the '
      'input data.' % kept)
  assert tf.train.latest_checkpoint(quick_params.train_dir) == kept


# Bad data.


@pytest.mark.parametrize('damage, message', [
    ('truncate', '{path} is 9319 bytes, not a whole number of 3073-byte '
                 'CIFAR-10 records (1 label byte + 32x32x3 pixel bytes): the '
                 'file is truncated or not CIFAR-10 binary data. Unpack the '
                 'archive again.'),
    ('label', '{path}: record 1 has label 200, but labels must be 0-9; 1 of its '
              '64 records are out of range. The file is corrupt or not '
              'CIFAR-10 binary data.'),
])
def test_bad_data_stops_training_before_it_starts(damage, message, trained,
                                                  tmp_path):
  data_dir = str(tmp_path / 'data')
  shutil.copytree(trained[0], data_dir)
  train_dir = _copy_trained(trained, tmp_path)
  path = os.path.join(data_dir, 'cifar-10-batches-bin', 'data_batch_3.bin')
  if damage == 'truncate':
    os.truncate(path, 3 * 3073 + 100)  # 3 records and a piece of one.
  else:
    with open(path, 'r+b') as f:
      f.seek(3073)  # The label byte of record 1.
      f.write(bytes([200]))
  before = _snapshot(train_dir)
  result = run_main('cifar10_train.py', '--train_dir=' + train_dir,
                    '--max_steps=%d' % (TRAINED_STEPS + 10),
                    *quick_args(data_dir))
  assert result.returncode == 1
  assert result.stderr == 'Error: %s\n' % message.format(path=path)
  assert result.stdout == ''  # Stopped before the queue, before step one.
  assert _snapshot(train_dir) == before


def test_no_data_and_no_network_says_where_to_put_the_archive(tmp_path):
  data_dir = str(tmp_path / 'nothing')
  result = run_main('cifar10_train.py', '--data_dir=' + data_dir,
                    '--data_url=http://127.0.0.1:9/cifar-10-binary.tar.gz',
                    '--train_dir=' + str(tmp_path / 'train'))
  assert result.returncode == 1
  assert result.stderr.startswith(
      'Error: could not download http://127.0.0.1:9/cifar-10-binary.tar.gz (')
  assert ('put the archive at %s/cifar-10-binary.tar.gz' % data_dir in
          result.stderr)
  assert len(result.stderr.splitlines()) == 1
  assert os.listdir(data_dir) == []


def test_a_missing_batch_file_is_named(trained, tmp_path):
  data_dir = str(tmp_path / 'data')
  shutil.copytree(trained[0], data_dir)
  batches_dir = os.path.join(data_dir, 'cifar-10-batches-bin')
  os.remove(os.path.join(batches_dir, 'data_batch_3.bin'))
  before = _snapshot(data_dir)
  result = run_main(
      'cifar10_train.py', '--train_dir=' + str(tmp_path / 'train'),
      '--data_url=http://127.0.0.1:9/cifar-10-binary.tar.gz',
      *quick_args(data_dir))
  assert result.returncode == 1
  assert result.stdout == ('>> %s: data_batch_3.bin missing; fetching the '
                           'archive.\n' % batches_dir)
  assert result.stderr.startswith('Error: could not download ')
  assert _snapshot(data_dir) == before


# Bad directories.


@pytest.mark.parametrize('script, flag, more_flags', [
    ('cifar10_train.py', 'train_dir', []),
    ('cifar10_eval.py', 'eval_dir', ['--checkpoint_dir=/nonexistent']),
])
def test_a_directory_that_cannot_be_written(script, flag, more_flags, data_dir,
                                            tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  result = run_main(script, '--%s=%s/sub' % (flag, blocker), *more_flags,
                    *quick_args(data_dir,
                                training=script == 'cifar10_train.py'))
  assert result.returncode == 1
  assert result.stderr == ('Error: --%s=%s/sub cannot be created: Not a '
                           'directory.\n' % (flag, blocker))
  assert blocker.read_text() == 'not a directory'


def test_a_directory_that_exists_but_cannot_be_written(tmp_path):
  if os.geteuid() == 0:
    # Root may write anywhere, but not into sysfs: "Permission denied", or,
    # in a container that mounts /sys read-only, "Read-only file system".
    read_only = '/sys'
  else:
    read_only = str(tmp_path / 'read_only')
    os.makedirs(read_only, mode=0o555)
  with pytest.raises(OSError) as refused:  # What the system says here.
    with tempfile.TemporaryFile(dir=read_only):
      pass
  assert refused.value.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
  with pytest.raises(scripts.UserError) as error:
    files.ensure_writable_dir(read_only, 'eval_dir')
  assert str(error.value) == '--eval_dir=%s is not writable: %s.' % (
      read_only, refused.value.strerror)


# Bad checkpoints.


def _save_other_model(directory):
  """A checkpoint of another model: a conv1 of 32 filters of 3x3."""
  with tf.Graph().as_default():
    global_step = tf.train.get_or_create_global_step()
    weights = tf.get_variable('conv1/weights', [3, 3, 3, 32])
    averages = tf.train.ExponentialMovingAverage(0.9999, global_step)
    averages.apply([weights])
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      return tf.train.Saver().save(sess, os.path.join(directory, 'model.ckpt'),
                                   global_step=7)


@pytest.mark.parametrize('script', ['cifar10_eval.py', 'cifar10_predict.py',
                                    'cifar10_export.py'])
def test_reading_another_models_checkpoint(script, data_dir, tmp_path):
  other = _save_other_model(str(tmp_path / 'other'))
  args = {'cifar10_eval.py': ['--run_once',
                              '--eval_dir=' + str(tmp_path / 'eval')] +
                             quick_args(data_dir, training=False),
          'cifar10_predict.py': [str(tmp_path / 'image.png')],
          'cifar10_export.py': ['--export_dir=' + str(tmp_path / 'export')]}
  result = run_main(script, '--checkpoint_dir=' + str(tmp_path / 'other'),
                    *args[script])
  assert result.returncode == 1
  assert result.stderr == (
      'Error: checkpoint %s is not one of this model: it has no '
      'conv1/biases/ExponentialMovingAverage (nor 8 other variables).\n' %
      other)
  assert result.stdout == ''
  assert not os.path.exists(tmp_path / 'export')


def test_training_on_another_models_checkpoint(quick_params, tmp_path):
  params = quick_params
  other = _save_other_model(params.train_dir)
  before = _snapshot(params.train_dir)
  with pytest.raises(checkpoints.CheckpointError) as error:
    cifar10_train.train(*resolved(params))
  assert str(error.value) == (
      '--train_dir=%s holds checkpoints of another model: checkpoint %s is '
      'not one of this model: it has no conv1/biases (nor 29 other '
      'variables). Train in another --train_dir.' % (params.train_dir, other))
  assert _snapshot(params.train_dir) == before


def test_evaluating_a_corrupt_checkpoint(trained, tmp_path):
  data_dir, _, _ = trained
  train_dir = _copy_trained(trained, tmp_path)
  newest = os.path.join(train_dir, 'model.ckpt-%d' % TRAINED_STEPS)
  with open(newest + '.index', 'r+b') as f:
    f.seek(100)
    f.write(b'\xff' * 64)
  result = run_main('cifar10_eval.py', '--run_once',
                    '--checkpoint_dir=' + train_dir,
                    '--eval_dir=' + str(tmp_path / 'eval'),
                    *quick_args(data_dir, training=False))
  assert result.returncode == 1
  assert result.stderr.startswith('Error: checkpoint %s cannot be read: ' %
                                  newest)
  assert len(result.stderr.splitlines()) == 1


def test_evaluation_stops_cleanly_while_waiting(tmp_path, data_dir,
                                                processes):
  stop_signals = [signal.SIGTERM, signal.SIGINT]
  evaluations = [processes('cifar10_eval.py',
                           '--checkpoint_dir=' + str(tmp_path / 'none'),
                           '--eval_dir=' + str(tmp_path / stop_signal.name),
                           *quick_args(data_dir, training=False))
                 for stop_signal in stop_signals]
  for stop_signal, evaluation in zip(stop_signals, evaluations):
    evaluation.wait_for_line(r'.*no checkpoint in --checkpoint_dir=')
    started = time.time()
    os.kill(evaluation.process.pid, stop_signal)
    assert evaluation.finish() == 128 + stop_signal
    assert time.time() - started < 30  # Not after the 300 s interval.
    assert evaluation.stderr() == ''
    assert evaluation.lines[-1] == ('Evaluation stopped by %s.' %
                                    stop_signal.name)


@pytest.mark.parametrize('stop_signal', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_an_evaluation_pass_writes_nothing(
    stop_signal, trained, quick_params, tmp_path, capsys, monkeypatch):
  # 25 batches of the 250 test images.
  params = quick_params.replace(
      data_dir=trained[0], checkpoint_dir=trained[1], batch_size=10)
  batches = []
  stop_signals = []

  class SeenStopSignals(scripts.StopSignals):

    def __enter__(self):
      stop_signals.append(self)
      return super().__enter__()

  class SignalAfterTheFirstBatch(object):
    """numpy for cifar10_eval, which counts each batch with np.bincount."""

    def __getattr__(self, name):
      return getattr(np, name)

    def bincount(self, *args, **kwargs):
      batches.append(1)
      if len(batches) == 1:
        os.kill(os.getpid(), stop_signal)  # As a user would.
        # The signal is taken in (by a thread) before batch 2.
        assert stop_signals[0].wait(60)
      return np.bincount(*args, **kwargs)

  monkeypatch.setattr(scripts, 'StopSignals', SeenStopSignals)
  monkeypatch.setattr(cifar10_eval, 'np', SignalAfterTheFirstBatch())
  with pytest.raises(scripts.Interrupted) as stop:
    cifar10_eval.evaluate(*resolved(params))
  assert str(stop.value) == 'Evaluation stopped by %s.' % stop_signal.name
  assert stop.value.signum == stop_signal
  assert capsys.readouterr().out.splitlines() == [
      'Caught %s: stopping cleanly (send it again to stop at once).' %
      stop_signal.name]
  # Two counts (labels seen, labels right) per batch: the pass stopped after
  # its first batch, of 25.
  assert len(batches) == 2
  # The event file holds the graph, and no result of the pass cut short.
  events = [e for name in os.listdir(params.eval_dir)
            for e in tf.train.summary_iterator(
                os.path.join(params.eval_dir, name))]
  assert any(e.HasField('graph_def') for e in events)
  assert not [v for e in events for v in e.summary.value]


BLOCKED_IN_TENSORFLOW = """
from cifar10_support import scripts
from cifar10_support.quiet import tf
queue = tf.FIFOQueue(1, tf.int32)
with tf.Session() as session, scripts.StopSignals(
    lambda: 'the last checkpoint, model.ckpt-7, is kept'):
  print('Waiting for a batch that never comes.', flush=True)
  session.run(queue.dequeue())
"""


def test_a_second_signal_stops_at_once_while_tensorflow_waits(processes):
  # A step waiting for its input holds the main thread in TensorFlow: the
  # first Ctrl-C is taken in, the second ends the process, without a wait.
  blocked = processes('-c', BLOCKED_IN_TENSORFLOW)
  blocked.wait_for_line(r'^Waiting for a batch that never comes\.$')
  os.kill(blocked.process.pid, signal.SIGINT)
  blocked.wait_for_line(r'^Caught SIGINT: stopping cleanly \(send it again '
                        r'to stop at once\)\.$')
  started = time.time()
  os.kill(blocked.process.pid, signal.SIGINT)
  # At once: a clean stop would wait for ever for the batch.
  assert blocked.finish(timeout=60) == 128 + signal.SIGINT
  assert time.time() - started < 30
  assert blocked.lines[-1] == ('Caught SIGINT while stopping: stopped at once; '
                               'the last checkpoint, model.ckpt-7, is kept.')
  assert blocked.stderr() == ''


TWO_THREADS_PRINTING = """
from cifar10_support import scripts
import threading

def print_lines(text):
  for count in range(5000):
    print(text * (1 + count % 40), flush=True)

def main(argv):
  # As the signal watcher or the queue warm-up's progress does, beside the
  # main thread's log lines.
  thread = threading.Thread(target=print_lines, args=('a',))
  thread.start()
  print_lines('b')
  thread.join()

scripts.run(main)
"""


def test_lines_printed_by_two_threads_are_whole():
  # Written through (PYTHONUNBUFFERED=1, set on these machines), a line and
  # its newline were two writes: about 1 in 8 lines came out joined to
  # another thread's ('Caught SIGTERM: ...Evaluation stopped by SIGTERM.',
  # then ''), about 1,250 of these 10,000.
  result = subprocess.run(
      [sys.executable, '-c', TWO_THREADS_PRINTING], cwd=helpers.REPO_DIR,
      env=dict(os.environ, PYTHONUNBUFFERED='1'), capture_output=True,
      text=True, check=True)
  lines = result.stdout.splitlines()
  assert len(lines) == 10000
  assert [line for line in lines
          if line.strip('a') and line.strip('b')] == []


PRINTING_ON = """
from cifar10_support import scripts

def main(argv):
  count = 0
  while True:
    print('line %d' % count)
    count += 1

if __name__ == '__main__':
  scripts.run(main)
"""


def test_a_script_whose_reader_has_gone_stops_without_a_traceback():
  # `cifar10_predict.py *.png | head -1`: once head has its line and ends,
  # the script stops, as a shell's tools do (status 141, SIGPIPE's), with no
  # traceback and no complaint.
  process = subprocess.Popen(
      [sys.executable, '-c', PRINTING_ON], cwd=helpers.REPO_DIR,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert process.stdout.readline() == 'line 0\n'
  process.stdout.close()
  stderr = process.stderr.read()
  assert process.wait(timeout=60) == 128 + signal.SIGPIPE
  assert stderr == ''


def test_a_second_signal_during_training_keeps_the_last_checkpoint(
    data_dir, tmp_path, processes):
  train_dir = str(tmp_path / 'train')
  training = processes('cifar10_train.py', '--train_dir=' + train_dir,
                       *helpers.UNTIL_STOPPED, *quick_args(data_dir))
  training.wait_for_line(helpers.LOG_LINE.pattern)
  # Two signals at once: the process takes them in either order.
  os.kill(training.process.pid, signal.SIGINT)
  os.kill(training.process.pid, signal.SIGTERM)
  status = training.finish()
  assert training.stderr() == ''
  first = training.wait_for_line(r'^Caught (SIG\w+): stopping cleanly \(send '
                                 r'it again to stop at once\)\.$').group(1)
  second = ({'SIGINT', 'SIGTERM'} - {first}).pop()
  # However far the clean stop got, every checkpoint listed is whole, and
  # the last line says which one is kept.
  latest = tf.train.latest_checkpoint(train_dir)
  for path in _checkpoints(train_dir):
    helpers.assert_readable(path)
  if status == 128 + signal.Signals[second]:
    assert training.lines[-1] == (
        'Caught %s while stopping: stopped at once; the last checkpoint, '
        '%s, is kept.' % (second, latest))
  else:  # The clean stop was done before the second signal was taken in.
    assert status == 128 + signal.Signals[first]
    assert re.match(STOP_LINE, training.lines[-1]).group(3) == latest


def test_what_a_killed_training_half_wrote_is_removed(trained, quick_params,
                                                      tmp_path, capsys):
  # What TensorFlow leaves when killed while saving: a checkpoint's folder
  # of parts, the 'checkpoint' file's and the graph's temporary files.
  params = quick_params.replace(
      data_dir=trained[0], train_dir=_copy_trained(trained, tmp_path),
      max_steps=TRAINED_STEPS + 1)
  half_written = ['checkpoint.tmp' + 'a' * 32, 'graph.pbtxt.tmp' + 'b' * 32,
                  'model.ckpt-%d_temp' % (TRAINED_STEPS + 5)]
  for name in half_written[:2]:
    with open(os.path.join(params.train_dir, name), 'w') as f:
      f.write('half')
  os.makedirs(os.path.join(params.train_dir, half_written[2]))
  cifar10_train.train(*resolved(params))
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == ('Removed %s: half-written by a run that stopped while '
                      'writing it.' % ', '.join(sorted(half_written)))
  assert lines[1] == 'Resuming from %s, at step %d.' % (
      os.path.join(params.train_dir, 'model.ckpt-%d' % TRAINED_STEPS),
      TRAINED_STEPS)
  assert not set(half_written) & set(os.listdir(params.train_dir))
