"""The training loop of the scripts: logs, summaries, checkpoints, clean stops.

`run_training` is the loop of cifar10_train.py, cifar10_multi_gpu_train.py
and cifar10_distributed_train.py: it resumes from the newest checkpoint,
logs the loss and the speed, writes summaries and checkpoints as the one
writer of the training directory, stops cleanly on Ctrl-C and at once when
the loss is NaN or a write fails for want of space. The log lines it prints
(and evaluation's), which the benchmark and the tests read back, are defined
here: their formats and patterns, side by side.
"""

from datetime import datetime
import math
import re
import threading
import time

import cifar10_checkpoint
import cifar10_common
import cifar10_devices
import cifar10_files
import cifar10_input
from cifar10_common import UserError
from cifar10_quiet import tf

# The log lines: what training and evaluation print, and the patterns that
# read them back (the benchmark's and the tests').
LOG_LINE_FORMAT = ('%s: step %d, loss = %.2f (%.1f examples/sec; %.3f '
                   'sec/batch)')
WORKER_LOG_LINE_FORMAT = ('%s: %s: global step %d, loss = %.2f (%.1f '
                          'examples/sec of this worker; %.3f sec/batch)')
EVAL_LINE_FORMAT = ('%s: precision @ 1 = %.3f (%d of %d images, step %d; '
                    '%.1f images/sec)')
_TIME = r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}'
# Groups: step, loss, examples/sec, sec/batch.
LOG_LINE = re.compile(
    r'^' + _TIME + r': step (\d+), loss = (\d+\.\d\d) \((\d+\.\d) '
    r'examples/sec; (\d+\.\d{3}) sec/batch\)$')
# Groups: precision, correct, images, step, images/sec.
EVAL_LINE = re.compile(
    r'^' + _TIME + r': precision @ 1 = (\d\.\d{3}) \((\d+) of (\d+) images, '
    r'step (\d+); (\d+\.\d) images/sec\)$')


class NanLossError(UserError):
  """The loss became NaN or infinite: training diverged."""


def nan_loss_message(step, train_dir, value=float('nan')):
  """What to tell the user when the loss turns NaN (or infinite) at `step`."""
  return ('loss is %s at step %d: training diverged and was stopped; %s. '
          'Lower the learning rate, or check the input data.' %
          ('NaN' if math.isnan(value) else 'infinite', step,
           cifar10_checkpoint.kept_checkpoint(train_dir)))


class _LoggerHook(tf.train.SessionRunHook):
  """Logs loss and runtime, and stops training the moment the loss is NaN
  or infinite.

  It logs every log_frequency of this process's own steps, with its speed
  and the global step, read then: the updates made (a float16 step whose
  gradients overflowed makes none), by every worker of a distributed
  training (`worker_name` given).
  """

  def __init__(self, loss, batch_size, batches_per_step, log_frequency,
               train_dir, summary_dir, worker_name=None):
    self._loss = loss
    self._batch_size = batch_size
    self._batches_per_step = batches_per_step
    self._log_frequency = log_frequency
    self._train_dir = train_dir
    self._summary_dir = summary_dir
    self._worker_name = worker_name
    self.own_steps = 0
    self.step = None  # Read from the session once it is created.

  def begin(self):
    self._global_step_tensor = tf.train.get_global_step()

  def after_create_session(self, session, coord):
    # Read in runs of its own, not while the train op increments it.
    self.step = session.run(self._global_step_tensor)
    self.own_steps = 0
    self._last_log_step = None
    self._last_log_time = None

  def before_run(self, run_context):
    return tf.train.SessionRunArgs(self._loss)

  def after_run(self, run_context, run_values):
    self.own_steps += 1
    self.step += 1  # Until it is read again (the step of a failed run).
    loss_value = run_values.results
    if not math.isfinite(loss_value):
      self._read_global_step(run_context.session)
      raise NanLossError(nan_loss_message(self.step, self._train_dir,
                                          loss_value))
    now = time.time()
    if self._last_log_step is None:
      # The first step includes the input queue's warm-up: time from here.
      self._last_log_step, self._last_log_time = self.own_steps, now
      return
    if self.own_steps % self._log_frequency == 0:
      batches = (self.own_steps - self._last_log_step) * self._batches_per_step
      duration = now - self._last_log_time
      examples_per_sec = self._batch_size * batches / duration
      sec_per_batch = duration / batches
      self._read_global_step(run_context.session)
      if self._worker_name is None:
        line = LOG_LINE_FORMAT % (datetime.now(), self.step, loss_value,
                                  examples_per_sec, sec_per_batch)
      else:
        line = WORKER_LOG_LINE_FORMAT % (
            datetime.now(), self._worker_name, self.step, loss_value,
            examples_per_sec, sec_per_batch)
      print(line, flush=True)
      if self._summary_dir:
        writer = tf.summary.FileWriterCache.get(self._summary_dir)
        writer.add_summary(tf.Summary(value=[tf.Summary.Value(
            tag='examples_per_sec', simple_value=examples_per_sec)]),
                           self.step)
        # TensorBoard sees the summaries as they come, and a summary that
        # cannot be written (a full disk) stops training within one line.
        writer.flush()
      self._last_log_step, self._last_log_time = self.own_steps, now

  def end(self, session):
    self._read_global_step(session)

  def _read_global_step(self, session):
    """The global step, read in a run of its own."""
    self.step = session.run(self._global_step_tensor)


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


