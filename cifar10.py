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

"""Builds the CIFAR-10 network.

Summary of available functions:

 # Compute input images and labels for training. If you would like to run
 # evaluations, use inputs() instead.
 inputs, labels = distorted_inputs()

 # Compute inference on the model inputs to make a prediction.
 predictions = inference(inputs)

 # Compute the total loss of the prediction with respect to the labels.
 loss = loss(predictions, labels)

 # Create a graph to run one step of training with respect to the loss.
 train_op = train(loss, global_step)
"""

import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib

from absl import flags
import numpy as np

import cifar10_common
import cifar10_input
from cifar10_common import tf
from cifar10_common import UserError

FLAGS = flags.FLAGS

# Basic model parameters.
flags.DEFINE_integer('batch_size', 128,
                     'Number of images to process in a batch.', lower_bound=1)
flags.DEFINE_string('data_dir', '/tmp/cifar10_data',
                    'Path to the CIFAR-10 data directory.')
flags.DEFINE_boolean('use_fp16', False,
                     'Train the model using fp16.')
flags.DEFINE_enum('top_layers', 'fully_connected',
                  ['fully_connected', 'locally_connected'],
                  'local3 and local4 fully connected, as in the tutorial, or '
                  'locally connected, as in cuda-convnet\'s model (3x3 '
                  'windows of 64, then 32 filters, weights not shared '
                  'between positions).')
flags.DEFINE_float('initial_learning_rate', 0.1,
                   'Learning rate at step 0; it is divided by 10 every 350 '
                   'epochs. The tutorial\'s 0.1 suits one worker; '
                   'asynchronous distributed training with several may need '
                   'less.', lower_bound=0.0)
flags.DEFINE_float('min_fraction_of_examples_in_queue', 0.4,
                   'Fraction of an epoch of training images queued before '
                   'training starts: more mixes better, less starts sooner.',
                   lower_bound=0.0, upper_bound=1.0)

# Where the data set comes from, and the MD5 of the official archive.
DATA_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'
DATA_MD5 = 'c32a1d4ab5d03f1284b67883e8d87530'

flags.DEFINE_string('data_url', DATA_URL,
                    'Where to download the CIFAR-10 binary archive from, if '
                    'it is not in --data_dir yet: a mirror, or a file:// URL '
                    'of an archive you already have.')
flags.DEFINE_string('data_md5', DATA_MD5,
                    'Expected MD5 of the archive (the official one by '
                    'default); empty to skip the check.')

# Global constants describing the CIFAR-10 data set. Data of your own (see
# prepare_data.py) brings its classes and sizes: see class_names() and
# num_examples_per_epoch().
IMAGE_SIZE = cifar10_input.IMAGE_SIZE
NUM_CLASSES = cifar10_input.NUM_CLASSES
NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN = cifar10_input.NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN
NUM_EXAMPLES_PER_EPOCH_FOR_EVAL = cifar10_input.NUM_EXAMPLES_PER_EPOCH_FOR_EVAL


# Constants describing the training process.
MOVING_AVERAGE_DECAY = 0.9999     # The decay to use for the moving average.
NUM_EPOCHS_PER_DECAY = 350.0      # Epochs after which learning rate decays.
LEARNING_RATE_DECAY_FACTOR = 0.1  # Learning rate decay factor.
# The initial learning rate is a flag, --initial_learning_rate (0.1).
LOSS_AVERAGE_DECAY = 0.9          # The decay of the losses' moving averages.

# If a model is trained with multiple GPUs, prefix all Op names with tower_name
# to differentiate the operations. Note that this prefix is removed from the
# names of the summaries when visualizing a model.
TOWER_NAME = 'tower'

# Seconds between two progress lines of a download.
_PROGRESS_INTERVAL_SECS = 0.5


def _add_summary(summary_op):
  """Adds a summary op to the collection that tf.summary.merge_all() reads."""
  tf.add_to_collection(tf.GraphKeys.SUMMARIES, summary_op)


