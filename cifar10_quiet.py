"""TensorFlow 1.x on TensorFlow 2, imported quietly: the scripts' clean output.

`import cifar10_quiet` imports `tensorflow.compat.v1` (as `cifar10_quiet.tf`)
with eager execution off, and silences exactly the messages that are noise
for this tutorial, keeping every other warning:

1. The banners TensorFlow's shared libraries print while they load (oneDNN,
   CUDA, CPU features): they are written to file descriptor 2 before
   TensorFlow's logging exists, so the import itself runs with descriptor 2
   captured, and only the other lines are passed on.
2. The "deprecated" notices of the v1 APIs the tutorial uses on purpose
   (queues, readers, SyncReplicasOptimizer): a filter on TensorFlow's Python
   logger drops those, and only those (INTENTIONAL_V1_APIS).
3. Lines TensorFlow's C++ runtime logs while the scripts run (_RUNTIME_NOISE):
   the cancelled enqueues of every stop of the queue-based input; the
   aborted exchanges that end distributed training's steps; oneDNN's wrong
   report of falling back to Eigen; a traced step's missing GPU trace; and
   the errors the scripts say themselves, in one line (an unreadable image,
   a NaN loss, a port in use, no space left on device).
   `filter_runtime_noise_from_stderr()`, called by the scripts
   (cifar10_common.run), routes descriptor 2 through a small child process
   that drops those lines and their details. Why a process: the C++
   code writes to the descriptor directly, so a filter must sit behind it;
   a thread of this process would lose the last lines when the process dies
   (a crash, os._exit), where a child process sees the end of its input and
   writes out everything. Neither TF_CPP_MIN_LOG_LEVEL (which would hide
   real warnings too, by level) nor anything simpler keeps the real ones.

TF_CPP_MIN_LOG_LEVEL=0 shows all of TensorFlow's messages again: then none
of the three is filtered.
"""

import glob
import logging as _std_logging
import os
import re
import subprocess
import sys
import tempfile

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


def _import_tensorflow_quietly():
  """Imports tensorflow.compat.v1, dropping only TensorFlow's start-up banners.

  Returns:
    The `tensorflow.compat.v1` module.
  """
  # C++ INFO off, WARNING on.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  if _USER_WANTS_TF_LOGS:
    import tensorflow.compat.v1 as tf_v1  # pylint: disable=g-import-not-at-top
    return tf_v1
  # The banners are written straight to file descriptor 2 by C++ code while
  # the libraries load, so they can only be caught there.
  noise = _TF_BANNER_LINES
  if cuda_error_is_noise(glob.glob('/dev/nvidia[0-9]*'),
                         os.environ.get('CUDA_VISIBLE_DEVICES')):
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
    'get_checkpoint_mtimes',  # Used by Saver itself when it restores,
    'remove_checkpoint',  # and when it deletes all but the last 5.
    'limit_epochs',
    'shuffle_batch',
    'start_queue_runners',
    'string_input_producer',
    'SyncReplicasOptimizer.__init__',  # cifar10_distributed_train.py's.
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
    # An image that cannot be decoded: the exception says it, once.
    r'|local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: '
    r'INVALID_ARGUMENT: (Unknown image file format|jpeg::Uncompress failed'
    r'|Invalid (PNG|JPEG) data)'
    # Distributed training: the end of each step's exchanges with the
    # parameter servers, logged as a warning on TensorFlow 2.
    r'|local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: '
    r'ABORTED: (Cleanup \d+|Stopping remaining executors\.'
    r'|Step \d+ cancelled\.)'
    # A NaN loss, which training reports itself.
    r'|local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: '
    r'INVALID_ARGUMENT: Nan in summary histogram'
    # A server that cannot listen, which cifar10_distributed_train.py reports.
    r'|add_port\.cc:\d+\] Failed to add port to server'
    r'|grpc_server_lib\.cc:\d+\] UNKNOWN: Could not start gRPC server'
    r'|util\.cc:\d+\] oneDNN supports DT_(UINT8|HALF) only on platforms with '
    r'AVX-512'
    # A traced step (benchmark.py --profile) on a machine without a GPU.
    r'|xplane_to_step_stats\.cc:\d+\] GPU trace was not collected'
    # A checkpoint that cannot be written for want of space, which the
    # scripts report themselves (cifar10_files.no_space_error).
    r'|(op_kernel\.cc:\d+\] OP_REQUIRES failed at \w+\.cc:\d+ : |'
    r'local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: )'
    r'RESOURCE_EXHAUSTED: \S+; (No space left on device|Disk quota exceeded)')
# After such a line: its indented details, TensorFlow's hint (about memory,
# where it applies) and blank lines.
_NOISE_DETAILS = r'^(\s|Hint: If you want to see a list of allocated tensors|$)'


# The filter process: copies its stdin to its stdout, line by line, without
# the lines matching argv[1] and the lines of details that follow them
# (matching argv[2]). It ignores Ctrl-C and SIGTERM, which may be sent to the
# whole process group: it ends when the script's end closes its input.
_FILTER_PROGRAM = r"""
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
noise = re.compile(sys.argv[1].encode())
details = re.compile(sys.argv[2].encode())
dropping = False
for line in sys.stdin.buffer:
  if noise.search(line):
    dropping = True
  elif not (dropping and details.match(line)):
    dropping = False
    sys.stdout.buffer.write(line)
    sys.stdout.buffer.flush()
"""


_stderr_filter = None


def filter_runtime_noise_from_stderr():
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
      [sys.executable, '-S', '-c', _FILTER_PROGRAM, _RUNTIME_NOISE,
       _NOISE_DETAILS],
      stdin=subprocess.PIPE, stdout=original_stderr_fd, close_fds=True)
  os.dup2(filter_process.stdin.fileno(), 2)
  filter_process.stdin.close()
  os.close(original_stderr_fd)  # The filter has it.
  global _stderr_filter
  _stderr_filter = filter_process  # Kept: it outlives this function.
