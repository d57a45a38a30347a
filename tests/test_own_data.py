"""Your own images: prepare_data.py, training on them, predict and export."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import cifar10
import cifar10_eval
import cifar10_export
from cifar10_support import data as data_lib
from cifar10_support import images as images_lib
from cifar10_support import params as params_lib
from cifar10_support.quiet import tf
from cifar10_support.scripts import UserError
import cifar10_train
import cifar_data
from conftest import LEARNING_RATE
import helpers
from helpers import EVAL_LINE
from helpers import resolved
from helpers import run_main
from helpers import run_script
import prepare_data

# The model as the tests' trainings make it: the tutorial's, in float32.
TRAINED_MODEL = cifar10.model_as_trained(params_lib.Params(),
                                         params_lib.Precision())

UNKNOWN_FORMAT = ('Unknown image file format. One of JPEG, JPEG XL, PNG, GIF, '
                  'BMP, WebP required.')
CLASSES = ['cats', 'dogs', 'zebras']  # Folder names: the classes, sorted.
IMAGES_PER_CLASS = 40


def _encode(images, formats):
  """PNG or JPEG bytes of uint8 [h, w, 3] images."""
  with tf.Graph().as_default():
    image = tf.placeholder(tf.uint8, [None, None, 3])
    encoders = {'png': tf.io.encode_png(image),
                'jpg': tf.io.encode_jpeg(image, quality=95)}
    with tf.Session() as sess:
      return [sess.run(encoders[f], {image: i}) for i, f in zip(images, formats)]


def _enlarged(image, height, width):
  """`image` (32x32) scaled up by pixel repetition, cropped to height x width."""
  return np.kron(image, np.ones((3, 3, 1), np.uint8))[:height, :width]


@pytest.fixture(scope='module')
def image_dir(tmp_path_factory):
  """A folder of images, one sub-folder per class, of several sizes and kinds.

  Returns:
    (folder, {path: the 32x32 image of each lossless 32x32 PNG}).
  """
  root = tmp_path_factory.mktemp('images')
  exact = {}
  for label, name in enumerate(CLASSES):
    os.makedirs(root / name / 'more')
    images = cifar_data.learnable_images([label] * IMAGES_PER_CLASS,
                                         seed=label)
    sizes = [(32, 32), (48, 40), (96, 96), (20, 28)]
    shaped = [_enlarged(image, *sizes[i % 4]) if i % 4 else image
              for i, image in enumerate(images)]
    formats = ['png' if i % 2 == 0 else 'jpg' for i in range(len(images))]
    for i, contents in enumerate(_encode(shaped, formats)):
      # Some in a nested folder: still of the class.
      folder = root / name / ('more' if i % 5 == 0 else '')
      path = str(folder / ('%s_%02d.%s' % (name, i, formats[i])))
      with open(path, 'wb') as f:
        f.write(contents)
      if i % 4 == 0:
        exact[path] = images[i]
  with open(root / 'dogs' / 'broken.jpg', 'wb') as f:
    f.write(b'not an image at all')
  with open(root / 'cats' / 'notes.txt', 'w') as f:
    f.write('about the cats')
  return str(root), exact


def _records(batches_dir, name):
  records = np.fromfile(os.path.join(batches_dir, name), dtype=np.uint8)
  return records.reshape(-1, data_lib.RECORD_BYTES)


def test_prepare_data_writes_the_cifar_layout(image_dir, tmp_path):
  folder, exact = image_dir
  output_dir = str(tmp_path / 'data')
  result = run_main('prepare_data.py', '--image_dir=' + folder,
                    '--output_dir=' + output_dir, '--test_fraction=0.25',
                    '--seed=7')
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''
  batches_dir = os.path.join(output_dir, 'cifar-10-batches-bin')
  # Per class: 40 images (and a broken one), a quarter of them for testing.
  assert result.stdout.splitlines() == [
      'class     train     test',
      'cats         30       10',
      'dogs         30       10',
      'zebras       30       10',
      'total        90       30',
      'Skipped, unreadable: %s (%s)' % (
          os.path.join(folder, 'dogs', 'broken.jpg'),
          UNKNOWN_FORMAT),
      'Ignored, not PNG or JPEG: %s' % os.path.join(folder, 'cats',
                                                     'notes.txt'),
      'Wrote %s: 3 classes.' % batches_dir,
  ]
  assert sorted(os.listdir(batches_dir)) == sorted(
      ['batches.meta.txt', 'test_batch.bin'] +
      ['data_batch_%d.bin' % i for i in range(1, 6)])
  with open(os.path.join(batches_dir, 'batches.meta.txt')) as f:
    assert f.read() == 'cats\ndogs\nzebras\n'

  train = np.concatenate([_records(batches_dir, 'data_batch_%d.bin' % i)
                          for i in range(1, 6)])
  test = _records(batches_dir, 'test_batch.bin')
  assert [len(_records(batches_dir, 'data_batch_%d.bin' % i))
          for i in range(1, 6)] == [18, 18, 18, 18, 18]
  assert np.bincount(train[:, 0]).tolist() == [30, 30, 30]
  assert np.bincount(test[:, 0]).tolist() == [10, 10, 10]
  # Shuffled: the classes are mixed within the files.
  assert len(set(train[:18, 0])) == 3
  # A 32x32 PNG is stored exactly, as planes: red, green, blue.
  stored = {r[1:].tobytes() for r in np.concatenate([train, test])}
  for image in exact.values():
    assert image.transpose(2, 0, 1).tobytes() in stored
  # Every image is there once, with its class.
  assert len(stored) == 120

  # The same folder and seed give the same files; another seed, another
  # split.
  again = str(tmp_path / 'again')
  prepare_data.prepare(folder, again, 0.25, seed=7, out=io.StringIO())
  other = str(tmp_path / 'other')
  prepare_data.prepare(folder, other, 0.25, seed=8, out=io.StringIO())
  for name in data_lib.TRAIN_FILENAMES + data_lib.EVAL_FILENAMES:
    assert np.array_equal(
        _records(batches_dir, name),
        _records(os.path.join(again, 'cifar-10-batches-bin'), name))
  assert not np.array_equal(
      _records(batches_dir, 'test_batch.bin'),
      _records(os.path.join(other, 'cifar-10-batches-bin'), 'test_batch.bin'))


def test_prepare_data_refuses_more_than_256_classes(tmp_path):
  for i in range(257):
    os.makedirs(tmp_path / 'images' / ('class_%03d' % i))
  result = run_main('prepare_data.py',
                    '--image_dir=' + str(tmp_path / 'images'),
                    '--output_dir=' + str(tmp_path / 'data'))
  assert result.returncode == 1
  assert result.stderr == (
      'Error: --image_dir=%s has 257 class folders; at most 256 fit in the '
      'one label byte of a record.\n' % (tmp_path / 'images'))
  assert not os.path.exists(tmp_path / 'data')


@pytest.mark.parametrize('args, message', [
    ([], '--image_dir is required.'),
    (['--image_dir={images}', '--output_dir={out}', '--test_fraction=0'],
     'too few readable images in {images}: 120 for training and 0 for '
     'evaluation; at least 5 and 1 are needed (see --test_fraction).'),
    (['--image_dir={out}/nowhere', '--output_dir={out}'],
     '--image_dir={out}/nowhere is not a folder.'),
])
def test_prepare_data_bad_input(image_dir, tmp_path, args, message):
  names = {'images': image_dir[0], 'out': str(tmp_path / 'out')}
  result = run_main('prepare_data.py', *[a.format(**names) for a in args])
  assert result.returncode == 1
  assert result.stderr == 'Error: %s\n' % message.format(**names)
  assert not os.path.exists(os.path.join(names['out'], 'cifar-10-batches-bin'))


@pytest.fixture(scope='module')
def trained_on_own_data(image_dir, tmp_path_factory):
  """A short training on the prepared images; returns (data_dir, train_dir)."""
  work_dir = tmp_path_factory.mktemp('own')
  data_dir = str(work_dir / 'data')
  prepare_data.prepare(image_dir[0], data_dir, 0.25, seed=0, out=io.StringIO())
  cifar10_train.train(*resolved(params_lib.Params(
      data_dir=data_dir, train_dir=str(work_dir / 'train'), batch_size=32,
      min_fraction_of_examples_in_queue=0.5, max_steps=150,
      initial_learning_rate=LEARNING_RATE)))
  return data_dir, str(work_dir / 'train')


def test_training_and_evaluation_read_the_classes(trained_on_own_data,
                                                   tmp_path, capsys):
  data_dir, train_dir = trained_on_own_data
  checkpoint = tf.train.latest_checkpoint(train_dir)
  assert checkpoint.endswith('model.ckpt-150')
  assert tf.train.load_variable(checkpoint,
                                'softmax_linear/biases').shape == (3,)
  with open(os.path.join(train_dir, 'batches.meta.txt')) as f:
    assert f.read() == 'cats\ndogs\nzebras\n'

  cifar10_eval.evaluate(*resolved(params_lib.Params(
      data_dir=data_dir, checkpoint_dir=train_dir,
      eval_dir=str(tmp_path / 'eval'), run_once=True)))
  lines = capsys.readouterr().out.splitlines()
  match = EVAL_LINE.match(lines[0])
  assert match.group(3, 4) == ('30', '150')
  assert float(match.group(1)) > 0.5  # Three colours; chance is 1/3.
  assert lines[1].startswith('  by class: cats ')
  assert ', dogs ' in lines[1] and ', zebras ' in lines[1]


def _decoded(paths):
  decoder = images_lib.ImageDecoder()
  try:
    return np.stack([decoder.decode_file(p) for p in paths])
  finally:
    decoder.close()


def test_predict_prints_top_classes_and_reports_unreadable_files(
    image_dir, trained_on_own_data, tmp_path):
  _, train_dir = trained_on_own_data
  folder = image_dir[0]
  paths = [os.path.join(folder, name, '%s_%02d.%s' % (name, i, kind))
           for name, i, kind in [('cats', 1, 'jpg'), ('zebras', 2, 'png'),
                                 ('dogs', 3, 'jpg')]]
  broken = os.path.join(folder, 'dogs', 'broken.jpg')
  missing = str(tmp_path / 'missing.png')
  result = run_main('cifar10_predict.py', '--checkpoint_dir=' + train_dir,
                    paths[0], broken, paths[1], missing, paths[2])
  assert result.returncode == 1
  assert result.stderr.splitlines() == [
      'Error: cannot read %s: %s' % (broken, UNKNOWN_FORMAT),
      'Error: cannot read %s: No such file or directory' % missing]
  lines = result.stdout.splitlines()
  assert [line.split(': ')[0] for line in lines] == paths

  expected = helpers.probabilities_of(tf.train.latest_checkpoint(train_dir),
                                      _decoded(paths), len(CLASSES))
  for line, probabilities in zip(lines, expected):
    pairs = [pair.split(' ') for pair in line.split(': ')[1].split(', ')]
    order = np.argsort(-probabilities)
    assert [name for name, _ in pairs] == [CLASSES[i] for i in order]
    np.testing.assert_allclose([float(p) for _, p in pairs],
                               probabilities[order], atol=5e-4)
  # The training learnt the colours: each file's class comes first.
  assert [line.split(': ')[1].split(' ')[0] for line in lines] == [
      'cats', 'zebras', 'dogs']


LOAD_IN_FRESH_PROCESS = '''
import json, sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
outputs = model.signatures['serving_default'](
    images=tf.constant(np.load(sys.argv[2])))
np.save(sys.argv[3], outputs['probabilities'].numpy())
print(json.dumps([n.decode() for n in outputs['class_names'].numpy()]))
'''


def test_export_loads_in_a_fresh_process_and_predicts_the_same(
    image_dir, trained_on_own_data, tmp_path):
  _, train_dir = trained_on_own_data
  export_dir = str(tmp_path / 'model')
  assert cifar10_export.export(train_dir, export_dir, TRAINED_MODEL) == (
      tf.train.latest_checkpoint(train_dir))
  # Images of a size other than 32x32, resized in the model.
  images = np.stack([_enlarged(image, 48, 40) for image in
                     cifar_data.learnable_images([0, 1, 2, 2, 1], seed=5)])
  np.save(str(tmp_path / 'images.npy'), images)
  result = subprocess.run(
      [sys.executable, '-c', LOAD_IN_FRESH_PROCESS, export_dir,
       str(tmp_path / 'images.npy'), str(tmp_path / 'probabilities.npy')],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout) == CLASSES
  served = np.load(str(tmp_path / 'probabilities.npy'))

  # Resized as prepare_data.py does (antialiased bilinear, rounded).
  with tf.Graph().as_default(), tf.Session() as sess:
    resized = sess.run(tf.compat.v2.image.resize(
        images.astype(np.float32), [32, 32], method='bilinear',
        antialias=True))
  expected = helpers.probabilities_of(
      tf.train.latest_checkpoint(train_dir),
      np.clip(np.round(resized), 0, 255).astype(np.uint8), len(CLASSES))
  assert served.shape == (5, 3)
  assert served.dtype == np.float32
  np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(served.sum(axis=1), 1, rtol=1e-5)
  assert served.argmax(axis=1).tolist() == [0, 1, 2, 2, 1]

  # An existing folder is never overwritten.
  with pytest.raises(UserError, match='--export_dir=%s exists' % export_dir):
    cifar10_export.export(train_dir, export_dir, TRAINED_MODEL)


def test_predict_top_k_and_export_as_scripts(image_dir, trained_on_own_data,
                                             tmp_path):
  _, train_dir = trained_on_own_data
  path = os.path.join(image_dir[0], 'zebras', 'zebras_02.png')
  for top_k, printed in [(1, 1), (2, 2), (5, 3)]:  # At most every class.
    result = run_main('cifar10_predict.py', '--checkpoint_dir=' + train_dir,
                      '--top_k=%d' % top_k, path)
    assert result.returncode == 0, result.stderr
    line, = result.stdout.splitlines()
    pairs = line.split(': ')[1].split(', ')
    assert len(pairs) == printed
    assert pairs[0].startswith('zebras ')

  export_dir = str(tmp_path / 'model')
  result = run_script('cifar10_export.py', '--checkpoint_dir=' + train_dir,
                      '--export_dir=' + export_dir)
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''
  assert result.stdout == 'Exported %s to %s.\n' % (
      tf.train.latest_checkpoint(train_dir), export_dir)
  assert os.path.isfile(os.path.join(export_dir, 'saved_model.pb'))
  again = run_main('cifar10_export.py', '--checkpoint_dir=' + train_dir,
                   '--export_dir=' + export_dir)
  assert again.returncode == 1
  assert again.stderr == ('Error: --export_dir=%s exists: give a new folder '
                          '(nothing is overwritten).\n' % export_dir)


# 256 classes, the most a label byte holds; some named in UTF-8.
MANY_CLASSES = ['café', 'château', '猫'] + ['class_%03d' % i
                                          for i in range(253)]


def test_256_classes_with_utf8_names_train_evaluate_and_predict(tmp_path):
  images = tmp_path / 'images'
  encoded = _encode(cifar_data.learnable_images(np.arange(512) % 10, seed=9),
                    ['png'] * 512)
  for i, name in enumerate(MANY_CLASSES):
    os.makedirs(images / name)
    for j in range(2):
      with open(images / name / ('%d.png' % j), 'wb') as f:
        f.write(encoded[2 * i + j])
  data_dir, train_dir = str(tmp_path / 'data'), str(tmp_path / 'train')
  prepared = run_script('prepare_data.py', '--image_dir=' + str(images),
                        '--output_dir=' + data_dir, '--test_fraction=0.5')
  assert prepared.returncode == 0, prepared.stderr
  lines = prepared.stdout.splitlines()
  assert lines[1].split() == ['café', '1', '1']
  assert lines[-1].endswith(': 256 classes.')
  sorted_names = sorted(MANY_CLASSES)  # The labels: café 0 ... 猫 255.
  assert sorted_names[-1] == '猫'

  common = ['--data_dir=' + data_dir, '--batch_size=16']
  training = run_main('cifar10_train.py', '--train_dir=' + train_dir,
                      '--max_steps=10',
                      '--min_fraction_of_examples_in_queue=0.2', *common)
  assert training.returncode == 0, training.stderr
  assert tf.train.load_variable(tf.train.latest_checkpoint(train_dir),
                                'softmax_linear/biases').shape == (256,)
  with open(os.path.join(train_dir, 'batches.meta.txt'),
            encoding='utf-8') as f:
    assert f.read().splitlines() == sorted_names

  evaluation = run_main('cifar10_eval.py', '--run_once',
                        '--checkpoint_dir=' + train_dir,
                        '--eval_dir=' + str(tmp_path / 'eval'), *common)
  assert evaluation.returncode == 0, evaluation.stderr
  first, by_class = evaluation.stdout.splitlines()
  assert EVAL_LINE.match(first).group(3, 4) == ('256', '10')
  names = [pair.rsplit(' ', 1)[0]
           for pair in by_class[len('  by class: '):].split(', ')]
  assert names == sorted_names

  prediction = run_script('cifar10_predict.py', '--checkpoint_dir=' + train_dir,
                          '--top_k=256', str(images / '猫' / '0.png'))
  assert prediction.returncode == 0, prediction.stderr
  assert prediction.stderr == ''
  pairs = prediction.stdout.splitlines()[0].split(': ', 1)[1].split(', ')
  assert sorted(pair.rsplit(' ', 1)[0] for pair in pairs) == sorted_names