class _CheckpointSaverHook(tf.train.CheckpointSaverHook):
  """tf.train.CheckpointSaverHook, which never writes again a checkpoint of
  a step that the training directory holds already.

  TensorFlow's saves one as each session starts: a training resumed from a
  checkpoint (or a session recreated after a parameter server's restart)
  would write that checkpoint's files again, while evaluation may be
  reading them.
  """

  def __init__(self, checkpoint_dir, **kwargs):
    super().__init__(checkpoint_dir, **kwargs)
    self._directory = checkpoint_dir

  def _save(self, session, step):
    latest = tf.train.latest_checkpoint(self._directory)
    if latest and latest.endswith('-%d' % step):
      return False  # Saved already; nothing asks to stop.
    return super()._save(session, step)


# The training loop.


class _WorkerSessionCreator(tf.train.SessionCreator):
  """A worker's session: waits until the chief has set up the variables.

  tf.train.WorkerSessionCreator does this too, but looks every 30 s, and
  silently; this looks every second, and says that it waits.
  """

  def __init__(self, scaffold, master, config, worker_name,
               max_wait_secs=30 * 60):
    self._scaffold = scaffold
    self._master = master
    self._config = config
    self._worker_name = worker_name
    self._max_wait_secs = max_wait_secs

  def create_session(self):
    self._scaffold.finalize()
    session_manager = tf.train.SessionManager(
        local_init_op=self._scaffold.local_init_op,
        ready_op=self._scaffold.ready_op,
        ready_for_local_init_op=self._scaffold.ready_for_local_init_op,
        graph=tf.get_default_graph(), recovery_wait_secs=1)
    try:  # One look: are the variables set up already?
      return session_manager.wait_for_session(
          self._master, config=self._config, max_wait_secs=0)
    except tf.errors.DeadlineExceededError:
      print('%s: waiting for the chief (worker 0) to initialise or restore '
            'the variables.' % self._worker_name.capitalize(), flush=True)
    return session_manager.wait_for_session(
        self._master, config=self._config, max_wait_secs=self._max_wait_secs)


def run_training(train_op, loss, params, batches_per_step=1, config=None,
                 master='', is_chief=True, hooks=(), worker_name=None):
  """Runs `train_op` until params.max_steps: logs, summaries, checkpoints.

  The chief (the one process of a training, or worker 0 of a distributed
  one) holds params.train_dir from start to end: it is its one writer (see
  cifar10_files.hold_train_dir). It resumes from the newest readable
  checkpoint there, if any. Checkpoints are written every
  params.save_checkpoint_secs and at the end, but never once the loss has
  turned NaN: the last good one is kept. SIGINT (Ctrl-C) or SIGTERM stops
  training cleanly, with a checkpoint of the current step; a second one
  stops it at once. If a checkpoint or the summaries cannot be written for
  want of space, training stops at once and removes what was half-written.

  Args:
    train_op: The op of one training step.
    loss: The loss tensor, logged and checked for NaN.
    params: Params: train_dir, max_steps, batch_size, log_frequency,
      save_checkpoint_secs, save_summaries_steps, data_dir (whose class
      names go with the checkpoints).
    batches_per_step: Batches of params.batch_size images trained on per
      step: one per tower.
    config: tf.ConfigProto of the session; cifar10_devices.session_config()
      by default.
    master: The TensorFlow server to run on (a distributed worker's); in
      this process by default.
    is_chief: Whether this process initialises or restores the variables and
      writes the checkpoints and summaries: the only one, unless distributed.
    hooks: More tf.train.SessionRunHooks.
    worker_name: For a distributed worker, its name in the log lines.

  Raises:
    TrainDirInUse: another process trains in params.train_dir.
    NanLossError: the loss became NaN.
    NoSpaceError: a checkpoint or the summaries could not be written.
    CheckpointError: train_dir holds checkpoints that cannot be resumed.
    Interrupted: SIGINT or SIGTERM stopped training (after the checkpoint).
  """
  train_dir = params.train_dir
  logger = _LoggerHook(loss, params.batch_size, batches_per_step,
                       params.log_frequency, train_dir,
                       train_dir if is_chief else None, worker_name)
  hooks = [tf.train.StopAtStepHook(last_step=params.max_steps), logger,
           _QueueWarmupHook()] + list(hooks)
  config = config or cifar10_devices.session_config(params)
  # Relative paths in the 'checkpoint' file: the train dir can be moved.
  scaffold = tf.train.Scaffold(
      saver=tf.train.Saver(sharded=True, save_relative_paths=True))
  if not is_chief:
    _train_until_done(train_op, logger, hooks, _WorkerSessionCreator(
        scaffold, master, config, worker_name), None, worker_name)
  else:
    _train_as_chief(train_op, logger, hooks, scaffold, params, master, config,
                    worker_name)


