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

"""Routine for decoding the CIFAR-10 binary file format.

The binary version of CIFAR-10 is a set of files of fixed-length records: one
label byte (0-9), then 3072 pixel bytes, the 1024 red values of the 32x32
image, then the 1024 green, then the 1024 blue, each plane stored row by row.
"""

import os

import numpy as np

from cifar10_common import tf
from cifar10_common import UserError

# Process images of this size. Note that this differs from the original CIFAR
# image size of 32 x 32. If one alters this number, then the entire model
# architecture will change and any model would need to be retrained.
IMAGE_SIZE = 24

# Global constants describing the CIFAR-10 data set.
CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
               'horse', 'ship', 'truck')
NUM_CLASSES = len(CLASS_NAMES)
NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN = 50000
NUM_EXAMPLES_PER_EPOCH_FOR_EVAL = 10000

# The binary layout of one record.
LABEL_BYTES = 1
SOURCE_HEIGHT = 32
SOURCE_WIDTH = 32
SOURCE_DEPTH = 3
IMAGE_BYTES = SOURCE_HEIGHT * SOURCE_WIDTH * SOURCE_DEPTH
RECORD_BYTES = LABEL_BYTES + IMAGE_BYTES

# Where the records are: the folder the binary archive unpacks to, and its files.
BATCHES_DIR_NAME = 'cifar-10-batches-bin'
TRAIN_FILENAMES = tuple('data_batch_%d.bin' % i for i in range(1, 6))
EVAL_FILENAMES = ('test_batch.bin',)

# Threads that read and preprocess images into the batching queue.
NUM_PREPROCESS_THREADS = 16


class DataError(UserError):
  """The CIFAR-10 data files are missing or are not what they should be."""


def data_filenames(data_dir, eval_data):
  """Returns the paths of the training or evaluation batch files.

  Args:
    data_dir: Path to the CIFAR-10 data directory (`cifar-10-batches-bin`).
    eval_data: bool, the test set if True, the training set otherwise.

  Returns:
    A list of file paths.
  """
  names = EVAL_FILENAMES if eval_data else TRAIN_FILENAMES
  return [os.path.join(data_dir, name) for name in names]


def holds_whole_records(filename):
  """True if `filename` is a non-empty file of whole CIFAR-10 records."""
  if not os.path.isfile(filename):
    return False
  size = os.path.getsize(filename)
  return size > 0 and size % RECORD_BYTES == 0


