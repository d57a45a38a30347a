"""Helpers of the tests: running the scripts, reading what they print."""

import contextlib
import importlib
import io
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time

from absl.testing import flagsaver
import numpy as np

import cifar10
from cifar10_support import data as data_lib
from cifar10_support import devices
from cifar10_support import kernels
from cifar10_support import runtime
from cifar10_support import scripts
from cifar10_support.quiet import tf
import conftest
from conftest import REPO_DIR
from conftest import SMALL_QUEUE_FRACTION

# What the scripts print, as they print it (see runtime).
LOG_LINE = runtime.LOG_LINE
EVAL_LINE = runtime.EVAL_LINE
# A trainer refused a training directory that another holds. Groups: the
# folder, the holder's script, pid and host.
TRAIN_DIR_IN_USE = (
    r'^Error: --train_dir=(\S+) is in use: (\S+) trains there, pid (\d+) on '
    r'host (\S+), since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\. A training directory '
    r'has one writer: wait for that one to end, or stop it, or train in '
    r'another --train_dir\.\n$')


def resolved(params):
  """What a script's main resolves from its settings and hands down:
  (params, the data set of params.data_dir, the precision here)."""
  return params, data_lib.read(params.data_dir), devices.precision(params)


# The kernel's range of ephemeral ports: two numbers, the first and the last.
PORT_RANGE_FILE = '/proc/sys/net/ipv4/ip_local_port_range'


def free_ports(count):
  """Ports free now on this machine, for the servers of a test cluster.

  Drawn from the unprivileged ports outside the kernel's range of ephemeral
  ports, where it has room (then a port the kernel gives to a connection,
  TensorFlow's own between tasks, can never take one before its server
  binds it); else from anywhere the kernel has left free.
  """
  try:
    with open(PORT_RANGE_FILE) as f:
      ephemeral = range(*[int(n) for n in f.read().split()][:2])
  except (OSError, ValueError, TypeError):
    ephemeral = range(32768, 61000)
  outside = [port for port in (range(10000, ephemeral.start) or
                               range(ephemeral.stop + 1, 65536))]
  rng = random.Random()
  ports = []
  while len(ports) < count:
    port = rng.choice(outside) if outside else 0
    with socket.socket() as probe:
      try:
        probe.bind(('', port))
      except OSError:
        continue
      port = probe.getsockname()[1]
    if port not in ports:
      ports.append(port)
  return ports


# Where a process finds helpers.as_if's sitecustomize.
AS_IF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'as_if')


def as_if(machine):
  """The environment of a script that sees `machine` instead of this one.

  Args:
    machine: Its facts, comma-separated: 'gpus=N', 'slow_bfloat16' or
      'fast_bfloat16' (see as_if/sitecustomize.py).
  """
  return dict(os.environ, CIFAR10_TESTS_AS_IF=machine,
              PYTHONPATH=os.pathsep.join(
                  [AS_IF_DIR] + list(filter(None, [
                      os.environ.get('PYTHONPATH')]))))


def probabilities_of(checkpoint_path, images, num_classes=10,
                     top_layers='fully_connected'):
  """Class probabilities of uint8 images [n, 32, 32, 3] under a checkpoint's
  moving averages of the weights, computed apart from what prediction and
  export serve (cifar10.classify, the Classifier's restore): TensorFlow's
  own crop and standardisation, its own restore of the averages, numpy's
  softmax."""
  with tf.Graph().as_default():
    crops = tf.image.resize_with_crop_or_pad(
        tf.constant(images, tf.float32), 24, 24)
    logits = cifar10.inference(tf.image.per_image_standardization(crops),
                               num_classes, top_layers)
    averages = tf.train.ExponentialMovingAverage(0.9999)
    with tf.Session() as sess:
      tf.train.Saver(averages.variables_to_restore()).restore(
          sess, checkpoint_path)
      logits = sess.run(logits).astype(np.float64)
  exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
  return exponentials / exponentials.sum(axis=1, keepdims=True)


