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

Accuracy:
cifar10_train.py achieves 83.0%% accuracy after 100K steps (256 epochs
of data) as judged by cifar10_eval.py.

Speed:
On a single Tesla K40, cifar10_train.py processes a single batch of 128 images
in 0.25-0.35 sec (i.e. 350 - 600 images /sec). The model reaches ~86%%
accuracy after 100K steps in 8 hours of training time.

Usage:
Please see the tutorial and website for how to download the CIFAR-10
data set, compile the program and train the model.

http://tensorflow.org/tutorials/deep_cnn/

Each evaluation reads every image of the chosen set exactly once, with the
moving averages of the weights from the latest checkpoint. Without --run_once,
it evaluates each new checkpoint as training writes it, checking every
--eval_interval_secs.
"""

import collections
from datetime import datetime
import time

from absl import flags
import numpy as np

import cifar10
import cifar10_common
from cifar10_common import tf

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(cifar10)  # --helpshort lists the model's flags.

flags.DEFINE_string('eval_dir', '/tmp/cifar10_eval',
                    'Directory where to write event logs.')
flags.DEFINE_enum('eval_data', 'test', ['test', 'train_eval'],
                  'Either "test" (the 10,000 test images) or "train_eval" '
                  '(the 50,000 training images, undistorted).')
flags.DEFINE_string('checkpoint_dir', '/tmp/cifar10_train',
                    'Directory where to read model checkpoints.')
flags.DEFINE_integer('eval_interval_secs', 60 * 5,
                     'How often to look for a new checkpoint to evaluate.',
                     lower_bound=1)
flags.DEFINE_boolean('run_once', False,
                     'Whether to run eval only once.')
flags.DEFINE_boolean('moving_average', True,
                     'Evaluate the moving averages of the weights (the '
                     'tutorial\'s way); --nomoving_average evaluates the raw '
                     'weights, to see what the averages give.')


def checkpoint_step(checkpoint_path):
  """The global step stored in a checkpoint.

  Args:
    checkpoint_path: Path prefix of the checkpoint.

  Returns:
    The global step, an int.

  Raises:
    CheckpointUnreadable: it has no readable global step.
  """
  try:
    return int(tf.train.load_variable(checkpoint_path, 'global_step'))
  except (tf.errors.OpError, ValueError) as e:
    raise cifar10_common.CheckpointUnreadable(
        'cannot read the global step of checkpoint %s: %s' %
        (checkpoint_path, cifar10_common.first_line(e))) from None


# The ops of one evaluation pass.
EvalOps = collections.namedtuple(
    'EvalOps', ['top_k', 'labels', 'summary', 'local_init'])


def eval_once(saver, summary_writer, eval_ops, checkpoint_path, num_examples,
              class_names, stop):
  """Run Eval once.

  Args:
    saver: Saver of the moving averages, as the model's variables.
    summary_writer: Summary writer.
    eval_ops: EvalOps: whether each prediction is right, the labels, the
      summaries, the initialiser of the input's epoch counter.
    checkpoint_path: The checkpoint to evaluate.
    num_examples: The number of images the pass must see.
    class_names: The names of the classes, in label order.
    stop: cifar10_common.StopSignals; a signal abandons the pass.

  Returns:
    The precision @ 1, a float; None if a signal stopped the pass.

  Raises:
    CheckpointUnreadable: the checkpoint's files are missing or damaged.
    CheckpointError: it cannot be restored into this model.
  """
  global_step = checkpoint_step(checkpoint_path)
  with tf.Session() as sess:
    try:
      saver.restore(sess, checkpoint_path)
    except (tf.errors.NotFoundError, tf.errors.DataLossError) as e:
      raise cifar10_common.CheckpointUnreadable(
          'checkpoint %s cannot be read: %s' %
          (checkpoint_path, cifar10_common.first_line(e))) from None
    except (tf.errors.InvalidArgumentError, ValueError) as e:
      raise cifar10_common.CheckpointError(
          'checkpoint %s cannot be restored into this model: %s' %
          (checkpoint_path, cifar10_common.first_line(e))) from None
    sess.run(eval_ops.local_init)

    # Start the queue runners.
    coord = tf.train.Coordinator()
    threads = tf.train.start_queue_runners(sess=sess, coord=coord)
    start_time = time.time()
    num_classes = len(class_names)
    correct_by_class = np.zeros(num_classes, dtype=np.int64)
    total_by_class = np.zeros(num_classes, dtype=np.int64)
    summary_str = None
    try:
      while not coord.should_stop() and not stop.received:
        if summary_str is None:
          # The summaries read a batch too: take them with the first one.
          predictions, labels, summary_str = sess.run(
              [eval_ops.top_k, eval_ops.labels, eval_ops.summary])
        else:
          predictions, labels = sess.run([eval_ops.top_k, eval_ops.labels])
        correct_by_class += np.bincount(labels[predictions],
                                        minlength=num_classes)
        total_by_class += np.bincount(labels, minlength=num_classes)
    except tf.errors.OutOfRangeError:
      pass  # Every image has been seen once.
    finally:
      duration = time.time() - start_time
      coord.request_stop()
      coord.join(threads, stop_grace_period_secs=10)
  if stop.received:
    return None

  true_count = correct_by_class.sum()  # The number of correct predictions.
  total_sample_count = total_by_class.sum()
  if total_sample_count != num_examples:
    raise RuntimeError('evaluated %d images, but the data holds %d.' %
                       (total_sample_count, num_examples))
  # Compute precision @ 1.
  precision = true_count / total_sample_count
  precision_by_class = correct_by_class / np.maximum(total_by_class, 1)
  print('%s: precision @ 1 = %.3f (%d of %d images, step %d; %.1f images/sec)'
        % (datetime.now(), precision, true_count, total_sample_count,
           global_step, total_sample_count / duration), flush=True)
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


def evaluate():
  """Eval CIFAR-10 for a number of steps.

  Raises:
    CheckpointError: no checkpoint (with --run_once), or one that cannot be
      evaluated.
    Interrupted: SIGINT or SIGTERM stopped the evaluation.
  """
  cifar10_common.ensure_writable_dir(FLAGS.eval_dir, 'eval_dir')
  with tf.Graph().as_default() as g:
    # Get images and labels for CIFAR-10.
    eval_data = FLAGS.eval_data == 'test'
    images, labels = cifar10.inputs(eval_data=eval_data)
    num_examples = cifar10.num_examples_per_epoch(eval_data)
    class_names = cifar10.class_names()

    # Build a Graph that computes the logits predictions from the
    # inference model.
    logits = cifar10.inference(images)

    # Calculate predictions: is the likeliest class the label? Not
    # tf.nn.in_top_k(logits, labels, 1), the tutorial's: it counts a tie for
    # the first place as right, so that a model whose logits are all equal
    # would score 1.000.
    top_k_op = tf.equal(tf.argmax(logits, 1, output_type=tf.int32),
                        tf.cast(labels, tf.int32))

    # Restore the moving average version of the learned variables for eval.
    variables_to_restore = cifar10.variables_to_restore(FLAGS.moving_average)
    saver = tf.train.Saver(variables_to_restore)
    expected_shapes = {name: v.shape.as_list()
                       for name, v in variables_to_restore.items()}

    # Build the summary operation based on the TF collection of Summaries.
    eval_ops = EvalOps(top_k=top_k_op, labels=labels,
                       summary=tf.summary.merge_all(),
                       local_init=tf.local_variables_initializer())

    summary_writer = tf.summary.FileWriter(FLAGS.eval_dir, g)

    evaluated = set()  # Checkpoints evaluated, or found unreadable.
    with cifar10_common.StopSignals() as stop:
      while not stop.received:
        checkpoint_path = tf.train.latest_checkpoint(FLAGS.checkpoint_dir)
        if checkpoint_path is None:
          message = ('no checkpoint in --checkpoint_dir=%s yet: train first '
                     '(cifar10_train.py --train_dir=%s).' %
                     (FLAGS.checkpoint_dir, FLAGS.checkpoint_dir))
          if FLAGS.run_once:
            raise cifar10_common.CheckpointError(message)
          print('%s: %s Waiting.' % (datetime.now(), message), flush=True)
        elif checkpoint_path not in evaluated:
          try:
            cifar10.check_checkpoint(checkpoint_path, expected_shapes)
            if eval_once(saver, summary_writer, eval_ops, checkpoint_path,
                         num_examples, class_names, stop) is not None:
              evaluated.add(checkpoint_path)
          except cifar10_common.CheckpointUnreadable as e:
            if FLAGS.run_once:
              raise
            # Training keeps its last 5 checkpoints: an old one can vanish
            # between being listed and being read.
            print('%s: skipping %s; waiting for the next checkpoint.' %
                  (datetime.now(), e), flush=True)
            evaluated.add(checkpoint_path)
        if FLAGS.run_once:
          break
        stop.wait(FLAGS.eval_interval_secs)
    summary_writer.close()
    if stop.received:
      raise cifar10_common.Interrupted(
          'Evaluation stopped by %s.' % stop.received, stop.signum)


def main(argv=None):  # pylint: disable=unused-argument
  cifar10.maybe_download_and_extract()
  evaluate()


if __name__ == '__main__':
  cifar10_common.run(main)
