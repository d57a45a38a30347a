"""The training loop of the scripts: logs, summaries, checkpoints, clean stops.

`run_training` is the loop of cifar10_train.py, cifar10_multi_gpu_train.py
and cifar10_distributed_train.py: it resumes from the newest checkpoint,
logs the loss and the speed, writes summaries and checkpoints as the one
writer of the training directory, stops cleanly on Ctrl-C and at once when
the loss is NaN or a write fails. Distributed, a worker (`Worker`) waits for
the parameter servers and the chief, saying so, and carries on after a
parameter server restarts; the chief reads and writes the checkpoints on
its own disk. The log lines it prints (and evaluation's), which the
benchmark and the tests read back, are defined here: their formats and
patterns, side by side.
"""

import dataclasses
from datetime import datetime
import math
import os
import re
import socket
import threading
import time

from cifar10_support import checkpoints
from cifar10_support import data
from cifar10_support import devices
from cifar10_support import files
from cifar10_support import scripts
from cifar10_support.quiet import tf
from cifar10_support.scripts import UserError

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

# Seconds between two lines of a task that waits for another.
WAIT_REPORT_SECS = 30


class NanLossError(UserError):
  """The loss became NaN or infinite: training diverged."""


def nan_loss_message(step, train_dir, value=float('nan')):
  """What to tell the user when the loss turns NaN (or infinite) at `step`."""
  return ('loss is %s at step %d: training diverged and was stopped; %s. '
          'Lower the learning rate, or check the input data.' %
          ('NaN' if math.isnan(value) else 'infinite', step,
           checkpoints.kept_checkpoint(train_dir)))


@dataclasses.dataclass(frozen=True)
class Worker(object):
  """A worker of a distributed training, as the training loop sees it.

  Attributes:
    index: Its index; worker 0 is the chief.
    target: Its server's target (tf.train.Server.target).
    device: Its device, '/job:worker/task:N'.
    parameter_servers: (name, 'host:port') of each parameter server, e.g.
      ('parameter server 0', 'ps0:2222'): what it waits for.
    chief_address: The chief's 'host:port', named while it waits for it.
    wait_secs: How long it waits for the others before it gives up.
  """
  index: int
  target: str
  device: str
  parameter_servers: tuple
  chief_address: str
  wait_secs: float = 30 * 60

  @property
  def is_chief(self):
    return self.index == 0

  @property
  def name(self):
    return 'worker %d' % self.index


class _LoggerHook(tf.train.SessionRunHook):
  """Logs loss and runtime, and stops training the moment the loss is NaN
  or infinite.

  It logs every log_frequency of this process's own steps, with its speed
  and the global step, read then: the updates made (a float16 step whose
  gradients overflowed makes none), by every worker of a distributed
  training (`worker_name` given). The chief also writes the speed into the
  summaries (its `summary_writer`, once it has one), and flushes them, so
  that TensorBoard sees them as they come, and a summary that cannot be
  written stops training within one log line.
  """

  def __init__(self, loss, batch_size, batches_per_step, log_frequency,
               train_dir, worker_name=None):
    self._loss = loss
    self._batch_size = batch_size
    self._batches_per_step = batches_per_step
    self._log_frequency = log_frequency
    self._train_dir = train_dir
    self._worker_name = worker_name
    self.summary_writer = None
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
      self.step = run_context.session.run(self._global_step_tensor)
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
      self.step = run_context.session.run(self._global_step_tensor)
      if self._worker_name is None:
        line = LOG_LINE_FORMAT % (datetime.now(), self.step, loss_value,
                                  examples_per_sec, sec_per_batch)
      else:
        line = WORKER_LOG_LINE_FORMAT % (
            datetime.now(), self._worker_name, self.step, loss_value,
            examples_per_sec, sec_per_batch)
      print(line, flush=True)
      if self.summary_writer:
        self.summary_writer.add_summary(tf.Summary(value=[tf.Summary.Value(
            tag='examples_per_sec', simple_value=examples_per_sec)]),
                                        self.step)
        self.summary_writer.flush()
      self._last_log_step, self._last_log_time = self.own_steps, now

  def end(self, session):
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
    if not self._queued_images or self._filled is not None:
      return  # None, or said for the first session (not again on recovery).
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


