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

"""A binary to train CIFAR-10 using multiple GPUs with synchronous updates.

Accuracy and speed: see the README ("Expected accuracy", "Speed"); the
tutorial's own GPU figures, the old reference, are in docs/speed.md.

Usage:
    python cifar10_multi_gpu_train.py --num_gpus=2

One model replica ("tower") per device trains on its own batch of
--batch_size images; the variables live once, on the CPU, shared by all
towers; their gradients are averaged and applied in one update per step
(cifar10.train, as on one device). The towers share one input pipeline.
Checkpoints are the same as those of cifar10_train.py: either script resumes
from the other's, and cifar10_eval.py evaluates both.
"""

import re

from absl import flags

import cifar10
import cifar10_input
from cifar10_support import command_line
from cifar10_support import devices as devices_lib
from cifar10_support import runtime
from cifar10_support import scripts
from cifar10_support.quiet import tf

FLAGS = flags.FLAGS
command_line.define(*command_line.TRAINING)
flags.DEFINE_integer('num_gpus', 1, 'How many GPUs to use: one tower each.',
                     lower_bound=1)


def tower_loss(scope, images, labels, num_classes=cifar10.NUM_CLASSES,
               top_layers='fully_connected', variable_dtype=None):
  """Calculate the total loss on a single tower running the CIFAR model.

  Args:
    scope: unique prefix string identifying the CIFAR tower, e.g. 'tower_0'
    images: Images. 4D tensor of shape [batch_size, height, width, 3].
    labels: Labels. 1D tensor of shape [batch_size].
    num_classes: The model's number of classes.
    top_layers: The model's top layers (see cifar10.inference).
    variable_dtype: The variables' type (see cifar10.inference).

  Returns:
     Tensor of shape [] containing the total loss for a batch of data, and
     the list of the loss terms that make it up.
  """

  # Build inference Graph.
  logits = cifar10.inference(images, num_classes, top_layers, variable_dtype)

  # Build the portion of the Graph calculating the losses. Its total is of
  # every tower's terms: this tower's total is assembled below.
  _ = cifar10.loss(logits, labels)

  # Assemble all of the losses for the current tower only.
  losses = tf.get_collection('losses', scope)

  # Calculate the total loss for the current tower.
  total_loss = tf.add_n(losses, name='total_loss')
  return total_loss, losses


def average_gradients(tower_grads):
  """Calculate the average gradient for each shared variable across all towers.

  Note that this function provides a synchronization point across all towers.

  Args:
    tower_grads: List of lists of (gradient, variable) tuples. The outer list
      is over the towers; each inner list holds one tower's gradient of every
      variable, in the same order.
  Returns:
     List of pairs of (gradient, variable) where the gradient has been averaged
     across all towers.
  """
  average_grads = []
  for grad_and_vars in zip(*tower_grads):
    # Note that each grad_and_vars looks like the following:
    #   ((grad0_gpu0, var0_gpu0), ... , (grad0_gpuN, var0_gpuN))
    grads = [tf.expand_dims(g, 0) for g, _ in grad_and_vars]

    # Average over the 'tower' dimension.
    grad = tf.reduce_mean(tf.concat(axis=0, values=grads), 0)

    # Keep in mind that the Variables are redundant because they are shared
    # across towers. So .. we will just return the first tower's pointer to
    # the Variable.
    v = grad_and_vars[0][1]
    grad_and_var = (grad, v)
    average_grads.append(grad_and_var)
  return average_grads


def _untowered_name(name):
  """An op name without its 'tower_N/' prefix."""
  return re.sub('^%s_[0-9]*/' % cifar10.TOWER_NAME, '', name)


def average_losses(tower_losses):
  """Averages each loss term over the towers (one list of terms each, in
  the same order), under its single-device name: the loss summaries, and the
  loss averages in the checkpoints, are those of cifar10_train.py."""
  return [tf.identity(tf.add_n(terms) / len(terms),
                      name=_untowered_name(terms[0].op.name))
          for terms in zip(*tower_losses)]


def tower_devices(num_gpus):
  """The devices of `num_gpus` towers: ['/gpu:0', ... '/gpu:N-1'].

  Where there are fewer GPUs, soft placement puts the towers that have none
  on the CPU; this is said once.
  """
  found = len(devices_lib.gpus())
  if found < num_gpus:
    if found == 0:
      on_cpu = 'the tower runs' if num_gpus == 1 else (
          'all %d towers run' % num_gpus)
    elif found == num_gpus - 1:
      on_cpu = 'tower %d runs' % found
    else:
      on_cpu = 'towers %d to %d run' % (found, num_gpus - 1)
    print('--num_gpus=%d, but %s GPU found: %s on the CPU.' %
          (num_gpus, found or 'no', on_cpu), flush=True)
  return ['/gpu:%d' % i for i in range(num_gpus)]


