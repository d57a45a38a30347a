"""CIFAR-10's binary layout on disk, and a data set read and checked once.

The binary version of CIFAR-10 is a folder of files of fixed-length records:
one label byte (0-9 for CIFAR-10; up to 255 for data of your own, see
prepare_data.py), then 3072 pixel bytes, the 1024 red values of the 32x32
image, then the 1024 green, then the 1024 blue, each plane stored row by
row. `read(data_dir)` checks such a folder (whole records, labels in range)
and describes it as a DataSet: its batch files, its classes and the images
of each part, which a script makes once and hands down.
"""

import dataclasses
import os

import numpy as np

from cifar10_support.scripts import UserError

# CIFAR-10's classes, in label order, and the images of its two parts.
CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
               'horse', 'ship', 'truck')
NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN = 50000
NUM_EXAMPLES_PER_EPOCH_FOR_EVAL = 10000

# The binary layout of one record.
LABEL_BYTES = 1
SOURCE_HEIGHT = 32
SOURCE_WIDTH = 32
SOURCE_DEPTH = 3
IMAGE_BYTES = SOURCE_HEIGHT * SOURCE_WIDTH * SOURCE_DEPTH
RECORD_BYTES = LABEL_BYTES + IMAGE_BYTES

# Where the records are: the folder the binary archive unpacks to, its files,
# and the file of class names, one per line, in label order (CIFAR-10's when
# there is none; prepare_data.py writes it for other images).
BATCHES_DIR_NAME = 'cifar-10-batches-bin'
TRAIN_FILENAMES = tuple('data_batch_%d.bin' % i for i in range(1, 6))
EVAL_FILENAMES = ('test_batch.bin',)
META_FILENAME = 'batches.meta.txt'
MAX_CLASSES = 256  # A label is one byte.


class DataError(UserError):
  """The CIFAR-10 data files are missing or are not what they should be."""


@dataclasses.dataclass(frozen=True)
class DataSet(object):
  """A data set in CIFAR-10's binary layout, read and checked (read()).

  Attributes:
    batches_dir: Its folder of batch files (`<data_dir>/cifar-10-batches-bin`).
    class_names: Its classes, in label order.
    num_train_examples: The images of its training files: an epoch.
    num_eval_examples: The images of its test file.
  """
  batches_dir: str
  class_names: tuple = CLASS_NAMES
  num_train_examples: int = NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN
  num_eval_examples: int = NUM_EXAMPLES_PER_EPOCH_FOR_EVAL

  @property
  def num_classes(self):
    return len(self.class_names)

  def filenames(self, eval_data=False):
    """The paths of its training (or, with eval_data, test) batch files."""
    return data_filenames(self.batches_dir, eval_data)

  def num_examples(self, eval_data=False):
    """The images of its training (or, with eval_data, test) files."""
    return self.num_eval_examples if eval_data else self.num_train_examples


def read(data_dir):
  """The data set of `data_dir`, whose batch files are checked first.

  Bad data stops a script at once, with the file named, rather than an hour
  into training: a DataError for a file missing, empty, not a whole number
  of records, or with a label outside the classes of the data set.

  Args:
    data_dir: The folder holding `cifar-10-batches-bin` (--data_dir).

  Returns:
    A DataSet.

  Raises:
    UserError: data_dir is empty.
    DataError: a batch file is missing or malformed, or the class names are.
  """
  if not data_dir:
    raise UserError('--data_dir is empty: give the CIFAR-10 data directory.')
  batches_dir = os.path.join(data_dir, BATCHES_DIR_NAME)
  class_names = read_class_names(batches_dir)
  train, test = [data_filenames(batches_dir, eval_data)
                 for eval_data in (False, True)]
  missing = [f for f in train + test if not os.path.isfile(f)]
  if missing:
    raise DataError(
        'missing CIFAR-10 data file%s in %s: %s. To get them, run '
        'cifar10_train.py with network access (it downloads CIFAR-10 on '
        'first use), or unpack cifar-10-binary.tar.gz into the parent of '
        'that folder.' % ('s' if len(missing) > 1 else '', batches_dir,
                          ', '.join(os.path.basename(f) for f in missing)))
  return DataSet(batches_dir, class_names,
                 check_data_files(train, len(class_names)),
                 check_data_files(test, len(class_names)))