def scalar_summary(tag, value):
  """Summarises a scalar under exactly `tag`.

  tf.summary.scalar derives the tag from a name scope, so it renames a tag
  that is also the name of an op ('cross_entropy' becomes 'cross_entropy_1'),
  and rejects characters such as those of 'total_loss (raw)'.

  Args:
    tag: The tag TensorBoard shows.
    value: A scalar Tensor.
  """
  _add_summary(tf.raw_ops.ScalarSummary(tags=tag, values=value,
                                        name='scalar_summary'))


def histogram_summary(tag, values):
  """Summarises the distribution of `values` under exactly `tag`.

  Args:
    tag: The tag TensorBoard shows (see scalar_summary).
    values: A Tensor.
  """
  _add_summary(tf.raw_ops.HistogramSummary(tag=tag, values=values,
                                           name='histogram_summary'))


def _activation_summary(x):
  """Helper to create summaries for activations.

  Creates a summary that provides a histogram of activations.
  Creates a summary that measures the sparsity of activations.

  Args:
    x: Tensor
  Returns:
    nothing
  """
  # Remove 'tower_[0-9]/' from the name in case this is a multi-GPU training
  # session. This helps the clarity of presentation on tensorboard.
  tensor_name = re.sub('%s_[0-9]*/' % TOWER_NAME, '', x.op.name)
  histogram_summary(tensor_name + '/activations', x)
  scalar_summary(tensor_name + '/sparsity', tf.nn.zero_fraction(x))


def _float_dtype():
  """The dtype of the model's variables and activations."""
  return tf.float16 if FLAGS.use_fp16 else tf.float32


def _variable_on_cpu(name, shape, initializer):
  """Helper to create a Variable stored on CPU memory.

  Every variable of the model is made here, so that all model replicas
  ("towers", one per device) share one copy, kept on the CPU.

  Args:
    name: name of the variable
    shape: list of ints
    initializer: initializer for Variable

  Returns:
    Variable Tensor
  """
  with tf.device('/cpu:0'):
    var = tf.get_variable(name, shape, initializer=initializer,
                          dtype=_float_dtype())
  return var


def _variable_with_weight_decay(name, shape, stddev, wd):
  """Helper to create an initialized Variable with weight decay.

  Note that the Variable is initialized with a truncated normal distribution.
  A weight decay is added only if one is specified.

  Args:
    name: name of the variable
    shape: list of ints
    stddev: standard deviation of a truncated Gaussian
    wd: add L2Loss weight decay multiplied by this float. If None, weight
        decay is not added for this Variable.

  Returns:
    Variable Tensor
  """
  var = _variable_on_cpu(
      name,
      shape,
      tf.truncated_normal_initializer(stddev=stddev))
  if wd is not None:
    weight_decay = tf.multiply(tf.nn.l2_loss(var), wd, name='weight_loss')
    tf.add_to_collection('losses', weight_decay)
  return var


def data_batches_dir():
  """The folder of the binary batch files inside --data_dir."""
  if not FLAGS.data_dir:
    raise UserError('--data_dir is empty: give the CIFAR-10 data directory.')
  return os.path.join(FLAGS.data_dir, cifar10_input.BATCHES_DIR_NAME)


def class_names():
  """The class names of the data in --data_dir, in label order.

  Returns:
    A tuple of names: from its batches.meta.txt, or CIFAR-10's ten when it
    has none (or is not there yet).
  """
  return cifar10_input.read_class_names(data_batches_dir())


def num_examples_per_epoch(eval_data=False):
  """The number of training (or test) images in --data_dir.

  Args:
    eval_data: bool, the test set if True.

  Returns:
    The number of records, or CIFAR-10's 50,000 (10,000) while the data is
    not there yet.
  """
  filenames = cifar10_input.data_filenames(data_batches_dir(), eval_data)
  if all(os.path.isfile(f) for f in filenames):
    return cifar10_input.count_records(filenames)
  return (NUM_EXAMPLES_PER_EPOCH_FOR_EVAL if eval_data else
          NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN)


def distorted_inputs():
  """Construct distorted input for CIFAR training using the Reader ops.

  Returns:
    images: Images. 4D tensor of [batch_size, IMAGE_SIZE, IMAGE_SIZE, 3] size.
    labels: Labels. 1D tensor of [batch_size] size.

  Raises:
    UserError: If no data_dir, or its data files are missing or malformed.
  """
  images, labels = cifar10_input.distorted_inputs(
      data_dir=data_batches_dir(), batch_size=FLAGS.batch_size,
      min_fraction_of_examples_in_queue=FLAGS.min_fraction_of_examples_in_queue)
  if FLAGS.use_fp16:
    images = tf.cast(images, tf.float16)
  return images, labels