def cross_entropy_on_test_set(checkpoint_path, data_dir, use_fp16=False):
  """Mean cross entropy on the test records, with a checkpoint's weights."""
  with tf.Graph().as_default():
    images, labels = cifar10.inputs(
        True, data_lib.read(data_dir),
        dtype=tf.float16 if use_fp16 else tf.float32)
    logits = cifar10.inference(images)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int64), logits=logits)
    saver = tf.train.Saver(tf.trainable_variables())
    local_init_op = tf.local_variables_initializer()
    values = []
    with tf.Session() as sess:
      saver.restore(sess, checkpoint_path)
      sess.run(local_init_op)
      coord = tf.train.Coordinator()
      threads = tf.train.start_queue_runners(sess, coord)
      try:
        while True:
          values.append(sess.run(losses))
      except tf.errors.OutOfRangeError:
        pass
      coord.request_stop()
      coord.join(threads)
  return float(np.mean(np.concatenate(values)))


# A script's output as text; TensorFlow's own log lines can hold bytes that
# are not UTF-8 (a remote session's handle), shown escaped, not a crash of
# the test reading them.
TEXT = {'text': True, 'errors': 'backslashreplace'}


def run_script(script, *args, env=None):
  """Runs one of the scripts as a user would; returns the CompletedProcess."""
  return subprocess.run([sys.executable, script] + list(args), cwd=REPO_DIR,
                        env=env, capture_output=True, timeout=300,
                        **TEXT)


def run_scripts(*commands, wrap=list, env=None):
  """Runs scripts at once, each as run_script; returns their
  CompletedProcesses, in order. Each is a process of its own (what is seen
  from outside: exit status, stderr, flags); together they take the time of
  the slowest, on a machine of several cores.

  Args:
    *commands: (script, arg, ...) each.
    wrap: Makes the command line run, from [python, script, arg, ...] (see
      small_filesystem.SmallFilesystem.command).
    env: The environment of every script (a dict), or of each (a list, in
      the order of the commands); this process's by default.
  """
  envs = env if isinstance(env, list) else [env] * len(commands)
  started = [subprocess.Popen(wrap([sys.executable] + list(command)),
                              cwd=REPO_DIR, env=command_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              **TEXT)
             for command, command_env in zip(commands, envs)]
  results = []
  for command, process in zip(commands, started):
    try:
      stdout, stderr = process.communicate(timeout=300)
    finally:
      process.kill()
    results.append(subprocess.CompletedProcess(
        [sys.executable] + list(command), process.returncode, stdout, stderr))
  return results


def run_program(program, env=None):
  """Runs Python code (a str) in a process of its own, in the checkout;
  returns the CompletedProcess, having checked it succeeded."""
  return subprocess.run([sys.executable, '-c', program], cwd=REPO_DIR,
                        env=env, capture_output=True, timeout=300, check=True,
                        **TEXT)


def require_kernels():
  """This project's CPU kernels (kernels.library()); the test is skipped (a
  failure under CI's STRICT) where they cannot be built."""
  library = kernels.library()
  conftest.require(library is not None,
                   "this project's CPU kernels cannot be built here (no C++ "
                   'compiler?): the log says why')
  return library


# The two ways of the graph builders that have CPU kernels of this project's
# own (LRN, the training images' distortions): those fused kernels, and
# TensorFlow's ops (on a GPU, in a SavedModel, without a compiler).
KERNEL_WAYS = ['fused kernel', 'tensorflow ops']


@contextlib.contextmanager
def built(way, kernel):
  """Builds ops in it `way` (one of KERNEL_WAYS); then checks that they were
  built so: with ops of type `kernel` for the fused kernel, without
  otherwise."""
  if way == 'fused kernel':
    require_kernels()
  graph = tf.get_default_graph()
  with (kernels.tensorflow_ops_only() if way == 'tensorflow ops'
        else contextlib.nullcontext()):
    yield
  built_ops = [op for op in graph.get_operations() if op.type == kernel]
  assert bool(built_ops) == (way == 'fused kernel')


def stderr_through_the_quiet_filter(*writes):
  """What a script's stderr shows of `writes` (texts, each written to
  descriptor 2 in one write) once cifar10_support.quiet filters it, as in
  every script; run in a process of its own."""
  program = ('import os\n'
             'from cifar10_support import quiet\n'
             'quiet.filter_runtime_noise_from_stderr()\n' +
             ''.join('os.write(2, %r)\n' % text.encode() for text in writes))
  return run_program(program).stderr


