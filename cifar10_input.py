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
label byte (0-9 for CIFAR-10; up to 255 for data of your own, see
prepare_data.py), then 3072 pixel bytes, the 1024 red values of the 32x32
image, then the 1024 green, then the 1024 blue, each plane stored row by row.
(cifar10_support.data holds that layout, and checks a data set's files once:
a DataSet, which the functions below read.)

Summary of available functions:

 # Distorted training batches, read for ever from a data set's files.
 images, labels = distorted_inputs(data, batch_size)

 # Evaluation batches: every image of the test (or training) files once.
 images, labels = inputs(eval_data, data, batch_size)
"""

from cifar10_support import data as data_lib
from cifar10_support import kernels
from cifar10_support.quiet import tf

# Process images of this size. Note that this differs from the original CIFAR
# image size of 32 x 32. If one alters this number, then the entire model
# architecture will change and any model would need to be retrained.
IMAGE_SIZE = 24

# Global constants describing the CIFAR-10 data set. A data set of your own
# brings its classes and sizes (its DataSet).
NUM_CLASSES = len(data_lib.CLASS_NAMES)
NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN = data_lib.NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN
NUM_EXAMPLES_PER_EPOCH_FOR_EVAL = data_lib.NUM_EXAMPLES_PER_EPOCH_FOR_EVAL

# Threads that read and preprocess images into the batching queue, and how
# many records each reads and preprocesses at once: one read and one decode
# of many records cost far less per image than one of each.
NUM_PREPROCESS_THREADS = 16
RECORDS_PER_READ = 128


def _decode_records(values, data_format='NHWC'):
  """Splits raw CIFAR-10 records into labels and images.

  Args:
    values: 1-D string Tensor of records, each RECORD_BYTES long.
    data_format: The images' layout: 'NHWC', as the model takes them, or
      'NCHW', each image's planes as the records hold them.

  Returns:
    labels: int32 Tensor [n], each a class's number (0..9 for CIFAR-10).
    uint8images: uint8 Tensor [n, height, width, depth] ('NHWC') or [n,
      depth, height, width] ('NCHW').

  Raises:
    ValueError: data_format is neither.
  """
  if data_format not in ('NHWC', 'NCHW'):
    raise ValueError("data_format is 'NHWC' or 'NCHW', not %r" % data_format)
  # Convert from strings to rows of uint8 that are RECORD_BYTES long.
  record_bytes = tf.reshape(tf.decode_raw(values, tf.uint8),
                            [-1, data_lib.RECORD_BYTES])

  # The first bytes represent the label, which we convert from uint8->int32.
  labels = tf.cast(record_bytes[:, 0], tf.int32)

  # The remaining bytes after the label represent the image, which we reshape
  # from [depth * height * width] to [depth, height, width].
  depth_major = tf.reshape(record_bytes[:, data_lib.LABEL_BYTES:],
                           [-1, data_lib.SOURCE_DEPTH, data_lib.SOURCE_HEIGHT,
                            data_lib.SOURCE_WIDTH])
  if data_format == 'NCHW':
    return labels, depth_major
  # Convert from [depth, height, width] to [height, width, depth].
  return labels, tf.transpose(depth_major, [0, 2, 3, 1])


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
      label: an int32 Tensor with the label (0..9 for CIFAR-10).
      uint8image: a [height, width, depth] uint8 Tensor with the image data
  """

  class CIFAR10Record(object):
    pass

  result = CIFAR10Record()
  result.height = data_lib.SOURCE_HEIGHT
  result.width = data_lib.SOURCE_WIDTH
  result.depth = data_lib.SOURCE_DEPTH

  # Read a record, getting filenames from the filename_queue. No header or
  # footer in the CIFAR-10 format, so we leave header_bytes and footer_bytes
  # at their default of 0.
  reader = tf.FixedLengthRecordReader(record_bytes=data_lib.RECORD_BYTES)
  result.key, value = reader.read(filename_queue)
  labels, uint8images = _decode_records(tf.reshape(value, [1]))
  result.label = labels  # Of shape [1].
  result.uint8image = uint8images[0]
  return result


