"""What every module of the tutorial shares: TensorFlow 1.x, quietly, on TF 2.

The tutorial is TensorFlow 1.x code. On TensorFlow 2 it runs through
`tensorflow.compat.v1` in graph mode, which this module sets up once:

    from cifar10_common import tf

gives `tensorflow.compat.v1` with eager execution off. It also keeps the
output readable: the queue-based input pipeline and the other v1 APIs that the
tutorial uses on purpose each log a "deprecated" notice, and TensorFlow's C++
runtime prints start-up banners (oneDNN, CUDA) before its logging is set up.
Exactly those are silenced; every other warning is kept. Set
TF_CPP_MIN_LOG_LEVEL=0 to see all of TensorFlow's own messages again.

The module also holds the small pieces the scripts share: the error type for
problems a user can fix, and `run()`, which turns such an error into one clear
line and a non-zero exit status instead of a traceback.
"""

import glob
import logging as _std_logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading

# The banners TensorFlow's shared libraries print while loading, before its
# logging is initialised (so TF_CPP_MIN_LOG_LEVEL does not apply to them).
_TF_BANNER_LINES = (
    r'WARNING: All log messages before absl::InitializeLog\(\) is called'
    r'|^I\d{4} [\d:. ]+\d+ (port|cudart_stub|cpu_feature_guard)\.cc:\d+\]'
    r'|^To enable the following instructions: .* rebuild TensorFlow')
# The CUDA build of TensorFlow fails to initialise CUDA on a machine with no
# GPU and says so as an error; it is only noise where no GPU is installed.
_NO_GPU_CUDA_ERROR = r'|^E\d{4} [\d:. ]+\d+ cuda_platform\.cc:\d+\] failed call to cuInit'

# TF_CPP_MIN_LOG_LEVEL=0 asks for every message of TensorFlow: then nothing is
# filtered.
_USER_WANTS_TF_LOGS = os.environ.get('TF_CPP_MIN_LOG_LEVEL') == '0'


def _import_tensorflow_quietly():
  """Imports tensorflow.compat.v1, dropping only TensorFlow's start-up banners.

  Returns:
    The `tensorflow.compat.v1` module.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # C++ INFO off, WARNING on.
  if _USER_WANTS_TF_LOGS:
    import tensorflow.compat.v1 as tf_v1  # pylint: disable=g-import-not-at-top
    return tf_v1
  # The banners are written straight to file descriptor 2 by C++ code while
  # the libraries load, so they can only be caught there.
  noise = _TF_BANNER_LINES
  if not glob.glob('/dev/nvidia[0-9]*'):
    noise += _NO_GPU_CUDA_ERROR
  noise = re.compile(noise)
  sys.stderr.flush()
  saved_stderr_fd = os.dup(2)
  with tempfile.TemporaryFile(mode='w+b') as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow.compat.v1 as tf_v1  # pylint: disable=g-import-not-at-top
      # Looks for GPUs now, while the CUDA error above can still be caught.
      tf_v1.config.list_physical_devices('GPU')
    finally:
      os.dup2(saved_stderr_fd, 2)
      os.close(saved_stderr_fd)
      captured.seek(0)
      for line in captured.read().decode('utf-8', 'replace').splitlines(True):
        if not noise.search(line):
          sys.stderr.write(line)
      sys.stderr.flush()
  return tf_v1


tf = _import_tensorflow_quietly()
tf.disable_eager_execution()

# TensorFlow's Python logger prints its own lines (WARNING:tensorflow:...);
# passing them on to absl's root handler too would print each twice. Its INFO
# lines (hooks starting, "Calling checkpoint listeners", ...) are for TensorFlow
# developers: the scripts print what a user needs.
tf.get_logger().propagate = False
tf.get_logger().setLevel(_std_logging.INFO if _USER_WANTS_TF_LOGS
                         else _std_logging.WARNING)

# The v1 APIs this tutorial is built on, on purpose: the queue-based input
# pipeline and its helpers. TensorFlow notes each as deprecated once per
# process; those notes are dropped, any other deprecation is still shown.
INTENTIONAL_V1_APIS = frozenset([
    'BaseResourceVariable.count_up_to',  # The epoch limit of input producers.
    'FixedLengthRecordReader.__init__',
    'QueueRunner.__init__',
    'add_queue_runner',
    'batch',
    'input_producer',
    'get_checkpoint_mtimes',  # Used by Saver itself when it restores.
    'limit_epochs',
    'shuffle_batch',
    'start_queue_runners',
    'string_input_producer',
    'SyncReplicasOptimizer.__init__',  # cifar10_distributed_train.py's.
    'build_tensor_info',  # cifar10_export.py's SavedModel signature.
])


class _IntentionalV1DeprecationFilter(_std_logging.Filter):
  """Drops TensorFlow's deprecation notices for INTENTIONAL_V1_APIS only."""

  def filter(self, record):
    message_format = str(record.msg)
    if ('is deprecated and will be removed' in message_format and
        isinstance(record.args, tuple) and len(record.args) >= 2 and
        record.args[1] in INTENTIONAL_V1_APIS):
      return False
    return True


