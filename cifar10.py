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
 inputs, labels = distorted_inputs(data_dir, batch_size)

 # Compute inference on the model inputs to make a prediction.
 predictions = inference(inputs)

 # Compute the total loss of the prediction with respect to the labels.
 loss = loss(predictions, labels)

 # Create a graph to run one step of training with respect to the loss.
 train_op = train(loss, global_step)

Every function takes its settings as arguments, whose defaults are the
tutorial's values; none reads flags or decides anything from the disk but
the input functions, which read the data. The scripts (cifar10_train.py, ...)
own the flags and pass them in, so this module can be imported and used from
any program or notebook:

    import cifar10
    images = tf.placeholder(tf.float32, [None, 24, 24, 3])
    logits = cifar10.inference(images)
"""

import os
import re

import numpy as np

import cifar10_download
import cifar10_input
from cifar10_common import tf
from cifar10_common import UserError

# Global constants describing the CIFAR-10 data set. Data of your own (see
# prepare_data.py) brings its classes and sizes: see class_names() and
# num_examples_per_epoch().
IMAGE_SIZE = cifar10_input.IMAGE_SIZE
NUM_CLASSES = cifar10_input.NUM_CLASSES
NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN = cifar10_input.NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN
NUM_EXAMPLES_PER_EPOCH_FOR_EVAL = cifar10_input.NUM_EXAMPLES_PER_EPOCH_FOR_EVAL

# The tutorial's settings, the defaults of the functions below (and of the
# scripts' flags).
DATA_DIR = '/tmp/cifar10_data'  # Holds cifar-10-batches-bin/.
BATCH_SIZE = 128                # Images per batch (per tower).
INITIAL_LEARNING_RATE = 0.1     # Learning rate at step 0.
# The fraction of an epoch of training images queued before training starts.
MIN_FRACTION_OF_EXAMPLES_IN_QUEUE = 0.4
# local3 and local4: fully connected (the tutorial's), or locally connected
# (cuda-convnet's, the tutorial's exercise).
TOP_LAYERS = ('fully_connected', 'locally_connected')

# Where the data set comes from, and the MD5 of the official archive.
DATA_URL = cifar10_download.DATA_URL
DATA_MD5 = cifar10_download.DATA_MD5

# Constants describing the training process.
MOVING_AVERAGE_DECAY = 0.9999     # The decay to use for the moving average.
NUM_EPOCHS_PER_DECAY = 350.0      # Epochs after which learning rate decays.
LEARNING_RATE_DECAY_FACTOR = 0.1  # Learning rate decay factor.
LOSS_AVERAGE_DECAY = 0.9          # The decay of the losses' moving averages.
# Mixed precision in float16 (on a GPU): the gradients are computed of the
# loss times this, then divided by it, so that the small ones do not vanish
# below float16's smallest numbers. (bfloat16 has float32's range: 1.)
FLOAT16_LOSS_SCALE = 128.0

# If a model is trained with multiple GPUs, prefix all Op names with tower_name
# to differentiate the operations. Note that this prefix is removed from the
# names of the summaries when visualizing a model.
TOWER_NAME = 'tower'


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


def _variable_on_cpu(name, shape, initializer, dtype=tf.float32,
                     compute_dtype=None):
  """Helper to create a Variable stored on CPU memory.

  Every variable of the model is made here, so that all model replicas
  ("towers", one per device) share one copy, kept on the CPU.

  Args:
    name: name of the variable
    shape: list of ints
    initializer: initializer for Variable
    dtype: type of the variable: float32, or float16 (--use_fp16)
    compute_dtype: type the model computes in, if another (mixed precision:
      float32 variables, float16 or bfloat16 computation)

  Returns:
    Variable Tensor, or its value cast to compute_dtype
  """
  with tf.device('/cpu:0'):
    var = tf.get_variable(name, shape, initializer=initializer, dtype=dtype)
  return _in_type(var, compute_dtype)


def _in_type(value, dtype):
  """`value` cast to `dtype`, where that is another type."""
  if dtype is None or value.dtype.base_dtype == dtype:
    return value
  return tf.cast(value, dtype)


def _variable_with_weight_decay(name, shape, stddev, wd, dtype=tf.float32,
                                compute_dtype=None):
  """Helper to create an initialized Variable with weight decay.

  Note that the Variable is initialized with a truncated normal distribution.
  A weight decay is added only if one is specified.

  Args:
    name: name of the variable
    shape: list of ints
    stddev: standard deviation of a truncated Gaussian
    wd: add L2Loss weight decay multiplied by this float. If None, weight
        decay is not added for this Variable.
    dtype: type of the variable
    compute_dtype: type the model computes in, if another (see
      _variable_on_cpu); the weight decay is the variable's, in its type

  Returns:
    Variable Tensor, or its value cast to compute_dtype
  """
  var = _variable_on_cpu(
      name,
      shape,
      tf.truncated_normal_initializer(stddev=stddev),
      dtype)
  if wd is not None:
    weight_decay = tf.multiply(tf.nn.l2_loss(var), wd, name='weight_loss')
    tf.add_to_collection('losses', weight_decay)
  return _in_type(var, compute_dtype)


def data_batches_dir(data_dir):
  """The folder of the binary batch files inside a data directory."""
  if not data_dir:
    raise UserError('--data_dir is empty: give the CIFAR-10 data directory.')
  return os.path.join(data_dir, cifar10_input.BATCHES_DIR_NAME)


def class_names(data_dir=DATA_DIR):
  """The class names of the data in `data_dir`, in label order.

  Returns:
    A tuple of names: from its batches.meta.txt, or CIFAR-10's ten when it
    has none (or is not there yet).
  """
  return cifar10_input.read_class_names(data_batches_dir(data_dir))


def num_examples_per_epoch(data_dir=DATA_DIR, eval_data=False):
  """The number of training (or test) images in `data_dir`.

  Args:
    data_dir: The data directory.
    eval_data: bool, the test set if True.

  Returns:
    The number of records, or CIFAR-10's 50,000 (10,000) while the data is
    not there yet.
  """
  filenames = cifar10_input.data_filenames(data_batches_dir(data_dir),
                                           eval_data)
  if all(os.path.isfile(f) for f in filenames):
    return cifar10_input.count_records(filenames)
  return (NUM_EXAMPLES_PER_EPOCH_FOR_EVAL if eval_data else
          NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN)


def distorted_inputs(data_dir=DATA_DIR, batch_size=BATCH_SIZE,
                     dtype=tf.float32,
                     min_fraction_of_examples_in_queue=(
                         MIN_FRACTION_OF_EXAMPLES_IN_QUEUE)):
  """Construct distorted input for CIFAR training using the Reader ops.

  Args:
    data_dir: Path to the CIFAR-10 data directory.
    batch_size: Number of images per batch.
    dtype: The images' type, the model's computation's: float32, float16
      (--use_fp16; mixed precision on a GPU) or bfloat16 (mixed precision on
      a CPU).
    min_fraction_of_examples_in_queue: The fraction of an epoch queued before
      the first batch comes out (see cifar10_input.distorted_inputs).

  Returns:
    images: Images. 4D tensor of [batch_size, IMAGE_SIZE, IMAGE_SIZE, 3] size.
    labels: Labels. 1D tensor of [batch_size] size.

  Raises:
    UserError: If no data_dir, or its data files are missing or malformed.
  """
  images, labels = cifar10_input.distorted_inputs(
      data_dir=data_batches_dir(data_dir), batch_size=batch_size,
      min_fraction_of_examples_in_queue=min_fraction_of_examples_in_queue)
  return tf.cast(images, dtype), labels


def inputs(eval_data, data_dir=DATA_DIR, batch_size=BATCH_SIZE,
           dtype=tf.float32):
  """Construct input for CIFAR evaluation using the Reader ops.

  Each image of the chosen set is read once; then the pipeline raises
  `tf.errors.OutOfRangeError`.

  Args:
    eval_data: bool, indicating if one should use the train or eval data set.
    data_dir: Path to the CIFAR-10 data directory.
    batch_size: Number of images per batch.
    dtype: The images' type (see distorted_inputs).

  Returns:
    images: Images. 4D tensor of [batch_size, IMAGE_SIZE, IMAGE_SIZE, 3] size.
    labels: Labels. 1D tensor of [batch_size] size.

  Raises:
    UserError: If no data_dir, or its data files are missing or malformed.
  """
  images, labels = cifar10_input.inputs(eval_data=eval_data,
                                        data_dir=data_batches_dir(data_dir),
                                        batch_size=batch_size)
  return tf.cast(images, dtype), labels


def local_response_normalization(x, depth_radius, bias, alpha, beta, name):
  """tf.nn.lrn, computed with a matrix multiply: same values, 3x faster here.

  Each output is x / (bias + alpha * sum of x**2 over the channels within
  depth_radius of its own) ** beta, as tf.nn.lrn defines it. TensorFlow's CPU
  kernels for LRN and its gradient run on one thread and took a fifth of a
  training step; the windowed sum of squares is a product with a band
  matrix, which oneDNN multiplies on every core. Elementwise ops cost more
  than their FLOPs (each reads and writes the whole tensor), so there are
  few: alpha and the bias go into the product (5 elementwise ops forward,
  where there were 8), and the gradient is written out (5 and one product,
  where differentiating op by op ran 13). The results agree with tf.nn.lrn
  to float rounding (see tests/test_same_computation.py).

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
  depth = x.get_shape()[-1]
  channel = np.arange(depth)
  window = np.abs(channel[:, None] - channel[None, :]) <= depth_radius

  def windowed_sum(values, weight, offset=None):
    """weight * the sum of `values` over each channel's window (+ offset).

    The weight is folded into the band matrix, and the offset added by the
    multiply (TensorFlow fuses a bias_add into it): no elementwise op.
    """
    flat = tf.matmul(tf.reshape(values, [-1, depth]),
                     tf.constant(weight * window, dtype=values.dtype))
    if offset is not None:
      flat = tf.nn.bias_add(flat, tf.constant(offset, values.dtype, [depth]))
    return tf.reshape(flat, tf.shape(values))

  @tf.custom_gradient
  def normalize(x):
    denominator = windowed_sum(tf.square(x), alpha, offset=bias)
    if beta == 0.75:  # The tutorial's: two square roots beat a power.
      inverse_root = tf.math.rsqrt(denominator)
      scale = inverse_root * tf.sqrt(inverse_root)
    else:
      scale = tf.pow(denominator, -beta)
    normalized = x * scale

    def gradient(upstream):
      # d normalized_i / d x_j = scale_i [i == j] - 2 alpha beta x_i x_j
      # scale_i / denominator_i [j in the window of i]; the window is
      # symmetric.
      through_denominator = windowed_sum(upstream * normalized / denominator,
                                         2.0 * alpha * beta)
      return upstream * scale - x * through_denominator

    return normalized, gradient

  with tf.name_scope(name + '_terms'):
    normalized = normalize(x)
  return tf.identity(normalized, name=name)


