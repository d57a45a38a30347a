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

"""A binary to train CIFAR-10 using a single GPU.

Accuracy and speed, measured: the README's "Expected accuracy" and "Speed".

Usage:
    python cifar10_train.py --train_dir=/tmp/cifar10_train \
        --data_dir=/tmp/cifar10_data

It downloads CIFAR-10 into --data_dir on first use. It never deletes
--train_dir: run it again and it resumes from the latest checkpoint there, at
its global step. It holds --train_dir while it trains: a second training
there is refused (cifar10_support.files.hold_train_dir).
"""

import cifar10
from cifar10_support import command_line
from cifar10_support import devices
from cifar10_support import runtime
from cifar10_support import scripts
from cifar10_support.quiet import tf

command_line.define(*command_line.TRAINING)


def train(params, data, precision):
  """Train CIFAR-10 for a number of steps.

  Args:
    params: cifar10_support.params.Params: the settings.
    data: cifar10_support.data.DataSet: the data to train on.
    precision: cifar10_support.params.Precision: the types the model
      computes and keeps its variables in.
  """
  with tf.Graph().as_default():
    # The global step on the CPU, with the variables: the update and the
    # moving averages run there.
    with tf.device('/cpu:0'):
      global_step = tf.train.get_or_create_global_step()

    # Get images and labels for CIFAR-10 (the input pipeline runs on the
    # CPU, whatever device the model is on).
    images, labels = cifar10.distorted_inputs(
        data, params.batch_size, precision.compute_dtype,
        params.min_fraction_of_examples_in_queue)

    # Build a Graph that computes the logits predictions from the
    # inference model.
    logits = cifar10.inference(images, data.num_classes, params.top_layers,
                               precision.variable_dtype)

    # Calculate loss.
    loss = cifar10.loss(logits, labels)

    # Build a Graph that trains the model with one batch of examples and
    # updates the model parameters.
    train_op = cifar10.train(
        loss, global_step, examples_per_step=params.batch_size,
        examples_per_epoch=data.num_train_examples,
        initial_learning_rate=params.initial_learning_rate,
        loss_scale=(cifar10.float16_loss_scale() if precision.loss_scaled
                    else None))

    runtime.run_training(train_op, loss, params, data.class_names)


def main(argv):
  del argv  # The settings are the flags'.
  params = command_line.params()
  data = cifar10.maybe_download_and_extract(params.data_dir, params.data_url,
                                            params.data_md5)
  train(params, data, devices.precision(params))


if __name__ == '__main__':
  scripts.run(main)