def inputs(eval_data):
  """Construct input for CIFAR evaluation using the Reader ops.

  Each image of the chosen set is read once; then the pipeline raises
  `tf.errors.OutOfRangeError`.

  Args:
    eval_data: bool, indicating if one should use the train or eval data set.

  Returns:
    images: Images. 4D tensor of [batch_size, IMAGE_SIZE, IMAGE_SIZE, 3] size.
    labels: Labels. 1D tensor of [batch_size] size.

  Raises:
    UserError: If no data_dir, or its data files are missing or malformed.
  """
  images, labels = cifar10_input.inputs(eval_data=eval_data,
                                        data_dir=data_batches_dir(),
                                        batch_size=FLAGS.batch_size)
  if FLAGS.use_fp16:
    images = tf.cast(images, tf.float16)
  return images, labels


def local_response_normalization(x, depth_radius, bias, alpha, beta, name):
  """tf.nn.lrn, computed with a matrix multiply: same values, 3x faster here.

  Each output is x / (bias + alpha * sum of x**2 over the channels within
  depth_radius of its own) ** beta, as tf.nn.lrn defines it. TensorFlow's CPU
  kernels for LRN and its gradient run on one thread and took a fifth of a
  training step; the windowed sum of squares is a product with a band
  matrix, which oneDNN multiplies on every core, and the gradient follows by
  differentiation. The results agree with tf.nn.lrn to float rounding (see
  tests/test_model.py).

  Args:
    x: A 4-D [batch, height, width, channels] Tensor.
    depth_radius: Half-width of the window of channels.
    bias: Added to the weighted sum of squares.
    alpha: Weight of the sum of squares.
    beta: Exponent.
    name: Name of the result.

  Returns:
    A Tensor of the shape of `x`.
  """
  with tf.name_scope(name + '_terms'):
    depth = x.get_shape()[-1]
    channel = np.arange(depth)
    window = np.abs(channel[:, None] - channel[None, :]) <= depth_radius
    square_sum = tf.matmul(tf.reshape(tf.square(x), [-1, depth]),
                           tf.constant(window, dtype=x.dtype))
    scale = bias + alpha * tf.reshape(square_sum, tf.shape(x))
    if beta == 0.75:  # The tutorial's: two square roots beat a power.
      scale = tf.math.rsqrt(scale) * tf.math.rsqrt(tf.sqrt(scale))
    else:
      scale = tf.pow(scale, -beta)
  return tf.multiply(x, scale, name=name)


