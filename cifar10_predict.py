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
are still classified; the exit status is then 1. A model trained with
--top_layers or --use_fp16 is read with the same flags.
"""

import sys

from absl import flags
import numpy as np

import cifar10
from cifar10_support import classifier as classifier_lib
from cifar10_support import command_line
from cifar10_support import devices
from cifar10_support import images
from cifar10_support import scripts
from cifar10_support.scripts import UserError

FLAGS = flags.FLAGS
command_line.define('checkpoint_dir', 'moving_average', 'top_layers',
                    'use_fp16', 'mixed_precision', 'gpu_memory_growth')
flags.DEFINE_integer('top_k', 3, 'How many classes to print per image.',
                     lower_bound=1)


def top_classes(probabilities, class_names, k):
  """The k likeliest (name, probability) pairs, likeliest first."""
  order = np.argsort(-probabilities, kind='stable')[:k]
  return [(class_names[i], float(probabilities[i])) for i in order]


def main(argv):
  files = argv[1:]
  if not files:
    raise UserError('give the image files to classify, e.g. '
                    'cifar10_predict.py cat.jpg ship.png')
  params = command_line.params()
  # The model as its training made it (the flags say how).
  model = cifar10.model_as_trained(params, devices.precision(params))
  classifier = classifier_lib.Classifier(
      params.checkpoint_dir, model, config=devices.session_config(params))
  decoder = images.ImageDecoder()
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
  scripts.run(main)
