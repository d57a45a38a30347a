"""Image files of your own (PNG, JPEG, any size) as CIFAR-10's 32x32 images.

prepare_data.py writes them into the binary layout, cifar10_predict.py
classifies them, and the exported model takes images of any size: all
decode and resize them alike (bilinear, antialiased), so that an image is
seen at test time as it was at training time.
"""

from cifar10_support import data
from cifar10_support import devices
from cifar10_support.quiet import tf
from cifar10_support.scripts import first_line


def resize_to_cifar(images):
  """Resizes images of any size to CIFAR-10's 32x32, as prepare_data.py does.

  Args:
    images: uint8 Tensor [height, width, 3] or [n, height, width, 3].

  Returns:
    uint8 Tensor of the same rank, 32x32 (antialiased bilinear resizing).
  """
  # TensorFlow 2's resize: the v1 one cannot antialias.
  resized = tf.compat.v2.image.resize(tf.cast(images, tf.float32),
                                      [data.SOURCE_HEIGHT, data.SOURCE_WIDTH],
                                      method='bilinear', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


class ImageDecoder(object):
  """Decodes PNG or JPEG bytes into a 32x32 RGB uint8 image, with TensorFlow.

  prepare_data.py and cifar10_predict.py use it; the exported model resizes
  in the same way (resize_to_cifar).
  """

  def __init__(self):
    self._graph = tf.Graph()
    with self._graph.as_default():
      self._contents = tf.placeholder(tf.string, [])
      self._image = resize_to_cifar(tf.image.decode_image(
          self._contents, channels=3, expand_animations=False))
    # Decoding is the CPU's work: the GPUs are left alone.
    self._session = tf.Session(graph=self._graph,
                               config=devices.cpu_only_config())

  def decode(self, contents):
    """Returns the [32, 32, 3] uint8 image; raises ValueError if unreadable."""
    try:
      return self._session.run(self._image, {self._contents: contents})
    except tf.errors.OpError as e:
      raise ValueError(first_line(e)) from None

  def decode_file(self, path):
    """decode() of a file's contents; ValueError says why it cannot be read
    (the file's error, e.g. 'No such file or directory', or the image's)."""
    try:
      with open(path, 'rb') as f:
        contents = f.read()
    except OSError as e:
      raise ValueError(e.strerror or str(e)) from None
    return self.decode(contents)

  def close(self):
    self._session.close()