def run_main(script, *args):
  """Runs a script's main in this process, as a user's command would run.

  The same flag parsing, settings and error reporting as the script's own
  process (scripts.parse_flags and run_main), without what only a
  process of its own shows: TensorFlow's start-up, the filter of its stderr,
  signals. So its flags are those of every script this process imported: a
  flag of another script is not refused here, as it would be there. The
  flags are restored afterwards.

  Args:
    script: The script's path in the checkout, e.g. 'cifar10_eval.py' or
      'tools/gpu_check.py'.
    *args: Its command line.

  Returns:
    A CompletedProcess: returncode (the exit status), stdout and stderr
    (what the script printed to sys.stdout and sys.stderr).
  """
  module = importlib.import_module(os.path.basename(script)[:-len('.py')])
  stdout, stderr = io.StringIO(), io.StringIO()
  with flagsaver.flagsaver(), contextlib.redirect_stdout(stdout), (
      contextlib.redirect_stderr(stderr)):
    try:
      argv = scripts.parse_flags([script] + list(args))
      scripts.run_main(module.main, argv)
      returncode = 0
    except SystemExit as exit_status:
      returncode = exit_status.code
  return subprocess.CompletedProcess([script] + list(args), returncode,
                                     stdout.getvalue(), stderr.getvalue())


# Flags of a training that runs until the test stops it (a signal, kill -9,
# a full disk, a second trainer): it need not learn, and at this learning
# rate its loss cannot diverge, which, at the tutorial's 0.1 in batches of
# 16, once ended such a run early (its NaN loss), its folder released, as a
# loaded machine let it train on.
UNTIL_STOPPED = ['--max_steps=1000000', '--initial_learning_rate=0.001']


def quick_args(data_dir, training=True, batch_size=16):
  """Flags for a quick run of a script on the small data of `data_dir`.

  Args:
    data_dir: The small data.
    training: For a training script: with the queue warm-up of the small
      data (the other scripts have no such flag).
    batch_size: Its --batch_size.
  """
  return ['--data_dir=' + data_dir, '--batch_size=%d' % batch_size] + (
      ['--min_fraction_of_examples_in_queue=%g' % SMALL_QUEUE_FRACTION]
      if training else [])


class ScriptProcess(object):
  """One of the scripts running in the background, its output collected.

  Waits are bounded; `kill()` ends it whatever happens (use it in a finally).
  """

  def __init__(self, script, *args, env=None, wrap=list):
    self.process = subprocess.Popen(
        wrap([sys.executable, script] + list(args)), cwd=REPO_DIR, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **TEXT)
    self.started = time.time()
    self.lines = []
    self.times = []  # When each line came, by time.time().
    self._stdout_reader = threading.Thread(target=self._read_stdout,
                                           daemon=True)
    self._stdout_reader.start()
    self._stderr = []
    self._stderr_reader = threading.Thread(
        target=lambda: self._stderr.append(self.process.stderr.read()),
        daemon=True)
    self._stderr_reader.start()

  def _read_stdout(self):
    for line in self.process.stdout:
      self.times.append(time.time())
      self.lines.append(line.rstrip('\n'))

  def wait_for_line(self, pattern, timeout=60, count=1):
    """Waits until `count` lines match `pattern`; returns the last match."""
    deadline = time.time() + timeout
    while True:
      ended = not self._stdout_reader.is_alive()
      matches = [m for m in map(re.compile(pattern).match, list(self.lines))
                 if m]
      if len(matches) >= count:
        return matches[count - 1]
      if ended or time.time() > deadline:
        raise AssertionError(
            'no line %r (%s) within %s s; output:\n%s\nstderr:\n%s' %
            (pattern, 'the script ended' if ended else 'still running',
             timeout, '\n'.join(self.lines), self.stderr()))
      time.sleep(0.05)

  def finish(self, timeout=60):
    """Waits for the end; returns the exit status."""
    returncode = self.process.wait(timeout)
    self._stdout_reader.join(timeout)
    self._stderr_reader.join(timeout)
    return returncode

  def stderr(self):
    return ''.join(self._stderr)

  def kill(self):
    if self.process.poll() is None:
      self.process.kill()
      self.process.wait(10)


def event_files(folder):
  """The paths of the summaries' event files in `folder`."""
  return [os.path.join(folder, name) for name in os.listdir(folder)
          if '.tfevents.' in name]


def assert_readable(checkpoint_path):
  """Every value of a checkpoint can be read: it is whole."""
  reader = tf.train.load_checkpoint(checkpoint_path)
  names = reader.get_variable_to_shape_map()
  assert 'global_step' in names and 'local4/weights' in names
  for name in names:
    reader.get_tensor(name)
