"""TensorFlow 1.x on TensorFlow 2, imported quietly: the scripts' clean output.

`from cifar10_support.quiet import tf` imports `tensorflow.compat.v1` (as `tf`)
with eager execution off, and silences exactly the messages that are noise
for this tutorial, keeping every other warning:

1. The banners TensorFlow's shared libraries print while they load (oneDNN,
   CUDA, CPU features): they are written to file descriptor 2 before
   TensorFlow's logging exists, so the import itself runs with descriptor 2
   routed through a filter process (StderrFilter) that passes the other
   lines on as they come: a process that dies while TensorFlow loads (a
   fatal CUDA error) still shows why.
2. The "deprecated" notices of the v1 APIs the tutorial uses on purpose
   (queues, readers, SyncReplicasOptimizer, the float16 loss scale): a filter
   on TensorFlow's Python logger drops those, and only those
   (INTENTIONAL_V1_APIS).
3. Lines TensorFlow's C++ runtime logs while the scripts run (_RUNTIME_NOISE):
   the cancelled enqueues of every stop of the queue-based input, and the
   end of an evaluation pass on a GPU; the aborted exchanges that end
   distributed training's steps, and those of a lost connection; oneDNN's
   wrong report of falling back to Eigen; a traced step's missing GPU
   trace; and the errors the scripts say themselves, in one line (an
   unreadable image, a NaN or infinite loss, a port in use, no space left on
   device), or once (TensorFlow's warning, in every session, about GPUs it
   has no compiled code for: _SAID_ONCE).
   `filter_runtime_noise_from_stderr()`, called by the scripts
   (scripts.run), routes descriptor 2 through a filter process that
   drops those lines and their details, to the end of the script.

Why a process: the C++ code writes to the descriptor directly, so a filter
must sit behind it; a thread of this process would lose the last lines when
the process dies (a crash, an abort, os._exit), where a child process sees
the end of its input and writes out everything. Neither TF_CPP_MIN_LOG_LEVEL
(which would hide real warnings too, by level) nor anything simpler keeps
the real ones.

TF_CPP_MIN_LOG_LEVEL=0 shows all of TensorFlow's messages again: then none
of the three is filtered.
"""

import glob
import logging as _std_logging
import os
import subprocess
import sys

# The banners TensorFlow's shared libraries print while loading, before its
# logging is initialised (so TF_CPP_MIN_LOG_LEVEL does not apply to them).
_TF_BANNER_LINES = (
    r'WARNING: All log messages before absl::InitializeLog\(\) is called'
    r'|^I\d{4} [\d:. ]+\d+ (port|cudart_stub|cpu_feature_guard)\.cc:\d+\]'
    r'|^To enable the following instructions: .* rebuild TensorFlow')
# The CUDA build of TensorFlow fails to initialise CUDA on a machine with no
# GPU, or whose GPUs the user hid (CUDA_VISIBLE_DEVICES= or -1), and says so
# as an error: noise then, a real problem where GPUs are meant to be used.
_NO_GPU_CUDA_ERROR = (r'|^E\d{4} [\d:. ]+\d+ cuda_platform\.cc:\d+\] '
                      r'failed call to cuInit')


def cuda_error_is_noise(gpu_device_files, cuda_visible_devices):
  """Whether CUDA's failure to initialise is expected, not worth showing.

  Args:
    gpu_device_files: The NVIDIA devices installed (/dev/nvidia0, ...).
    cuda_visible_devices: $CUDA_VISIBLE_DEVICES, or None if it is not set.
  """
  return not gpu_device_files or cuda_visible_devices in ('', '-1')

# TF_CPP_MIN_LOG_LEVEL=0 asks for every message of TensorFlow: then nothing is
# filtered.
_USER_WANTS_TF_LOGS = os.environ.get('TF_CPP_MIN_LOG_LEVEL') == '0'

# After a line matching `noise`: its indented details, TensorFlow's hint
# (about memory, where it applies) and blank lines.
_NOISE_DETAILS = (r'^(\s|Hint: If you want to see a list of allocated tensors'
                  r'|Additional GRPC error information from remote target'
                  r'|:UNKNOWN:Error received from peer|$)')