class _CheckpointHook(tf.train.SessionRunHook):
  """Saves a checkpoint every `save_secs` and at the end, as
  tf.train.CheckpointSaverHook does, into a training directory that this
  process holds.

  Unlike it, it never writes again a checkpoint of a step that the folder
  holds already: TensorFlow's saves one as each session starts, so a
  training resumed from a checkpoint (or a session made again after a
  parameter server's restart) would write that checkpoint's files again,
  while evaluation may be reading them. Before each save, it checks that
  the folder is still the one it held (TensorFlow would make a removed one
  again, and write the checkpoint alone into it). The graph goes into the
  training's event file.

  Args:
    train_dir: The training directory.
    save_secs: Seconds between checkpoints.
    saver: The tf.train.Saver that writes them.
    summary_writer: The training's files.EventFile.
  """

  def __init__(self, train_dir, save_secs, saver, summary_writer):
    self._train_dir = train_dir
    self._timer = tf.train.SecondOrStepTimer(every_secs=save_secs)
    self._saver = saver
    self._summary_writer = summary_writer
    self._folder = files.folder_identity(train_dir)
    self._graph_written = False

  def begin(self):
    self._global_step_tensor = tf.train.get_global_step()

  def after_create_session(self, session, coord):
    if not self._graph_written:
      graph = tf.get_default_graph()
      tf.io.write_graph(graph.as_graph_def(add_shapes=True), self._train_dir,
                        'graph.pbtxt')
      self._summary_writer.add_graph(graph)
      self._graph_written = True
    step = session.run(self._global_step_tensor)
    self._save(session, step)
    self._timer.update_last_triggered_step(step)

  def before_run(self, run_context):
    return tf.train.SessionRunArgs(self._global_step_tensor)

  def after_run(self, run_context, run_values):
    if self._timer.should_trigger_for_step(run_values.results + 1):
      step = run_context.session.run(self._global_step_tensor)
      if self._timer.should_trigger_for_step(step):
        self._timer.update_last_triggered_step(step)
        self._save(run_context.session, step)

  def end(self, session):
    self._save(session, session.run(self._global_step_tensor))

  def _save(self, session, step):
    files.check_still_there(self._train_dir, self._folder)
    latest = tf.train.latest_checkpoint(self._train_dir)
    if latest and latest.endswith('-%d' % step):
      return  # Saved already.
    try:
      self._saver.save(session, os.path.join(self._train_dir, 'model.ckpt'),
                       global_step=step)
    except ValueError:
      # TensorFlow's word for a folder that went while it saved.
      files.check_still_there(self._train_dir, self._folder)
      raise


def unreachable(tasks, timeout_secs=5):
  """The tasks whose servers do not accept connections now, each said as
  'parameter server 0 at ps0:2222 (connection refused)'.

  Args:
    tasks: (name, 'host:port') of each task.
    timeout_secs: How long a connection may take.
  """
  found = []
  for name, address in tasks:
    host, _, port = address.rpartition(':')
    try:
      socket.create_connection((host, int(port)),
                               timeout=timeout_secs).close()
    except OSError as e:
      reason = ('its name does not resolve' if isinstance(e, socket.gaierror)
                else (e.strerror or str(e)).lower())
      found.append('%s at %s (%s)' % (name, address, reason))
  return found


