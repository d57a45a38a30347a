"""Reading and preprocessing of CIFAR-10 binary files (cifar10_input.py)."""

import os

import numpy as np
import pytest

import cifar10_input
from cifar10_support import data as data_lib
from cifar10_support.quiet import tf
import cifar_data
import helpers


def _run_queued(tensors, runs, local_init=False):
  """Runs `tensors` `runs` times with the queue runners started."""
  with tf.Session() as sess:
    if local_init:
      sess.run(tf.local_variables_initializer())
    coord = tf.train.Coordinator()
    threads = tf.train.start_queue_runners(sess, coord)
    try:
      return [sess.run(tensors) for _ in range(runs)]
    finally:
      coord.request_stop()
      coord.join(threads, stop_grace_period_secs=5)


def _run_until_exhausted(tensors):
  """Runs `tensors` until the input is exhausted; returns every result."""
  results = []
  with tf.Session() as sess:
    sess.run(tf.local_variables_initializer())
    coord = tf.train.Coordinator()
    threads = tf.train.start_queue_runners(sess, coord)
    try:
      while True:
        results.append(sess.run(tensors))
    except tf.errors.OutOfRangeError:
      pass
    finally:
      coord.request_stop()
      coord.join(threads, stop_grace_period_secs=5)
  return results


def _write_batches(tmp_path, train_images, train_labels, test_images=None,
                   test_labels=None):
  """Writes a batches folder, the training images in every
  data_batch_N.bin; returns its path."""
  batches_dir = tmp_path / data_lib.BATCHES_DIR_NAME
  batches_dir.mkdir()
  for name in data_lib.TRAIN_FILENAMES:
    cifar_data.write_batch_file(str(batches_dir / name), train_labels,
                                train_images)
  if test_images is None:
    test_images, test_labels = train_images, train_labels
  cifar_data.write_batch_file(str(batches_dir / 'test_batch.bin'), test_labels,
                              test_images)
  return str(batches_dir)


def _data_set_of(tmp_path, *images_and_labels):
  """The data set (read and checked) of _write_batches(tmp_path, ...)."""
  _write_batches(tmp_path, *images_and_labels)
  return data_lib.read(str(tmp_path))


def test_record_decodes_label_and_planes_in_order(tmp_path):
  # Every pixel value says where it is: channel c, row y, column x.
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
  labels = [7, 0, 9]
  path = str(tmp_path / 'records.bin')
  raw = cifar_data.encode_records(labels, images)
  # The layout, written out by hand for the first record: label, R, G, B.
  assert raw[0] == 7
  assert raw[1:1025] == images[0, :, :, 0].tobytes()
  assert raw[1025:2049] == images[0, :, :, 1].tobytes()
  assert raw[2049:3073] == images[0, :, :, 2].tobytes()
  with open(path, 'wb') as f:
    f.write(raw)
  with tf.Graph().as_default():
    queue = tf.train.string_input_producer([path], shuffle=False)
    record = cifar10_input.read_cifar10(queue)
    assert (record.height, record.width, record.depth) == (32, 32, 3)
    results = _run_queued([record.label, record.uint8image, record.key], 3)
  for i, (label, image, key) in enumerate(results):
    assert label.tolist() == [labels[i]]
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, images[i])
    assert key.decode().endswith('records.bin:%d' % i)


def test_records_read_in_bulk_in_either_layout(tmp_path):
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
  path = str(tmp_path / 'records.bin')
  with open(path, 'wb') as f:
    f.write(cifar_data.encode_records([1, 2, 3, 4, 5], images))
  read = {}
  for data_format in ['NHWC', 'NCHW']:
    with tf.Graph().as_default():
      queue = tf.train.string_input_producer([path], shuffle=False)
      _, labels, uint8images = cifar10_input.read_cifar10_records(
          queue, 5, data_format=data_format)
      (read[data_format],) = _run_queued([labels, uint8images], 1)
  for labels, _ in read.values():
    assert labels.tolist() == [1, 2, 3, 4, 5]
  np.testing.assert_array_equal(read['NHWC'][1], images)
  np.testing.assert_array_equal(read['NCHW'][1], images.transpose(0, 3, 1, 2))
  with tf.Graph().as_default():
    queue = tf.train.string_input_producer([path])
    with pytest.raises(ValueError,
                       match="data_format is 'NHWC' or 'NCHW', not 'nchw'"):
      cifar10_input.read_cifar10_records(queue, 5, data_format='nchw')


def _marker_image():
  """A grey image with one bright pixel at row 16, column 10."""
  image = np.full((32, 32, 3), 100, dtype=np.uint8)
  image[16, 10] = 255
  return image


