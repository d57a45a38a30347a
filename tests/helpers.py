"""Helpers of the tests: running the scripts, reading what they print."""

import re
import subprocess
import sys
import threading
import time

import numpy as np

import cifar10
from cifar10_common import tf
import cifar10_runtime
from conftest import REPO_DIR
from conftest import SMALL_QUEUE_FRACTION

# What the scripts print, as they print it (see cifar10_runtime).
LOG_LINE = cifar10_runtime.LOG_LINE
EVAL_LINE = cifar10_runtime.EVAL_LINE


def cross_entropy_on_test_set(checkpoint_path, data_dir, use_fp16=False):
  """Mean cross entropy on the test records, with a checkpoint's weights."""
  with tf.Graph().as_default():
    images, labels = cifar10.inputs(
        True, data_dir, dtype=tf.float16 if use_fp16 else tf.float32)
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


def run_script(script, *args):
  """Runs one of the scripts as a user would; returns the CompletedProcess."""
  return subprocess.run([sys.executable, script] + list(args), cwd=REPO_DIR,
                        capture_output=True, text=True, timeout=300)


def quick_args(data_dir, training=True):
  """Flags for a quick run of a script on the small data of `data_dir`.

  Args:
    data_dir: The small data.
    training: For a training script: with the queue warm-up of the small
      data (the other scripts have no such flag).
  """
  return ['--data_dir=' + data_dir, '--batch_size=16'] + (
      ['--min_fraction_of_examples_in_queue=%g' % SMALL_QUEUE_FRACTION]
      if training else [])


class ScriptProcess(object):
  """One of the scripts running in the background, its output collected.

  Waits are bounded; `kill()` ends it whatever happens (use it in a finally).
  """

  def __init__(self, script, *args, env=None):
    self.process = subprocess.Popen(
        [sys.executable, script] + list(args), cwd=REPO_DIR, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    self.lines = []
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


def assert_readable(checkpoint_path):
  """Every value of a checkpoint can be read: it is whole."""
  reader = tf.train.load_checkpoint(checkpoint_path)
  names = reader.get_variable_to_shape_map()
  assert 'global_step' in names and 'local4/weights' in names
  for name in names:
    reader.get_tensor(name)