def read_cifar10_records(filename_queue, max_records, data_format='NHWC'):
  """Reads up to `max_records` records at once: read_cifar10, in bulk.

  One read and one decode for many records costs far less than one each,
  which, on a CPU, the input pipeline would take from training.

  Args:
    filename_queue: A queue of strings with the filenames to read from.
    max_records: How many records to read at most.
    data_format: The images' layout: 'NHWC', as the model takes them, or
      'NCHW', each image's planes as the records hold them (crop_and_flip
      takes them so).

  Returns:
    keys: string Tensor [n], "filename:record number" of each record.
    labels: int32 Tensor [n], the labels (0..9 for CIFAR-10).
    uint8images: uint8 Tensor [n, height, width, depth] ('NHWC') or [n,
      depth, height, width] ('NCHW').
  """
  reader = tf.FixedLengthRecordReader(record_bytes=data_lib.RECORD_BYTES)
  keys, values = reader.read_up_to(filename_queue, max_records)
  labels, uint8images = _decode_records(values, data_format)
  return keys, labels, uint8images


def random_crops_and_flips(count):
  """Draws where to crop `count` training images, and which to flip, as
  tf.random_crop and tf.image.random_flip_left_right draw it for one image:
  {'offsets': int32 [count, 2] (row, column), uniform over the 9 x 9
  positions of a 24x24 window in 32x32; 'flips': bool [count], a fair coin}.
  """
  return {
      'offsets': tf.random_uniform(
          [count, 2], maxval=data_lib.SOURCE_HEIGHT - IMAGE_SIZE + 1,
          dtype=tf.int32),
      'flips': tf.random_uniform([count]) < 0.5,
  }


def random_brightness_and_contrast(count):
  """Draws the brightness and contrast changes of `count` training images,
  as tf.image.random_brightness (max delta 63) and tf.image.random_contrast
  (0.2 to 1.8) draw them for one image: {'brightness_deltas': uniform in
  [-63, 63), 'contrast_factors': uniform in [0.2, 1.8)}, float32 [count].
  """
  return {
      'brightness_deltas': tf.random_uniform([count], -63.0, 63.0),
      'contrast_factors': tf.random_uniform([count], 0.2, 1.8),
  }


def crop_and_flip(images, offsets, flips):
  """Crops a 24x24 window of each image at its offsets, and flips those of
  `flips` left to right.

  What tf.image.crop_to_bounding_box and tf.image.flip_left_right do for one
  image, done for a whole batch at once, from the records' layout: on a CPU,
  with the transpose, in one pass of a kernel of this project's own
  (input_kernel.cc); otherwise with TensorFlow's ops, the flip folded into
  the choice of columns.

  Args:
    images: uint8 Tensor [n, 3, 32, 32], each image's planes as the records
      hold them (read_cifar10_records(..., data_format='NCHW')).
    offsets: int32 Tensor [n, 2], each crop's first row and column.
    flips: bool Tensor [n].

  Returns:
    uint8 Tensor [n, 24, 24, 3].
  """
  kernel = kernels.for_ops_on(images)
  if kernel is not None:
    return kernel.cifar10_crop_and_flip(images, offsets, flips,
                                        size=IMAGE_SIZE)
  images = tf.transpose(images, [0, 2, 3, 1])
  window = tf.range(IMAGE_SIZE)
  rows = offsets[:, :1] + window
  columns = offsets[:, 1:] + tf.where_v2(flips[:, None],
                                         IMAGE_SIZE - 1 - window, window)
  cropped = tf.gather(images, rows, axis=1, batch_dims=1)
  return tf.gather(cropped, columns, axis=2, batch_dims=1)