def test_eval_input_is_the_central_crop_standardised(tmp_path):
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(5)
  data = _data_set_of(tmp_path, images, labels)
  with tf.Graph().as_default():
    eval_images, eval_labels = cifar10_input.inputs(
        eval_data=True, data=data, batch_size=5)
    first_pass = _run_until_exhausted([eval_images, eval_labels])
    second_pass = _run_until_exhausted([eval_images, eval_labels])
  (got_images, got_labels), = first_pass
  order = np.argsort(got_labels)
  crops = images[:, 4:28, 4:28, :].astype(np.float64)
  means = crops.mean(axis=(1, 2, 3), keepdims=True)
  stddevs = np.maximum(crops.std(axis=(1, 2, 3), keepdims=True),
                       1.0 / np.sqrt(24 * 24 * 3))
  np.testing.assert_allclose(got_images[order], (crops - means) / stddevs,
                             rtol=1e-4, atol=1e-4)
  # Deterministic: a second pass gives the same images.
  (again_images, again_labels), = second_pass
  np.testing.assert_allclose(again_images[np.argsort(again_labels)],
                             got_images[order])


@pytest.mark.parametrize('way', helpers.KERNEL_WAYS)
def test_training_crops_and_flips_vary(tmp_path, way):
  images = np.stack([_marker_image()] * 20)
  data = _data_set_of(tmp_path, images, np.zeros(20))
  with tf.Graph().as_default():
    with helpers.built(way, 'Cifar10CropAndFlip'):
      train_images, _ = cifar10_input.distorted_inputs(
          data=data, batch_size=100,
          min_fraction_of_examples_in_queue=0.001)
    batch, = _run_queued(train_images, 1)
  rows, columns = [], []
  for image in batch:
    # Brightness, contrast and standardisation keep the bright pixel
    # brightest: where it lands gives the crop offset (and the flip).
    row, column = np.unravel_index(np.argmax(image[:, :, 0]), (24, 24))
    rows.append(row)
    columns.append(column)
  # The marker is at row 16 of the 32x32 image: crop rows start at 0..8.
  assert set(16 - np.array(rows)) <= set(range(9))
  assert len(set(rows)) >= 5  # The crops vary.
  # Column 10, unflipped at 10 - offset, flipped at 23 - (10 - offset).
  unflipped = [c for c in columns if 2 <= c <= 10]
  flipped = [c for c in columns if 13 <= c <= 21]
  assert len(unflipped) + len(flipped) == len(columns)
  assert 20 <= len(flipped) <= 80


def test_eval_crop_keeps_the_marker_in_place(tmp_path):
  images = np.stack([_marker_image()] * 3)
  data = _data_set_of(tmp_path, images, np.zeros(3))
  with tf.Graph().as_default():
    eval_images, _ = cifar10_input.inputs(
        eval_data=True, data=data, batch_size=3)
    (batch,), = _run_until_exhausted([eval_images])
  for image in batch:
    assert np.unravel_index(np.argmax(image[:, :, 0]), (24, 24)) == (12, 6)


def test_training_images_are_standardised_and_distorted(tmp_path):
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, size=(50, 32, 32, 3), dtype=np.uint8)
  data = _data_set_of(tmp_path, images, np.arange(50) % 10)
  with tf.Graph().as_default():
    train_images, train_labels = cifar10_input.distorted_inputs(
        data=data, batch_size=64,
        min_fraction_of_examples_in_queue=0.001)
    assert train_images.shape.as_list() == [64, 24, 24, 3]
    assert train_labels.shape.as_list() == [64]
    (batch, labels), = _run_queued([train_images, train_labels], 1)
  assert labels.dtype == np.int32
  assert set(labels) <= set(range(10))
  np.testing.assert_allclose(batch.mean(axis=(1, 2, 3)), 0, atol=1e-4)
  np.testing.assert_allclose(batch.std(axis=(1, 2, 3)), 1, atol=1e-3)


def _assert_each_record_seen_once(results, images, labels):
  """An evaluation pass's (images, labels) batches hold every record once,
  centrally cropped and standardised, with its label."""
  count = len(labels)
  seen_labels = np.concatenate([l for _, l in results])
  seen_images = np.concatenate([i for i, _ in results]).reshape(count, -1)
  # Match each image seen to the record it comes from: every record once.
  crops = images[:, 4:28, 4:28, :].reshape(count, -1).astype(np.float64)
  expected = (crops - crops.mean(axis=1, keepdims=True)) / crops.std(
      axis=1, keepdims=True)
  distances = ((seen_images[:, None, :] - expected[None, :, :]) ** 2).sum(-1)
  sources = distances.argmin(axis=1)
  assert distances.min(axis=1).max() < 1e-4
  assert sorted(sources) == list(range(count))
  np.testing.assert_array_equal(seen_labels, labels[sources])