def build_training_graph(get_batch, devices, global_step, params, data,
                         precision):
  """Builds one tower per device and the synchronous update of them all.

  Args:
    get_batch: Called once per tower, inside its device and name scope,
      returns (images, labels) of that tower's batch.
    devices: One device name per tower.
    global_step: The global step variable.
    params: cifar10_support.params.Params: the model's and the update's
      settings.
    data: cifar10_support.data.DataSet: the data trained on (its classes,
      its epoch).
    precision: cifar10_support.params.Precision: the model's types.

  Returns:
    train_op: One update with the averaged gradients, then the moving
      averages.
    total_loss: The total loss averaged over the towers.
    grads: The averaged (gradient, variable) pairs.
  """
  loss_scale = cifar10.float16_loss_scale() if precision.loss_scaled else None
  # Calculate the gradients for each model tower.
  tower_grads = []
  tower_losses = []
  with tf.variable_scope(tf.get_variable_scope()):
    for i, device in enumerate(devices):
      with tf.device(device):
        with tf.name_scope('%s_%d' % (cifar10.TOWER_NAME, i)) as scope:
          images, labels = get_batch(i)
          # Calculate the loss for one tower of the CIFAR model. This function
          # constructs the entire CIFAR model but shares the variables across
          # all towers.
          loss, losses = tower_loss(scope, images, labels, data.num_classes,
                                    params.top_layers,
                                    precision.variable_dtype)

          # Reuse variables for the next tower.
          tf.get_variable_scope().reuse_variables()

          # Calculate the gradients for the batch of data on this CIFAR tower.
          grads = cifar10.gradients(loss, loss_scale)

          # Keep track of the gradients across all towers.
          tower_grads.append(grads)
          tower_losses.append(losses)

  _keep_the_first_towers_summaries()

  # The loss terms averaged over the towers, and their total: the loss of the
  # whole step, summarised raw and averaged as in single-device training.
  loss_terms = average_losses(tower_losses)
  total_loss = tf.add_n(loss_terms, name='total_loss')

  # We must calculate the mean of each gradient. Note that this is the
  # synchronization point across all towers.
  grads = average_gradients(tower_grads)

  # The update, as on one device, with the averaged gradients: the learning
  # rate decays with the epochs of all towers' images.
  train_op = cifar10.train(
      total_loss, global_step,
      examples_per_step=params.batch_size * len(devices),
      examples_per_epoch=data.num_train_examples,
      initial_learning_rate=params.initial_learning_rate, grads=grads,
      losses=loss_terms, loss_scale=loss_scale)
  return train_op, total_loss, grads


def _keep_the_first_towers_summaries():
  """Every tower made the same activation summaries: keeps those of the
  first, which show without its tower prefix (cifar10._activation_summary)."""
  first_tower = '%s_0/' % cifar10.TOWER_NAME
  graph = tf.get_default_graph()
  summaries = graph.get_collection(tf.GraphKeys.SUMMARIES)
  graph.clear_collection(tf.GraphKeys.SUMMARIES)
  for summary in summaries:
    if (not summary.op.name.startswith(cifar10.TOWER_NAME + '_') or
        summary.op.name.startswith(first_tower)):
      tf.add_to_collection(tf.GraphKeys.SUMMARIES, summary)


def train(params, data, precision, devices, config=None):
  """Train CIFAR-10 for a number of steps.

  Args:
    params: cifar10_support.params.Params: the settings.
    data: cifar10_support.data.DataSet: the data to train on.
    precision: cifar10_support.params.Precision: the model's types.
    devices: The towers' devices (tower_devices()).
    config: The session's tf.ConfigProto; soft placement by default.
  """
  with tf.Graph().as_default(), tf.device('/cpu:0'):
    global_step = tf.train.get_or_create_global_step()

    # One input pipeline for all towers, and a queue of whole batches.
    images, labels = cifar10.distorted_inputs(
        data, params.batch_size, precision.compute_dtype,
        params.min_fraction_of_examples_in_queue)
    batch_queue = cifar10_input.prefetch_batches([images, labels],
                                                 capacity=2 * len(devices))

    def dequeue_batch(tower):
      del tower  # Every tower takes the next batch.
      # On the CPU, where the queue is: each tower's batch is then copied to
      # its device (a dequeue has no GPU kernel).
      with tf.device('/cpu:0'):
        return batch_queue.dequeue()

    train_op, total_loss, _ = build_training_graph(
        dequeue_batch, devices, global_step, params, data, precision)

    runtime.run_training(
        train_op, total_loss, params, data.class_names,
        batches_per_step=len(devices),
        config=config or devices_lib.session_config(
            params, allow_soft_placement=True))


def main(argv):
  del argv  # The settings are the flags'.
  params = command_line.params()
  data = cifar10.maybe_download_and_extract(params.data_dir, params.data_url,
                                            params.data_md5)
  train(params, data, devices_lib.precision(params),
        tower_devices(FLAGS.num_gpus))


if __name__ == '__main__':
  scripts.run(main)