def _train_as_chief(train_op, logger, hooks, scaffold, params, master, config,
                    worker_name):
  """The chief's training: resumes; holds the train dir, its one writer."""
  train_dir = params.train_dir
  # What can stop training before it starts only reads: a run that stops
  # there leaves the folder as it was.
  cifar10_files.ensure_writable_dir(train_dir, 'train_dir')
  variables = {v.op.name: v for v in tf.global_variables()}
  newest = tf.train.latest_checkpoint(train_dir)
  resume_from = cifar10_checkpoint.checkpoint_to_resume(train_dir, variables)
  if _at_max_steps(resume_from, params.max_steps):
    return
  with cifar10_files.hold_train_dir(train_dir):
    removed = cifar10_files.remove_half_written(train_dir)
    if removed:
      print('Removed %s: half-written by a run that stopped while writing '
            'it.' % ', '.join(removed), flush=True)
    # The one writer now; another may have written a checkpoint meanwhile.
    if tf.train.latest_checkpoint(train_dir) != newest:
      resume_from = cifar10_checkpoint.checkpoint_to_resume(train_dir,
                                                            variables)
      if _at_max_steps(resume_from, params.max_steps):
        return
    if resume_from:
      print('Resuming from %s, at step %d.' % (
          resume_from, cifar10_checkpoint.checkpoint_step(resume_from)),
            flush=True)
    try:
      _write_as_chief(train_op, logger, hooks, scaffold, resume_from, params,
                      master, config, worker_name)
    except Exception as error:  # pylint: disable=broad-except
      if not cifar10_files.out_of_space(error):
        raise
      cifar10_files.remove_half_written(train_dir)
      raise cifar10_files.no_space_error(
          'train_dir', train_dir, error,
          'Training stopped %s; %s, and what was half-written removed. Free '
          'some space, and run it again to resume.' % (
              'at step %d' % logger.step if logger.step is not None else
              'before its first step',
              cifar10_checkpoint.kept_checkpoint(train_dir))) from None


def _at_max_steps(checkpoint, max_steps):
  """Whether `checkpoint` is at max_steps already (then it says so)."""
  if not checkpoint:
    return False
  step = cifar10_checkpoint.checkpoint_step(checkpoint)
  if step < max_steps:
    return False
  print('%s is at step %d, --max_steps=%d: nothing to train.' %
        (checkpoint, step, max_steps), flush=True)
  return True


def _write_as_chief(train_op, logger, hooks, scaffold, resume_from, params,
                    master, config, worker_name):
  """The chief's training, from `resume_from`: checkpoints and summaries."""
  train_dir = params.train_dir
  # The class names go with the checkpoints, for cifar10_predict.py and
  # cifar10_export.py.
  cifar10_input.write_class_names(train_dir, params.class_names)
  hooks = hooks + [
      tf.train.SummarySaverHook(save_steps=params.save_summaries_steps,
                                output_dir=train_dir, scaffold=scaffold),
      # After the logger, so that a NaN step stops training before it is
      # saved.
      _CheckpointSaverHook(train_dir, save_secs=params.save_checkpoint_secs,
                           scaffold=scaffold),
  ]
  summary_writer = cifar10_files.SummaryWriter.for_hooks(train_dir)
  try:
    _train_until_done(train_op, logger, hooks, tf.train.ChiefSessionCreator(
        scaffold=scaffold, master=master, checkpoint_filename_with_path=(
            resume_from), config=config), train_dir, worker_name)
  finally:
    summary_writer.close()


def _train_until_done(train_op, logger, hooks, session_creator, train_dir,
                      worker_name):
  """The training loop, until its end or a signal; then the last line.

  Args:
    train_dir: The chief's training directory; None on other workers.
  """
  def kept_checkpoint():
    return train_dir and cifar10_checkpoint.kept_checkpoint(train_dir)
  with cifar10_common.StopSignals(kept_checkpoint) as stop:
    with tf.train.MonitoredSession(session_creator=session_creator,
                                   hooks=hooks) as mon_sess:
      while not mon_sess.should_stop() and not stop.received:
        try:
          mon_sess.run(train_op)
        except tf.errors.InvalidArgumentError as e:
          # A summary step runs the histograms before the logger sees the
          # loss.
          if re.search('(Nan|Infinity) in summary histogram', e.message):
            raise NanLossError(nan_loss_message(logger.step + 1,
                                                train_dir)) from None
          raise
  if train_dir:
    checkpoint = 'checkpoint %s' % tf.train.latest_checkpoint(train_dir)
  else:
    checkpoint = 'the chief writes the checkpoints'
  if stop.received:
    raise cifar10_common.Interrupted(
        'Stopped by %s at step %d; %s%s.' % (
            stop.received, logger.step, checkpoint,
            ' saved' if train_dir else ''), stop.signum)
  print('Done training: %sstep %d; %s.' % (
      worker_name + ', global ' if worker_name else '', logger.step,
      checkpoint), flush=True)
