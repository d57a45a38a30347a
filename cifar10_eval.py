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

import collections
from datetime import datetime
import time

import numpy as np

import cifar10
import cifar10_checkpoint
import cifar10_common
import cifar10_devices
import cifar10_files
import cifar10_flags
import cifar10_runtime
from cifar10_quiet import tf

cifar10_flags.define(
    'data_dir', 'data_url', 'data_md5', 'batch_size', 'use_fp16',
    'mixed_precision', 'top_layers', 'gpu_memory_growth', 'checkpoint_dir',
    'moving_average', 'eval_dir', 'eval_data', 'eval_interval_secs',
    'run_once')


# The ops of one evaluation pass.
# Whether each image's likeliest class is its label; the labels; the
# summaries; the initialiser of the input's epoch counter.
EvalOps = collections.namedtuple(
    'EvalOps', ['correct', 'labels', 'summary', 'local_init'])


def eval_once(saver, summary_writer, eval_ops, checkpoint_path, num_examples,
              class_names, stop, config=None):
  """Evaluates one checkpoint: one pass over every image of the data.

  Args:
    saver: Saver of what is evaluated, into the model's variables: the
      moving averages of the weights, or (--nomoving_average) the weights.
    summary_writer: Summary writer.
    eval_ops: EvalOps (see evaluate).
    checkpoint_path: The checkpoint to evaluate.
    num_examples: The number of images the pass must see.
    class_names: The names of the classes, in label order.
    stop: cifar10_common.StopSignals; a signal abandons the pass.
    config: The session's tf.ConfigProto.

  Returns:
    The precision @ 1, a float; None if a signal stopped the pass.

  Raises:
    CheckpointUnreadable: the checkpoint's files are missing or damaged.
    CheckpointError: it cannot be restored into this model.
  """
  with tf.Session(config=config) as sess:
    cifar10_checkpoint.restore(sess, saver, checkpoint_path)
    sess.run(eval_ops.local_init)

    # Start the queue runners.
    coord = tf.train.Coordinator()
    threads = tf.train.start_queue_runners(sess=sess, coord=coord)
    start_time = time.time()
    correct_by_class = np.zeros(len(class_names), dtype=np.int64)
    total_by_class = np.zeros(len(class_names), dtype=np.int64)
    summary_str = None
    try:
      while not coord.should_stop() and not stop.received:
        if summary_str is None:
          # The summaries read a batch too: take them with the first one.
          correct, labels, summary_str = sess.run(
              [eval_ops.correct, eval_ops.labels, eval_ops.summary])
        else:
          correct, labels = sess.run([eval_ops.correct, eval_ops.labels])
        correct_by_class += np.bincount(labels[correct],
                                        minlength=len(class_names))
        total_by_class += np.bincount(labels, minlength=len(class_names))
    except tf.errors.OutOfRangeError:
      pass  # Every image has been seen once.
    finally:
      duration = time.time() - start_time
      coord.request_stop()
      coord.join(threads, stop_grace_period_secs=10)
  if stop.received:
    return None
  if total_by_class.sum() != num_examples:
    raise RuntimeError('evaluated %d images, but the data holds %d.' %
                       (total_by_class.sum(), num_examples))
  return _report(summary_writer, summary_str, correct_by_class,
                 total_by_class, class_names,
                 cifar10_checkpoint.checkpoint_step(checkpoint_path), duration)


def _report(summary_writer, summary_str, correct_by_class, total_by_class,
            class_names, global_step, duration):
  """Prints the precision @ 1, in all and by class, and summarises it at the
  checkpoint's global step; returns it."""
  true_count = correct_by_class.sum()  # The number of correct predictions.
  total_sample_count = total_by_class.sum()
  # Compute precision @ 1.
  precision = true_count / total_sample_count
  precision_by_class = correct_by_class / np.maximum(total_by_class, 1)
  print(cifar10_runtime.EVAL_LINE_FORMAT % (
      datetime.now(), precision, true_count, total_sample_count, global_step,
      total_sample_count / duration), flush=True)
  print('  by class: ' + ', '.join(
      '%s %.3f' % (name, class_precision) for name, class_precision in zip(
          class_names, precision_by_class)), flush=True)

  summary = tf.Summary()
  summary.ParseFromString(summary_str)
  summary.value.add(tag='Precision @ 1', simple_value=precision)
  for name, class_precision, count in zip(
      class_names, precision_by_class, total_by_class):
    if count:  # A class with no test image has no precision.
      summary.value.add(tag='Precision @ 1 by class/' + name,
                        simple_value=class_precision)
  summary_writer.add_summary(summary, global_step)
  summary_writer.flush()
  return precision