def count_records(filenames):
  """The number of whole records in the given batch files."""
  return sum(os.path.getsize(f) // RECORD_BYTES for f in filenames)


def check_data_files(filenames):
  """Checks that batch files exist and hold whole, well-labelled records.

  This runs before any graph is built, so that bad data stops a run at once,
  with the file named, rather than an hour into training.

  Args:
    filenames: Paths of CIFAR-10 binary batch files.

  Returns:
    The total number of records in the files.

  Raises:
    DataError: a file is missing, empty, not a whole number of records, or
      has a label outside 0..NUM_CLASSES-1.
  """
  missing = [f for f in filenames if not os.path.isfile(f)]
  if missing:
    data_dir = os.path.dirname(missing[0])
    raise DataError(
        'missing CIFAR-10 data file%s in %s: %s. To get them, run '
        'cifar10_train.py with network access (it downloads CIFAR-10 on '
        'first use), or unpack cifar-10-binary.tar.gz into the parent of '
        'that folder.' % ('s' if len(missing) > 1 else '', data_dir,
                          ', '.join(os.path.basename(f) for f in missing)))
  total_records = 0
  for filename in filenames:
    if not holds_whole_records(filename):
      raise DataError(
          '%s is %d bytes, not a whole number of %d-byte CIFAR-10 records '
          '(1 label byte + %dx%dx%d pixel bytes): the file is truncated or '
          'not CIFAR-10 binary data. Unpack the archive again.' %
          (filename, os.path.getsize(filename), RECORD_BYTES, SOURCE_HEIGHT,
           SOURCE_WIDTH, SOURCE_DEPTH))
    records = np.memmap(filename, dtype=np.uint8, mode='r').reshape(
        -1, RECORD_BYTES)
    labels = np.asarray(records[:, 0])
    bad_records = np.flatnonzero(labels >= NUM_CLASSES)
    if bad_records.size:
      raise DataError(
          '%s: record %d has label %d, but labels must be 0-%d; %d of its %d '
          'records are out of range. The file is corrupt or not CIFAR-10 '
          'binary data.' % (filename, bad_records[0], labels[bad_records[0]],
                            NUM_CLASSES - 1, bad_records.size, len(labels)))
    total_records += len(labels)
  return total_records


def read_cifar10(filename_queue):
  """Reads and parses examples from CIFAR10 data files.

  Recommendation: if you want N-way read parallelism, call this function
  N times.  This will give you N independent Readers reading different
  files & positions within those files, which will give better mixing of
  examples.

  Args:
    filename_queue: A queue of strings with the filenames to read from.

  Returns:
    An object representing a single example, with the following fields:
      height: number of rows in the result (32)
      width: number of columns in the result (32)
      depth: number of color channels in the result (3)
      key: a scalar string Tensor describing the filename & record number
        for this example.
      label: an int32 Tensor with the label in the range 0..9.
      uint8image: a [height, width, depth] uint8 Tensor with the image data
  """

  class CIFAR10Record(object):
    pass

  result = CIFAR10Record()
  result.height = SOURCE_HEIGHT
  result.width = SOURCE_WIDTH
  result.depth = SOURCE_DEPTH

  # Read a record, getting filenames from the filename_queue. No header or
  # footer in the CIFAR-10 format, so we leave header_bytes and footer_bytes
  # at their default of 0.
  reader = tf.FixedLengthRecordReader(record_bytes=RECORD_BYTES)
  result.key, value = reader.read(filename_queue)

  # Convert from a string to a vector of uint8 that is RECORD_BYTES long.
  record_bytes = tf.decode_raw(value, tf.uint8)

  # The first bytes represent the label, which we convert from uint8->int32.
  result.label = tf.cast(
      tf.strided_slice(record_bytes, [0], [LABEL_BYTES]), tf.int32)

  # The remaining bytes after the label represent the image, which we reshape
  # from [depth * height * width] to [depth, height, width].
  depth_major = tf.reshape(
      tf.strided_slice(record_bytes, [LABEL_BYTES], [RECORD_BYTES]),
      [result.depth, result.height, result.width])
  # Convert from [depth, height, width] to [height, width, depth].
  result.uint8image = tf.transpose(depth_major, [1, 2, 0])

  return result


def _generate_image_and_label_batch(image, label, min_queue_examples,
                                    batch_size, shuffle, num_epochs=None):
  """Construct a queued batch of images and labels.

  Args:
    image: 3-D Tensor of [height, width, 3] of type.float32.
    label: 1-D Tensor of type.int32
    min_queue_examples: int32, minimum number of samples to retain
      in the queue that provides of batches of examples.
    batch_size: Number of images per batch.
    shuffle: boolean indicating whether to use a shuffling queue.
    num_epochs: None to cycle forever, or the number of passes, in which case
      the last batch may be smaller than `batch_size`.

  Returns:
    images: Images. 4D tensor of [batch_size, height, width, 3] size.
    labels: Labels. 1D tensor of [batch_size] size.
  """
  # Create a queue that shuffles the examples, and then
  # read 'batch_size' images + labels from the example queue.
  capacity = min_queue_examples + 3 * batch_size
  if shuffle:
    images, label_batch = tf.train.shuffle_batch(
        [image, label],
        batch_size=batch_size,
        num_threads=NUM_PREPROCESS_THREADS,
        capacity=capacity,
        min_after_dequeue=min_queue_examples)
  else:
    images, label_batch = tf.train.batch(
        [image, label],
        batch_size=batch_size,
        num_threads=NUM_PREPROCESS_THREADS,
        capacity=capacity,
        allow_smaller_final_batch=num_epochs is not None)

  # Display the training images in the visualizer.
  tf.summary.image('images', images)

  return images, tf.reshape(label_batch, [-1])


def _standardized_image_and_label(read_input, image):
  """Standardises `image` and fixes the static shapes of it and its label."""
  float_image = tf.image.per_image_standardization(image)
  float_image.set_shape([IMAGE_SIZE, IMAGE_SIZE, SOURCE_DEPTH])
  read_input.label.set_shape([1])
  return float_image, read_input.label


def distorted_inputs(data_dir, batch_size,
                     min_fraction_of_examples_in_queue=0.4):
  """Construct distorted input for CIFAR training using the Reader ops.

  The training files are read for ever, in a shuffled order of files.

  Args:
    data_dir: Path to the CIFAR-10 data directory.
    batch_size: Number of images per batch.
    min_fraction_of_examples_in_queue: The fraction of an epoch that must be
      in the shuffling queue before training starts: more gives better
      mixing, less starts sooner.

  Returns:
    images: Images. 4D tensor of [batch_size, IMAGE_SIZE, IMAGE_SIZE, 3] size.
    labels: Labels. 1D tensor of [batch_size] size.

  Raises:
    DataError: the training files are missing or malformed.
  """
  filenames = data_filenames(data_dir, eval_data=False)
  check_data_files(filenames)

  # Create a queue that produces the filenames to read.
  filename_queue = tf.train.string_input_producer(filenames)

  with tf.name_scope('data_augmentation'):
    # Read examples from files in the filename queue.
    read_input = read_cifar10(filename_queue)
    reshaped_image = tf.cast(read_input.uint8image, tf.float32)

    height = IMAGE_SIZE
    width = IMAGE_SIZE

    # Image processing for training the network. Note the many random
    # distortions applied to the image.

    # Randomly crop a [height, width] section of the image.
    distorted_image = tf.random_crop(reshaped_image, [height, width, 3])

    # Randomly flip the image horizontally.
    distorted_image = tf.image.random_flip_left_right(distorted_image)

    # Because these operations are not commutative, consider randomizing
    # the order their operation.
    distorted_image = tf.image.random_brightness(distorted_image,
                                                 max_delta=63)
    distorted_image = tf.image.random_contrast(distorted_image,
                                               lower=0.2, upper=1.8)

    # Subtract off the mean and divide by the variance of the pixels.
    float_image, label = _standardized_image_and_label(read_input,
                                                       distorted_image)

    # Ensure that the random shuffling has good mixing properties.
    min_queue_examples = int(NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN *
                             min_fraction_of_examples_in_queue)

  # Generate a batch of images and labels by building up a queue of examples.
  return _generate_image_and_label_batch(float_image, label,
                                         min_queue_examples, batch_size,
                                         shuffle=True)


def inputs(eval_data, data_dir, batch_size):
  """Construct input for CIFAR evaluation using the Reader ops.

  Unlike the classic tutorial, this reads the files exactly once, in order:
  the last batch holds what is left (it may be smaller than `batch_size`),
  then the pipeline raises `tf.errors.OutOfRangeError`. So an evaluation sees
  each image once. The sessions running it must initialise local variables
  (the epoch counter).

  Args:
    eval_data: bool, indicating if one should use the train or eval data set.
    data_dir: Path to the CIFAR-10 data directory.
    batch_size: Number of images per batch.

  Returns:
    images: Images. 4D tensor of [batch_size, IMAGE_SIZE, IMAGE_SIZE, 3] size,
      the first dimension unknown (the last batch may be smaller).
    labels: Labels. 1D tensor of [batch_size] size, as above.

  Raises:
    DataError: the files are missing or malformed.
  """
  filenames = data_filenames(data_dir, eval_data)
  num_examples_per_epoch = check_data_files(filenames)

  # Create a queue that produces the filenames to read, once each, in order.
  filename_queue = tf.train.string_input_producer(
      filenames, num_epochs=1, shuffle=False)

  with tf.name_scope('input'):
    # Read examples from files in the filename queue.
    read_input = read_cifar10(filename_queue)
    reshaped_image = tf.cast(read_input.uint8image, tf.float32)

    height = IMAGE_SIZE
    width = IMAGE_SIZE

    # Image processing for evaluation.
    # Crop the central [height, width] of the image.
    resized_image = tf.image.resize_image_with_crop_or_pad(reshaped_image,
                                                           height, width)

    # Subtract off the mean and divide by the variance of the pixels.
    float_image, label = _standardized_image_and_label(read_input,
                                                       resized_image)

    # A batching queue need not hold more than a few batches for evaluation.
    min_queue_examples = min(num_examples_per_epoch, batch_size)

  # Generate a batch of images and labels by building up a queue of examples.
  return _generate_image_and_label_batch(float_image, label,
                                         min_queue_examples, batch_size,
                                         shuffle=False, num_epochs=1)


def prefetch_batches(tensors, capacity, name='batch_prefetch'):
  """Queues whole batches, so that several consumers each take one at once.

  With one model replica per device ("tower"), every tower dequeues its own
  batch from this queue: the towers share one input pipeline (one set of
  reader threads, one shuffling queue), and none waits for the others'
  batches to be assembled.

  Args:
    tensors: The tensors of one batch, e.g. [images, labels].
    capacity: How many batches the queue holds.
    name: Name scope of the queue.

  Returns:
    A tf.FIFOQueue; `dequeue()` gives one batch.
  """
  with tf.name_scope(name):
    queue = tf.FIFOQueue(capacity, dtypes=[t.dtype for t in tensors],
                         shapes=[t.shape for t in tensors])
    tf.train.add_queue_runner(
        tf.train.QueueRunner(queue, [queue.enqueue(tensors)]))
    tf.summary.scalar('fraction_of_%d_full' % capacity,
                      tf.cast(queue.size(), tf.float32) / capacity)
  return queue