def inference(images, num_classes=None):
  """Build the CIFAR-10 model.

  The top layers, local3 and local4, are fully connected (the tutorial's), or
  locally connected with --top_layers=locally_connected.

  Args:
    images: Images returned from distorted_inputs() or inputs().
    num_classes: Outputs of the last layer; by default, the number of
      classes of the data in --data_dir (10 for CIFAR-10).

  Returns:
    Logits.
  """
  # We instantiate all variables using tf.get_variable() instead of
  # tf.Variable() in order to share variables across multiple GPU training runs.
  # If we only ran this model on a single GPU, we could simplify this function
  # by replacing all instances of tf.get_variable() with tf.Variable().
  #
  # conv1
  with tf.variable_scope('conv1') as scope:
    kernel = _variable_with_weight_decay('weights',
                                         shape=[5, 5, 3, 64],
                                         stddev=5e-2,
                                         wd=None)
    conv = tf.nn.conv2d(images, kernel, [1, 1, 1, 1], padding='SAME')
    biases = _variable_on_cpu('biases', [64], tf.constant_initializer(0.0))
    pre_activation = tf.nn.bias_add(conv, biases)
    conv1 = tf.nn.relu(pre_activation, name=scope.name)
    _activation_summary(conv1)

  # pool1
  pool1 = tf.nn.max_pool(conv1, ksize=[1, 3, 3, 1], strides=[1, 2, 2, 1],
                         padding='SAME', name='pool1')
  # norm1
  norm1 = local_response_normalization(pool1, 4, bias=1.0, alpha=0.001 / 9.0,
                                       beta=0.75, name='norm1')

  # conv2
  with tf.variable_scope('conv2') as scope:
    kernel = _variable_with_weight_decay('weights',
                                         shape=[5, 5, 64, 64],
                                         stddev=5e-2,
                                         wd=None)
    conv = tf.nn.conv2d(norm1, kernel, [1, 1, 1, 1], padding='SAME')
    biases = _variable_on_cpu('biases', [64], tf.constant_initializer(0.1))
    pre_activation = tf.nn.bias_add(conv, biases)
    conv2 = tf.nn.relu(pre_activation, name=scope.name)
    _activation_summary(conv2)

  # norm2
  norm2 = local_response_normalization(conv2, 4, bias=1.0, alpha=0.001 / 9.0,
                                       beta=0.75, name='norm2')
  # pool2
  pool2 = tf.nn.max_pool(norm2, ksize=[1, 3, 3, 1],
                         strides=[1, 2, 2, 1], padding='SAME', name='pool2')

  if FLAGS.top_layers == 'locally_connected':
    # The top of Alex Krizhevsky's cuda-convnet model (the tutorial's
    # exercise; layers-conv-local-11pct.cfg): two locally connected layers,
    # then the linear layer.
    local3 = _locally_connected('local3', pool2, filters=64, size=3)
    local4 = _locally_connected('local4', local3, filters=32, size=3)
    top = tf.reshape(local4, [-1, local4.get_shape()[1:].num_elements()])
  else:
    # local3
    with tf.variable_scope('local3') as scope:
      # Move everything into depth so we can perform a single matrix
      # multiply. The batch dimension stays open: an evaluation's last batch
      # is smaller.
      dim = pool2.get_shape()[1:].num_elements()
      reshape = tf.reshape(pool2, [-1, dim])
      weights = _variable_with_weight_decay('weights', shape=[dim, 384],
                                            stddev=0.04, wd=0.004)
      biases = _variable_on_cpu('biases', [384], tf.constant_initializer(0.1))
      local3 = tf.nn.relu(tf.matmul(reshape, weights) + biases,
                          name=scope.name)
      _activation_summary(local3)

    # local4
    with tf.variable_scope('local4') as scope:
      weights = _variable_with_weight_decay('weights', shape=[384, 192],
                                            stddev=0.04, wd=0.004)
      biases = _variable_on_cpu('biases', [192], tf.constant_initializer(0.1))
      local4 = tf.nn.relu(tf.matmul(local3, weights) + biases,
                          name=scope.name)
      _activation_summary(local4)
    top = local4

  # linear layer(WX + b),
  # We don't apply softmax here because
  # tf.nn.sparse_softmax_cross_entropy_with_logits accepts the unscaled logits
  # and performs the softmax internally for efficiency.
  num_classes = num_classes or len(class_names())
  with tf.variable_scope('softmax_linear') as scope:
    dim = top.get_shape()[-1]
    weights = _variable_with_weight_decay('weights', [dim, num_classes],
                                          stddev=1.0 / dim, wd=None)
    biases = _variable_on_cpu('biases', [num_classes],
                              tf.constant_initializer(0.0))
    softmax_linear = tf.add(tf.matmul(top, weights), biases, name=scope.name)
    _activation_summary(softmax_linear)

  return softmax_linear


def _locally_connected(name, inputs, filters, size):
  """A locally connected layer with ReLU: a convolution whose weights differ
  at every position (cuda-convnet's 'local' layers).

  Weights drawn with stddev 0.04 and decayed by 0.004, biases 0.1, as the
  tutorial's local3 and local4.

  Args:
    name: Name of the layer (its variable scope).
    inputs: 4-D Tensor [batch, height, width, depth].
    filters: Output channels.
    size: Side of the square window; SAME padding, stride 1.

  Returns:
    4-D Tensor [batch, height, width, filters].
  """
  with tf.variable_scope(name) as scope:
    _, height, width, depth = inputs.get_shape().as_list()
    positions, window = height * width, size * size * depth
    patches = tf.image.extract_patches(inputs, sizes=[1, size, size, 1],
                                       strides=[1, 1, 1, 1],
                                       rates=[1, 1, 1, 1], padding='SAME')
    weights = _variable_with_weight_decay(
        'weights', shape=[positions, window, filters], stddev=0.04, wd=0.004)
    biases = _variable_on_cpu('biases', [positions, filters],
                              tf.constant_initializer(0.1))
    # One matrix multiply per position: [positions, batch, window] x
    # [positions, window, filters].
    by_position = tf.transpose(tf.reshape(patches, [-1, positions, window]),
                               [1, 0, 2])
    outputs = tf.matmul(by_position, weights) + biases[:, None, :]
    outputs = tf.reshape(tf.transpose(outputs, [1, 0, 2]),
                         [-1, height, width, filters])
    local = tf.nn.relu(outputs, name=scope.name)
    _activation_summary(local)
  return local


