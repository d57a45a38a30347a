"""Small CIFAR-10 binary files for the tests, made on the spot.

Every record is 1 label byte + 3072 pixel bytes: the red plane, then the
green, then the blue, each 32x32 row by row, as in the official files.
"""

import hashlib
import io
import os
import tarfile

import numpy as np

from cifar10_support import data as data_lib

# One colour per class, 36 degrees of hue apart: the model can learn them
# through every distortion (which keeps the ratios of the channel means).
_CLASS_COLOURS = np.array([
    [255, 0, 0], [255, 153, 0], [204, 255, 0], [51, 255, 0], [0, 255, 102],
    [0, 255, 255], [0, 102, 255], [51, 0, 255], [204, 0, 255], [255, 0, 153],
], dtype=np.float64)


def encode_records(labels, images_hwc):
  """Encodes labels and [N, 32, 32, 3] uint8 images as CIFAR-10 records."""
  labels = np.asarray(labels, dtype=np.uint8)
  planes = np.asarray(images_hwc, dtype=np.uint8).transpose(0, 3, 1, 2)
  return np.concatenate(
      [labels[:, None], planes.reshape(len(labels), -1)], axis=1).tobytes()


def learnable_images(labels, seed):
  """Images whose colour gives away the label, varied like photographs.

  Each image has its class's colour, at its own saturation and brightness,
  under a coarse grey pattern and pixel noise. Images this varied keep the
  tutorial's learning rate of 0.1 stable: with one flat colour per class the
  batches are so alike that training lurches, and sometimes dies.

  Args:
    labels: The label of each image.
    seed: Seed of the variations.

  Returns:
    [N, 32, 32, 3] uint8 images.
  """
  rng = np.random.default_rng(seed)
  count = len(labels)
  colours = (_CLASS_COLOURS[np.asarray(labels)] *
             rng.uniform(0.4, 0.8, size=(count, 1)) +
             rng.uniform(0, 60, size=(count, 1)))
  grey_pattern = np.kron(rng.normal(0, 40, size=(count, 4, 4)),
                         np.ones((8, 8)))
  images = (colours[:, None, None, :] + grey_pattern[..., None] +
            rng.normal(0, 10, size=(count, 32, 32, 3)))
  return np.clip(images, 0, 255).astype(np.uint8)


def write_batch_file(path, labels, images_hwc):
  """Writes one CIFAR-10 binary batch file."""
  with open(path, 'wb') as f:
    f.write(encode_records(labels, images_hwc))


def read_labels(path):
  """The label of every record of a binary batch file."""
  records = np.fromfile(path, dtype=np.uint8)
  return records.reshape(-1, data_lib.RECORD_BYTES)[:, 0]


def make_data_dir(root, records_per_train_file=64, test_records=250, seed=0,
                  num_classes=10):
  """Writes the five training files and the test file of learnable data.

  Args:
    root: The --data_dir; files go to root/cifar-10-batches-bin.
    records_per_train_file: Records in each data_batch_N.bin.
    test_records: Records in test_batch.bin.
    seed: Seed of labels and noise.
    num_classes: Labels are 0..num_classes-1 (at most 10).

  Returns:
    The path of the batches folder.
  """
  batches_dir = os.path.join(root, data_lib.BATCHES_DIR_NAME)
  os.makedirs(batches_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  names = data_lib.TRAIN_FILENAMES + data_lib.EVAL_FILENAMES
  for i, name in enumerate(names):
    count = test_records if name in data_lib.EVAL_FILENAMES else (
        records_per_train_file)
    labels = rng.integers(0, num_classes, size=count)
    write_batch_file(os.path.join(batches_dir, name), labels,
                     learnable_images(labels, seed=seed * 100 + i))
  return batches_dir


def make_archive(path, skip=(), records=3):
  """Writes a small CIFAR-10 binary archive; returns its MD5."""
  with tarfile.open(path, 'w:gz') as archive:
    names = (data_lib.TRAIN_FILENAMES + data_lib.EVAL_FILENAMES +
             (data_lib.META_FILENAME,))
    for i, name in enumerate(names):
      if name in skip:
        continue
      if name.endswith('.bin'):
        labels = (np.arange(records) + i) % 10
        data = encode_records(labels, learnable_images(labels, seed=i))
      else:
        data = ''.join(n + '\n' for n in data_lib.CLASS_NAMES).encode()
      info = tarfile.TarInfo('cifar-10-batches-bin/' + name)
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))
  with open(path, 'rb') as f:
    return hashlib.md5(f.read()).hexdigest()