def evaluate(params):
  """Evaluates the checkpoints of params.checkpoint_dir, as they come.

  Args:
    params: cifar10_params.Params.

  Raises:
    CheckpointError: no checkpoint (with run_once), or one that cannot be
      evaluated.
    Interrupted: SIGINT or SIGTERM stopped the evaluation.
  """
  cifar10_files.ensure_writable_dir(params.eval_dir, 'eval_dir')
  with tf.Graph().as_default() as g:
    # Get images and labels for CIFAR-10.
    eval_data = params.eval_data == 'test'
    images, labels = cifar10.inputs(eval_data, params.data_dir,
                                    params.batch_size, params.compute_dtype)
    num_examples = params.num_examples(eval_data)
    class_names = params.class_names

    # Build a Graph that computes the logits predictions from the
    # inference model.
    logits = cifar10.inference(images, len(class_names), params.top_layers,
                               params.variable_dtype)

    # Calculate predictions: is the likeliest class the label? Of classes
    # tied for first place, argmax takes the lowest label. (Not
    # tf.nn.in_top_k(logits, labels, 1), the tutorial's: it counts every
    # class tied for first place as right, so that a model whose logits are
    # all equal would score 1.000.)
    correct = tf.equal(tf.argmax(logits, 1, output_type=tf.int32),
                       tf.cast(labels, tf.int32))

    # Restore the moving averages of the learned variables (or, with
    # --nomoving_average, the variables themselves) for eval.
    variables_to_restore = cifar10.variables_to_restore(params.moving_average)
    saver = tf.train.Saver(variables_to_restore)

    # Build the summary operation based on the TF collection of Summaries.
    eval_ops = EvalOps(correct=correct, labels=labels,
                       summary=tf.summary.merge_all(),
                       local_init=tf.local_variables_initializer())

    try:
      summary_writer = cifar10_files.SummaryWriter(params.eval_dir, g)
      stop = _evaluate_checkpoints(params, saver, summary_writer, eval_ops,
                                   num_examples, class_names,
                                   variables_to_restore)
      summary_writer.close()
    except Exception as error:  # pylint: disable=broad-except
      if not cifar10_files.out_of_space(error):
        raise
      raise cifar10_files.no_space_error(
          'eval_dir', params.eval_dir, error, 'Evaluation stopped; its '
          'summaries written whole are kept.') from None
    if stop.received:
      raise cifar10_common.Interrupted(
          'Evaluation stopped by %s.' % stop.received, stop.signum)


def _evaluate_checkpoints(params, saver, summary_writer, eval_ops,
                          num_examples, class_names, variables_to_restore):
  """Evaluates each new checkpoint as it comes, or the latest once.

  Returns:
    The StopSignals, which say whether a signal stopped it.
  """
  evaluated = set()  # Checkpoints evaluated, or found unreadable.
  with cifar10_common.StopSignals() as stop:
    while not stop.received:
      try:
        checkpoint_path = cifar10_checkpoint.latest_checkpoint(
            params.checkpoint_dir)
      except cifar10_checkpoint.CheckpointError as e:
        if params.run_once:
          raise
        print('%s: %s Waiting.' % (datetime.now(), e), flush=True)
        checkpoint_path = None
      if checkpoint_path and checkpoint_path not in evaluated:
        try:
          cifar10_checkpoint.check_checkpoint(checkpoint_path,
                                           variables_to_restore)
          if eval_once(saver, summary_writer, eval_ops, checkpoint_path,
                       num_examples, class_names, stop,
                       cifar10_devices.session_config(params)) is not None:
            evaluated.add(checkpoint_path)
        except cifar10_checkpoint.CheckpointUnreadable as e:
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
  return stop


def main(argv):
  del argv  # The settings are the flags'.
  evaluate(cifar10_flags.params(fetch_data=True))


if __name__ == '__main__':
  cifar10_common.run(main)
