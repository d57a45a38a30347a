"""Turns a folder of your own images into CIFAR-10's binary layout.

    python prepare_data.py --image_dir=~/photos --output_dir=/tmp/my_data
    python cifar10_train.py --data_dir=/tmp/my_data

--image_dir holds one sub-folder per class, named after it, with PNG or JPEG
images of any size. Each image is resized to 32x32 and written as a CIFAR-10
record (one label byte, then the red, green and blue planes), into
--output_dir/cifar-10-batches-bin/: data_batch_1.bin ... data_batch_5.bin for
training, test_batch.bin for evaluation, and batches.meta.txt with the class
names, one per line, in label order. The training and evaluation scripts read
the number of classes and their names from that file.

Each class is split on its own, --test_fraction of it for evaluation, after a
shuffle with --seed: the same folder and flags give the same files. Up to 256
classes (one label byte). Images that cannot be read are listed and skipped;
files that are not PNG or JPEG are listed and ignored.
"""

import os
import sys

from absl import flags
import numpy as np

from cifar10_support import data
from cifar10_support import files
from cifar10_support import images as images_lib
from cifar10_support import scripts
from cifar10_support.scripts import UserError

flags.DEFINE_string('image_dir', None,
                    'Folder of images, one sub-folder per class.')
flags.DEFINE_string('output_dir', None,
                    'Where to write the data set: the --data_dir to train '
                    'with.')
flags.DEFINE_float('test_fraction', 0.2,
                   'Fraction of each class kept for evaluation.',
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer('seed', 0, 'Seed of the shuffle that splits each class.')

FLAGS = flags.FLAGS

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')


def list_images(image_dir):
  """The classes and their image files.

  Args:
    image_dir: Folder with one sub-folder per class.

  Returns:
    class_names: sorted sub-folder names.
    image_files: list of (path, label).
    ignored: paths of files that are not PNG or JPEG.

  Raises:
    UserError: no class folder, or more than 256.
  """
  if not os.path.isdir(image_dir):
    raise UserError('--image_dir=%s is not a folder.' % image_dir)
  class_names = sorted(
      name for name in os.listdir(image_dir)
      if os.path.isdir(os.path.join(image_dir, name)) and
      not name.startswith('.'))
  if not class_names:
    raise UserError('--image_dir=%s has no sub-folders: it needs one per '
                    'class, holding that class\'s images.' % image_dir)
  if len(class_names) > data.MAX_CLASSES:
    raise UserError('--image_dir=%s has %d class folders; at most %d fit in '
                    'the one label byte of a record.' %
                    (image_dir, len(class_names), data.MAX_CLASSES))
  image_files, ignored = [], []
  for label, name in enumerate(class_names):
    class_dir = os.path.join(image_dir, name)
    for root, _, names in os.walk(class_dir):
      for file_name in sorted(names):
        path = os.path.join(root, file_name)
        if file_name.lower().endswith(IMAGE_EXTENSIONS):
          image_files.append((path, label))
        elif not file_name.startswith('.'):
          ignored.append(path)
  return class_names, sorted(image_files), sorted(ignored)


def prepare(image_dir, output_dir, test_fraction, seed, out=None):
  """Writes the data set; returns {class name: (train count, test count)}.

  What it says goes to `out`, sys.stdout by default.

  Raises:
    UserError: too few images, or the output cannot be written.
  """
  out = out or sys.stdout
  class_names, image_files, ignored = list_images(image_dir)
  decoder = images_lib.ImageDecoder()
  images, labels, unreadable = [], [], []
  try:
    for path, label in image_files:
      try:
        images.append(decoder.decode_file(path))
        labels.append(label)
      except ValueError as e:
        unreadable.append((path, str(e)))
  finally:
    decoder.close()
  labels = np.array(labels, dtype=np.int64)
  train_indices, test_indices, counts = _split(labels, class_names,
                                               test_fraction, seed)
  num_train_files = len(data.TRAIN_FILENAMES)
  if len(train_indices) < num_train_files or not len(test_indices):
    raise UserError(
        'too few readable images in %s: %d for training and %d for '
        'evaluation; at least %d and 1 are needed (see --test_fraction).' %
        (image_dir, len(train_indices), len(test_indices), num_train_files))

  batches_dir = os.path.join(output_dir, data.BATCHES_DIR_NAME)
  contents = {os.path.join(batches_dir, name): _records(images, labels, part)
           for name, part in zip(
               data.TRAIN_FILENAMES,
               np.array_split(train_indices, num_train_files))}
  contents[os.path.join(batches_dir, data.EVAL_FILENAMES[0])] = (
      _records(images, labels, test_indices))
  contents[os.path.join(batches_dir, data.META_FILENAME)] = (
      data.encode_class_names(class_names))
  _write_data_set(output_dir, batches_dir, contents)

  width = max(len(name) for name in class_names + ['class'])
  out.write('%-*s %8s %8s\n' % (width, 'class', 'train', 'test'))
  for name in class_names:
    out.write('%-*s %8d %8d\n' % (width, name, *counts[name]))
  out.write('%-*s %8d %8d\n' % (width, 'total', len(train_indices),
                                len(test_indices)))
  for path, reason in unreadable:
    out.write('Skipped, unreadable: %s (%s)\n' % (path, reason))
  for path in ignored:
    out.write('Ignored, not PNG or JPEG: %s\n' % path)
  out.write('Wrote %s: %d classes.\n' % (batches_dir, len(class_names)))
  return counts


def _split(labels, class_names, test_fraction, seed):
  """Splits each class on its own, after a shuffle with `seed`.

  Returns:
    (training indices, test indices, both shuffled; {class name: (train
    count, test count)}).
  """
  rng = np.random.default_rng(seed)
  train_indices, test_indices, counts = [], [], {}
  for label, name in enumerate(class_names):
    indices = rng.permutation(np.flatnonzero(labels == label))
    test_count = int(round(len(indices) * test_fraction))
    test_indices.extend(indices[:test_count])
    train_indices.extend(indices[test_count:])
    counts[name] = (len(indices) - test_count, test_count)
  return (rng.permutation(np.array(train_indices, dtype=np.int64)),
          rng.permutation(np.array(test_indices, dtype=np.int64)), counts)


def _records(images, labels, indices):
  """The binary records of the images of `indices`."""
  return data.encode_records(
      labels[indices], np.stack([images[i] for i in indices]))


def _write_data_set(output_dir, batches_dir, contents):
  """Writes the data set's files, all or none.

  Raises:
    WriteError: nothing half-written is left, and the files there before are
      as they were.
    UserError: the folder cannot be made.
  """
  made = [d for d in (output_dir, batches_dir) if not os.path.isdir(d)]
  try:
    with files.writes_said(
        'output_dir', output_dir, 'The data set was not written: nothing '
        'half-written is left, and what was there before is as it was.'):
      os.makedirs(batches_dir, exist_ok=True)
      files.write_files_whole(contents)
  except (OSError, UserError) as e:
    for folder in reversed(made):  # The folders made for it, if empty.
      if os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)
    if isinstance(e, UserError):
      raise
    raise UserError('cannot write the data set into --output_dir=%s: %s' %
                    (output_dir, e)) from None


def main(argv):
  del argv
  for flag in ['image_dir', 'output_dir']:
    if not getattr(FLAGS, flag):
      raise UserError('--%s is required.' % flag)
  prepare(os.path.expanduser(FLAGS.image_dir),
          os.path.expanduser(FLAGS.output_dir), FLAGS.test_fraction,
          FLAGS.seed)


if __name__ == '__main__':
  scripts.run(main)
