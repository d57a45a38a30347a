"""The runtime the scripts share: parameters, the training loop, checkpoints.

- `Params`: every setting of the scripts, with the tutorial's defaults. The
  scripts make one from their flags (cifar10_flags.params()); a program or a
  test makes one directly: `Params(data_dir=..., max_steps=100)`.
- `run_training`: the loop of cifar10_train.py, cifar10_multi_gpu_train.py
  and cifar10_distributed_train.py: logs, summaries, checkpoints, resuming,
  a clean stop on Ctrl-C, and a stop the moment the loss is NaN.
- The checkpoint API: `latest_checkpoint`, `check_checkpoint` (against the
  model built), `checkpoint_to_resume`, `restore`: each problem a user can
  meet, said once, in one place.
- `Classifier`: a trained model as a function of images, for prediction and
  export.
- The log lines a user reads and the benchmark and tests parse: their
  formats and patterns, side by side.
"""

import dataclasses
from datetime import datetime
import math
import re
import threading
import time

import cifar10
import cifar10_common
from cifar10_common import tf
import cifar10_files
from cifar10_common import UserError
import cifar10_input

# The data an evaluation reads: the test set, or the training set.
EVAL_DATA = ('test', 'train_eval')


@dataclasses.dataclass(frozen=True)
class Params(object):
  """Every setting of the scripts; the defaults are the tutorial's.

  The names are those of the scripts' flags (see cifar10_flags.py for what
  each means). Frozen: `params.replace(max_steps=10)` makes another.
  """
  # The data and the model.
  data_dir: str = cifar10.DATA_DIR
  data_url: str = cifar10.DATA_URL
  data_md5: str = cifar10.DATA_MD5
  batch_size: int = cifar10.BATCH_SIZE
  use_fp16: bool = False
  mixed_precision: bool = False
  top_layers: str = cifar10.TOP_LAYERS[0]
  # Devices.
  gpu_memory_growth: bool = True
  xla: bool = False
  # Training.
  train_dir: str = '/tmp/cifar10_train'
  max_steps: int = 1000000
  initial_learning_rate: float = cifar10.INITIAL_LEARNING_RATE
  min_fraction_of_examples_in_queue: float = (
      cifar10.MIN_FRACTION_OF_EXAMPLES_IN_QUEUE)
  log_device_placement: bool = False
  log_frequency: int = 10
  save_checkpoint_secs: int = 600
  save_summaries_steps: int = 100
  # Evaluation, prediction, export.
  checkpoint_dir: str = '/tmp/cifar10_train'
  moving_average: bool = True
  eval_dir: str = '/tmp/cifar10_eval'
  eval_data: str = EVAL_DATA[0]
  eval_interval_secs: int = 60 * 5
  run_once: bool = False

  def replace(self, **changes):
    """A copy with `changes`."""
    return dataclasses.replace(self, **changes)

  @property
  def variable_dtype(self):
    """The variables' type: float16 with use_fp16, float32 otherwise."""
    return tf.float16 if self.use_fp16 else tf.float32

  @property
  def compute_dtype(self):
    """The type the model computes in (the images'): the variables', or,
    with mixed_precision, float16 where a GPU is, bfloat16 on a CPU."""
    if self.mixed_precision and not self.use_fp16:
      return tf.float16 if gpus() else tf.bfloat16
    return self.variable_dtype

  @property
  def loss_scale(self):
    """See cifar10.gradients: float16 computation of float32 variables."""
    if self.compute_dtype == tf.float16 and self.variable_dtype == tf.float32:
      return cifar10.FLOAT16_LOSS_SCALE
    return 1.0


def gpus():
  """The names of the GPUs TensorFlow sees here: what decides, everywhere,
  whether a GPU is present. (CUDA_VISIBLE_DEVICES= hides them all.)"""
  return [gpu.name for gpu in tf.config.list_physical_devices('GPU')]


def cpu_has_fast_bfloat16():
  """Whether this CPU multiplies bfloat16 fast (AVX512-BF16 or AMX)."""
  try:
    with open('/proc/cpuinfo') as f:
      flags = set(re.search(r'^flags\s*:(.*)$', f.read(), re.M).group(1).split())
  except (OSError, AttributeError):
    return False
  return bool(flags & {'avx512_bf16', 'amx_bf16'})


