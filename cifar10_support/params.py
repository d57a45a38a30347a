"""A run's settings, with the tutorial's defaults, and the model's precision.

`Params` holds every setting of the scripts (a program or a test makes one
directly: `Params(data_dir=..., max_steps=100)`; the scripts make theirs
from their flags, command_line.params()). It reads no file and asks nothing
of the machine: what the settings come to there is decided once by each
script and handed down: the data set (data.read, or the download), and the
types the model computes in (`Precision`, of the settings and whether a GPU
is present: devices.precision).
"""

import dataclasses

from cifar10_support import download
from cifar10_support.quiet import tf

# The tutorial's settings: the defaults of the scripts' flags, and of the
# library's functions (cifar10, cifar10_input), which take them from here.
DATA_DIR = '/tmp/cifar10_data'  # Holds cifar-10-batches-bin/.
BATCH_SIZE = 128                # Images per batch (per tower).
INITIAL_LEARNING_RATE = 0.1     # Learning rate at step 0.
# The fraction of an epoch of training images queued before training starts.
MIN_FRACTION_OF_EXAMPLES_IN_QUEUE = 0.4
# local3 and local4: fully connected (the tutorial's), or locally connected.
TOP_LAYERS = ('fully_connected', 'locally_connected')
# The data an evaluation reads: the test set, or the training set.
EVAL_DATA = ('test', 'train_eval')


@dataclasses.dataclass(frozen=True)
class Params(object):
  """Every setting of the scripts; the defaults are the tutorial's.

  The names are those of the scripts' flags (see command_line.py for what
  each means). Frozen: `params.replace(max_steps=10)` makes another.
  """
  # The data and the model.
  data_dir: str = DATA_DIR
  data_url: str = download.DATA_URL
  data_md5: str = download.DATA_MD5
  batch_size: int = BATCH_SIZE
  use_fp16: bool = False
  mixed_precision: bool = False
  top_layers: str = TOP_LAYERS[0]
  # Devices.
  gpu_memory_growth: bool = True
  xla: bool = False
  # Training.
  train_dir: str = '/tmp/cifar10_train'
  max_steps: int = 1000000
  initial_learning_rate: float = INITIAL_LEARNING_RATE
  min_fraction_of_examples_in_queue: float = MIN_FRACTION_OF_EXAMPLES_IN_QUEUE
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

  def precision(self, on_gpu):
    """The model's Precision under these settings, where a GPU is present
    (`on_gpu`) or not."""
    return Precision.of(self.use_fp16, self.mixed_precision, on_gpu)


@dataclasses.dataclass(frozen=True)
class Precision(object):
  """The types the model keeps its variables in and computes in.

  float32 for both by default; the tutorial's --use_fp16 float16 for both;
  --mixed_precision float32 variables (and moving averages, and checkpoints)
  and float16 computation on a GPU, bfloat16 on a CPU.
  """
  compute_dtype: tf.DType = tf.float32
  variable_dtype: tf.DType = tf.float32

  @classmethod
  def of(cls, use_fp16=False, mixed_precision=False, on_gpu=False):
    """The Precision of the options, on a GPU or not."""
    if use_fp16:
      return cls(tf.float16, tf.float16)
    if mixed_precision:
      return cls(tf.float16 if on_gpu else tf.bfloat16, tf.float32)
    return cls()

  @property
  def loss_scaled(self):
    """Whether the loss is scaled (cifar10.float16_loss_scale): float16
    computation of float32 variables, whose small gradients would vanish."""
    return (self.compute_dtype == tf.float16 and
            self.variable_dtype == tf.float32)