def variables_to_restore(moving_average=True):
  """What to restore from a checkpoint into the model's variables.

  Args:
    moving_average: Restore the moving averages of the weights (as the
      tutorial evaluates), rather than the weights themselves.

  Returns:
    {name in the checkpoint: variable} for tf.train.Saver.
  """
  if moving_average:
    return tf.train.ExponentialMovingAverage(
        MOVING_AVERAGE_DECAY).variables_to_restore()
  return {v.op.name: v for v in tf.global_variables()}


def check_checkpoint(path, expected_shapes):
  """cifar10_common.check_checkpoint, saying which option a mismatch is.

  A checkpoint of the other --top_layers, or of data with another number of
  classes, does not fit the model: the message says which, and what to pass.

  Args:
    path: The checkpoint's path prefix.
    expected_shapes: {name in the checkpoint: shape as a list}.

  Raises:
    CheckpointUnreadable, CheckpointError: as cifar10_common.check_checkpoint.
  """
  try:
    cifar10_common.check_checkpoint(path, expected_shapes)
  except cifar10_common.CheckpointUnreadable:
    raise
  except cifar10_common.CheckpointError as e:
    stored_shapes = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    hints = []
    stored, expected = (_shape_of(shapes, 'local3/weights')
                        for shapes in (stored_shapes, expected_shapes))
    if stored and expected and len(stored) != len(expected):
      hints.append('it was trained with --top_layers=%s' % (
          'locally_connected' if len(stored) == 3 else 'fully_connected'))
    stored, expected = (_shape_of(shapes, 'softmax_linear/biases')
                        for shapes in (stored_shapes, expected_shapes))
    if stored and expected and stored != expected:
      hints.append('it has %d classes, where this model has %d (from the '
                   'batches.meta.txt of the data, or its absence)' %
                   (stored[0], expected[0]))
    if not hints:
      raise
    raise cifar10_common.CheckpointError(
        '%s Its model differs: %s.' % (e, '; '.join(hints))) from None


def _shape_of(shapes, name):
  """The shape of variable `name` (or of its moving average) in `shapes`."""
  for key in (name, name + '/ExponentialMovingAverage'):
    if key in shapes:
      return list(shapes[key])
  return None


def predictions(logits):
  """Normalised predictions: the probability of each class.

  Args:
    logits: Logits from inference().

  Returns:
    Tensor [batch, classes] whose rows sum to 1.
  """
  return tf.nn.softmax(logits, name='predictions')


def loss(logits, labels):
  """Add L2Loss to all the trainable variables.

  Add summary for "Loss" and "Loss/avg".
  Args:
    logits: Logits from inference().
    labels: Labels from distorted_inputs or inputs(). 1-D tensor
            of shape [batch_size]

  Returns:
    Loss tensor of type float.
  """
  # Calculate the average cross entropy loss across the batch.
  labels = tf.cast(labels, tf.int64)
  cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=labels, logits=logits, name='cross_entropy_per_example')
  cross_entropy_mean = tf.reduce_mean(cross_entropy, name='cross_entropy')
  tf.add_to_collection('losses', cross_entropy_mean)

  # The total loss is defined as the cross entropy loss plus all of the weight
  # decay terms (L2 loss).
  return tf.add_n(tf.get_collection('losses'), name='total_loss')