_DEPRECATION_FILTER = _IntentionalV1DeprecationFilter()
tf.get_logger().addFilter(_DEPRECATION_FILTER)


# Runtime messages of TensorFlow's C++ core that are noise for this tutorial:
# every stop of a queue-based input pipeline cancels the reader threads' pending
# enqueues (and the end of synchronous distributed training, the chief's wait
# for gradients), which TensorFlow 2 logs as warnings, and oneDNN reports,
# wrongly on AVX-512 machines, falling back to Eigen for uint8 and float16
# ops. Each is
# followed by indented detail lines.
_RUNTIME_NOISE = (
    r'local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: '
    r'CANCELLED: (Enqueue|Dequeue|TakeGrad) operation was cancelled'
    # An image that cannot be decoded: the exception says it, once.
    r'|local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: '
    r'INVALID_ARGUMENT: (Unknown image file format|jpeg::Uncompress failed'
    r'|Invalid (PNG|JPEG) data)'
    # Distributed training: the end of each step's exchanges with the
    # parameter servers, logged as a warning on TensorFlow 2.
    r'|local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: '
    r'ABORTED: (Cleanup \d+|Stopping remaining executors\.|Step \d+ cancelled\.)'
    # A NaN loss, which training reports itself.
    r'|local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: '
    r'INVALID_ARGUMENT: Nan in summary histogram'
    # A server that cannot listen, which cifar10_distributed_train.py reports.
    r'|add_port\.cc:\d+\] Failed to add port to server'
    r'|grpc_server_lib\.cc:\d+\] UNKNOWN: Could not start gRPC server'
    r'|util\.cc:\d+\] oneDNN supports DT_(UINT8|HALF) only on platforms with '
    r'AVX-512')

# The filter process: copies its stdin to its stdout, line by line, without
# the lines matching argv[1] and the indented lines that follow them. It
# ignores Ctrl-C and SIGTERM, which may be sent to the whole process group:
# it ends when the script's end closes its input.
_FILTER_PROGRAM = r"""
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
noise = re.compile(sys.argv[1].encode())
dropping = False
for line in sys.stdin.buffer:
  if noise.search(line):
    dropping = True
  elif not (dropping and line[:1] in (b'\t', b' ')):
    dropping = False
    sys.stdout.buffer.write(line)
    sys.stdout.buffer.flush()
"""


_stderr_filter = None