def test_eval_pass_reads_every_record_exactly_once(tmp_path):
  # 250 records and batches of 128: 128 + 122, with no wrap-around.
  rng = np.random.default_rng(4)
  labels = rng.integers(0, 10, size=250)
  images = rng.integers(0, 256, size=(250, 32, 32, 3), dtype=np.uint8)
  data = _data_set_of(tmp_path, images[:10], labels[:10], images, labels)
  with tf.Graph().as_default():
    eval_images, eval_labels = cifar10_input.inputs(
        eval_data=True, data=data, batch_size=128)
    results = _run_until_exhausted([eval_images, eval_labels])
  assert [len(l) for _, l in results] == [128, 122]
  _assert_each_record_seen_once(results, images, labels)
  assert data.num_examples(eval_data=True) == 250


def test_missing_files_are_named(tmp_path):
  batches_dir = tmp_path / data_lib.BATCHES_DIR_NAME
  batches_dir.mkdir()
  cifar_data.write_batch_file(str(batches_dir / 'data_batch_1.bin'), [1],
                              np.zeros((1, 32, 32, 3)))
  with pytest.raises(data_lib.DataError) as error:
    data_lib.read(str(tmp_path))
  message = str(error.value)
  assert 'data_batch_2.bin, data_batch_3.bin' in message
  assert 'data_batch_1.bin' not in message
  assert str(batches_dir) in message
  assert 'cifar10_train.py' in message


def test_truncated_file_is_reported(tmp_path):
  batches_dir = _write_batches(tmp_path, np.zeros((4, 32, 32, 3)),
                               np.zeros(4))
  path = os.path.join(batches_dir, 'test_batch.bin')
  with open(path, 'r+b') as f:
    f.truncate(3 * 3073 + 100)
  with pytest.raises(data_lib.DataError) as error:
    data_lib.read(str(tmp_path))
  assert str(error.value).startswith(
      '%s is 9319 bytes, not a whole number of 3073-byte' % path)


def test_label_out_of_range_is_reported(tmp_path):
  _write_batches(tmp_path, np.zeros((4, 32, 32, 3)), [1, 2, 12, 3])
  with pytest.raises(data_lib.DataError) as error:
    data_lib.read(str(tmp_path))
  assert 'data_batch_1.bin: record 2 has label 12, but labels must be 0-9' in (
      str(error.value))


def test_train_eval_input_reads_every_training_record_once_undistorted(
    tmp_path):
  # What cifar10_eval.py --eval_data=train_eval reads: the five training
  # files, each record once, centrally cropped (no distortion).
  rng = np.random.default_rng(5)
  batches_dir = tmp_path / data_lib.BATCHES_DIR_NAME
  batches_dir.mkdir()
  images = rng.integers(0, 256, size=(5, 30, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, size=(5, 30))
  for i, name in enumerate(data_lib.TRAIN_FILENAMES):
    cifar_data.write_batch_file(str(batches_dir / name), labels[i], images[i])
  cifar_data.write_batch_file(str(batches_dir / 'test_batch.bin'), [0],
                              np.zeros((1, 32, 32, 3)))
  images, labels = images.reshape(150, 32, 32, 3), labels.reshape(150)
  with tf.Graph().as_default():
    eval_images, eval_labels = cifar10_input.inputs(
        eval_data=False, data=data_lib.read(str(tmp_path)), batch_size=64)
    results = _run_until_exhausted([eval_images, eval_labels])
  assert [len(l) for _, l in results] == [64, 64, 22]
  _assert_each_record_seen_once(results, images, labels)


def _contrast_ratio(images):
  """Per image: the spread within its channels over that between them."""
  within = images.std(axis=(1, 2)).mean(axis=1)
  between = images.mean(axis=(1, 2)).std(axis=1)
  return within / between


@pytest.mark.parametrize('way', helpers.KERNEL_WAYS)
def test_training_images_get_their_own_contrast(tmp_path, way):
  # The same image, over and over: channels of distinct means, with noise.
  # A crop or a flip barely changes the ratio of the spread within the
  # channels to the spread between their means; a change of contrast (about
  # each channel's mean, by 0.2 to 1.8) multiplies it by its factor. (A
  # change of brightness, added to every value, is undone by the
  # standardisation that follows, in the tutorial as here.)
  rng = np.random.default_rng(6)
  image = np.clip(np.array([60, 128, 200]) +
                  rng.normal(0, 20, size=(32, 32, 3)), 0, 255).astype(np.uint8)
  data = _data_set_of(tmp_path, np.stack([image] * 20), np.zeros(20))
  with tf.Graph().as_default():
    with helpers.built(way, 'Cifar10AdjustContrastAndStandardize'):
      train_images, _ = cifar10_input.distorted_inputs(
          data=data, batch_size=200,
          min_fraction_of_examples_in_queue=0.001)
    batch, = _run_queued(train_images, 1)
  ratios = _contrast_ratio(batch)
  undistorted = _contrast_ratio(image[None, 4:28, 4:28].astype(np.float64))[0]
  # Factors drawn from [0.2, 1.8): the ratios span most of that range.
  assert ratios.min() < 0.4 * undistorted
  assert ratios.max() > 1.6 * undistorted
  assert len(np.unique(np.round(ratios / undistorted, 3))) > 150