def add_loss_summaries(total_loss, losses=None):
  """Add summaries for losses in CIFAR-10 model.

  Generates moving average for all losses and associated summaries for
  visualizing the performance of the network.

  Args:
    total_loss: Total loss from loss().
    losses: The loss terms that make it up; the 'losses' collection by
      default.
  Returns:
    loss_averages_op: op for generating moving averages of losses.
  """
  # Compute the moving average of all individual losses and the total loss.
  # Zero-debiased: the averages start at the first losses, not at 0 (which
  # would make the curves climb for the first 20 or so steps).
  loss_averages = tf.train.ExponentialMovingAverage(LOSS_AVERAGE_DECAY,
                                                    zero_debias=True,
                                                    name='avg')
  if losses is None:
    losses = tf.get_collection('losses')
  loss_averages_op = loss_averages.apply(losses + [total_loss])

  # Attach a scalar summary to all individual losses and the total loss; do the
  # same for the averaged version of the losses.
  for l in losses + [total_loss]:
    # Name each loss as '(raw)' and name the moving average version of the loss
    # as the original loss name.
    scalar_summary(l.op.name + ' (raw)', l)
    # Read once this step's loss is in the average (at the first step, the
    # average would be read as 0 otherwise).
    with tf.control_dependencies([loss_averages_op]):
      scalar_summary(l.op.name, tf.identity(loss_averages.average(l)))

  return loss_averages_op


def learning_rate(global_step, examples_per_step=None):
  """The learning rate: decayed exponentially, in steps, with the epochs.

  Args:
    global_step: Integer Variable counting the number of training steps
      processed.
    examples_per_step: Images trained on per step (all towers together);
      --batch_size by default.

  Returns:
    A scalar float32 Tensor, also summarised as 'learning_rate'.
  """
  examples_per_step = examples_per_step or FLAGS.batch_size
  num_batches_per_epoch = num_examples_per_epoch() / examples_per_step
  decay_steps = int(num_batches_per_epoch * NUM_EPOCHS_PER_DECAY)

  # Decay the learning rate exponentially based on the number of steps.
  lr = tf.train.exponential_decay(FLAGS.initial_learning_rate,
                                  global_step,
                                  decay_steps,
                                  LEARNING_RATE_DECAY_FACTOR,
                                  staircase=True)
  scalar_summary('learning_rate', lr)
  return lr


def add_variable_and_gradient_summaries(grads):
  """Adds a histogram of every trainable variable and of its gradient.

  Args:
    grads: List of (gradient, variable) pairs.
  """
  for var in tf.trainable_variables():
    histogram_summary(var.op.name, var)
  for grad, var in grads:
    if grad is not None:
      histogram_summary(var.op.name + '/gradients', grad)


def apply_moving_averages(apply_gradient_op, global_step):
  """Tracks moving averages of all trainable variables after each update.

  Args:
    apply_gradient_op: The op that updates the variables.
    global_step: Integer Variable counting the number of training steps
      processed; it sets the averages' warm-up (num_updates).

  Returns:
    The training op: the update, then the averages.
  """
  variable_averages = tf.train.ExponentialMovingAverage(
      MOVING_AVERAGE_DECAY, global_step)
  with tf.control_dependencies([apply_gradient_op]):
    variables_averages_op = variable_averages.apply(tf.trainable_variables())
  return variables_averages_op


def train(total_loss, global_step):
  """Train CIFAR-10 model.

  Create an optimizer and apply to all trainable variables. Add moving
  average for all trainable variables.

  Args:
    total_loss: Total loss from loss().
    global_step: Integer Variable counting the number of training steps
      processed.
  Returns:
    train_op: op for training.
  """
  lr = learning_rate(global_step)

  # Generate moving averages of all losses and associated summaries.
  loss_averages_op = add_loss_summaries(total_loss)

  # Compute gradients.
  with tf.control_dependencies([loss_averages_op]):
    opt = tf.train.GradientDescentOptimizer(lr)
    grads = opt.compute_gradients(total_loss)

  # Apply gradients.
  apply_gradient_op = opt.apply_gradients(grads, global_step=global_step)

  # Add histograms for trainable variables and their gradients.
  add_variable_and_gradient_summaries(grads)

  # Track the moving averages of all trainable variables.
  return apply_moving_averages(apply_gradient_op, global_step)