def precision_warning(params):
  """What to tell a user whose choice of precision is slow here, or None."""
  if gpus():
    return None
  if params.use_fp16:
    return ('--use_fp16 on a CPU is slow: float16 has no fast CPU kernels '
            '(several to hundreds of times slower than float32, by CPU); '
            '--mixed_precision computes in bfloat16 instead, fast on CPUs '
            'with AVX512-BF16 or AMX.')
  if params.mixed_precision and not cpu_has_fast_bfloat16():
    return ('--mixed_precision computes in bfloat16 on a CPU, which is slow '
            'on this one (it has neither AVX512-BF16 nor AMX).')
  return None


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
  """The loss became NaN: training diverged."""


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


class _LoggerHook(tf.train.SessionRunHook):
  """Logs loss and runtime, and stops training the moment the loss is NaN.

  In one process, the steps are counted here. A worker of a distributed
  training (`worker_name` given) logs every log_frequency of its own steps,
  with its own speed and the global step, which the other workers advance
  too.
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
    # Steps are counted here, not read back while the train op increments
    # the global step in the same run.
    self.step = session.run(self._global_step_tensor)
    self.own_steps = 0
    self._last_log_step = None
    self._last_log_time = None

  def before_run(self, run_context):
    return tf.train.SessionRunArgs(self._loss)

  def after_run(self, run_context, run_values):
    self.own_steps += 1
    if self._worker_name is None:
      self.step += 1
    loss_value = run_values.results
    if math.isnan(loss_value):
      self._read_global_step(run_context.session)
      raise NanLossError(nan_loss_message(self.step, self._train_dir))
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
      if self._worker_name is None:
        line = LOG_LINE_FORMAT % (datetime.now(), self.step, loss_value,
                                  examples_per_sec, sec_per_batch)
      else:
        self._read_global_step(run_context.session)
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
    """A worker's step is the global step: read it (one more round trip)."""
    if self._worker_name is not None:
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


def session_config(params, **kwargs):
  """The session configuration of the scripts.

  GPU memory is taken as needed (gpu_memory_growth), not all at once, so
  that evaluation can run beside training on one GPU; with xla, TensorFlow
  compiles clusters of the graph's ops (auto-clustering).

  Args:
    params: Params (log_device_placement, gpu_memory_growth, xla).
    **kwargs: more ConfigProto fields.

  Returns:
    A tf.ConfigProto.
  """
  config = tf.ConfigProto(log_device_placement=params.log_device_placement,
                          **kwargs)
  config.gpu_options.allow_growth = params.gpu_memory_growth
  if params.xla:
    config.graph_options.optimizer_options.global_jit_level = (
        tf.OptimizerOptions.ON_1)
  return config


# Checkpoints.

class CheckpointError(UserError):
  """A checkpoint is missing, unreadable, or not one of this model."""


class CheckpointUnreadable(CheckpointError):
  """A checkpoint's files are missing, truncated or corrupt."""


def latest_checkpoint(checkpoint_dir):
  """The newest checkpoint of a training directory.

  Raises:
    CheckpointError: there is none (yet).
  """
  path = tf.train.latest_checkpoint(checkpoint_dir)
  if path is None:
    raise CheckpointError(
        'no checkpoint in --checkpoint_dir=%s yet: train first '
        '(cifar10_train.py --train_dir=%s).' % (checkpoint_dir, checkpoint_dir))
  return path


def checkpoint_step(checkpoint_path):
  """The global step stored in a checkpoint.

  Raises:
    CheckpointUnreadable: it has no readable global step.
  """
  try:
    return int(tf.train.load_variable(checkpoint_path, 'global_step'))
  except (tf.errors.OpError, ValueError) as e:
    raise CheckpointUnreadable(
        'cannot read the global step of checkpoint %s: %s' %
        (checkpoint_path, cifar10_common.first_line(e))) from None


def _unreadable(path, error):
  return CheckpointUnreadable('checkpoint %s cannot be read: %s' %
                              (path, cifar10_common.first_line(error)))