def _filter_runtime_noise_from_stderr():
  """Routes file descriptor 2 through a process dropping _RUNTIME_NOISE.

  C++ code writes to the descriptor directly, so the filter must sit behind
  it. It is a separate process so that nothing is lost if this one dies: it
  sees the end of its input and writes out what it has. It stays in place
  to the very end, for TensorFlow's threads log until the process is gone
  (the gRPC servers of distributed training, cancelling their last steps).
  """
  if _USER_WANTS_TF_LOGS:
    return
  sys.stderr.flush()
  original_stderr_fd = os.dup(2)
  filter_process = subprocess.Popen(
      [sys.executable, '-S', '-c', _FILTER_PROGRAM, _RUNTIME_NOISE],
      stdin=subprocess.PIPE, stdout=original_stderr_fd, close_fds=True)
  os.dup2(filter_process.stdin.fileno(), 2)
  filter_process.stdin.close()
  os.close(original_stderr_fd)  # The filter has it.
  global _stderr_filter
  _stderr_filter = filter_process  # Kept: it outlives this function.


class UserError(Exception):
  """A problem the user can fix (data, flags, files); its message says how.

  Scripts report it as one line, without a traceback (see `run`).
  """


class Interrupted(Exception):
  """A script was stopped by a signal, cleanly; its message says what was kept.

  `run` prints the message and exits with status 128 + the signal's number,
  as a shell does for a process killed by that signal.
  """

  def __init__(self, message, signum):
    super().__init__(message)
    self.signum = signum


class StopSignals(object):
  """Turns SIGINT (Ctrl-C) and SIGTERM into a request to stop cleanly.

  Within `with StopSignals() as stop:`, the first such signal sets
  `stop.received` (the signal's name) and `stop.signum`, and wakes
  `stop.wait()`; the loop that checks them then finishes its work (saves a
  checkpoint, stops its threads). A second signal ends the process at once,
  with status 128 + its number, for a user who does not want to wait: even
  while TensorFlow holds the main thread (a step waiting for its input), for
  a thread watches the signals (through signal.set_wakeup_fd) besides the
  main thread's handler. Signals can only be caught in the main thread;
  elsewhere this does nothing.

  Args:
    what_is_kept: Called on a second signal; returns what the user keeps
      (e.g. 'the last checkpoint, ..., is kept'), said before the exit.
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self, what_is_kept=None):
    self.received = None
    self.signum = None
    self._what_is_kept = what_is_kept
    self._event = threading.Event()
    self._lock = threading.Lock()
    self._previous = {}
    self._previous_wakeup_fd = None
    self._pipe = None

  def _on_signal(self, signum):
    """Called once per signal, by the handler or by the watching thread."""
    with self._lock:
      first = self.received is None
      if first:
        self.received = signal.Signals(signum).name
        self.signum = signum
    if first:
      self._event.set()
      print('Caught %s: stopping cleanly (send it again to stop at once).' %
            self.received, flush=True)
      return
    kept = self._what_is_kept() if self._what_is_kept else None
    print('Caught %s while stopping: stopped at once%s.' % (
        signal.Signals(signum).name, '; ' + kept if kept else ''), flush=True)
    sys.stderr.flush()
    os._exit(128 + signum)  # pylint: disable=protected-access

  def _handle(self, signum, frame):
    """The main thread's handler: the watching thread may have seen it."""
    del signum, frame  # The watching thread reads every signal from the pipe.

  def _watch(self, read_fd):
    """Reads the signals' numbers from the wakeup pipe until it is closed."""
    while True:
      try:
        numbers = os.read(read_fd, 64)
      except OSError:
        numbers = b''
      if not numbers:
        os.close(read_fd)
        return
      for number in numbers:
        if number in self.SIGNALS:
          self._on_signal(number)

  def wait(self, seconds):
    """Sleeps `seconds`, or less if a signal comes; True if one came."""
    return self._event.wait(seconds)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      read_fd, write_fd = os.pipe()
      os.set_blocking(write_fd, False)
      self._pipe = (read_fd, write_fd)
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
      self._previous_wakeup_fd = signal.set_wakeup_fd(
          write_fd, warn_on_full_buffer=False)
      threading.Thread(target=self._watch, args=(read_fd,),
                       name='stop_signals', daemon=True).start()
    return self

  def __exit__(self, *exc_info):
    if self._pipe:
      signal.set_wakeup_fd(self._previous_wakeup_fd)
      for signum, handler in self._previous.items():
        signal.signal(signum, handler)
      self._previous = {}
      os.close(self._pipe[1])  # The watching thread reads the end, and ends.
      self._pipe = None
    return False


