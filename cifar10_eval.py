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

"""Evaluation for CIFAR-10.

Accuracy and speed: see the README ("Expected accuracy") for the precision
this reaches after training here, measured, and how long it takes.

Usage:
    python cifar10_eval.py --checkpoint_dir=/tmp/cifar10_train \
        --eval_dir=/tmp/cifar10_eval

Each evaluation reads every image of the chosen set exactly once, with the
moving averages of the weights from the latest checkpoint (or the raw
weights, with --nomoving_average). Without --run_once, it evaluates each new
checkpoint as training writes it, checking every --eval_interval_secs.
"""

from datetime import datetime
import time

import numpy as np

import cifar10
from cifar10_support import checkpoints
from cifar10_support import command_line
from cifar10_support import devices
from cifar10_support import files
from cifar10_support import runtime
from cifar10_support import scripts
from cifar10_support.quiet import tf

command_line.define(
    'data_dir', 'data_url', 'data_md5', 'batch_size', 'use_fp16',
    'mixed_precision', 'top_layers', 'gpu_memory_growth', 'checkpoint_dir',
    'moving_average', 'eval_dir', 'eval_data', 'eval_interval_secs',
    'run_once')


class Evaluation(object):
  """Checkpoints of a model evaluated on every image of a data set: its
  graph, built once, and a pass over the data for each checkpoint.

  Args:
    params: cifar10_support.params.Params: which images (eval_data), in
      batches of batch_size, the model's top_layers, what to restore
      (moving_average), the sessions' settings.
    data: cifar10_support.data.DataSet: the data set.
    precision: cifar10_support.params.Precision: the model's types.
  """

  def __init__(self, params, data, precision):
    eval_data = params.eval_data == 'test'
    self.num_examples = data.num_examples(eval_data)
    self.class_names = data.class_names
    self.graph = tf.Graph()
    with self.graph.as_default():
      # Get images and labels for CIFAR-10.
      images, self._labels = cifar10.inputs(eval_data, data,
                                            params.batch_size,
                                            precision.compute_dtype)

      # Build a Graph that computes the logits predictions from the
      # inference model.
      logits = cifar10.inference(images, data.num_classes, params.top_layers,
                                 precision.variable_dtype)

      # Calculate predictions: is the likeliest class the label? Of classes
      # tied for first place, argmax takes the lowest label. (Not
      # tf.nn.in_top_k(logits, labels, 1), the tutorial's: it counts every
      # class tied for first place as right, so that a model whose logits
      # are all equal would score 1.000.)
      self._correct = tf.equal(tf.argmax(logits, 1, output_type=tf.int32),
                               tf.cast(self._labels, tf.int32))

      # Restore the moving averages of the learned variables (or, with
      # --nomoving_average, the variables themselves) for eval.
      self._to_restore = cifar10.variables_to_restore(params.moving_average)
      self._saver = tf.train.Saver(self._to_restore)

      # Build the summary operation based on the TF collection of Summaries.
      self._summary = tf.summary.merge_all()
      # The input's epoch counter.
      self._local_init = tf.local_variables_initializer()
    self._config = devices.session_config(params)

  def evaluate(self, checkpoint_path, stop, summary_writer):
    """Evaluates one checkpoint: one pass over every image of the data.

    Prints the precision @ 1, in all and by class, and summarises it at the
    checkpoint's global step.

    Args:
      checkpoint_path: The checkpoint to evaluate.
      stop: scripts.StopSignals; a signal abandons the pass.
      summary_writer: A files.EventFile of --eval_dir.

    Returns:
      The precision @ 1, a float; None if a signal stopped the pass.

    Raises:
      CheckpointUnreadable: the checkpoint's files are missing or damaged.
      CheckpointError: it cannot be restored into this model.
    """
    checkpoints.check_checkpoint(checkpoint_path, self._to_restore)
    correct_by_class = np.zeros(len(self.class_names), dtype=np.int64)
    total_by_class = np.zeros(len(self.class_names), dtype=np.int64)
    summary_str = None
    with tf.Session(graph=self.graph, config=self._config) as sess:
      checkpoints.restore(sess, self._saver, checkpoint_path)
      sess.run(self._local_init)

      # Start the queue runners.
      coord = tf.train.Coordinator()
      threads = tf.train.start_queue_runners(sess=sess, coord=coord)
      start_time = time.time()
      try:
        while not coord.should_stop() and not stop.received:
          if summary_str is None:
            # The summaries read a batch too: take them with the first one.
            correct, labels, summary_str = sess.run(
                [self._correct, self._labels, self._summary])
          else:
            correct, labels = sess.run([self._correct, self._labels])
          correct_by_class += np.bincount(labels[correct],
                                          minlength=len(self.class_names))
          total_by_class += np.bincount(labels,
                                        minlength=len(self.class_names))
      except tf.errors.OutOfRangeError:
        pass  # Every image has been seen once.
      finally:
        duration = time.time() - start_time
        coord.request_stop()
        coord.join(threads, stop_grace_period_secs=10)
    if stop.received:
      return None
    if total_by_class.sum() != self.num_examples:
      raise RuntimeError('evaluated %d images, but the data holds %d.' %
                         (total_by_class.sum(), self.num_examples))

    true_count = correct_by_class.sum()  # The number of correct predictions.
    total_sample_count = total_by_class.sum()
    global_step = checkpoints.checkpoint_step(checkpoint_path)
    # Compute precision @ 1.
    precision = true_count / total_sample_count
    precision_by_class = correct_by_class / np.maximum(total_by_class, 1)
    print(runtime.EVAL_LINE_FORMAT % (
        datetime.now(), precision, true_count, total_sample_count, global_step,
        total_sample_count / duration), flush=True)
    print('  by class: ' + ', '.join(
        '%s %.3f' % (name, class_precision) for name, class_precision in zip(
            self.class_names, precision_by_class)), flush=True)

    summary = tf.Summary()
    summary.ParseFromString(summary_str)
    summary.value.add(tag='Precision @ 1', simple_value=precision)
    for name, class_precision, count in zip(
        self.class_names, precision_by_class, total_by_class):
      if count:  # A class with no test image has no precision.
        summary.value.add(tag='Precision @ 1 by class/' + name,
                          simple_value=class_precision)
    summary_writer.add_summary(summary, global_step)
    summary_writer.flush()
    return precision