# The filter process: copies its stdin to its stdout, line by line, without
# the lines matching argv[1] and the lines of details that follow them
# (argv[2]); once a line matching argv[3] has passed, lines matching argv[4]
# are noise too. It ignores Ctrl-C and SIGTERM, which may be sent to the
# whole process group: it ends when its input is closed (by the end of the
# process it filters, however it ends).
_FILTER_PROGRAM = r"""
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
noise, details, said, then_noise = [re.compile(a.encode())
                                    for a in sys.argv[1:5]]
dropping = once_said = False
for line in sys.stdin.buffer:
  if noise.search(line) or (once_said and then_noise.search(line)):
    dropping = True
  elif not (dropping and details.match(line)):
    dropping = False
    once_said = once_said or bool(said.search(line))
    sys.stdout.buffer.write(line)
    sys.stdout.buffer.flush()
"""

# A pattern that matches no line.
_NOTHING = r'(?!)'

# The filters kept to the end of the process (StderrFilter.install).
_INSTALLED = []


class StderrFilter(object):
  """Routes file descriptor 2 through a filter process: the lines matching
  `noise` (and their details) are dropped, every other line passed on.

  As a context manager, for a block (the import of TensorFlow): on leaving
  it, the filter has written out every line of the block, in order, and
  descriptor 2 is what it was. `install()` instead keeps it to the end of
  the process.

  Args:
    noise: A regex of the lines to drop.
    said: A regex of a line after which `then_noise` lines are dropped too.
    then_noise: See `said`.
  """

  def __init__(self, noise, said=_NOTHING, then_noise=_NOTHING):
    sys.stderr.flush()
    self._original_fd = os.dup(2)
    self._process = subprocess.Popen(
        [sys.executable, '-S', '-c', _FILTER_PROGRAM, noise, _NOISE_DETAILS,
         said, then_noise],
        stdin=subprocess.PIPE, stdout=self._original_fd, close_fds=True)
    os.dup2(self._process.stdin.fileno(), 2)
    self._process.stdin.close()

  def install(self):
    """Keeps the filter for the rest of the process: TensorFlow's threads
    log until it is gone (the gRPC servers of distributed training,
    cancelling their last steps)."""
    os.close(self._original_fd)  # The filter has it.
    _INSTALLED.append(self)  # Kept: it outlives the caller.

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    sys.stderr.flush()
    os.dup2(self._original_fd, 2)  # Closes the last write end of the pipe,
    os.close(self._original_fd)
    self._process.wait()  # so the filter writes out the rest and ends.
    return False


def _import_tensorflow_quietly():
  """Imports tensorflow.compat.v1, dropping only TensorFlow's start-up banners.

  The banners are written straight to file descriptor 2 by C++ code while
  the libraries load, so they can only be caught there.

  Returns:
    The `tensorflow.compat.v1` module.
  """
  # C++ INFO off, WARNING on.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  if _USER_WANTS_TF_LOGS:
    import tensorflow.compat.v1 as tf_v1  # pylint: disable=g-import-not-at-top
    return tf_v1
  noise = _TF_BANNER_LINES
  if cuda_error_is_noise(glob.glob('/dev/nvidia[0-9]*'),
                         os.environ.get('CUDA_VISIBLE_DEVICES')):
    noise += _NO_GPU_CUDA_ERROR
  with StderrFilter(noise):
    import tensorflow.compat.v1 as tf_v1  # pylint: disable=g-import-not-at-top
    # Looks for GPUs now, while the CUDA error above can still be caught.
    tf_v1.config.list_physical_devices('GPU')
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
    'get_checkpoint_mtimes',  # Used by Saver itself when it restores,
    'remove_checkpoint',  # and when it deletes all but the last 5.
    'limit_epochs',
    'shuffle_batch',
    'start_queue_runners',
    'string_input_producer',
    'SyncReplicasOptimizer.__init__',  # cifar10_distributed_train.py's.
    'DynamicLossScale.__init__',  # Mixed precision in float16 (on GPUs).
    'build_tensor_info',  # cifar10_export.py's SavedModel signature.
    # TensorFlow's own FLOP counting (benchmark.training_flops_per_image).
    'tensor_shape_from_node_def_name',
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
if not _USER_WANTS_TF_LOGS:
  tf.get_logger().addFilter(_DEPRECATION_FILTER)