class CheckpointError(UserError):
  """A checkpoint is missing, unreadable, or not one of this model."""


class CheckpointUnreadable(CheckpointError):
  """A checkpoint's files are missing, truncated or corrupt."""


def check_checkpoint(path, expected_shapes):
  """Checks that a checkpoint can be read and fits the model.

  Args:
    path: The checkpoint's path prefix (e.g. /tmp/cifar10_train/model.ckpt-9).
    expected_shapes: {name in the checkpoint: shape as a list} of every
      variable the model restores from it.

  Raises:
    CheckpointUnreadable: its files are missing, truncated or corrupt.
    CheckpointError: it holds another model (variables missing, or of other
      shapes).
  """
  try:
    reader = tf.train.load_checkpoint(path)
    stored_shapes = reader.get_variable_to_shape_map()
  except (tf.errors.OpError, ValueError) as e:
    raise CheckpointUnreadable('checkpoint %s cannot be read: %s' %
                               (path, first_line(e))) from None
  missing = sorted(set(expected_shapes) - set(stored_shapes))
  if missing:
    raise CheckpointError(
        'checkpoint %s is not one of this model: it has no %s%s.' %
        (path, missing[0], ' (nor %d other variables)' % (len(missing) - 1)
         if len(missing) > 1 else ''))
  for name, shape in sorted(expected_shapes.items()):
    if list(stored_shapes[name]) != list(shape):
      raise CheckpointError(
          'checkpoint %s is not one of this model: its %s has shape %s, where '
          'this model has %s.' % (path, name, list(stored_shapes[name]),
                                  list(shape)))
  try:  # Reads every value: finds truncated or corrupt data files.
    for name in expected_shapes:
      reader.get_tensor(name)
  except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as e:
    # A truncated data file raises IndexError ("Read less bytes than
    # requested"), a corrupt one an OpError.
    raise CheckpointUnreadable('checkpoint %s cannot be read: %s' %
                               (path, first_line(e))) from None


def first_line(error):
  """The first line of an error's message, without TensorFlow's details."""
  message = (getattr(error, 'message', None) or str(error)).strip()
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  if not lines:
    return repr(error)
  if lines[0] == 'Graph execution error:':
    # Then where the op was defined, "Node: 'name'", and the message.
    for line, next_line in zip(lines, lines[1:]):
      if line.startswith('Node: '):
        return next_line
  return lines[0]


def ensure_writable_dir(path, flag_name):
  """Creates directory `path` if needed and checks that it can be written.

  Args:
    path: The directory.
    flag_name: The flag that gave it, for the error message.

  Raises:
    UserError: it cannot be created or written.
  """
  if not path:
    raise UserError('--%s is empty: give a directory.' % flag_name)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError('--%s=%s cannot be created: %s.' %
                    (flag_name, path, e.strerror)) from None
  try:  # Writing is the only sure test (permissions, read-only disks, root).
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise UserError('--%s=%s is not writable: %s.' %
                    (flag_name, path, e.strerror)) from None


def run(main):
  """Runs a script's `main` with absl; a bad flag or a UserError is one line.

  A bad flag exits with status 2, a UserError with 1, a clean stop on a
  signal (Interrupted) with 128 + the signal's number.

  Args:
    main: the script's main function, taking the remaining argv.
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top

  _filter_runtime_noise_from_stderr()

  def parse_flags_reporting_errors(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as error:
      sys.stderr.write('Error: %s (see --helpshort)\n' % error)
      sys.stderr.flush()
      sys.exit(2)

  def main_reporting_user_errors(argv):
    try:
      main(argv)
    except UserError as error:
      sys.stderr.write('Error: %s\n' % error)
      sys.stderr.flush()
      sys.exit(1)
    except Interrupted as stop:
      print(stop, flush=True)
      sys.exit(128 + stop.signum)

  app.run(main_reporting_user_errors, flags_parser=parse_flags_reporting_errors)
