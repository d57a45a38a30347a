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

 # The data set, downloaded and unpacked on first use, checked.
 data = maybe_download_and_extract(data_dir)

 # Compute input images and labels for training. If you would like to run
 # evaluations, use inputs() instead.
 inputs, labels = distorted_inputs(data, batch_size)

 # Compute inference on the model inputs: the logits of each class.
 logits = inference(inputs)

 # Compute the total loss of the logits with respect to the labels.
 loss = loss(logits, labels)

 # Create a graph to run one step of training with respect to the loss.
 train_op = train(loss, global_step)

 # The probability of each class.
 probabilities = predictions(logits)

 # The trained model as a function of images (prediction, export).
 probabilities, to_restore = classify(uint8_images, num_classes)

Every function takes its settings as arguments (defaults: the tutorial's
values) and reads no flag: the module serves a program or a notebook too.
"""

import functools
import re

import cifar10_input
from cifar10_support import checkpoints
from cifar10_support import download
from cifar10_support import lrn
from cifar10_support import params
from cifar10_support.quiet import tf

# Global constants describing the CIFAR-10 data set. Data of your own (see
# prepare_data.py) brings its classes and sizes (its DataSet).
IMAGE_SIZE = cifar10_input.IMAGE_SIZE
NUM_CLASSES = cifar10_input.NUM_CLASSES
NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN = cifar10_input.NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN
NUM_EXAMPLES_PER_EPOCH_FOR_EVAL = cifar10_input.NUM_EXAMPLES_PER_EPOCH_FOR_EVAL

# The tutorial's settings: the defaults of the functions below, and of the
# scripts' flags, which keep them (cifar10_support.params): the data folder,
# 128 images a batch (per tower), a learning rate of 0.1 at step 0, 40% of an
# epoch queued before training starts, fully connected local3 and local4.
DATA_DIR = params.DATA_DIR
BATCH_SIZE = params.BATCH_SIZE
INITIAL_LEARNING_RATE = params.INITIAL_LEARNING_RATE
MIN_FRACTION_OF_EXAMPLES_IN_QUEUE = params.MIN_FRACTION_OF_EXAMPLES_IN_QUEUE
TOP_LAYERS = params.TOP_LAYERS

# Where the data set comes from, and the MD5 of the official archive.
DATA_URL = download.DATA_URL
DATA_MD5 = download.DATA_MD5

# Constants describing the training process.
MOVING_AVERAGE_DECAY = 0.9999     # The decay to use for the moving average.
NUM_EPOCHS_PER_DECAY = 350.0      # Epochs after which learning rate decays.
LEARNING_RATE_DECAY_FACTOR = 0.1  # Learning rate decay factor.
LOSS_AVERAGE_DECAY = 0.9          # The decay of the losses' moving averages.

# If a model is trained with multiple GPUs, prefix all Op names with tower_name
# to differentiate the operations. Note that this prefix is removed from the
# names of the summaries when visualizing a model.
TOWER_NAME = 'tower'


def _add_summary(summary_op):
  """Adds a summary op to the collection that tf.summary.merge_all() reads."""
  tf.add_to_collection(tf.GraphKeys.SUMMARIES, summary_op)


def scalar_summary(tag, value):
  """Summarises a scalar under exactly `tag`: tf.summary.scalar would rename
  a tag that names an op too ('cross_entropy' becomes 'cross_entropy_1'), and
  refuse characters such as those of 'total_loss (raw)'."""
  _add_summary(tf.raw_ops.ScalarSummary(tags=tag, values=value,
                                        name='scalar_summary'))


def histogram_summary(tag, values):
  """Summarises the distribution of `values` under exactly `tag`."""
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


def _in_type(value, dtype):
  """`value` cast to `dtype`, where that is another type."""
  if value.dtype.base_dtype == dtype:
    return value
  return tf.cast(value, dtype)


def _model_variables(compute_dtype):
  """The custom getter of the model's variable scope (see inference()).

  Every variable of the model lives once, on the CPU, so that all model
  replicas ("towers", one per device) share one copy. A layer gets its
  value, read once (the layer and its weight decay share it: one copy to a
  GPU or from a parameter server, not two), in the type it computes in:
  with mixed precision, a float16 or bfloat16 copy of a float32 variable,
  made on the layer's device, while the variable, its moving average and
  the checkpoints stay float32.
  """

  def custom_getter(getter, *args, **kwargs):
    with tf.device('/cpu:0'):
      variable = getter(*args, **kwargs)
    # In the layer's name scope (variables are made outside any).
    with tf.name_scope(tf.get_variable_scope().original_name_scope):
      return _in_type(variable.value(), compute_dtype)

  return custom_getter


def _variable_on_cpu(name, shape, initializer):
  """Helper to create a Variable stored on CPU memory (by the getter of the
  model's variable scope, _model_variables).

  Returns:
    Variable Tensor, in the type the model computes in
  """
  return tf.get_variable(name, shape, initializer=initializer)


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
    # Of the variable's value, in its own type (float32 under mixed
    # precision, not the copy the layer computes with).
    variable = var.op.inputs[0] if var.op.type == 'Cast' else var
    weight_decay = tf.multiply(tf.nn.l2_loss(variable), wd, name='weight_loss')
    tf.add_to_collection('losses', weight_decay)
  return var


def distorted_inputs(data, batch_size=BATCH_SIZE, dtype=tf.float32,
                     min_fraction_of_examples_in_queue=(
                         MIN_FRACTION_OF_EXAMPLES_IN_QUEUE)):
  """Construct distorted input for CIFAR training using the Reader ops.

  The input pipeline runs on the CPU, whatever device the model is on: its
  ops would otherwise go to a GPU where they have GPU kernels, and every
  image would cross to the GPU and back in the reader threads.

  Args:
    data: The data set (maybe_download_and_extract()).
    batch_size: Number of images per batch.
    dtype: The images' type, the model's computation's: float32, float16 or
      bfloat16.
    min_fraction_of_examples_in_queue: The fraction of an epoch queued before
      the first batch comes out (see cifar10_input.distorted_inputs).

  Returns:
    images: Images. 4D tensor of [batch_size, IMAGE_SIZE, IMAGE_SIZE, 3] size.
    labels: Labels. 1D tensor of [batch_size] size.
  """
  with tf.device('/cpu:0'):
    images, labels = cifar10_input.distorted_inputs(
        data, batch_size, min_fraction_of_examples_in_queue)
    return tf.cast(images, dtype), labels


def inputs(eval_data, data, batch_size=BATCH_SIZE, dtype=tf.float32):
  """Construct input for CIFAR evaluation using the Reader ops.

  Each image of the chosen set is read once; then the pipeline raises
  `tf.errors.OutOfRangeError`. It runs on the CPU, as distorted_inputs().

  Args:
    eval_data: bool, indicating if one should use the train or eval data set.
    data: The data set (maybe_download_and_extract()).
    batch_size: Number of images per batch.
    dtype: The images' type (see distorted_inputs).

  Returns:
    images, labels: as distorted_inputs, the last batch maybe smaller.
  """
  with tf.device('/cpu:0'):
    images, labels = cifar10_input.inputs(eval_data, data, batch_size)
    return tf.cast(images, dtype), labels


def _normalized_max_pool_of_relu(convolution, biases, activations,
                                 depth_radius, bias, alpha, beta, pool_name,
                                 normalization_name):
  """The tutorial's max pooling of activations = relu(convolution + biases),
  then its local response normalization, whose gradient reaches the
  convolution and the biases directly, through relu at the maxima only.

  Differentiated op by op, the gradient goes to the places of the maxima
  among all the activations, then through relu's gradient over all of them
  (on a CPU, 7% of a bfloat16 step: docs/speed.md). Through relu's gradient
  at the maxima first, on a quarter of the values, it is the same to the bit:
  a maximum passes relu exactly where it is positive, and so is the
  activation at its place. The pooled values are relu's output at the
  maxima, so LRN's gradient applies relu's in its own pass, as norm2's does
  (lrn.gradient_through_relu). In float32, the biases' gradient, the sum of
  the gradient at every place, is summed at the maxima (each lands on one
  place), a quarter of the values again.

  Args:
    convolution: A 4-D Tensor, the convolution before its biases.
    biases: Its biases, a 1-D Tensor of the last dimension's size.
    activations: tf.nn.relu(tf.nn.bias_add(convolution, biases)); the
      gradient goes to convolution and biases, none to them.
    depth_radius, bias, alpha, beta: As tf.nn.lrn's.
    pool_name: Name of the max pooling.
    normalization_name: Name of the normalization.

  Returns:
    The normalized max pooling of activations: 3x3 windows, stride 2, as the
    tutorial's pool1, then LRN as tf.nn.lrn computes it.
  """
  ksize, strides, padding = [1, 3, 3, 1], [1, 2, 2, 1], 'SAME'

  @tf.custom_gradient
  def pool_and_normalize(convolution, biases, activations):
    pooled = tf.nn.max_pool(activations, ksize=ksize, strides=strides,
                            padding=padding, name=pool_name)
    normalized = lrn.local_response_normalization(
        pooled, depth_radius, bias=bias, alpha=alpha, beta=beta,
        name=normalization_name)

    def gradient(upstream):
      # pooled = relu(max_pool(convolution + biases)): relu's gradient there.
      at_maxima = lrn.gradient_through_relu(pooled, normalized, upstream)
      to_convolution = tf.raw_ops.MaxPoolGrad(
          orig_input=activations, orig_output=pooled, grad=at_maxima,
          ksize=ksize, strides=strides, padding=padding)
      # The biases' gradient: the sum of the gradient at every place, which
      # is the sum at the maxima (each lands on one place). In float32,
      # oneDNN's filter gradient, which would sum it with its own, is 2 ms
      # slower than that alone; in bfloat16 it is faster (docs/speed.md).
      to_biases = tf.raw_ops.BiasAddGrad(
          out_backprop=(at_maxima if at_maxima.dtype == tf.float32
                        else to_convolution))
      return to_convolution, to_biases, None

    return normalized, gradient

  return pool_and_normalize(convolution, biases, activations)


def _normalization_of_relu(convolution, biases, activations, depth_radius,
                           bias, alpha, beta, name):
  """The tutorial's local response normalization of activations =
  relu(convolution + biases), whose gradient reaches the convolution and the
  biases directly: on a CPU, LRN's gradient kernel applies relu's in its own
  pass (lrn.gradient_through_relu), where differentiated op by op relu's
  gradient is a pass over all the activations after it (docs/speed.md).

  Args:
    convolution: A 4-D Tensor, the convolution before its biases.
    biases: Its biases, a 1-D Tensor of the last dimension's size.
    activations: tf.nn.relu(tf.nn.bias_add(convolution, biases)); the
      gradient goes to convolution and biases, none to them.
    depth_radius, bias, alpha, beta: As tf.nn.lrn's.
    name: Name of the normalization.

  Returns:
    The normalized activations, as tf.nn.lrn computes them.
  """

  @tf.custom_gradient
  def normalize(convolution, biases, activations):
    normalized = lrn.local_response_normalization(
        activations, depth_radius, bias=bias, alpha=alpha, beta=beta,
        name=name)

    def gradient(upstream):
      to_convolution = lrn.gradient_through_relu(activations, normalized,
                                                 upstream)
      return (to_convolution,
              tf.raw_ops.BiasAddGrad(out_backprop=to_convolution), None)

    return normalized, gradient

  return normalize(convolution, biases, activations)


def inference(images, num_classes=NUM_CLASSES, top_layers='fully_connected',
              variable_dtype=None):
  """Build the CIFAR-10 model (kept whole: its layers in order are the lesson).

  Args:
    images: Images returned from distorted_inputs() or inputs(), in the type
      the model computes in: float32, float16, or bfloat16.
    num_classes: 10 for CIFAR-10, or the number of classes of your data.
    top_layers: local3 and local4 'fully_connected' (the tutorial's), or
      'locally_connected' (cuda-convnet's).
    variable_dtype: The variables' type, the images' by default; float32 with
      float16 or bfloat16 images is mixed precision (see _model_variables).

  Returns:
    Logits, of the images' type.

  Raises:
    ValueError: images or variables of an unsupported type, or an unknown
      top_layers.
  """
  dtype, variable_dtype = _model_types(images, variable_dtype, top_layers)
  # All variables by tf.get_variable(), shared by the towers of several GPUs.
  with tf.variable_scope(tf.get_variable_scope(), dtype=variable_dtype,
                         custom_getter=_model_variables(dtype)):
    # conv1
    with tf.variable_scope('conv1') as scope:
      kernel = _variable_with_weight_decay('weights', shape=[5, 5, 3, 64],
                                           stddev=5e-2, wd=None)
      conv = tf.nn.conv2d(images, kernel, [1, 1, 1, 1], padding='SAME')
      biases = _variable_on_cpu('biases', [64], tf.constant_initializer(0.0))
      pre_activation = tf.nn.bias_add(conv, biases)
      conv1 = tf.nn.relu(pre_activation, name=scope.name)
      _activation_summary(conv1)

    # pool1, then norm1
    norm1 = _normalized_max_pool_of_relu(
        conv, biases, conv1, 4, bias=1.0, alpha=0.001 / 9.0, beta=0.75,
        pool_name='pool1', normalization_name='norm1')

    # conv2
    with tf.variable_scope('conv2') as scope:
      kernel = _variable_with_weight_decay('weights', shape=[5, 5, 64, 64],
                                           stddev=5e-2, wd=None)
      conv = tf.nn.conv2d(norm1, kernel, [1, 1, 1, 1], padding='SAME')
      biases = _variable_on_cpu('biases', [64], tf.constant_initializer(0.1))
      pre_activation = tf.nn.bias_add(conv, biases)
      conv2 = tf.nn.relu(pre_activation, name=scope.name)
      _activation_summary(conv2)

    # norm2
    norm2 = _normalization_of_relu(conv, biases, conv2, 4, bias=1.0,
                                   alpha=0.001 / 9.0, beta=0.75, name='norm2')
    # pool2
    pool2 = tf.nn.max_pool(norm2, ksize=[1, 3, 3, 1],
                           strides=[1, 2, 2, 1], padding='SAME', name='pool2')

    if top_layers == 'locally_connected':
      top = _locally_connected_top(pool2)
    else:
      # local3: everything moved into depth, for a single matrix multiply.
      with tf.variable_scope('local3') as scope:
        dim = pool2.get_shape()[1:].num_elements()
        reshape = tf.reshape(pool2, [-1, dim])  # Of any batch size.
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
        top = tf.nn.relu(tf.matmul(local3, weights) + biases, name=scope.name)
        _activation_summary(top)

    # linear layer(WX + b),
    # We don't apply softmax here because
    # tf.nn.sparse_softmax_cross_entropy_with_logits accepts the unscaled logits
    # and performs the softmax internally for efficiency.
    with tf.variable_scope('softmax_linear') as scope:
      dim = top.get_shape()[-1]
      weights = _variable_with_weight_decay('weights', [dim, num_classes],
                                            stddev=1.0 / dim, wd=None)
      biases = _variable_on_cpu('biases', [num_classes],
                                tf.constant_initializer(0.0))
      softmax_linear = tf.add(tf.matmul(top, weights), biases, name=scope.name)
      _activation_summary(softmax_linear)

  return softmax_linear


def _model_types(images, variable_dtype, top_layers):
  """(compute type, variable type) of inference()'s model; a ValueError for
  images or variables of an unsupported type, or an unknown top_layers."""
  dtype = images.dtype.base_dtype
  if dtype not in (tf.float32, tf.float16, tf.bfloat16):
    raise ValueError('inference() takes float32, float16 or bfloat16 images, '
                     'not %s.' % dtype.name)
  variable_dtype = variable_dtype or dtype
  if variable_dtype == tf.bfloat16:
    raise ValueError('bfloat16 variables are not supported: give '
                     'variable_dtype=tf.float32 (mixed precision).')
  if top_layers not in TOP_LAYERS:
    raise ValueError('top_layers=%r: it is one of %s.' %
                     (top_layers, ', '.join(TOP_LAYERS)))
  return dtype, variable_dtype


def _locally_connected_top(pool2):
  """local3 and local4 of Alex Krizhevsky's cuda-convnet model (the
  tutorial's exercise; layers-conv-local-11pct.cfg): locally connected, of
  64 then 32 filters of 3x3, flattened for the linear layer."""
  local3 = _locally_connected('local3', pool2, filters=64, size=3)
  local4 = _locally_connected('local4', local3, filters=32, size=3)
  return tf.reshape(local4, [-1, local4.get_shape()[1:].num_elements()])


def _locally_connected(name, inputs, filters, size):
  """A locally connected layer with ReLU: a convolution whose weights differ
  at every position (cuda-convnet's 'local' layers), of `filters` outputs,
  over windows of size x size (SAME padding, stride 1) of 4-D `inputs`.

  Weights drawn with stddev 0.04 and decayed by 0.004, biases 0.1, as the
  tutorial's local3 and local4.
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
  """What to restore from a checkpoint into the model's variables: their
  moving averages (as the tutorial evaluates), or the variables themselves.

  Returns:
    {name in the checkpoint: variable}, for tf.train.Saver.
  """
  if moving_average:
    return tf.train.ExponentialMovingAverage(
        MOVING_AVERAGE_DECAY).variables_to_restore()
  return {v.op.name: v for v in tf.global_variables()}


def predictions(logits):
  """The probability of each class: [batch, classes], rows summing to 1."""
  return tf.nn.softmax(logits, name='predictions')


def loss(logits, labels):
  """The total loss: the mean cross entropy plus the weight decay terms.

  Adds the cross entropy to the 'losses' collection, which holds the weight
  decay (L2 loss) terms that inference() added for local3 and local4.

  Args:
    logits: Logits from inference().
    labels: Labels from distorted_inputs or inputs(). 1-D tensor
            of shape [batch_size]

  Returns:
    Loss tensor of type float.
  """
  # Calculate the average cross entropy loss across the batch, in the type of
  # the weight decay terms: float32 for a mixed precision model, whose
  # logits are float16 or bfloat16.
  weight_decay = tf.get_collection('losses')
  if weight_decay:
    logits = _in_type(logits, weight_decay[0].dtype.base_dtype)
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


def examples_seen(global_step, examples_per_step=BATCH_SIZE):
  """The count of the training examples of all updates so far, a variable.

  The learning rate decays with it (learning_rate), and every update adds
  its examples to it, so that a training resumed with another number of
  examples per step (towers, synchronous workers) carries the schedule on
  where the epochs say. A checkpoint written before it was counted has none:
  restored from one, it starts at the checkpoint's global step times
  `examples_per_step` (its initial value: see
  cifar10_support.checkpoints.RESTORED_IF_PRESENT).

  Args:
    global_step: The global step variable.
    examples_per_step: Images in one update.

  Returns:
    The int64 variable 'examples_seen', beside the global step.
  """
  with tf.device(global_step.device):
    # Made when every variable is, or after the others were restored: then
    # from the global step restored.
    steps = tf.cond(global_step.is_initialized(), global_step.read_value,
                    lambda: tf.zeros([], global_step.dtype.base_dtype))
    variable = tf.get_variable(
        'examples_seen', dtype=tf.int64, trainable=False,
        initializer=tf.cast(steps, tf.int64) * examples_per_step)
  tf.add_to_collection(checkpoints.RESTORED_IF_PRESENT, variable)
  return variable


def learning_rate(examples, examples_per_step=BATCH_SIZE,
                  examples_per_epoch=NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN,
                  initial_learning_rate=INITIAL_LEARNING_RATE):
  """The learning rate, divided by 10 every NUM_EPOCHS_PER_DECAY epochs.

  The tutorial's schedule, in updates of examples_per_step: for a training
  of that many examples per update throughout, the count of updates is the
  global step.

  Args:
    examples: Integer tensor: the training examples of all updates so far
      (examples_seen()).
    examples_per_step: Images trained on per update (of all towers, or of
      all synchronous workers).
    examples_per_epoch: Training images in the data.
    initial_learning_rate: The rate at step 0.

  Returns:
    A scalar Tensor, summarised as 'learning_rate'.
  """
  num_batches_per_epoch = examples_per_epoch / examples_per_step
  decay_steps = int(num_batches_per_epoch * NUM_EPOCHS_PER_DECAY)

  # Decay the learning rate exponentially based on the number of steps.
  lr = tf.train.exponential_decay(initial_learning_rate,
                                  examples // examples_per_step,
                                  decay_steps,
                                  LEARNING_RATE_DECAY_FACTOR,
                                  staircase=True)
  scalar_summary('learning_rate', lr)
  return lr


class _GradientDescent(tf.train.GradientDescentOptimizer):
  """Gradient descent, each update of which counts its examples
  (examples_seen): once per update applied, whichever optimizer wraps it
  (the float16 loss scale's skips a step, a synchronous one applies the
  workers' gradients once)."""

  def __init__(self, learning_rate_tensor, examples, examples_per_step):
    super().__init__(learning_rate_tensor)
    self._examples = examples
    self._examples_per_step = examples_per_step

  def apply_gradients(self, grads_and_vars, global_step=None, name=None):
    update = super().apply_gradients(grads_and_vars, global_step, name)
    with tf.control_dependencies([update]):
      return self._examples.assign_add(self._examples_per_step).op


def add_variable_and_gradient_summaries(grads):
  """Adds a histogram of every trainable variable and of its gradient, of
  the (gradient, variable) pairs `grads`."""
  for var in tf.trainable_variables():
    histogram_summary(var.op.name, var)
  for grad, var in grads:
    if grad is not None:
      histogram_summary(var.op.name + '/gradients', grad)


def float16_loss_scale():
  """The loss scale of mixed precision in float16 (on a GPU): TensorFlow's
  own dynamic loss scale (tf.mixed_precision.DynamicLossScale).

  The gradients are computed of the loss times the scale, then divided by
  it, so that the small ones do not vanish below float16's smallest numbers.
  It starts at 2**15; a step whose gradients are not finite (they overflowed
  float16) is skipped, and halves it; every 2,000 finite steps double it.
  Its variables live on the CPU, with the model's, and go with the
  checkpoints, so a resumed training keeps it. (bfloat16 has float32's
  range: it needs none.)

  Returns:
    A tf.mixed_precision.DynamicLossScale, for gradients() and train().
  """
  before = set(tf.global_variables())
  with tf.device('/cpu:0'), tf.name_scope('loss_scale'):
    loss_scale = tf.mixed_precision.DynamicLossScale()
  for variable in set(tf.global_variables()) - before:
    tf.add_to_collection(checkpoints.RESTORED_IF_PRESENT, variable)
  scalar_summary('loss_scale', loss_scale())
  return loss_scale




def gradients(total_loss, loss_scale=None):
  """The (gradient, variable) pairs of the loss and the trainable variables.

  With a loss_scale (float16_loss_scale()), the gradients are computed of
  the loss times it, then divided by it.
  """
  variables = tf.trainable_variables()
  if loss_scale is None:
    return list(zip(tf.gradients(total_loss, variables), variables))
  scale = loss_scale()
  scaled = tf.gradients(total_loss * scale, variables)
  return [(None if g is None else g * (1.0 / scale), v)
          for g, v in zip(scaled, variables)]


def _applied(grads):
  """The gradients a float16 step applies: none (zeros) where any is not
  finite, for the step is then skipped; as the summaries show them."""
  finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                          for g, _ in grads if g is not None])
  return [(None if g is None else tf.where(finite, g, tf.zeros_like(g)), v)
          for g, v in grads]


def train(total_loss, global_step, examples_per_step=BATCH_SIZE,
          examples_per_epoch=NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN,
          initial_learning_rate=INITIAL_LEARNING_RATE, grads=None, losses=None,
          wrap_optimizer=None, loss_scale=None):
  """Train CIFAR-10 model.

  Create an optimizer and apply to all trainable variables. Add moving
  average for all trainable variables. The training step of every script:
  on one device, over towers, and on distributed workers.

  Args:
    total_loss: Total loss from loss(), or the towers' average.
    global_step: Integer Variable counting the number of training steps
      processed.
    examples_per_step: Images in one update, for the learning rate's decay.
    examples_per_epoch: Training images in the data.
    initial_learning_rate: The learning rate at step 0.
    grads: The (gradient, variable) pairs to apply (the towers' averaged
      ones); those of total_loss by default.
    losses: The loss terms of total_loss; the 'losses' collection by default.
    wrap_optimizer: f(optimizer, variable_averages) -> an optimizer that also
      updates the moving averages (tf.train.SyncReplicasOptimizer).
    loss_scale: float16_loss_scale(), for float16 computation of float32
      variables: a step whose gradients are not finite is skipped (no
      update, the global step unchanged), and the scale lowered. With
      `grads` given, they were computed with it (gradients()).

  Returns:
    train_op: op for training.
  """
  # The learning rate is a few scalar ops on the examples seen: beside them.
  examples = examples_seen(global_step, examples_per_step)
  with tf.device(global_step.device):
    lr = learning_rate(examples, examples_per_step, examples_per_epoch,
                       initial_learning_rate)

  # Generate moving averages of all losses and associated summaries.
  loss_averages_op = add_loss_summaries(total_loss, losses)

  # The moving averages of all trainable variables, updated after each step.
  # (They decay once per update, whatever its number of examples: by the
  # global step.)
  variable_averages = tf.train.ExponentialMovingAverage(
      MOVING_AVERAGE_DECAY, global_step)

  opt = _GradientDescent(lr, examples, examples_per_step)
  if loss_scale is not None:
    # TensorFlow's own: updates the scale, applies only finite gradients.
    opt = tf.mixed_precision.MixedPrecisionLossScaleOptimizer(opt, loss_scale)
  if wrap_optimizer:
    opt = wrap_optimizer(opt, variable_averages)

  # Compute gradients, apply them, and summarise both. The update runs
  # where the variables are (the CPU, or the parameter servers), with the
  # float16 loss scale's check that the gradients are finite.
  if grads is None:
    grads = gradients(total_loss, loss_scale)
  with tf.device(global_step.device):
    apply_gradient_op = opt.apply_gradients(grads, global_step=global_step)
  add_variable_and_gradient_summaries(
      grads if loss_scale is None else _applied(grads))

  if not wrap_optimizer:
    # Track the moving averages of all trainable variables, each where its
    # variable lives (the CPU, or a parameter server): on a GPU, or on a
    # distributed worker, each step would otherwise copy every variable and
    # its average there, and the average back.
    with tf.control_dependencies([apply_gradient_op]):
      averages = []
      for variable in tf.trainable_variables():
        with tf.device(variable.device):
          averages.append(variable_averages.apply([variable]))
      apply_gradient_op = tf.group(*averages)

  # The losses' averages are taken in the same step. (Not as a dependency of
  # the update: a synchronous optimizer's update runs in a thread of its own,
  # which must not compute a loss.)
  return tf.group(apply_gradient_op, loss_averages_op, name='train_op')


def classify(images, num_classes=NUM_CLASSES, top_layers='fully_connected',
             precision=params.Precision(), moving_average=True):
  """The trained model as a function of images, as prediction and export
  serve it (cifar10_support.classifier).

  The images are cropped and standardised on the CPU, as evaluation's are.

  Args:
    images: uint8 Tensor [n, 32, 32, 3].
    num_classes: The model's classes.
    top_layers: The model's top layers (see inference()).
    precision: The types the model computes and keeps its variables in (a
      cifar10_support.params.Precision): those of its training.
    moving_average: Restore the moving averages of the weights, as
      evaluation does (or the weights themselves).

  Returns:
    probabilities: float32 Tensor [n, num_classes], whatever the model's
      type (predictions()).
    to_restore: {name in a checkpoint: variable} (variables_to_restore()).
  """
  with tf.device('/cpu:0'):
    standardised = tf.cast(cifar10_input.preprocess_for_eval(images),
                           precision.compute_dtype)
  logits = inference(standardised, num_classes, top_layers,
                     precision.variable_dtype)
  return (predictions(tf.cast(logits, tf.float32)),
          variables_to_restore(moving_average))


def model_as_trained(settings, precision):
  """classify() as a training made it: what a Classifier of its checkpoints
  builds (cifar10_support.classifier).

  Args:
    settings: A cifar10_support.params.Params: the training's top_layers,
      and moving_average (restore the moving averages, or the weights).
    precision: The training's cifar10_support.params.Precision.

  Returns:
    f(uint8 images, number of classes) -> (probabilities, to_restore).
  """
  return functools.partial(classify, top_layers=settings.top_layers,
                           precision=precision,
                           moving_average=settings.moving_average)


def maybe_download_and_extract(data_dir=DATA_DIR, data_url=DATA_URL,
                               expected_md5=DATA_MD5):
  """Download and extract the tarball from Alex's website, unless there
  already (see cifar10_support.download).

  Returns:
    The data set, checked: a cifar10_support.data.DataSet, what
    distorted_inputs() and inputs() read.

  Raises:
    UserError: the data could not be fetched, or is not what it should be.
  """
  return download.maybe_download_and_extract(data_dir, data_url,
                                             expected_md5)
