"""A trained model as a function of images: what prediction and export serve.

    classifier = Classifier('/tmp/cifar10_train')
    probabilities = classifier.classify(uint8_images)  # [n, classes]
"""

import cifar10
import cifar10_checkpoint
import cifar10_devices
import cifar10_images
import cifar10_input
import cifar10_params
from cifar10_quiet import tf


class Classifier(object):
  """The trained model, restored from a checkpoint, as a function of images.

  Args:
    checkpoint_dir: A training directory.
    moving_average: Use the moving averages of the weights.
    any_size: Take uint8 images of any size (all of one call alike) and
      resize them to 32x32 in the graph, as prepare_data.py does; otherwise
      take 32x32 images.
    params: Params: top_layers and use_fp16, those of the training.

  Raises:
    CheckpointError: no checkpoint, or one of another model.
  """

  def __init__(self, checkpoint_dir, moving_average=True, any_size=False,
               params=cifar10_params.Params()):
    self.checkpoint_path = cifar10_checkpoint.latest_checkpoint(checkpoint_dir)
    self.class_names = cifar10_input.read_class_names(checkpoint_dir)
    self.graph = tf.Graph()
    with self.graph.as_default():
      # The images are prepared on the CPU, where they are fed, as
      # evaluation's are; the model runs where TensorFlow places it.
      with tf.device('/cpu:0'):
        if any_size:
          self.images = tf.placeholder(tf.uint8, [None, None, None, 3],
                                       name='images')
          resized = cifar10_images.resize_to_cifar(self.images)
        else:
          self.images = resized = tf.placeholder(
              tf.uint8, [None, cifar10_input.SOURCE_HEIGHT,
                         cifar10_input.SOURCE_WIDTH,
                         cifar10_input.SOURCE_DEPTH], name='images')
        images = tf.cast(cifar10_input.preprocess_for_eval(resized),
                         params.compute_dtype)
      logits = cifar10.inference(images, len(self.class_names),
                                 params.top_layers, params.variable_dtype)
      # Probabilities in float32, whatever the model's type.
      self.probabilities = cifar10.predictions(tf.cast(logits, tf.float32))
      to_restore = cifar10.variables_to_restore(moving_average)
      cifar10_checkpoint.check_checkpoint(self.checkpoint_path, to_restore)
      self.session = tf.Session(graph=self.graph,
                                config=cifar10_devices.session_config(params))
      cifar10_checkpoint.restore(self.session, tf.train.Saver(to_restore),
                                 self.checkpoint_path)

  def classify(self, images):
    """Class probabilities, [n, classes], of uint8 images [n, h, w, 3]."""
    return self.session.run(self.probabilities, {self.images: images})

  def close(self):
    self.session.close()