def evaluate(params, data, precision):
  """Evaluates the checkpoints of params.checkpoint_dir, as they come.

  Each new checkpoint once, as training writes them, checking every
  params.eval_interval_secs; or, with params.run_once, the newest.

  Args:
    params: cifar10_support.params.Params: the settings.
    data: cifar10_support.data.DataSet: the data set.
    precision: cifar10_support.params.Precision: the model's types.

  Raises:
    CheckpointError: no checkpoint (with run_once), or one that cannot be
      evaluated.
    WriteError: the summaries could not be written into params.eval_dir.
    Interrupted: SIGINT or SIGTERM stopped the evaluation.
  """
  files.ensure_writable_dir(params.eval_dir, 'eval_dir')
  evaluation = Evaluation(params, data, precision)
  evaluated = set()  # Checkpoints evaluated, or found unreadable.

  def what_a_failed_write_left(failure):
    # Whatever it was, the summaries written before are whole.
    if files.folder_gone(failure, params.eval_dir):
      return 'Evaluation stopped; its summaries went with the folder.'
    return 'Evaluation stopped; its summaries written whole are kept.'

  with files.writes_said('eval_dir', params.eval_dir,
                         what_a_failed_write_left), (
          files.EventFile(params.eval_dir, evaluation.graph)) as (
              summary_writer), scripts.StopSignals() as stop:
    while not stop.received:
      try:
        checkpoint_path = checkpoints.latest_checkpoint(
            params.checkpoint_dir)
      except checkpoints.CheckpointError as e:
        if params.run_once:
          raise
        print('%s: %s Waiting.' % (datetime.now(), e), flush=True)
        checkpoint_path = None
      if checkpoint_path and checkpoint_path not in evaluated:
        try:
          if evaluation.evaluate(checkpoint_path, stop,
                                 summary_writer) is not None:
            evaluated.add(checkpoint_path)
        except checkpoints.CheckpointUnreadable as e:
          if params.run_once:
            raise
          # Training keeps its last 5 checkpoints: an old one can vanish
          # between being listed and being read.
          print('%s: skipping %s; waiting for the next checkpoint.' %
                (datetime.now(), e), flush=True)
          evaluated.add(checkpoint_path)
      if params.run_once:
        break
      stop.wait(params.eval_interval_secs)
  if stop.received:
    raise scripts.Interrupted(
        'Evaluation stopped by %s.' % stop.received, stop.signum)


def main(argv):
  del argv  # The settings are the flags'.
  params = command_line.params()
  data = cifar10.maybe_download_and_extract(params.data_dir, params.data_url,
                                            params.data_md5)
  evaluate(params, data, devices.precision(params))


if __name__ == '__main__':
  scripts.run(main)
