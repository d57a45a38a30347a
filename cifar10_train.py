# Copyright 2015 The TensorFlow Authors. All Rights Reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
# ==============================================================================

"""A binary to train CIFAR-10 using a single GPU.

Accuracy:
cifar10_train.py achieves ~86%% accuracy after 100K steps (256 epochs of
data) as judged by cifar10_eval.py.

Speed: With batch_size 128.

System        | Step Time (sec/batch)  |     Accuracy
------------------------------------------------------------------
1 Tesla K20m  | 0.35-0.60              | ~86%% at 60K steps  (5 hours)
1 Tesla K40m  | 0.25-0.35              | ~86%% at 100K steps (4 hours)

Usage:
Please see the tutorial and website for how to download the CIFAR-10
data set, compile the program and train the model.

http://tensorflow.org/tutorials/deep_cnn/

Unlike the classic script, this one never deletes --train_dir: run it again
and it resumes from the latest checkpoint there, at its global step. The
training loop (`run_training`) is shared with cifar10_multi_gpu_train.py.
"""

from datetime import datetime
import math
import threading
import time

from absl import flags

import cifar10
import cifar10_common
from cifar10_common import tf
from cifar10_common import UserError
import cifar10_input

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(cifar10)  # --helpshort lists the model's flags.

flags.DEFINE_string('train_dir', '/tmp/cifar10_train',
                    'Directory where to write event logs and checkpoints.')
flags.DEFINE_integer('max_steps', 1000000,
                     'Number of batches to run (the global step to stop at).',
                     lower_bound=1)
flags.DEFINE_boolean('log_device_placement', False,
                     'Whether to log device placement.')
flags.DEFINE_integer('log_frequency', 10,
                     'How often to log results to the console.', lower_bound=1)
flags.DEFINE_integer('save_checkpoint_secs', 600,
                     'Seconds between checkpoints (one is always written at '
                     'the end).', lower_bound=1)
flags.DEFINE_integer('save_summaries_steps', 100,
                     'Steps between two writes of the TensorBoard summaries.',
                     lower_bound=1)


class NanLossError(UserError):
  """The loss became NaN: training diverged."""


class _LoggerHook(tf.train.SessionRunHook):
  """Logs loss and runtime, and stops training the moment the loss is NaN.

  In one process, the steps are counted here. A worker of a distributed
  training (`worker_name` given) logs every --log_frequency of its own steps,
  with its own speed and the global step, which the other workers advance
  too.
  """

  def __init__(self, loss, batches_per_step, log_frequency, summary_dir,
               worker_name=None):
    self._loss = loss
    self._batches_per_step = batches_per_step
    self._log_frequency = log_frequency
    self._summary_dir = summary_dir
    self._worker_name = worker_name

  def begin(self):
    self._global_step_tensor = tf.train.get_global_step()

  def after_create_session(self, session, coord):
    # Steps are counted here, not read back while the train op increments
    # the global step in the same run.
    self.step = session.run(self._global_step_tensor)
    self._own_steps = 0
    self._last_log_step = None
    self._last_log_time = None

  def before_run(self, run_context):
    return tf.train.SessionRunArgs(self._loss)

  def after_run(self, run_context, run_values):
    self._own_steps += 1
    if self._worker_name is None:
      self.step += 1
    loss_value = run_values.results
    if math.isnan(loss_value):
      self._read_global_step(run_context.session)
      raise NanLossError(nan_loss_message(self.step, FLAGS.train_dir))
    now = time.time()
    if self._last_log_step is None:
      # The first step includes the input queue's warm-up: time from here.
      self._last_log_step, self._last_log_time = self._own_steps, now
      return
    if self._own_steps % self._log_frequency == 0:
      batches = (self._own_steps - self._last_log_step) * self._batches_per_step
      duration = now - self._last_log_time
      examples_per_sec = FLAGS.batch_size * batches / duration
      sec_per_batch = duration / batches
      if self._worker_name is None:
        format_str = ('%s: step %d, loss = %.2f (%.1f examples/sec; %.3f '
                      'sec/batch)')
      else:
        self._read_global_step(run_context.session)
        format_str = ('%s: ' + self._worker_name + ': global step %d, loss = '
                      '%.2f (%.1f examples/sec of this worker; %.3f '
                      'sec/batch)')
      print(format_str % (datetime.now(), self.step, loss_value,
                          examples_per_sec, sec_per_batch), flush=True)
      if self._summary_dir:
        tf.summary.FileWriterCache.get(self._summary_dir).add_summary(
            tf.Summary(value=[tf.Summary.Value(
                tag='examples_per_sec', simple_value=examples_per_sec)]),
            self.step)
      self._last_log_step, self._last_log_time = self._own_steps, now

  def end(self, session):
    self._read_global_step(session)

  def _read_global_step(self, session):
    """A worker's step is the global step: read it (one more round trip)."""
    if self._worker_name is not None:
      self.step = session.run(self._global_step_tensor)