def inference(images, num_classes=NUM_CLASSES, top_layers='fully_connected',
              variable_dtype=None):
  """Build the CIFAR-10 model.

  Args:
    images: Images returned from distorted_inputs() or inputs(), of the type
      the model computes in: float32, float16, or bfloat16.
    num_classes: Outputs of the last layer: 10 for CIFAR-10, or the number of
      classes of your own data (len(class_names(data_dir))).
    top_layers: local3 and local4 'fully_connected', as in the tutorial, or
      'locally_connected', as in cuda-convnet's model.
    variable_dtype: The variables' type: the images' by default (float32;
      float16 for the tutorial's --use_fp16). float32 with float16 or
      bfloat16 images is mixed precision: the variables, their moving
      averages, the weight decay and the checkpoints stay float32, and each
      layer computes with its weights cast to the images' type.

  Returns:
    Logits, of the images' type.

  Raises:
    ValueError: images of another type, or an unknown top_layers.
  """
  dtype = images.dtype.base_dtype
  if dtype not in (tf.float32, tf.float16, tf.bfloat16):
    raise ValueError('inference() takes float32, float16 or bfloat16 images, '
                     'not %s.' % dtype.name)
  variable_dtype = variable_dtype or dtype
  if variable_dtype == tf.bfloat16:
    raise ValueError('bfloat16 variables are not supported: give '
                     'variable_dtype=tf.float32 (mixed precision).')
  if top_layers not in TOP_LAYERS:
    raise ValueError('top_layers=%r: it is one of %s.' % (top_layers,
                                                          ', '.join(TOP_LAYERS)))
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
                                         wd=None, dtype=variable_dtype,
                                         compute_dtype=dtype)
    conv = tf.nn.conv2d(images, kernel, [1, 1, 1, 1], padding='SAME')
    biases = _variable_on_cpu('biases', [64], tf.constant_initializer(0.0),
                              variable_dtype, dtype)
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
                                         wd=None, dtype=variable_dtype,
                                         compute_dtype=dtype)
    conv = tf.nn.conv2d(norm1, kernel, [1, 1, 1, 1], padding='SAME')
    biases = _variable_on_cpu('biases', [64], tf.constant_initializer(0.1),
                              variable_dtype, dtype)
    pre_activation = tf.nn.bias_add(conv, biases)
    conv2 = tf.nn.relu(pre_activation, name=scope.name)
    _activation_summary(conv2)

  # norm2
  norm2 = local_response_normalization(conv2, 4, bias=1.0, alpha=0.001 / 9.0,
                                       beta=0.75, name='norm2')
  # pool2
  pool2 = tf.nn.max_pool(norm2, ksize=[1, 3, 3, 1],
                         strides=[1, 2, 2, 1], padding='SAME', name='pool2')

  if top_layers == 'locally_connected':
    # The top of Alex Krizhevsky's cuda-convnet model (the tutorial's
    # exercise; layers-conv-local-11pct.cfg): two locally connected layers,
    # then the linear layer.
    local3 = _locally_connected('local3', pool2, filters=64, size=3,
                                variable_dtype=variable_dtype)
    local4 = _locally_connected('local4', local3, filters=32, size=3,
                                variable_dtype=variable_dtype)
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
                                            stddev=0.04, wd=0.004,
                                            dtype=variable_dtype,
                                            compute_dtype=dtype)
      biases = _variable_on_cpu('biases', [384], tf.constant_initializer(0.1),
                                variable_dtype, dtype)
      local3 = tf.nn.relu(tf.matmul(reshape, weights) + biases,
                          name=scope.name)
      _activation_summary(local3)

    # local4
    with tf.variable_scope('local4') as scope:
      weights = _variable_with_weight_decay('weights', shape=[384, 192],
                                            stddev=0.04, wd=0.004,
                                            dtype=variable_dtype,
                                            compute_dtype=dtype)
      biases = _variable_on_cpu('biases', [192], tf.constant_initializer(0.1),
                                variable_dtype, dtype)
      local4 = tf.nn.relu(tf.matmul(local3, weights) + biases,
                          name=scope.name)
      _activation_summary(local4)
    top = local4

  # linear layer(WX + b),
  # We don't apply softmax here because
  # tf.nn.sparse_softmax_cross_entropy_with_logits accepts the unscaled logits
  # and performs the softmax internally for efficiency.
  with tf.variable_scope('softmax_linear') as scope:
    dim = top.get_shape()[-1]
    weights = _variable_with_weight_decay('weights', [dim, num_classes],
                                          stddev=1.0 / dim, wd=None,
                                          dtype=variable_dtype,
                                          compute_dtype=dtype)
    biases = _variable_on_cpu('biases', [num_classes],
                              tf.constant_initializer(0.0),
                              variable_dtype, dtype)
    softmax_linear = tf.add(tf.matmul(top, weights), biases, name=scope.name)
    _activation_summary(softmax_linear)

  return softmax_linear


