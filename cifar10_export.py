"""Exports a trained model as a TensorFlow SavedModel, for serving.

    python cifar10_export.py --checkpoint_dir=/tmp/cifar10_train \
        --export_dir=/tmp/cifar10_model

The SavedModel holds the moving averages of the weights of the latest
checkpoint, and one signature, 'serving_default':

- input 'images': uint8 [batch, height, width, 3], RGB, of any size (the
  images of one call share it); each is resized to 32x32, then cropped and
  standardised as evaluation does;
- outputs 'probabilities': float32 [batch, classes], and 'class_names':
  string [classes], in label order.

It loads without this code, in TensorFlow 2:

    model = tf.saved_model.load('/tmp/cifar10_model')
    probabilities = model.signatures['serving_default'](
        images=tf.constant(uint8_images))['probabilities']
"""

import os
import shutil

from absl import flags

import cifar10
from cifar10_support import classifier as classifier_lib
from cifar10_support import command_line
from cifar10_support import devices
from cifar10_support import files
from cifar10_support import kernels
from cifar10_support import scripts
from cifar10_support.quiet import tf
from cifar10_support.scripts import UserError

FLAGS = flags.FLAGS
command_line.define('checkpoint_dir', 'moving_average', 'top_layers',
                    'use_fp16', 'mixed_precision', 'gpu_memory_growth')

flags.DEFINE_string('export_dir', None,
                    'Where to write the SavedModel: a folder that does not '
                    'exist yet.')

SIGNATURE = 'serving_default'


def export(checkpoint_dir, export_dir, model, config=None):
  """Writes the SavedModel of the latest checkpoint of `checkpoint_dir`.

  Args:
    checkpoint_dir: A training directory.
    export_dir: The SavedModel's folder; must not exist.
    model: The model as its training made it (see classifier.Classifier):
      cifar10.model_as_trained().
    config: The session's tf.ConfigProto.

  Returns:
    The checkpoint exported.

  Raises:
    UserError: export_dir exists, or there is no usable checkpoint.
    WriteError: the SavedModel could not be written (what was written of it
      is removed).
  """
  if os.path.exists(export_dir):
    raise UserError('--export_dir=%s exists: give a new folder (nothing is '
                    'overwritten).' % export_dir)
  # TensorFlow's own ops only: the SavedModel loads without this code.
  with kernels.tensorflow_ops_only():
    classifier = classifier_lib.Classifier(checkpoint_dir, model,
                                           any_size=True, config=config)
  try:
    with files.writes_said(
        'export_dir', export_dir,
        'Nothing was exported: the partial SavedModel was removed.'):
      try:
        _save(classifier, export_dir)
      except BaseException:
        # Nothing half-written: the folder is new, and ours.
        shutil.rmtree(export_dir, ignore_errors=True)
        raise
  finally:
    classifier.close()
  return classifier.checkpoint_path


def _save(classifier, export_dir):
  """Writes the classifier's graph and weights as a SavedModel."""
  with classifier.graph.as_default():
    class_names = tf.constant(classifier.class_names, name='class_names')
    builder = tf.saved_model.Builder(export_dir)
    builder.add_meta_graph_and_variables(
        classifier.session, [tf.saved_model.SERVING],
        signature_def_map={
            SIGNATURE: tf.saved_model.predict_signature_def(
                inputs={'images': classifier.images},
                outputs={'probabilities': classifier.probabilities,
                         'class_names': class_names})},
        strip_default_attrs=True)
    builder.save()


def main(argv):
  del argv
  if not FLAGS.export_dir:
    raise UserError('--export_dir is required.')
  params = command_line.params()
  # The model as its training made it (the flags say how).
  model = cifar10.model_as_trained(params, devices.precision(params))
  checkpoint = export(params.checkpoint_dir, FLAGS.export_dir, model,
                      devices.session_config(params))
  print('Exported %s to %s.' % (checkpoint, FLAGS.export_dir))


if __name__ == '__main__':
  scripts.run(main)
