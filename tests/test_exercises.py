"""The tutorial's exercises as options: raw weights, probabilities, local top."""

import os

import numpy as np
import pytest

import cifar10
from cifar10_support import data as data_lib
from cifar10_support.quiet import tf
import cifar10_train
import cifar_data
from conftest import TRAINED_STEPS
import helpers
from helpers import EVAL_LINE
from helpers import LOG_LINE
from helpers import quick_args
from helpers import resolved
from helpers import run_main
from test_train_eval import TRAINABLE


def _saved_copy(checkpoint, path, change):
  """Saves a copy of `checkpoint` at `path`, each value passed through change.

  Args:
    checkpoint: The checkpoint to copy.
    path: Path prefix of the copy (its folder gets a 'checkpoint' file).
    change: f(name, value) -> new value.
  """
  reader = tf.train.load_checkpoint(checkpoint)
  with tf.Graph().as_default():
    stored = {name: tf.Variable(change(name, reader.get_tensor(name)),
                                name=name)
              for name, _ in tf.train.list_variables(checkpoint)}
    saver = tf.train.Saver(stored)
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      saver.save(sess, path)


def test_eval_with_or_without_the_moving_averages(trained, tmp_path):
  data_dir, train_dir, _ = trained
  checkpoint = os.path.join(train_dir, 'model.ckpt-%d' % TRAINED_STEPS)
  # A copy whose raw weights and biases are all zero, and whose averages are
  # those of the training: the two evaluations must see different models.
  _saved_copy(checkpoint, str(tmp_path / 'copy' / 'model.ckpt'),
              lambda name, value: 0 * value if name in TRAINABLE else value)
  common = ['--run_once', '--data_dir=' + data_dir,
            '--checkpoint_dir=' + str(tmp_path / 'copy')]
  correct = {}
  for flag in ['--moving_average', '--nomoving_average']:
    result = run_main('cifar10_eval.py', flag,
                      '--eval_dir=' + str(tmp_path / flag), *common)
    assert result.returncode == 0, result.stderr
    correct[flag] = int(EVAL_LINE.match(result.stdout.splitlines()[0]).group(
        2))

  assert correct['--moving_average'] > 0.5 * 250  # Chance: 25 of 250.
  # All-zero weights give equal logits, a tie for first place between all
  # classes: not every class counts as right (as tf.nn.in_top_k would
  # count), but the lowest label, airplane, so that the count is that of
  # airplanes in the test set.
  test_labels = cifar_data.read_labels(
      os.path.join(data_dir, 'cifar-10-batches-bin', 'test_batch.bin'))
  assert correct['--nomoving_average'] == np.sum(test_labels == 0)


def test_predictions_are_normalised_probabilities():
  with tf.Graph().as_default():
    images = tf.constant(np.random.default_rng(0).normal(
        size=(8, 24, 24, 3)), tf.float32)
    logits = cifar10.inference(images)
    probabilities = cifar10.predictions(logits)
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      logits, probabilities = sess.run([logits, probabilities])
  assert probabilities.shape == (8, 10)
  assert np.all(probabilities > 0)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-6)
  expected = np.exp(logits - logits.max(axis=1, keepdims=True))
  np.testing.assert_allclose(
      probabilities, expected / expected.sum(axis=1, keepdims=True),
      rtol=1e-5)


# The locally connected top, by hand: pool2 is 6x6x64; each layer has a 3x3
# window at each of the 36 positions, its own weights and biases there.
LOCAL3_WEIGHTS = [36, 3 * 3 * 64, 64]
LOCAL4_WEIGHTS = [36, 3 * 3 * 64, 32]
LOCALLY_CONNECTED_SHAPES = {
    'conv1/weights': [5, 5, 3, 64], 'conv1/biases': [64],
    'conv2/weights': [5, 5, 64, 64], 'conv2/biases': [64],
    'local3/weights': LOCAL3_WEIGHTS, 'local3/biases': [36, 64],
    'local4/weights': LOCAL4_WEIGHTS, 'local4/biases': [36, 32],
    'softmax_linear/weights': [6 * 6 * 32, 10], 'softmax_linear/biases': [10],
}


def test_locally_connected_top_shapes_and_parameter_count():
  with tf.Graph().as_default():
    logits = cifar10.inference(tf.zeros([128, 24, 24, 3]),
                               top_layers='locally_connected')
    assert logits.shape.as_list() == [128, 10]
    shapes = {v.op.name: v.shape.as_list() for v in tf.trainable_variables()}
    activations = {name: tf.get_default_graph().get_tensor_by_name(
        name + '/' + name + ':0').shape.as_list()
                   for name in ['local3', 'local4']}
  assert shapes == LOCALLY_CONNECTED_SHAPES
  assert activations == {'local3': [128, 6, 6, 64], 'local4': [128, 6, 6, 32]}
  # 4,864 + 102,464 (convolutions) + 1,327,104 + 2,304 (local3)
  # + 663,552 + 1,152 (local4) + 11,530 (softmax_linear).
  assert sum(np.prod(s) for s in shapes.values()) == 2112970