def check_checkpoint(path, variables):
  """Checks that a checkpoint can be read and fits the model built.

  A checkpoint of the other top_layers, of data with another number of
  classes, or of the other float type, does not fit: the message then says
  which, and what to pass.

  Args:
    path: The checkpoint's path prefix (e.g. /tmp/cifar10_train/model.ckpt-9).
    variables: {name in the checkpoint: variable} of every variable restored
      from it (a Saver's var_list).

  Raises:
    CheckpointUnreadable: its files are missing, truncated or corrupt.
    CheckpointError: it holds another model (variables missing, or of other
      shapes or types).
  """
  try:
    reader = tf.train.load_checkpoint(path)
    stored_shapes = reader.get_variable_to_shape_map()
    stored_dtypes = reader.get_variable_to_dtype_map()
  except (tf.errors.OpError, ValueError) as e:
    raise _unreadable(path, e) from None
  expected = {name: (v.shape.as_list(), v.dtype.base_dtype)
              for name, v in variables.items()}
  missing = sorted(set(expected) - set(stored_shapes))
  problem = None
  if missing:
    problem = 'it has no %s%s.' % (
        missing[0], ' (nor %d other variables)' % (len(missing) - 1)
        if len(missing) > 1 else '')
  else:
    for name, (shape, dtype) in sorted(expected.items()):
      if list(stored_shapes[name]) != shape:
        problem = 'its %s has shape %s, where this model has %s.' % (
            name, list(stored_shapes[name]), shape)
        break
      if stored_dtypes[name] != dtype:
        problem = 'its %s is %s, where this model\'s is %s.' % (
            name, stored_dtypes[name].name, dtype.name)
        break
  if problem:
    hints = _why_the_model_differs(stored_shapes, stored_dtypes, expected)
    raise CheckpointError('checkpoint %s is not one of this model: %s%s' % (
        path, problem, ' Its model differs: %s.' % '; '.join(hints)
        if hints else ''))
  try:  # Reads every value: finds truncated or corrupt data files.
    for name in expected:
      reader.get_tensor(name)
  except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as e:
    # A truncated data file raises IndexError ("Read less bytes than
    # requested"), a corrupt one an OpError.
    raise _unreadable(path, e) from None


def _why_the_model_differs(stored_shapes, stored_dtypes, expected):
  """The options a checkpoint was trained with that the model lacks."""

  def stored(name):
    for key in (name, name + '/ExponentialMovingAverage'):
      if key in stored_shapes:
        return list(stored_shapes[key]), stored_dtypes[key]
    return None

  def built(name):
    for key in (name, name + '/ExponentialMovingAverage'):
      if key in expected:
        return expected[key]
    return None

  hints = []
  local3 = stored('local3/weights'), built('local3/weights')
  if all(local3) and len(local3[0][0]) != len(local3[1][0]):
    hints.append('it was trained with --top_layers=%s' % (
        'locally_connected' if len(local3[0][0]) == 3 else 'fully_connected'))
  classes = stored('softmax_linear/biases'), built('softmax_linear/biases')
  if all(classes) and classes[0][0] != classes[1][0]:
    hints.append('it has %d classes, where this model has %d (from the '
                 'batches.meta.txt of the data, or its absence)' %
                 (classes[0][0][0], classes[1][0][0]))
  conv1 = stored('conv1/weights'), built('conv1/weights')
  if all(conv1) and conv1[0][1] != conv1[1][1]:
    hints.append('it was trained %s --use_fp16' % (
        'with' if conv1[0][1] == tf.float16 else 'without'))
  return hints