def wait_for_tasks(who, tasks, wait_secs, report_secs=WAIT_REPORT_SECS):
  """Waits until each task's server accepts connections, saying so.

  A worker whose parameter server is not up yet (or unreachable, or whose
  name does not resolve yet) would wait inside TensorFlow, silently, for
  ever. This says, within a second, which task it waits for, at which
  address and why, and again every `report_secs`; and gives up after
  `wait_secs`.

  Args:
    who: Who waits, e.g. 'Worker 1'.
    tasks: (name, 'host:port') of each task, e.g. ('parameter server 0',
      'ps0:2222').
    wait_secs: How long to wait in all.
    report_secs: Seconds between two lines.

  Raises:
    UserError: a task did not answer within wait_secs.
    scripts.Interrupted: a signal came (Ctrl-C, SIGTERM) while waiting.
  """
  started = time.time()
  last_report = None
  while True:
    waiting = ', '.join(unreachable(tasks))
    if not waiting:
      return
    scripts.stop_if_signalled(waiting)
    waited = time.time() - started
    if waited > wait_secs:
      raise UserError('%s waited %.0f s for %s; giving up (see '
                      '--wait_secs).' % (who, waited, waiting))
    if last_report is None or time.time() - last_report >= report_secs:
      last_report = time.time()
      print('%s: waiting for %s.' % (who, waiting), flush=True)
    scripts.pause(0.5)


class _ChiefSessionCreator(tf.train.SessionCreator):
  """The chief's session: the variables restored from the newest readable
  checkpoint of the training directory, read by this process (on a
  parameter server, TensorFlow would read its own disk); initialised if
  there is none.

  Made again after a parameter server's restart, it restores the newest
  checkpoint again: the training carries on from there.

  Args:
    scaffold: The tf.train.Scaffold.
    config: The session's tf.ConfigProto.
    train_dir: The training directory.
    restore: f(session, checkpoint) restoring a checkpoint (_Restore).
    checkpoint: The checkpoint of the first session, or None.
    worker: The Worker, if distributed (its target; what it waits for).
  """

  def __init__(self, scaffold, config, train_dir, restore, checkpoint,
               worker=None):
    self._scaffold = scaffold
    self._config = config
    self.train_dir = train_dir
    self._restore = restore
    self.checkpoint = checkpoint  # Restored by the last session made.
    self._worker = worker
    self._sessions_made = 0

  def create_session(self):
    self._scaffold.finalize()
    master = ''
    if self._worker:
      wait_for_tasks(self._worker.name.capitalize(),
                     self._worker.parameter_servers, self._worker.wait_secs)
      master = self._worker.target
    if self._sessions_made:  # The first one's was looked up by the caller.
      self.checkpoint = checkpoints.checkpoint_to_resume(
          self.train_dir, self._restore.variables)
      if self.checkpoint:
        print('Session lost (a task restarted, or the network failed), made '
              'again: resuming from %s, at step %d.' % (
                  self.checkpoint,
                  checkpoints.checkpoint_step(self.checkpoint)), flush=True)
    session_manager = tf.train.SessionManager(
        local_init_op=self._scaffold.local_init_op,
        ready_op=self._scaffold.ready_op,
        ready_for_local_init_op=self._scaffold.ready_for_local_init_op,
        graph=tf.get_default_graph())
    # Restored without being initialised first: a chief started again while
    # the other workers train would otherwise put the initial values into
    # the variables they read, and a step they computed from those would
    # land on the restored values (it undid what a training had learnt).
    session = session_manager.prepare_session(
        master, init_op=None if self.checkpoint else self._scaffold.init_op,
        config=self._config,
        init_fn=lambda session: self._restore(session, self.checkpoint))
    self._sessions_made += 1
    return session


