"""The settings of a run, with the tutorial's defaults, and what they mean here.

`Params` holds every setting of the scripts (a program or a test makes one
directly: `Params(data_dir=..., max_steps=100)`; the scripts make theirs
from their flags, cifar10_flags.params()), and derives from them, in one
place, what the model needs: the types it stores and computes in, the loss
scaling, and the classes and sizes of the data.
"""

import dataclasses
import os

import cifar10
import cifar10_devices
import cifar10_input
from cifar10_quiet import tf

# The data an evaluation reads: the test set, or the training set.
EVAL_DATA = ('test', 'train_eval')


@dataclasses.dataclass(frozen=True)
class Params(object):
  """Every setting of the scripts; the defaults are the tutorial's.

  The names are those of the scripts' flags (see cifar10_flags.py for what
  each means). Frozen: `params.replace(max_steps=10)` makes another.
  """
  # The data and the model.
  data_dir: str = cifar10.DATA_DIR
  data_url: str = cifar10.DATA_URL
  data_md5: str = cifar10.DATA_MD5
  batch_size: int = cifar10.BATCH_SIZE
  use_fp16: bool = False
  mixed_precision: bool = False
  top_layers: str = cifar10.TOP_LAYERS[0]
  # Devices.
  gpu_memory_growth: bool = True
  xla: bool = False
  # Training.
  train_dir: str = '/tmp/cifar10_train'
  max_steps: int = 1000000
  initial_learning_rate: float = cifar10.INITIAL_LEARNING_RATE
  min_fraction_of_examples_in_queue: float = (
      cifar10.MIN_FRACTION_OF_EXAMPLES_IN_QUEUE)
  log_device_placement: bool = False
  log_frequency: int = 10
  save_checkpoint_secs: int = 600
  save_summaries_steps: int = 100
  # Evaluation, prediction, export.
  checkpoint_dir: str = '/tmp/cifar10_train'
  moving_average: bool = True
  eval_dir: str = '/tmp/cifar10_eval'
  eval_data: str = EVAL_DATA[0]
  eval_interval_secs: int = 60 * 5
  run_once: bool = False

  def replace(self, **changes):
    """A copy with `changes`."""
    return dataclasses.replace(self, **changes)

  @property
  def variable_dtype(self):
    """The variables' type: float16 with use_fp16, float32 otherwise."""
    return tf.float16 if self.use_fp16 else tf.float32

  @property
  def compute_dtype(self):
    """The type the model computes in (the images'): the variables', or,
    with mixed_precision, float16 where a GPU is, bfloat16 on a CPU."""
    if self.mixed_precision and not self.use_fp16:
      return tf.float16 if cifar10_devices.gpus() else tf.bfloat16
    return self.variable_dtype

  @property
  def loss_scaling(self):
    """Whether the loss is scaled (cifar10.float16_loss_scale): float16
    computation of float32 variables."""
    return (self.compute_dtype == tf.float16 and
            self.variable_dtype == tf.float32)

  # What the data in data_dir decides: the one place the scripts ask.

  @property
  def class_names(self):
    """The classes of the data, in label order: those of its
    batches.meta.txt, or CIFAR-10's ten where it has none (or has no data
    yet)."""
    return cifar10_input.read_class_names(
        cifar10.data_batches_dir(self.data_dir))

  @property
  def num_classes(self):
    return len(self.class_names)

  def num_examples(self, eval_data=False):
    """The training images of the data (its test images, with eval_data),
    or CIFAR-10's 50,000 (10,000) while there is no data yet."""
    filenames = cifar10_input.data_filenames(
        cifar10.data_batches_dir(self.data_dir), eval_data)
    if all(os.path.isfile(f) for f in filenames):
      return cifar10_input.count_records(filenames)
    return (cifar10.NUM_EXAMPLES_PER_EPOCH_FOR_EVAL if eval_data else
            cifar10.NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN)