def adjust_and_standardize(images, brightness_deltas, contrast_factors):
  """Changes the brightness, then the contrast, then standardises images.

  What tf.image.adjust_brightness, tf.image.adjust_contrast (about each
  channel's mean) and tf.image.per_image_standardization do for one image,
  done for a whole batch at once, in the tutorial's order: on a CPU, in one
  pass of a kernel of this project's own (input_kernel.cc), from each
  channel's sums; otherwise with TensorFlow's ops.

  NOTE: as in the tutorial, the brightness change has no effect: adding the
  same delta to every pixel moves the image's mean by it, and the
  standardisation subtracts the mean (the contrast change, about each
  channel's mean, keeps the shift too). Only the contrast changes what the
  network sees; the kernel leaves the deltas out.

  Args:
    images: uint8 Tensor [n, 24, 24, 3].
    brightness_deltas: float32 Tensor [n].
    contrast_factors: float32 Tensor [n].

  Returns:
    float32 Tensor [n, 24, 24, 3].
  """
  kernel = kernels.for_ops_on(images)
  if kernel is not None:
    return kernel.cifar10_adjust_contrast_and_standardize(images,
                                                          contrast_factors)
  images = tf.cast(images, tf.float32)
  # Because these operations are not commutative, consider randomizing
  # the order their operation.
  adjusted = images + tf.reshape(brightness_deltas, [-1, 1, 1, 1])
  channel_means = tf.reduce_mean(adjusted, axis=[1, 2], keepdims=True)
  contrast = tf.reshape(contrast_factors, [-1, 1, 1, 1])
  # (x - mean) * contrast + mean, in two operations instead of three.
  adjusted = adjusted * contrast + channel_means * (1.0 - contrast)

  # Subtract off the mean and divide by the standard deviation of the pixels.
  return tf.image.per_image_standardization(adjusted)


def _generate_image_and_label_batch(images, labels, min_queue_examples,
                                    batch_size, shuffle,
                                    allow_smaller_final_batch=False):
  """Construct a queued batch of images and labels.

  Args:
    images: 4-D Tensor of [n, height, width, 3] of type.uint8: a bunch of
      images to queue. They are queued as bytes: a quarter of the memory of
      float images (20,000 of them wait in the shuffling queue by default).
    labels: 1-D Tensor of [n] of type.int32
    min_queue_examples: int32, minimum number of samples to retain
      in the queue that provides of batches of examples.
    batch_size: Number of images per batch.
    shuffle: boolean indicating whether to use a shuffling queue.
    allow_smaller_final_batch: For images that come a fixed number of times
      (their filename queue's num_epochs): the last batch holds what is
      left, rather than wait for images that will not come. (The filename
      queue decides how often they come.)

  Returns:
    images: Images. 4D tensor of [batch_size, height, width, 3] size, uint8.
    labels: Labels. 1D tensor of [batch_size] size.
  """
  labels.set_shape([None])
  # Create a queue that shuffles the examples, and then
  # read 'batch_size' images + labels from the example queue.
  capacity = min_queue_examples + 3 * batch_size
  if shuffle:
    images, label_batch = tf.train.shuffle_batch(
        [images, labels],
        batch_size=batch_size,
        num_threads=NUM_PREPROCESS_THREADS,
        capacity=capacity,
        min_after_dequeue=min_queue_examples,
        enqueue_many=True)
  else:
    images, label_batch = tf.train.batch(
        [images, labels],
        batch_size=batch_size,
        num_threads=NUM_PREPROCESS_THREADS,
        capacity=capacity,
        enqueue_many=True,
        allow_smaller_final_batch=allow_smaller_final_batch)
  return images, tf.reshape(label_batch, [-1])


def distorted_inputs(data, batch_size, min_fraction_of_examples_in_queue=0.4):
  """Construct distorted input for CIFAR training using the Reader ops.

  The training files are read for ever, in a shuffled order of files. Each
  image gets its own random crop, flip, brightness and contrast, as in the
  tutorial; the crops wait in the shuffling queue, and the rest is done to
  each batch as it leaves the queue.

  Args:
    data: The data set (cifar10_support.data.DataSet).
    batch_size: Number of images per batch.
    min_fraction_of_examples_in_queue: The fraction of an epoch that must be
      in the shuffling queue before training starts: more gives better
      mixing, less starts sooner.

  Returns:
    images: Images. 4D tensor of [batch_size, IMAGE_SIZE, IMAGE_SIZE, 3] size.
    labels: Labels. 1D tensor of [batch_size] size.
  """
  # Create a queue that produces the filenames to read.
  filename_queue = tf.train.string_input_producer(data.filenames())

  with tf.name_scope('data_augmentation'):
    # Read examples from files in the filename queue, many at a time.
    _, labels, uint8images = read_cifar10_records(
        filename_queue, RECORDS_PER_READ, data_format='NCHW')

    # Image processing for training the network. Note the many random
    # distortions applied to the images: first a random crop and flip.
    cropped = crop_and_flip(uint8images,
                            **random_crops_and_flips(tf.shape(labels)[0]))

    # Ensure that the random shuffling has good mixing properties.
    min_queue_examples = int(data.num_train_examples *
                             min_fraction_of_examples_in_queue)

  # Generate a batch of images and labels by building up a queue of examples.
  uint8_batch, label_batch = _generate_image_and_label_batch(
      cropped, labels, min_queue_examples, batch_size, shuffle=True)

  with tf.name_scope('data_augmentation'):
    # Then a random brightness and contrast, and the standardisation.
    images = adjust_and_standardize(
        uint8_batch, **random_brightness_and_contrast(batch_size))

  # Display the training images in the visualizer.
  tf.summary.image('images', images)
  return images, label_batch