# Runtime messages of TensorFlow's C++ core that are noise for this tutorial:
# every stop of a queue-based input pipeline cancels the reader threads' pending
# enqueues (and the end of synchronous distributed training, the chief's wait
# for gradients), which TensorFlow 2 logs as warnings, and oneDNN reports,
# wrongly on AVX-512 machines, falling back to Eigen for uint8 and float16
# ops; and errors the scripts report themselves, in one line. Each may be
# followed by lines of details (_NOISE_DETAILS), dropped with it.
_RUNTIME_NOISE = (
    r'local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: '
    r'CANCELLED: (Enqueue|Dequeue|TakeGrad) operation was cancelled'
    # The end of an evaluation pass, where its batches go to another device
    # (a GPU): the transfer waiting for a batch that will not come.
    r'|local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: '
    r'OUT_OF_RANGE: \w+ \'[^\']*\' is closed and has insufficient elements'
    # An image that cannot be decoded: the exception says it, once.
    r'|local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: '
    r'INVALID_ARGUMENT: (Unknown image file format|jpeg::Uncompress failed'
    r'|Invalid (PNG|JPEG) data)'
    # Distributed training: the end of each step's exchanges with the
    # parameter servers, logged as a warning on TensorFlow 2.
    r'|local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: '
    r'ABORTED: (Cleanup \d+|Stopping remaining executors\.'
    r'|Step \d+ cancelled\.)'
    # A task's connection lost (a parameter server restarted): the step's
    # exchanges fail, and the scripts say that the session is made again.
    r'|local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: '
    r'(UNAVAILABLE: |CANCELLED: RecvFromRemoteAsync is cancelled)'
    r'|grpc_worker_service\.cc:\d+\] RecvTensor cancelled for \d+'
    r'|master_session\.cc:\d+\] UNAVAILABLE: failed to connect to all '
    r'addresses'
    # A parameter server that stopped (training done: each worker has said
    # so; or restarting) before a worker's session cleaned up its step's
    # graph there: the graph went with the server.
    r'|master_session\.cc:\d+\] Cleanup partition error: UNAVAILABLE: '
    # A NaN or infinite loss, which training reports itself.
    r'|local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: '
    r'INVALID_ARGUMENT: (Nan in summary histogram|Infinity in Histogram)'
    # A server that cannot listen, which cifar10_distributed_train.py reports.
    r'|add_port\.cc:\d+\] Failed to add port to server'
    r'|grpc_server_lib\.cc:\d+\] UNKNOWN: Could not start gRPC server'
    r'|util\.cc:\d+\] oneDNN supports DT_(UINT8|HALF) only on platforms with '
    r'AVX-512'
    # A traced step (benchmark.py --profile) on a machine without a GPU.
    r'|xplane_to_step_stats\.cc:\d+\] GPU trace was not collected'
    # A checkpoint that cannot be written (no space, no permission, a
    # read-only disk, the folder gone), which the scripts report themselves
    # (files.writes_said).
    r'|(op_kernel\.cc:\d+\] OP_REQUIRES failed at \w+\.cc:\d+ : |'
    r'local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: )'
    r'(RESOURCE_EXHAUSTED|PERMISSION_DENIED|NOT_FOUND): \S+; (No space left '
    r'on device|Disk quota exceeded|Permission denied|Operation not permitted'
    r'|Read-only file system|No such file or directory)')

# Said once by the scripts (devices.gpu_code_warning), then noise:
# TensorFlow's warning, in every session, about GPUs it has no compiled code
# for.
_SAID_ONCE = (r'^Warning: .* for which this TensorFlow has no compiled GPU '
              r'code',
              r'gpu_device\.cc:\d+\] TensorFlow was not built with CUDA kernel '
              r'binaries compatible with compute capability')


def filter_runtime_noise_from_stderr():
  """Routes file descriptor 2 through a process dropping _RUNTIME_NOISE,
  to the end of this process (see StderrFilter)."""
  if not _USER_WANTS_TF_LOGS:
    StderrFilter(_RUNTIME_NOISE, *_SAID_ONCE).install()