def _locally_connected(name, inputs, filters, size, variable_dtype=None):
  """A locally connected layer with ReLU: a convolution whose weights differ
  at every position (cuda-convnet's 'local' layers).

  Weights drawn with stddev 0.04 and decayed by 0.004, biases 0.1, as the
  tutorial's local3 and local4.

  Args:
    name: Name of the layer (its variable scope).
    inputs: 4-D Tensor [batch, height, width, depth].
    filters: Output channels.
    size: Side of the square window; SAME padding, stride 1.
    variable_dtype: The variables' type; the inputs' by default.

  Returns:
    4-D Tensor [batch, height, width, filters].
  """
  dtype = inputs.dtype.base_dtype
  variable_dtype = variable_dtype or dtype
  with tf.variable_scope(name) as scope:
    _, height, width, depth = inputs.get_shape().as_list()
    positions, window = height * width, size * size * depth
    patches = tf.image.extract_patches(inputs, sizes=[1, size, size, 1],
                                       strides=[1, 1, 1, 1],
                                       rates=[1, 1, 1, 1], padding='SAME')
    weights = _variable_with_weight_decay(
        'weights', shape=[positions, window, filters], stddev=0.04, wd=0.004,
        dtype=variable_dtype, compute_dtype=dtype)
    biases = _variable_on_cpu('biases', [positions, filters],
                              tf.constant_initializer(0.1),
                              variable_dtype, dtype)
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