def checkpoint_to_resume(train_dir, variables):
  """The newest checkpoint in `train_dir` that can be read, if any.

  A checkpoint whose files are missing or damaged is skipped, with a message,
  for the one before; it is never trusted.

  Args:
    train_dir: The training directory.
    variables: {name: variable} of the model being trained.

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
      check_checkpoint(path, variables)
      return path
    except CheckpointUnreadable as e:
      print('Skipping %s.' % e, flush=True)
    except CheckpointError as e:
      raise CheckpointError(
          '--train_dir=%s holds checkpoints of another model: %s Train in '
          'another --train_dir.' % (train_dir, e)) from None
  raise CheckpointError(
      'none of the checkpoints in --train_dir=%s can be read (see above). '
      'They were kept: move them away to train from scratch there.' %
      train_dir)


def restore(session, saver, path):
  """Restores a checkpoint that check_checkpoint passed.

  Raises:
    CheckpointUnreadable: its files went missing or are damaged.
    CheckpointError: it cannot be restored into this model.
  """
  try:
    saver.restore(session, path)
  except (tf.errors.NotFoundError, tf.errors.DataLossError) as e:
    raise _unreadable(path, e) from None
  except (tf.errors.InvalidArgumentError, ValueError) as e:
    raise CheckpointError('checkpoint %s cannot be restored into this model: '
                          '%s' % (path, cifar10_common.first_line(e))) from None


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
    config: tf.ConfigProto of the session; session_config() by default.
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
  config = config or session_config(params)
  # Relative paths in the 'checkpoint' file: the train dir can be moved.
  scaffold = tf.train.Scaffold(
      saver=tf.train.Saver(sharded=True, save_relative_paths=True))
  if not is_chief:
    _train_until_done(train_op, logger, hooks, _WorkerSessionCreator(
        scaffold, master, config, worker_name), None, worker_name)
    return
  # What can stop training before it starts only reads: a run that stops
  # there leaves the folder as it was.
  cifar10_common.ensure_writable_dir(train_dir, 'train_dir')
  variables = {v.op.name: v for v in tf.global_variables()}
  newest = tf.train.latest_checkpoint(train_dir)
  resume_from = checkpoint_to_resume(train_dir, variables)
  if _at_max_steps(resume_from, params.max_steps):
    return
  with cifar10_files.hold_train_dir(train_dir):
    removed = cifar10_files.remove_half_written(train_dir)
    if removed:
      print('Removed %s: half-written by a run that stopped while writing '
            'it.' % ', '.join(removed), flush=True)
    # The one writer now; another may have written a checkpoint meanwhile.
    if tf.train.latest_checkpoint(train_dir) != newest:
      resume_from = checkpoint_to_resume(train_dir, variables)
      if _at_max_steps(resume_from, params.max_steps):
        return
    if resume_from:
      print('Resuming from %s, at step %d.' % (
          resume_from, checkpoint_step(resume_from)), flush=True)
    try:
      summary_writer = cifar10_files.SummaryWriter.for_hooks(train_dir)
      try:
        _train_as_chief(train_op, logger, hooks, scaffold, resume_from,
                        params, master, config, worker_name)
      finally:
        summary_writer.close()
    except Exception as error:  # pylint: disable=broad-except
      if not cifar10_files.out_of_space(error):
        raise
      cifar10_files.remove_half_written(train_dir)
      raise cifar10_files.no_space_error(
          'train_dir', train_dir, error,
          'Training stopped %s; %s, and what was half-written removed. Free '
          'some space, and run it again to resume.' % (
              'at step %d' % logger.step if logger.step is not None else
              'before its first step', kept_checkpoint(train_dir))) from None


def _at_max_steps(checkpoint, max_steps):
  """Whether `checkpoint` is at max_steps already (then it says so)."""
  if checkpoint and checkpoint_step(checkpoint) >= max_steps:
    print('%s is at step %d, --max_steps=%d: nothing to train.' %
          (checkpoint, checkpoint_step(checkpoint), max_steps), flush=True)
    return True
  return False


def _train_as_chief(train_op, logger, hooks, scaffold, resume_from, params,
                    master, config, worker_name):
  """The chief's training: writes checkpoints and summaries."""
  train_dir = params.train_dir
  # The class names go with the checkpoints, for cifar10_predict.py and
  # cifar10_export.py.
  cifar10_input.write_class_names(train_dir,
                                  cifar10.class_names(params.data_dir))
  hooks = hooks + [
      tf.train.SummarySaverHook(save_steps=params.save_summaries_steps,
                                output_dir=train_dir, scaffold=scaffold),
      # After the logger, so that a NaN step stops training before it is
      # saved.
      tf.train.CheckpointSaverHook(train_dir,
                                   save_secs=params.save_checkpoint_secs,
                                   scaffold=scaffold),
  ]
  _train_until_done(train_op, logger, hooks, tf.train.ChiefSessionCreator(
      scaffold=scaffold, master=master, checkpoint_filename_with_path=(
          resume_from), config=config), train_dir, worker_name)


