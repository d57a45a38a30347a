"""Classifies image files with the latest checkpoint of a training.

    python cifar10_predict.py --checkpoint_dir=/tmp/cifar10_train cat.jpg ship.png

For each file (PNG or JPEG, any size) it prints the three likeliest classes
with their probabilities, using the moving averages of the weights, as
cifar10_eval.py does:

    cat.jpg: cat 0.912, dog 0.051, deer 0.013

The image is resized to 32x32 as prepare_data.py resizes images, then
cropped and standardised as evaluation does. The class names are those the
training wrote into its directory (CIFAR-10's, or those of data prepared
with prepare_data.py). A file that cannot be read is reported, and the others
are still classified; the exit status is then 1.
"""

import sys

from absl import flags
import numpy as np

import cifar10
import cifar10_common
import cifar10_eval  # pylint: disable=unused-import  (--checkpoint_dir, ...)
from cifar10_common import tf
from cifar10_common import UserError
import cifar10_input

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(cifar10)
flags.adopt_module_key_flags(cifar10_eval)

flags.DEFINE_integer('top_k', 3, 'How many classes to print per image.',
                     lower_bound=1)


class Classifier(object):
  """The trained model, restored from a checkpoint, as a function of images.

  Args:
    checkpoint_dir: A training directory.
    moving_average: Use the moving averages of the weights.
    any_size: Take uint8 images of any size (all of one call alike) and
      resize them to 32x32 in the graph, as prepare_data.py does; otherwise
      take 32x32 images.

  Raises:
    CheckpointError: no checkpoint, or one of another model.
  """

  def __init__(self, checkpoint_dir, moving_average=True, any_size=False):
    self.checkpoint_path = tf.train.latest_checkpoint(checkpoint_dir)
    if self.checkpoint_path is None:
      raise cifar10_common.CheckpointError(
          'no checkpoint in --checkpoint_dir=%s: train first '
          '(cifar10_train.py --train_dir=%s).' %
          (checkpoint_dir, checkpoint_dir))
    self.class_names = cifar10_input.read_class_names(checkpoint_dir)
    self.graph = tf.Graph()
    with self.graph.as_default():
      if any_size:
        self.images = tf.placeholder(tf.uint8, [None, None, None, 3],
                                     name='images')
        resized = cifar10_input.resize_to_cifar(self.images)
      else:
        self.images = resized = tf.placeholder(
            tf.uint8, [None, cifar10_input.SOURCE_HEIGHT,
                       cifar10_input.SOURCE_WIDTH, cifar10_input.SOURCE_DEPTH],
            name='images')
      logits = cifar10.inference(cifar10_input.preprocess_for_eval(resized),
                                 len(self.class_names))
      self.probabilities = cifar10.predictions(logits)
      to_restore = cifar10.variables_to_restore(moving_average)
      cifar10.check_checkpoint(
          self.checkpoint_path,
          {name: v.shape.as_list() for name, v in to_restore.items()})
      self.session = tf.Session(graph=self.graph)
      tf.train.Saver(to_restore).restore(self.session, self.checkpoint_path)

  def classify(self, images):
    """Class probabilities, [n, classes], of uint8 images [n, h, w, 3]."""
    return self.session.run(self.probabilities, {self.images: images})

  def close(self):
    self.session.close()


def top_classes(probabilities, class_names, k):
  """The k likeliest (name, probability) pairs, likeliest first."""
  order = np.argsort(-probabilities, kind='stable')[:k]
  return [(class_names[i], float(probabilities[i])) for i in order]


def main(argv):
  files = argv[1:]
  if not files:
    raise UserError('give the image files to classify, e.g. '
                    'cifar10_predict.py cat.jpg ship.png')
  classifier = Classifier(FLAGS.checkpoint_dir, FLAGS.moving_average)
  decoder = cifar10_input.ImageDecoder()
  failures = 0
  try:
    for path in files:
      try:
        image = decoder.decode_file(path)
      except ValueError as e:
        failures += 1
        sys.stderr.write('Error: cannot read %s: %s\n' % (path, e))
        sys.stderr.flush()
        continue
      probabilities = classifier.classify(image[None])[0]
      print('%s: %s' % (path, ', '.join(
          '%s %.3f' % pair for pair in top_classes(
              probabilities, classifier.class_names, FLAGS.top_k))),
            flush=True)
  finally:
    decoder.close()
    classifier.close()
  if failures:
    sys.exit(1)


if __name__ == '__main__':
  cifar10_common.run(main)