def predictions(logits):
  """Normalised predictions: the probability of each class.

  Args:
    logits: Logits from inference().

  Returns:
    Tensor [batch, classes] whose rows sum to 1.
  """
  return tf.nn.softmax(logits, name='predictions')


def loss(logits, labels):
  """The total loss: the cross entropy plus the weight decay terms.

  Adds the mean cross entropy of the batch to the 'losses' collection, which
  already holds the weight decay (L2 loss) terms that inference() added for
  local3 and local4, and returns their sum.

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


def learning_rate(global_step, examples_per_step=BATCH_SIZE,
                  examples_per_epoch=NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN,
                  initial_learning_rate=INITIAL_LEARNING_RATE):
  """The learning rate: decayed exponentially, in steps, with the epochs.

  Args:
    global_step: Integer Variable counting the number of training steps
      processed.
    examples_per_step: Images trained on per update (all towers, or all
      synchronous workers, together).
    examples_per_epoch: Training images in the data
      (num_examples_per_epoch(data_dir)).
    initial_learning_rate: The rate at step 0; it is divided by 10 every
      NUM_EPOCHS_PER_DECAY epochs.

  Returns:
    A scalar float32 Tensor, also summarised as 'learning_rate'.
  """
  num_batches_per_epoch = examples_per_epoch / examples_per_step
  decay_steps = int(num_batches_per_epoch * NUM_EPOCHS_PER_DECAY)

  # Decay the learning rate exponentially based on the number of steps.
  lr = tf.train.exponential_decay(initial_learning_rate,
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


def gradients(total_loss, loss_scale=1.0):
  """The gradient of the loss for each trainable variable.

  Args:
    total_loss: The loss.
    loss_scale: Gradients are computed of the loss times this, then divided
      by it (FLOAT16_LOSS_SCALE for float16 computation with float32
      variables).

  Returns:
    List of (gradient, variable) pairs.
  """
  variables = tf.trainable_variables()
  if loss_scale == 1.0:
    return list(zip(tf.gradients(total_loss, variables), variables))
  scaled = tf.gradients(total_loss * loss_scale, variables)
  return [(None if g is None else g / loss_scale, v)
          for g, v in zip(scaled, variables)]


def train(total_loss, global_step, examples_per_step=BATCH_SIZE,
          examples_per_epoch=NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN,
          initial_learning_rate=INITIAL_LEARNING_RATE, grads=None, losses=None,
          wrap_optimizer=None, loss_scale=1.0):
  """Train CIFAR-10 model.

  Create an optimizer and apply to all trainable variables. Add moving
  average for all trainable variables. The one training step of every
  script: on one device, over towers (their averaged gradients given as
  `grads`), and on distributed workers (a synchronous optimizer given by
  `wrap_optimizer`).

  Args:
    total_loss: Total loss from loss(), or the towers' average.
    global_step: Integer Variable counting the number of training steps
      processed.
    examples_per_step: Images in one update, for the learning rate's decay:
      the batch size, times the towers or synchronous workers.
    examples_per_epoch: Training images in the data.
    initial_learning_rate: The learning rate at step 0.
    grads: The (gradient, variable) pairs to apply: the towers' averaged
      gradients; those of total_loss by default.
    losses: The loss terms of total_loss, summarised with it; the 'losses'
      collection by default.
    wrap_optimizer: f(optimizer, variable_averages) -> an optimizer that
      updates the variables through `optimizer` and their moving averages
      with `variable_averages` itself (tf.train.SyncReplicasOptimizer, for
      synchronous distributed training); by default, the update is followed
      by the moving averages here.
    loss_scale: See gradients(); with `grads` given, they were computed so.

  Returns:
    train_op: op for training.
  """
  # The learning rate is a few scalar ops on the global step: beside it.
  with tf.device(global_step.device):
    lr = learning_rate(global_step, examples_per_step, examples_per_epoch,
                       initial_learning_rate)

  # Generate moving averages of all losses and associated summaries.
  loss_averages_op = add_loss_summaries(total_loss, losses)

  # The moving averages of all trainable variables, updated after each step.
  variable_averages = tf.train.ExponentialMovingAverage(
      MOVING_AVERAGE_DECAY, global_step)

  opt = tf.train.GradientDescentOptimizer(lr)
  if wrap_optimizer:
    opt = wrap_optimizer(opt, variable_averages)

  # Compute gradients.
  if grads is None:
    grads = gradients(total_loss, loss_scale)

  # Apply gradients.
  apply_gradient_op = opt.apply_gradients(grads, global_step=global_step)

  # Add histograms for trainable variables and their gradients.
  add_variable_and_gradient_summaries(grads)

  if not wrap_optimizer:
    # Track the moving averages of all trainable variables: on the CPU, with
    # the variables (see _variable_on_cpu), so that training on a GPU does
    # not copy every variable and its average to the GPU and back each step.
    with tf.control_dependencies([apply_gradient_op]), tf.device('/cpu:0'):
      apply_gradient_op = variable_averages.apply(tf.trainable_variables())

  # The losses' averages are taken in the same step. (Not as a dependency of
  # the update: a synchronous optimizer's update runs in a thread of its own,
  # which must not compute a loss.)
  return tf.group(apply_gradient_op, loss_averages_op, name='train_op')


def maybe_download_and_extract(data_dir=DATA_DIR, data_url=DATA_URL,
                               expected_md5=DATA_MD5):
  """Download and extract the tarball from Alex's website.

  See cifar10_download.maybe_download_and_extract: nothing is downloaded
  when the data is unpacked in `data_dir` already; a download is checked
  (MD5) and kept only whole.

  Args:
    data_dir: Where the data goes.
    data_url: Where the archive comes from.
    expected_md5: The archive's MD5, '' for no check.

  Returns:
    The path of the folder of batch files.
  """
  return cifar10_download.maybe_download_and_extract(data_dir, data_url,
                                                     expected_md5)