def kept_checkpoint(train_dir):
  """What a run stopped before its end keeps: its last checkpoint, if any."""
  latest = tf.train.latest_checkpoint(train_dir)
  return ('the last checkpoint, %s, is kept' % latest if latest
          else 'no checkpoint had been written yet')


def nan_loss_message(step, train_dir):
  """What to tell the user when the loss turns NaN at `step`."""
  return ('loss is NaN at step %d: training diverged and was stopped; %s. '
          'Lower the learning rate, or check the input data.' %
          (step, kept_checkpoint(train_dir)))


class _QueueWarmupHook(tf.train.SessionRunHook):
  """Reports how the shuffling input queues fill until the first step runs.

  Training waits for them: each must hold its minimum number of images
  (`min_after_dequeue`, 40% of an epoch by default) before a batch comes out.
  """

  def __init__(self, report_interval_secs=2.0):
    self._report_interval_secs = report_interval_secs

  def begin(self):
    shuffle_queues = [
        runner.queue for runner in tf.get_collection(tf.GraphKeys.QUEUE_RUNNERS)
        if runner.queue.queue_ref.op.type.startswith('RandomShuffleQueue')]
    self._queued_images = [queue.size() for queue in shuffle_queues]
    self._target = sum(queue.queue_ref.op.get_attr('min_after_dequeue')
                       for queue in shuffle_queues)
    self._filled = None

  def after_create_session(self, session, coord):
    if not self._queued_images:
      return
    self._filled = threading.Event()
    self._start_time = time.time()
    print('Filling the input queue with %d CIFAR images before starting to '
          'train.' % self._target, flush=True)
    self._reporter = threading.Thread(target=self._report, args=(session,),
                                      name='queue_warmup_reporter', daemon=True)
    self._reporter.start()

  def _report(self, session):
    while not self._filled.wait(self._report_interval_secs):
      try:
        queued = sum(session.run(self._queued_images))
      except (tf.errors.OpError, RuntimeError):
        return  # The session is closing.
      if not self._filled.is_set():
        print('Filling the input queue: %d of %d images (%.0f s)' %
              (min(queued, self._target), self._target,
               time.time() - self._start_time), flush=True)

  def _stop_reporting(self):
    """Stops the reports; returns True the first time."""
    if self._filled is None or self._filled.is_set():
      return False
    self._filled.set()
    self._reporter.join()
    return True

  def after_run(self, run_context, run_values):
    if self._stop_reporting():
      print('Input queue filled; first step done in %.1f s.' %
            (time.time() - self._start_time), flush=True)

  def end(self, session):
    self._stop_reporting()


def session_config(**kwargs):
  """The session configuration of the training scripts.

  Args:
    **kwargs: more ConfigProto fields.

  Returns:
    A tf.ConfigProto.
  """
  return tf.ConfigProto(log_device_placement=FLAGS.log_device_placement,
                        **kwargs)