def _md5_of_file(path):
  """Returns the hex MD5 digest of a file."""
  md5 = hashlib.md5(usedforsecurity=False)
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      md5.update(chunk)
  return md5.hexdigest()


def _print_progress(message, final=False):
  """Prints a progress line, in place on a terminal."""
  if sys.stdout.isatty():
    sys.stdout.write('\r' + message + ('\n' if final else ''))
  else:
    sys.stdout.write(message + '\n')
  sys.stdout.flush()


def _download(url, dest_path, expected_md5):
  """Downloads `url` to `dest_path`, all or nothing, checking its MD5.

  The bytes go to a temporary file beside `dest_path`, renamed only once the
  download is complete and verified, so no partial file is ever left under
  the archive's name.

  Args:
    url: URL to download (http, https, ftp or file).
    dest_path: Where the archive goes.
    expected_md5: Hex MD5 the archive must have, or '' for no check.

  Raises:
    UserError: the download failed or gave the wrong bytes.
  """
  filename = os.path.basename(dest_path)
  part_fd, part_path = tempfile.mkstemp(
      dir=os.path.dirname(dest_path), prefix=filename + '.', suffix='.part')
  try:
    md5 = hashlib.md5(usedforsecurity=False)
    received = 0
    with os.fdopen(part_fd, 'wb') as part_file:
      try:
        response = urllib.request.urlopen(url, timeout=60)
      except (urllib.error.URLError, OSError, ValueError) as e:
        raise UserError(
            'could not download %s (%s). Without network access, put the '
            'archive at %s (or pass --data_url=file:///path/to/%s), or unpack '
            'it so that %s holds data_batch_1.bin ... test_batch.bin.' %
            (url, getattr(e, 'reason', e), dest_path, filename,
             os.path.join(os.path.dirname(dest_path),
                          cifar10_input.BATCHES_DIR_NAME))) from None
      with response:
        total = int(response.headers.get('Content-Length') or 0)
        last_report = 0.0
        while True:
          try:
            chunk = response.read(1 << 20)
          except (OSError, http.client.HTTPException) as e:
            raise UserError('download of %s failed after %d bytes: %r' %
                            (url, received, e)) from None
          if not chunk:
            break
          part_file.write(chunk)
          md5.update(chunk)
          received += len(chunk)
          now = time.time()
          if now - last_report >= _PROGRESS_INTERVAL_SECS:
            last_report = now
            if total:
              _print_progress('>> Downloading %s %.1f%%' %
                              (filename, 100.0 * received / total))
            else:
              _print_progress('>> Downloading %s %.1f MB' %
                              (filename, received / 1e6))
    if total and received != total:
      raise UserError('download of %s stopped at %d of %d bytes.' %
                      (url, received, total))
    actual_md5 = md5.hexdigest()
    if expected_md5 and actual_md5 != expected_md5.lower():
      raise UserError(
          'downloaded %s (%d bytes) has MD5 %s, expected %s: it is corrupt or '
          'not the CIFAR-10 binary archive, and was not kept. Check '
          '--data_url, or pass --data_md5=%s if you trust this archive.' %
          (url, received, actual_md5, expected_md5, actual_md5))
    os.replace(part_path, dest_path)
  except BaseException:
    if os.path.exists(part_path):
      os.remove(part_path)
    raise
  _print_progress('>> Downloaded %s: %d bytes, MD5 %s.' %
                  (filename, received, actual_md5), final=True)


