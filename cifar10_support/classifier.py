"""A trained model as a function of images: what prediction and export serve.

    classifier = Classifier('/tmp/cifar10_train', cifar10.classify)
    probabilities = classifier.classify(uint8_images)  # [n, classes]
"""

from cifar10_support import checkpoints
from cifar10_support import data
from cifar10_support import images as images_lib
from cifar10_support.quiet import tf


class Classifier(object):
  """A trained model, restored from the newest checkpoint of a training
  directory, as a function of images.

  Args:
    checkpoint_dir: A training directory: its newest checkpoint, and the
      class names its training wrote there.
    model: f(uint8 images [n, 32, 32, 3], number of classes) ->
      (probabilities [n, classes], float32; {name in the checkpoint:
      variable} to restore): the model's graph, built into the classifier's
      own. cifar10.classify, with the training's settings (its top layers,
      its precision) and the weights to use (the moving averages, or not).
    any_size: Take uint8 images of any size (all of one call alike) and
      resize them to 32x32 in the graph, as prepare_data.py does; otherwise
      take 32x32 images.
    config: The session's tf.ConfigProto.

  Raises:
    CheckpointError: no checkpoint, or one of another model.
  """

  def __init__(self, checkpoint_dir, model, any_size=False, config=None):
    self.checkpoint_path = checkpoints.latest_checkpoint(checkpoint_dir)
    self.class_names = data.read_class_names(checkpoint_dir)
    self.graph = tf.Graph()
    with self.graph.as_default():
      # Fed on the CPU, and resized there.
      with tf.device('/cpu:0'):
        if any_size:
          self.images = tf.placeholder(tf.uint8, [None, None, None, 3],
                                       name='images')
          resized = images_lib.resize_to_cifar(self.images)
        else:
          self.images = resized = tf.placeholder(
              tf.uint8, [None, data.SOURCE_HEIGHT, data.SOURCE_WIDTH,
                         data.SOURCE_DEPTH], name='images')
      self.probabilities, to_restore = model(resized, len(self.class_names))
      checkpoints.check_checkpoint(self.checkpoint_path, to_restore)
      self.session = tf.Session(graph=self.graph, config=config)
      checkpoints.restore(self.session, tf.train.Saver(to_restore),
                          self.checkpoint_path)

  def classify(self, images):
    """Class probabilities, [n, classes], of uint8 images [n, h, w, 3]."""
    return self.session.run(self.probabilities, {self.images: images})

  def close(self):
    self.session.close()