def inputs(eval_data, data, batch_size):
  """Construct input for CIFAR evaluation using the Reader ops.

  The files are read exactly once, in order: the last batch holds what is
  left (it may be smaller than `batch_size`), then the pipeline raises
  `tf.errors.OutOfRangeError`. So an evaluation sees each image once. The
  sessions running it must initialise local variables (the epoch counter).

  Args:
    eval_data: bool, indicating if one should use the train or eval data set.
    data: The data set (cifar10_support.data.DataSet).
    batch_size: Number of images per batch.

  Returns:
    images: Images. 4D tensor of [batch_size, IMAGE_SIZE, IMAGE_SIZE, 3] size,
      the first dimension unknown (the last batch may be smaller).
    labels: Labels. 1D tensor of [batch_size] size, as above.
  """
  # Create a queue that produces the filenames to read, once each, in order.
  filename_queue = tf.train.string_input_producer(
      data.filenames(eval_data), num_epochs=1, shuffle=False)

  with tf.name_scope('input'):
    # Read examples from files in the filename queue, many at a time.
    _, labels, uint8images = read_cifar10_records(filename_queue,
                                                  RECORDS_PER_READ)

    # A batching queue need not hold more than a few batches for evaluation.
    min_queue_examples = min(data.num_examples(eval_data), batch_size)

  # Generate a batch of images and labels by building up a queue of examples.
  uint8_batch, label_batch = _generate_image_and_label_batch(
      uint8images, labels, min_queue_examples, batch_size, shuffle=False,
      allow_smaller_final_batch=True)
  images = preprocess_for_eval(uint8_batch)

  # Display the images in the visualizer.
  tf.summary.image('images', images)
  return images, label_batch


def preprocess_for_eval(uint8_images):
  """What evaluation, prediction and exported models feed the network.

  Args:
    uint8_images: uint8 Tensor [n, 32, 32, 3].

  Returns:
    float32 Tensor [n, 24, 24, 3]: the central 24x24 crop of each image,
    standardised.
  """
  # Crop the central [height, width] of the image.
  cropped = tf.image.resize_image_with_crop_or_pad(uint8_images, IMAGE_SIZE,
                                                   IMAGE_SIZE)
  # Subtract off the mean and divide by the standard deviation of the pixels.
  return tf.image.per_image_standardization(tf.cast(cropped, tf.float32))


def prefetch_batches(tensors, capacity, name='batch_prefetch'):
  """Queues whole batches (`tensors`, e.g. [images, labels]), `capacity` of
  them, so that several consumers each take one at once: a tf.FIFOQueue,
  whose `dequeue()` gives one batch.

  With one model replica per device ("tower"), every tower dequeues its own
  batch: the towers share one input pipeline (one set of reader threads, one
  shuffling queue), and none waits for the others' batches to be assembled.
  """
  with tf.name_scope(name):
    queue = tf.FIFOQueue(capacity, dtypes=[t.dtype for t in tensors],
                         shapes=[t.shape for t in tensors])
    tf.train.add_queue_runner(
        tf.train.QueueRunner(queue, [queue.enqueue(tensors)]))
    tf.summary.scalar('fraction_of_%d_full' % capacity,
                      tf.cast(queue.size(), tf.float32) / capacity)
  return queue