class _WorkerSessionCreator(tf.train.SessionCreator):
  """A worker's session: waits for the parameter servers, then until the
  chief has set up the variables, saying so every WAIT_REPORT_SECS.

  (tf.train.WorkerSessionCreator waits too, but silently, and ends in a
  traceback after 30 minutes.)
  """

  def __init__(self, scaffold, config, worker):
    self._scaffold = scaffold
    self._config = config
    self._worker = worker
    self._sessions_made = 0

  def create_session(self):
    self._scaffold.finalize()
    who = self._worker.name.capitalize()
    if self._sessions_made:
      print('%s: session lost (a task restarted, or the network failed); '
            'making it again.' % who, flush=True)
    wait_for_tasks(who, self._worker.parameter_servers,
                   self._worker.wait_secs)
    session_manager = tf.train.SessionManager(
        local_init_op=self._scaffold.local_init_op,
        ready_op=self._scaffold.ready_op,
        ready_for_local_init_op=self._scaffold.ready_for_local_init_op,
        graph=tf.get_default_graph(), recovery_wait_secs=1)
    chief = 'the chief (worker 0 at %s)' % self._worker.chief_address
    started = time.time()
    last_report = None
    look_secs = 0  # One look first: are the variables set up already?
    while True:
      try:
        session = session_manager.wait_for_session(
            self._worker.target, config=self._config, max_wait_secs=look_secs)
        self._sessions_made += 1
        return session
      except tf.errors.DeadlineExceededError:
        scripts.stop_if_signalled(chief)
        waited = time.time() - started
        if waited > self._worker.wait_secs:
          raise UserError(
              '%s waited %.0f s for %s to initialise or restore the '
              'variables; giving up (see --wait_secs).' %
              (who, waited, chief)) from None
        if last_report is None or time.time() - last_report >= (
            WAIT_REPORT_SECS):
          last_report = time.time()
          print('%s: waiting for %s to initialise or restore the variables.' %
                (who, chief), flush=True)
        # Looks again every second (the session manager's recovery wait),
        # a signal heard in between.
        look_secs = 1


def _required_variables():
  """{name: variable} of the variables that every checkpoint to resume from
  must hold: all but those that earlier versions did not write
  (checkpoints.RESTORED_IF_PRESENT)."""
  optional = tf.get_collection(checkpoints.RESTORED_IF_PRESENT)
  return {v.op.name: v for v in tf.global_variables() if v not in optional}


class _Restore(object):
  """Restores a checkpoint into the model being trained: every variable it
  holds; those it lacks, that a checkpoint of an earlier version may lack
  (checkpoints.RESTORED_IF_PRESENT), get their initial values, made in the
  session from those restored (the examples seen, from the global step).

  Args:
    saver: The Saver of every variable (the training's).
    device: Where the checkpoint is read: this process's CPU.
    first: The checkpoint to resume from, if any. (A later one, restored
      after a parameter server's restart, is one of this training's.)
  """

  def __init__(self, saver, device, first):
    self.variables = _required_variables()
    self._optional = {
        v.op.name: v
        for v in tf.get_collection(checkpoints.RESTORED_IF_PRESENT)}
    self._savers = {tuple(sorted(self._optional)): saver}
    present = self._present(first) if first else ()
    if present not in self._savers:
      restored = dict(self.variables)
      restored.update((name, self._optional[name]) for name in present)
      with tf.device(device):
        self._savers[present] = tf.train.Saver(restored)

  def _present(self, checkpoint):
    """The optional variables that `checkpoint` holds, by name, sorted."""
    stored = tf.train.load_checkpoint(checkpoint).get_variable_to_shape_map()
    return tuple(name for name in sorted(self._optional) if name in stored)

  def __call__(self, session, checkpoint):
    if checkpoint is None:
      return
    present = self._present(checkpoint)
    checkpoints.restore(session, self._savers[present], checkpoint)
    session.run([v.initializer for name, v in sorted(self._optional.items())
                 if name not in present])