def checkpoint_to_resume(train_dir, expected_shapes):
  """The newest checkpoint in `train_dir` that can be read, if any.

  A checkpoint whose files are missing or damaged is skipped, with a message,
  for the one before; it is never trusted.

  Args:
    train_dir: The training directory.
    expected_shapes: {variable name: shape} of the model being trained.

  Returns:
    The checkpoint's path, or None if there is no checkpoint.

  Raises:
    CheckpointError: the checkpoints are of another model, or none of them
      can be read.
  """
  state = tf.train.get_checkpoint_state(train_dir)
  if not state or not state.model_checkpoint_path:
    return None
  candidates = [state.model_checkpoint_path] + [
      path for path in reversed(state.all_model_checkpoint_paths)
      if path != state.model_checkpoint_path]
  for path in candidates:
    try:
      cifar10.check_checkpoint(path, expected_shapes)
      return path
    except cifar10_common.CheckpointUnreadable as e:
      print('Skipping %s.' % e, flush=True)
    except cifar10_common.CheckpointError as e:
      raise cifar10_common.CheckpointError(
          '--train_dir=%s holds checkpoints of another model: %s Train in '
          'another --train_dir.' % (train_dir, e)) from None
  raise cifar10_common.CheckpointError(
      'none of the checkpoints in --train_dir=%s can be read (see above). '
      'They were kept: move them away to train from scratch there.' %
      train_dir)


class _WorkerSessionCreator(tf.train.SessionCreator):
  """A worker's session: waits until the chief has set up the variables.

  tf.train.WorkerSessionCreator does this too, but looks every 30 s; this
  looks every second.
  """

  def __init__(self, scaffold, master, config, max_wait_secs=30 * 60):
    self._scaffold = scaffold
    self._master = master
    self._config = config
    self._max_wait_secs = max_wait_secs

  def create_session(self):
    self._scaffold.finalize()
    session_manager = tf.train.SessionManager(
        local_init_op=self._scaffold.local_init_op,
        ready_op=self._scaffold.ready_op,
        ready_for_local_init_op=self._scaffold.ready_for_local_init_op,
        graph=tf.get_default_graph(), recovery_wait_secs=1)
    return session_manager.wait_for_session(
        self._master, config=self._config, max_wait_secs=self._max_wait_secs)