def test_locally_connected_layer_is_a_convolution_with_weights_per_position():
  rng = np.random.default_rng(1)
  inputs = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
  with tf.Graph().as_default():
    outputs = cifar10._locally_connected(  # pylint: disable=protected-access
        'local', tf.constant(inputs), filters=2, size=3)
    with tf.variable_scope('local', reuse=True):
      weights = tf.get_variable('weights')
      biases = tf.get_variable('biases')
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      outputs, weights, biases = sess.run([outputs, weights, biases])
  assert weights.shape == (20, 27, 2)
  # By hand: at each position (i, j), its own weights over the 3x3 window
  # around it (zero outside the image), in (row, column, channel) order.
  padded = np.pad(inputs, [(0, 0), (1, 1), (1, 1), (0, 0)])
  expected = np.zeros((2, 4, 5, 2))
  for i in range(4):
    for j in range(5):
      window = padded[:, i:i + 3, j:j + 3, :].reshape(2, 27)
      expected[:, i, j] = (window @ weights[i * 5 + j] + biases[i * 5 + j])
  np.testing.assert_allclose(outputs, np.maximum(expected, 0), rtol=1e-4,
                             atol=1e-5)


def test_locally_connected_trains_evaluates_and_refuses_the_other(
    trained, data_dir, tmp_path):
  train_dir = str(tmp_path / 'train_local')
  local_top = ['--top_layers=locally_connected']
  train = run_main('cifar10_train.py', '--train_dir=' + train_dir,
                   '--max_steps=20', *(quick_args(data_dir) + local_top))
  assert train.returncode == 0, train.stderr
  assert [int(LOG_LINE.match(l).group(1)) for l in train.stdout.splitlines()
          if LOG_LINE.match(l)] == [10, 20]
  checkpoint = os.path.join(train_dir, 'model.ckpt-20')
  assert tf.train.load_variable(checkpoint, 'local3/weights').shape == tuple(
      LOCAL3_WEIGHTS)

  evaluation = run_main('cifar10_eval.py', '--run_once',
                        '--checkpoint_dir=' + train_dir,
                        '--eval_dir=' + str(tmp_path / 'eval'),
                        *(quick_args(data_dir, training=False) + local_top))
  assert evaluation.returncode == 0, evaluation.stderr
  assert EVAL_LINE.match(evaluation.stdout.splitlines()[0]).group(3, 4) == (
      '250', '20')

  # Prediction and export read it too: the same probabilities, of the
  # tutorial's ten classes, three printed by default.
  image = write_png(str(tmp_path / 'image.png'))
  prediction = run_main('cifar10_predict.py', '--checkpoint_dir=' + train_dir,
                        image, *local_top)
  assert prediction.returncode == 0, prediction.stderr
  printed = prediction.stdout.splitlines()[0].split(': ')[1].split(', ')
  assert len(printed) == 3
  assert printed[0].split(' ')[0] in data_lib.CLASS_NAMES
  export_dir = str(tmp_path / 'export_local')
  exported = run_main('cifar10_export.py', '--checkpoint_dir=' + train_dir,
                      '--export_dir=' + export_dir, *local_top)
  assert exported.returncode == 0, exported.stderr
  assert exported.stdout == 'Exported %s to %s.\n' % (checkpoint, export_dir)
  served = _serve(export_dir, _png_pixels(image))[:3]
  assert [p.split(' ')[0] for p in printed] == [name for name, _ in served]
  # Both are what the checkpoint's averaged weights give, computed apart.
  expected = helpers.probabilities_of(
      checkpoint, _png_pixels(image)[None], top_layers='locally_connected')[0]
  expected = [(data_lib.CLASS_NAMES[i], expected[i])
              for i in np.argsort(-expected, kind='stable')[:3]]
  assert [name for name, _ in served] == [name for name, _ in expected]
  np.testing.assert_allclose([probability for _, probability in served],
                             [probability for _, probability in expected],
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose([float(p.split(' ')[1]) for p in printed],
                             [probability for _, probability in expected],
                             atol=5e-4)

  # The fully connected model refuses the locally connected checkpoint, in
  # every script that reads one; resuming does not touch it, exporting
  # writes nothing.
  files_before = sorted(os.listdir(train_dir))
  for script, args in refusing_scripts(train_dir, tmp_path, image, data_dir):
    result = run_main(script, *args)
    assert result.returncode == 1
    assert result.stderr.count('\n') == 1, result.stderr
    assert result.stderr.startswith('Error: ')
    assert checkpoint in result.stderr
    assert result.stderr.endswith(
        'Its model differs: it was trained with '
        '--top_layers=locally_connected.%s\n' % (
            ' Train in another --train_dir.' if script == 'cifar10_train.py'
            else ''))
    assert result.stdout == ''
  assert sorted(os.listdir(train_dir)) == files_before
  assert not os.path.exists(tmp_path / 'export')

  # And the other way round: the fully connected checkpoint of `trained`.
  _, fully_connected_dir, _ = trained
  for script, args in refusing_scripts(fully_connected_dir, tmp_path, image,
                                       data_dir):
    if script == 'cifar10_train.py':
      continue  # It would write into the shared training's folder.
    result = run_main(script, *(args + local_top))
    assert result.returncode == 1
    assert result.stderr.count('\n') == 1, result.stderr
    assert fully_connected_dir in result.stderr
    assert result.stderr.endswith(
        'Its model differs: it was trained with '
        '--top_layers=fully_connected.\n')
  assert not os.path.exists(tmp_path / 'export')


def _png_pixels(path):
  """The uint8 [height, width, 3] pixels of a PNG file."""
  with open(path, 'rb') as f, tf.Graph().as_default(), tf.Session() as sess:
    return sess.run(tf.io.decode_png(f.read(), channels=3))


def _serve(export_dir, image):
  """(class name, probability) of an exported model for one image, likeliest
  first: its serving signature, loaded as TensorFlow Serving would."""
  with tf.Graph().as_default(), tf.Session() as sess:
    meta_graph = tf.saved_model.loader.load(sess, ['serve'], export_dir)
    signature = meta_graph.signature_def['serving_default']
    probabilities, names = sess.run(
        [signature.outputs['probabilities'].name,
         signature.outputs['class_names'].name],
        {signature.inputs['images'].name: image[None]})
  order = np.argsort(-probabilities[0], kind='stable')
  return [(names[i].decode(), probabilities[0][i]) for i in order]


def write_png(path, label=0):
  """Writes a learnable 32x32 PNG of class `label`; returns its path."""
  with tf.Graph().as_default(), tf.Session() as sess:
    png = sess.run(tf.io.encode_png(
        cifar_data.learnable_images([label], seed=3)[0]))
  with open(path, 'wb') as f:
    f.write(png)
  return path


def refusing_scripts(checkpoint_dir, tmp_path, image, data_dir):
  """(script, its flags) of each script that reads checkpoint_dir's model."""
  return [
      ('cifar10_eval.py', ['--run_once', '--checkpoint_dir=' + checkpoint_dir,
                           '--eval_dir=' + str(tmp_path / 'eval2')] +
       quick_args(data_dir, training=False)),
      ('cifar10_train.py', ['--train_dir=' + checkpoint_dir,
                            '--max_steps=40'] + quick_args(data_dir)),
      ('cifar10_predict.py', ['--checkpoint_dir=' + checkpoint_dir, image]),
      ('cifar10_export.py', ['--checkpoint_dir=' + checkpoint_dir,
                             '--export_dir=' + str(tmp_path / 'export')]),
  ]


def test_data_of_other_classes_is_refused_with_the_reason(trained, tmp_path):
  _, train_dir, _ = trained
  five_classes = str(tmp_path / 'five')
  batches_dir = cifar_data.make_data_dir(five_classes, num_classes=5)
  with open(os.path.join(batches_dir, 'batches.meta.txt'), 'w') as f:
    f.write('a\nb\nc\nd\ne\n')
  result = run_main('cifar10_eval.py', '--run_once',
                    '--checkpoint_dir=' + train_dir,
                    '--eval_dir=' + str(tmp_path / 'eval'),
                    *quick_args(five_classes, training=False))
  assert result.returncode == 1
  assert result.stderr.endswith(
      'Its model differs: it has 10 classes, where this model has 5 (from the '
      'batches.meta.txt of the data, or its absence).\n')


@pytest.mark.parametrize('fraction, expected', [(0.625, 200), (0.1, 32)])
def test_queue_warm_up_is_a_fraction_of_the_records(
    quick_params, capsys, fraction, expected):
  cifar10_train.train(*resolved(quick_params.replace(
      min_fraction_of_examples_in_queue=fraction, max_steps=1)))
  assert capsys.readouterr().out.splitlines()[0] == (
      'Filling the input queue with %d CIFAR images before starting to '
      'train.' % expected)