def read_class_names(directory):
  """The class names of a data set, in label order: those of
  `directory`/batches.meta.txt, one per line, or CIFAR-10's if there is none.

  `directory` is a folder of batch files (`cifar-10-batches-bin`), or a
  training directory, which keeps a copy of them. A file of no name, or of
  more than MAX_CLASSES, is a DataError.
  """
  path = os.path.join(directory, META_FILENAME)
  if not os.path.isfile(path):
    return CLASS_NAMES
  with open(path, encoding='utf-8') as f:
    names = tuple(line.strip() for line in f if line.strip())
  if not 1 <= len(names) <= MAX_CLASSES:
    raise DataError('%s lists %d class names; a data set has 1 to %d, one per '
                    'line.' % (path, len(names), MAX_CLASSES))
  return names


def encode_class_names(class_names):
  """The contents of a META_FILENAME: the names, one per line, in UTF-8."""
  return ''.join(name + '\n' for name in class_names).encode('utf-8')


def write_class_names(directory, class_names):
  """Writes the class names, one per line, as read_class_names reads them."""
  with open(os.path.join(directory, META_FILENAME), 'wb') as f:
    f.write(encode_class_names(class_names))


def data_filenames(batches_dir, eval_data):
  """The paths of the training (or, with eval_data, test) batch files in a
  folder of batch files (`cifar-10-batches-bin`)."""
  names = EVAL_FILENAMES if eval_data else TRAIN_FILENAMES
  return [os.path.join(batches_dir, name) for name in names]


def check_data_files(filenames, num_classes):
  """Checks that batch files hold whole, well-labelled records; returns how
  many they hold.

  Raises:
    DataError: a file missing, empty, not a whole number of records, or
      with a label outside 0..num_classes-1.
  """
  total_records = 0
  for filename in filenames:
    size = os.path.getsize(filename) if os.path.isfile(filename) else 0
    if not size or size % RECORD_BYTES:
      raise DataError(
          '%s is %d bytes, not a whole number of %d-byte CIFAR-10 records '
          '(1 label byte + %dx%dx%d pixel bytes): the file is truncated or '
          'not CIFAR-10 binary data. Unpack the archive again.' %
          (filename, size, RECORD_BYTES, SOURCE_HEIGHT, SOURCE_WIDTH,
           SOURCE_DEPTH))
    records = np.memmap(filename, dtype=np.uint8, mode='r').reshape(
        -1, RECORD_BYTES)
    labels = np.asarray(records[:, 0])
    bad_records = np.flatnonzero(labels >= num_classes)
    if bad_records.size:
      raise DataError(
          '%s: record %d has label %d, but labels must be 0-%d; %d of its %d '
          'records are out of range. The file is corrupt or not CIFAR-10 '
          'binary data.' % (filename, bad_records[0], labels[bad_records[0]],
                            num_classes - 1, bad_records.size, len(labels)))
    total_records += len(labels)
  return total_records


def encode_records(labels, images):
  """CIFAR-10 records of labels ([n], 0-255) and uint8 images ([n, 32, 32,
  3]): for each image, its label byte, then its red, green and blue planes,
  each row by row (what cifar10_input decodes)."""
  labels = np.asarray(labels, dtype=np.uint8).reshape(-1, LABEL_BYTES)
  depth_major = np.asarray(images, dtype=np.uint8).transpose(0, 3, 1, 2)
  return np.concatenate(
      [labels, depth_major.reshape(len(labels), IMAGE_BYTES)], axis=1).tobytes()


def write_random_data_set(data_dir, records_per_file=10000, seed=0):
  """Writes random images with random labels (of CIFAR-10's 10 classes) in
  the binary layout into `data_dir`: data to measure with, where the real
  data is not at hand (tools/).

  Returns:
    The DataSet.
  """
  batches_dir = os.path.join(data_dir, BATCHES_DIR_NAME)
  os.makedirs(batches_dir)
  rng = np.random.default_rng(seed)
  for name in TRAIN_FILENAMES + EVAL_FILENAMES:
    records = rng.integers(0, 256, size=(records_per_file, RECORD_BYTES),
                           dtype=np.uint8)
    records[:, 0] = rng.integers(0, len(CLASS_NAMES), size=records_per_file)
    records.tofile(os.path.join(batches_dir, name))
  return read(data_dir)