def run_training(train_op, loss, batches_per_step=1, config=None, master='',
                 is_chief=True, hooks=(), worker_name=None):
  """Runs `train_op` until --max_steps, with logs, summaries and checkpoints.

  Resumes from the newest readable checkpoint in --train_dir, if any.
  Checkpoints are written every --save_checkpoint_secs and at the end, but
  never once the loss has turned NaN: the last good one is kept. SIGINT
  (Ctrl-C) or SIGTERM stops training cleanly, with a checkpoint of the
  current step.

  Args:
    train_op: The op of one training step.
    loss: The loss tensor, logged and checked for NaN.
    batches_per_step: Batches of --batch_size images trained on per step:
      one per tower.
    config: tf.ConfigProto of the session; session_config() by default.
    master: The TensorFlow server to run on (a distributed worker's); in
      this process by default.
    is_chief: Whether this process initialises or restores the variables and
      writes the checkpoints and summaries: the only one, unless distributed.
    hooks: More tf.train.SessionRunHooks.
    worker_name: For a distributed worker, its name in the log lines.

  Raises:
    NanLossError: the loss became NaN.
    CheckpointError: --train_dir holds checkpoints that cannot be resumed.
    Interrupted: SIGINT or SIGTERM stopped training (after the checkpoint).
  """
  # Relative paths in the 'checkpoint' file: the train dir can be moved.
  scaffold = tf.train.Scaffold(
      saver=tf.train.Saver(sharded=True, save_relative_paths=True))
  logger = _LoggerHook(loss, batches_per_step, FLAGS.log_frequency,
                       FLAGS.train_dir if is_chief else None, worker_name)
  hooks = [tf.train.StopAtStepHook(last_step=FLAGS.max_steps), logger,
           _QueueWarmupHook()] + list(hooks)
  config = config or session_config()
  if is_chief:
    cifar10_common.ensure_writable_dir(FLAGS.train_dir, 'train_dir')
    resume_from = checkpoint_to_resume(
        FLAGS.train_dir,
        {v.op.name: v.shape.as_list() for v in tf.global_variables()})
    if resume_from:
      step = tf.train.load_variable(resume_from, 'global_step')
      if step >= FLAGS.max_steps:
        print('%s is at step %d, --max_steps=%d: nothing to train.' %
              (resume_from, step, FLAGS.max_steps), flush=True)
        return
      print('Resuming from %s, at step %d.' % (resume_from, step), flush=True)
    # The class names go with the checkpoints, for cifar10_predict.py and
    # cifar10_export.py.
    cifar10_input.write_class_names(FLAGS.train_dir, cifar10.class_names())
    hooks += [
        tf.train.SummarySaverHook(save_steps=FLAGS.save_summaries_steps,
                                  output_dir=FLAGS.train_dir,
                                  scaffold=scaffold),
        # After the logger, so that a NaN step stops training before it is
        # saved.
        tf.train.CheckpointSaverHook(FLAGS.train_dir,
                                     save_secs=FLAGS.save_checkpoint_secs,
                                     scaffold=scaffold),
    ]
    session_creator = tf.train.ChiefSessionCreator(
        scaffold=scaffold, master=master,
        checkpoint_filename_with_path=resume_from, config=config)
  else:
    session_creator = _WorkerSessionCreator(scaffold, master, config)
  with cifar10_common.StopSignals(
      lambda: kept_checkpoint(FLAGS.train_dir) if is_chief else None) as stop:
    with tf.train.MonitoredSession(session_creator=session_creator,
                                   hooks=hooks) as mon_sess:
      while not mon_sess.should_stop() and not stop.received:
        try:
          mon_sess.run(train_op)
        except tf.errors.InvalidArgumentError as e:
          # A summary step runs the histograms before the logger sees the
          # loss.
          if 'Nan in summary histogram' in e.message:
            raise NanLossError(nan_loss_message(logger.step + 1,
                                                FLAGS.train_dir)) from None
          raise
  if is_chief:
    checkpoint = 'checkpoint %s' % tf.train.latest_checkpoint(FLAGS.train_dir)
  else:
    checkpoint = 'the chief writes the checkpoints'
  if stop.received:
    raise cifar10_common.Interrupted(
        'Stopped by %s at step %d; %s%s.' % (
            stop.received, logger.step, checkpoint,
            ' saved' if is_chief else ''), stop.signum)
  print('Done training: %sstep %d; %s.' % (
      worker_name + ', global ' if worker_name else '', logger.step,
      checkpoint), flush=True)


def train():
  """Train CIFAR-10 for a number of steps."""
  with tf.Graph().as_default():
    global_step = tf.train.get_or_create_global_step()

    # Get images and labels for CIFAR-10.
    # Force input pipeline to CPU:0 to avoid operations sometimes ending up on
    # GPU and resulting in a slow down.
    with tf.device('/cpu:0'):
      images, labels = cifar10.distorted_inputs()

    # Build a Graph that computes the logits predictions from the
    # inference model.
    logits = cifar10.inference(images)

    # Calculate loss.
    loss = cifar10.loss(logits, labels)

    # Build a Graph that trains the model with one batch of examples and
    # updates the model parameters.
    train_op = cifar10.train(loss, global_step)

    run_training(train_op, loss)


def main(argv=None):  # pylint: disable=unused-argument
  cifar10.maybe_download_and_extract()
  train()


if __name__ == '__main__':
  cifar10_common.run(main)