def _train_until_done(train_op, logger, hooks, session_creator, train_dir,
                      worker_name):
  """The training loop, until its end or a signal; then the last line.

  Args:
    train_dir: The chief's training directory; None on other workers.
  """
  with cifar10_common.StopSignals(
      lambda: kept_checkpoint(train_dir) if train_dir else None) as stop:
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


# A trained model, as a function.


class Classifier(object):
  """The trained model, restored from a checkpoint, as a function of images.

  Args:
    checkpoint_dir: A training directory.
    moving_average: Use the moving averages of the weights.
    any_size: Take uint8 images of any size (all of one call alike) and
      resize them to 32x32 in the graph, as prepare_data.py does; otherwise
      take 32x32 images.
    params: Params: top_layers and use_fp16, those of the training.

  Raises:
    CheckpointError: no checkpoint, or one of another model.
  """

  def __init__(self, checkpoint_dir, moving_average=True, any_size=False,
               params=Params()):
    self.checkpoint_path = latest_checkpoint(checkpoint_dir)
    self.class_names = cifar10_input.read_class_names(checkpoint_dir)
    self.graph = tf.Graph()
    with self.graph.as_default():
      if any_size:
        self.images = tf.placeholder(tf.uint8, [None, None, None, 3],
                                     name='images')
        resized = cifar10_input.resize_to_cifar(self.images)
      else:
        self.images = resized = tf.placeholder(
            tf.uint8, [None, cifar10_input.SOURCE_HEIGHT,
                       cifar10_input.SOURCE_WIDTH, cifar10_input.SOURCE_DEPTH],
            name='images')
      images = cifar10_input.preprocess_for_eval(resized)
      logits = cifar10.inference(tf.cast(images, params.compute_dtype),
                                 len(self.class_names), params.top_layers,
                                 params.variable_dtype)
      # Probabilities in float32, whatever the model's type.
      self.probabilities = cifar10.predictions(tf.cast(logits, tf.float32))
      to_restore = cifar10.variables_to_restore(moving_average)
      check_checkpoint(self.checkpoint_path, to_restore)
      self.session = tf.Session(graph=self.graph,
                                config=session_config(params))
      restore(self.session, tf.train.Saver(to_restore), self.checkpoint_path)

  def classify(self, images):
    """Class probabilities, [n, classes], of uint8 images [n, h, w, 3]."""
    return self.session.run(self.probabilities, {self.images: images})

  def close(self):
    self.session.close()


def training_flops_per_image(num_classes=cifar10.NUM_CLASSES,
                             top_layers='fully_connected',
                             batch_size=cifar10.BATCH_SIZE):
  """FLOPs of one image's training step, counted in the graph built.

  The forward pass and the gradients of the weights, as cifar10.train
  computes them, with TensorFlow's own count of each op's FLOPs (a
  multiply-accumulate is 2). Counted for a whole batch and divided, so that
  what is done once per batch (the weight decay) is shared out.

  Args:
    num_classes: The model's classes.
    top_layers: The model's top layers.
    batch_size: The batch of the step.

  Returns:
    (FLOPs per image, {op type: FLOPs per image}, largest first).
  """
  from tensorflow.python.framework import ops as ops_lib  # pylint: disable=g-import-not-at-top
  from tensorflow.python.ops import op_selector  # pylint: disable=g-import-not-at-top
  graph = tf.Graph()
  with graph.as_default():
    logits = cifar10.inference(tf.zeros([batch_size, 24, 24, 3]), num_classes,
                               top_layers)
    loss = cifar10.loss(logits, tf.zeros([batch_size], tf.int32))
    gradients = tf.gradients(loss, tf.trainable_variables())
  # Only what the step runs: the ops the gradients need (tf.gradients also
  # builds the gradient of the images, which no step computes).
  needed = op_selector.get_backward_walk_ops([g.op for g in gradients],
                                             control_inputs=True)
  by_type = {}
  for op in needed:
    try:
      flops = ops_lib.get_stats_for_node_def(graph, op.node_def, 'flops').value
    except ValueError:  # No count registered: shapes, casts, copies.
      flops = None
    if flops:
      by_type[op.type] = by_type.get(op.type, 0) + flops / batch_size
  by_type = dict(sorted(by_type.items(), key=lambda item: -item[1]))
  return sum(by_type.values()), by_type