def run_training(train_op, loss, params, class_names=data.CLASS_NAMES,
                 batches_per_step=1, config=None, worker=None, hooks=()):
  """Runs `train_op` until params.max_steps: logs, summaries, checkpoints.

  The chief (the one process of a training, or worker 0 of a distributed
  one) holds params.train_dir from start to end: it is its one writer (see
  files.hold_train_dir). It resumes from the newest readable checkpoint
  there, if any, and reads and writes every checkpoint itself. Checkpoints
  are written every params.save_checkpoint_secs and at the end, but never
  once the loss has turned NaN: the last good one is kept. SIGINT (Ctrl-C)
  or SIGTERM stops training cleanly, with a checkpoint of the current step;
  a second one stops it at once. If a checkpoint or the summaries cannot be
  written (no space, no permission, the folder gone), training stops at once
  and removes what was half-written.

  Args:
    train_op: The op of one training step.
    loss: The loss tensor, logged and checked for NaN.
    params: Params: train_dir, max_steps, batch_size, log_frequency,
      save_checkpoint_secs, save_summaries_steps.
    class_names: The classes of the data trained on, written beside the
      checkpoints (for prediction and export).
    batches_per_step: Batches of params.batch_size images trained on per
      step: one per tower.
    config: tf.ConfigProto of the session; devices.session_config() by
      default.
    worker: A Worker, for a worker of a distributed training; None for a
      training in this process alone.
    hooks: More tf.train.SessionRunHooks.

  Raises:
    TrainDirInUse: another process trains in params.train_dir.
    NanLossError: the loss became NaN or infinite.
    WriteError: a checkpoint or the summaries could not be written.
    CheckpointError: train_dir holds checkpoints that cannot be resumed.
    UserError: a worker waited too long for the others.
    Interrupted: SIGINT or SIGTERM stopped training (after the checkpoint).
  """
  config = config or devices.session_config(params)
  # Checkpoints written and read by this process: on a chief's own disk.
  device = (worker.device if worker else '') + '/cpu:0'
  with tf.device(device):
    saver = tf.train.Saver(save_relative_paths=True)
  scaffold = tf.train.Scaffold(saver=saver)
  logger = _LoggerHook(loss, params.batch_size, batches_per_step,
                       params.log_frequency, params.train_dir,
                       worker_name=worker and worker.name)
  hooks = [tf.train.StopAtStepHook(last_step=params.max_steps),
           _QueueWarmupHook(), logger] + list(hooks)
  if worker and not worker.is_chief:
    _train_until_done(train_op, _WorkerSessionCreator(scaffold, config,
                                                      worker),
                      hooks, logger, params.max_steps, worker)
    return

  # The chief. What can stop training before it starts only reads: a run
  # that stops there leaves the folder as it was.
  train_dir = params.train_dir
  files.ensure_writable_dir(train_dir, 'train_dir')
  newest = tf.train.latest_checkpoint(train_dir)
  variables = _required_variables()
  resume_from = checkpoints.checkpoint_to_resume(train_dir, variables)
  # Alone, with nothing to train, nothing is done. (A distributed chief
  # restores the variables, so that the other workers see it too.)
  if worker is None and _at_max_steps(resume_from, params.max_steps):
    return
  with files.hold_train_dir(train_dir):
    removed = files.remove_half_written(train_dir)
    if removed:
      print('Removed %s: half-written by a run that stopped while writing '
            'it.' % ', '.join(removed), flush=True)
    # The one writer now; another may have written a checkpoint meanwhile.
    if tf.train.latest_checkpoint(train_dir) != newest:
      resume_from = checkpoints.checkpoint_to_resume(train_dir, variables)
      if worker is None and _at_max_steps(resume_from, params.max_steps):
        return
    if resume_from:
      print('Resuming from %s, at step %d.' % (
          resume_from, checkpoints.checkpoint_step(resume_from)), flush=True)

    def what_a_failed_write_left(failure):
      stopped = ('at step %d' % logger.step if logger.step is not None
                 else 'before its first step')
      if files.folder_gone(failure, train_dir):
        return ('Training stopped %s; its checkpoints went with the folder. '
                '%s, and run it again to train from the start.' % (
                    stopped, failure.remedy))
      files.remove_half_written(train_dir)
      return ('Training stopped %s; %s, and what was half-written removed. '
              '%s, and run it again to resume.' % (
                  stopped, checkpoints.kept_checkpoint(train_dir),
                  failure.remedy))

    with files.writes_said('train_dir', train_dir, what_a_failed_write_left):
      # The class names go with the checkpoints, for cifar10_predict.py and
      # cifar10_export.py.
      data.write_class_names(train_dir, class_names)
      with files.EventFile(train_dir) as summary_writer:
        logger.summary_writer = summary_writer
        hooks += [
            tf.train.SummarySaverHook(save_steps=params.save_summaries_steps,
                                      summary_writer=summary_writer,
                                      scaffold=scaffold),
            # After the logger, so that a NaN step stops training before it
            # is saved.
            _CheckpointHook(train_dir, params.save_checkpoint_secs, saver,
                            summary_writer)]
        session_creator = _ChiefSessionCreator(
            scaffold, config, train_dir,
            _Restore(saver, device, resume_from), resume_from, worker)
        _train_until_done(train_op, session_creator, hooks, logger,
                          params.max_steps, worker)


