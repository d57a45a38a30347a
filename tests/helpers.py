"""Helpers of the tests: running the scripts, reading what they print."""

import re
import subprocess
import sys

import numpy as np

import cifar10
from cifar10_common import tf
from conftest import REPO_DIR
from conftest import SMALL_QUEUE_FRACTION

LOG_LINE = re.compile(
    r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}: step (\d+), loss = (\d+\.\d\d) '
    r'\((\d+\.\d) examples/sec; (\d+\.\d{3}) sec/batch\)$')
EVAL_LINE = re.compile(
    r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}: precision @ 1 = (\d\.\d{3}) '
    r'\((\d+) of (\d+) images, step (\d+)\)$')


def cross_entropy_on_test_set(checkpoint_path):
  """Mean cross entropy on the test records, with a checkpoint's weights."""
  with tf.Graph().as_default():
    images, labels = cifar10.inputs(eval_data=True)
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


def quick_args(data_dir):
  """Flags for a quick run of a script on the small data of `data_dir`."""
  return ['--data_dir=' + data_dir, '--batch_size=16',
          '--min_fraction_of_examples_in_queue=%g' % SMALL_QUEUE_FRACTION]