def _extract(archive_path, data_dir):
  """Extracts the CIFAR-10 batch files from the archive into `data_dir`.

  Only the expected files of the `cifar-10-batches-bin` folder are taken,
  each written to a temporary name and renamed when complete.

  Args:
    archive_path: Path of the .tar.gz archive.
    data_dir: Directory to extract into.

  Raises:
    UserError: the archive is corrupt, truncated, or lacks a batch file.
  """
  batches_dir = os.path.join(data_dir, cifar10_input.BATCHES_DIR_NAME)
  os.makedirs(batches_dir, exist_ok=True)
  wanted = cifar10_input.TRAIN_FILENAMES + cifar10_input.EVAL_FILENAMES
  print('>> Extracting %s into %s' % (archive_path, batches_dir))
  sys.stdout.flush()
  found = set()
  try:
    with tarfile.open(archive_path, 'r:*') as archive:
      for member in archive:
        name = os.path.basename(member.name)
        parent = os.path.basename(os.path.dirname(member.name))
        if (not member.isfile() or parent != cifar10_input.BATCHES_DIR_NAME or
            (name not in wanted and name != cifar10_input.META_FILENAME)):
          continue
        part_fd, part_path = tempfile.mkstemp(dir=batches_dir,
                                              prefix=name + '.',
                                              suffix='.part')
        try:
          with os.fdopen(part_fd, 'wb') as part_file:
            shutil.copyfileobj(archive.extractfile(member), part_file, 1 << 20)
          os.replace(part_path, os.path.join(batches_dir, name))
        finally:
          if os.path.exists(part_path):
            os.remove(part_path)
        found.add(name)
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    raise UserError('cannot extract %s: %s. The archive is corrupt or '
                    'truncated; delete it to download it again.' %
                    (archive_path, e)) from None
  missing = [name for name in wanted if name not in found]
  if missing:
    raise UserError('%s has no %s/%s: it is not the CIFAR-10 binary archive.' %
                    (archive_path, cifar10_input.BATCHES_DIR_NAME,
                     ', '.join(missing)))


def maybe_download_and_extract(data_dir=None, data_url=None,
                               expected_md5=None):
  """Download and extract the tarball from Alex's website.

  Nothing is downloaded when the batch files are already unpacked in
  `data_dir`; they are checked (whole records, labels 0-9). An archive
  already in `data_dir` is used rather than downloaded again.

  Args:
    data_dir: Where the data goes; --data_dir by default.
    data_url: Where the archive comes from; --data_url by default.
    expected_md5: The archive's MD5, '' for no check; --data_md5 by default.

  Returns:
    The path of the folder of batch files.

  Raises:
    UserError: the data could not be fetched or is not CIFAR-10.
  """
  data_dir = FLAGS.data_dir if data_dir is None else data_dir
  data_url = FLAGS.data_url if data_url is None else data_url
  expected_md5 = FLAGS.data_md5 if expected_md5 is None else expected_md5
  if not data_dir:
    raise UserError('--data_dir is empty: give the CIFAR-10 data directory.')
  batches_dir = os.path.join(data_dir, cifar10_input.BATCHES_DIR_NAME)
  data_files = (cifar10_input.data_filenames(batches_dir, eval_data=False) +
                cifar10_input.data_filenames(batches_dir, eval_data=True))
  missing = [os.path.basename(f) for f in data_files if not os.path.isfile(f)]
  if not missing:
    # Unpacked already (perhaps by hand): used as it is, if it is sound.
    cifar10_input.check_data_files(
        data_files, len(cifar10_input.read_class_names(batches_dir)))
    return batches_dir
  if len(missing) < len(data_files):
    print('>> %s: %s missing; fetching the archive.' %
          (batches_dir, ', '.join(missing)), flush=True)

  try:
    os.makedirs(data_dir, exist_ok=True)
  except OSError as e:
    raise UserError('cannot create data directory %s: %s' %
                    (data_dir, e.strerror)) from None
  filename = data_url.split('/')[-1]
  if not filename:
    raise UserError('--data_url=%s does not end with the name of an archive '
                    'file.' % data_url)
  archive_path = os.path.join(data_dir, filename)
  downloaded_now = not os.path.exists(archive_path)
  if downloaded_now:
    _download(data_url, archive_path, expected_md5)
  elif expected_md5:
    actual_md5 = _md5_of_file(archive_path)
    if actual_md5 != expected_md5.lower():
      raise UserError(
          '%s has MD5 %s, expected %s: it is corrupt or not the CIFAR-10 '
          'binary archive. Delete it to download it again, or pass '
          '--data_md5=%s if you trust it.' %
          (archive_path, actual_md5, expected_md5, actual_md5))
  try:
    _extract(archive_path, data_dir)
  except UserError:
    if downloaded_now:  # Ours, unverified (no MD5 given) and useless: drop it.
      os.remove(archive_path)
    raise
  cifar10_input.check_data_files(
      data_files, len(cifar10_input.read_class_names(batches_dir)))
  return batches_dir