def _train_until_done(train_op, session_creator, hooks, logger, max_steps,
                      worker):
  """The training loop, until max_steps or a signal; then the last line.

  Args:
    train_op: The op of one training step.
    session_creator: The chief's (_ChiefSessionCreator) or a worker's.
    hooks: The tf.train.SessionRunHooks, the logger's among them.
    logger: The _LoggerHook: the step reached.
    max_steps: The global step to stop at.
    worker: The Worker, if distributed.
  """
  # The chief's: what a user keeps, and the last line, name it.
  train_dir = getattr(session_creator, 'train_dir', None)

  def kept_checkpoint():
    return train_dir and checkpoints.kept_checkpoint(train_dir)

  global_step = tf.train.get_global_step()
  with scripts.StopSignals(kept_checkpoint) as stop:
    with tf.train.MonitoredSession(session_creator=session_creator,
                                   hooks=hooks) as mon_sess:
      # A distributed training already at max_steps: no step (a step of a
      # synchronous worker would wait for updates that never come).
      step = mon_sess.run_step_fn(
          lambda step_context: step_context.session.run(global_step))
      if step >= max_steps and worker:
        if train_dir:
          print('%s is at step %d, --max_steps=%d: nothing to train.' % (
              session_creator.checkpoint, step, max_steps), flush=True)
      else:
        while not mon_sess.should_stop() and not stop.received:
          try:
            mon_sess.run(train_op)
          except tf.errors.InvalidArgumentError as e:
            # A summary step runs the histograms before the logger sees the
            # loss.
            found = re.search('(Nan) in summary histogram|(Infinity) in '
                              'Histogram', e.message)
            if not found:
              raise
            raise NanLossError(nan_loss_message(
                logger.step + 1, train_dir,
                float('nan' if found.group(1) else 'inf'))) from None
  if train_dir:
    checkpoint = 'checkpoint %s' % tf.train.latest_checkpoint(train_dir)
  else:
    checkpoint = 'the chief writes the checkpoints'
  if stop.received:
    raise scripts.Interrupted(
        'Stopped by %s at step %d; %s%s.' % (
            stop.received, logger.step, checkpoint,
            ' saved' if train_dir else ''), stop.signum)
  print('Done training: %sstep %d; %s.' % (
      worker.name + ', global ' if worker else '', logger.step, checkpoint),
        flush=True)


def _at_max_steps(checkpoint, max_steps):
  """Whether `checkpoint` is at max_steps already (then it says so)."""
  if not checkpoint:
    return False
  step = checkpoints.checkpoint_step(checkpoint)
  if step < max_steps:
    return False
  print('%s is at step %d, --max_steps=%d: nothing to train.' %
        (checkpoint, step, max_steps), flush=True)
  return True
