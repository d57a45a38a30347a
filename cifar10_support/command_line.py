"""The scripts' command lines: each flag defined once, and the Params they make.

Only scripts read flags (the library modules take arguments). A script
names the shared flags it uses, and its main gets its settings from them:

    from cifar10_support import command_line
    command_line.define('data_dir', 'batch_size', ...)
    ...
    def main(argv):
      params = command_line.params()

`define` makes them the script's own (its `--helpshort` lists them, and only
them, with its own flags); their defaults are those of `params.Params`, the
tutorial's values.
"""

import dataclasses
import sys

from absl import flags

from cifar10_support import devices
from cifar10_support import params as params_lib

FLAGS = flags.FLAGS

# Flags defined by this module's functions belong to the script calling them.
flags.disclaim_key_flags()

# name: (help, extra arguments of the DEFINE_* function).
_HELP = {
    # The data and the model.
    'data_dir': ('Path to the CIFAR-10 data directory.', {}),
    'data_url': ('Where to download the CIFAR-10 binary archive from, if it '
                 'is not in --data_dir yet: a mirror, or a file:// URL of an '
                 'archive you already have.', {}),
    'data_md5': ('Expected MD5 of the archive (the official one by default); '
                 'empty to skip the check.', {}),
    'batch_size': ('Number of images to process in a batch.',
                   {'lower_bound': 1}),
    'use_fp16': ('Train the model using fp16: float16 variables and '
                 'computation, as the tutorial has it. On a GPU; on a CPU it '
                 'is slow (use --mixed_precision).', {}),
    'mixed_precision': ('Float32 variables, moving averages and checkpoints '
                        '(those of float32 training), computation in float16 '
                        '(with loss scaling) on a GPU, in bfloat16 on a CPU '
                        '(fast with AVX512-BF16 or AMX).', {}),
    'gpu_memory_growth': ('Take GPU memory as needed rather than all of it at '
                          'start, so that evaluation fits beside training on '
                          'one GPU; --nogpu_memory_growth takes it all.', {}),
    'xla': ('Compile the training step\'s ops placed on a GPU with XLA '
            '(auto-clustering); on a CPU it changes nothing, and says so.',
            {}),
    'top_layers': ('local3 and local4 fully connected, as in the tutorial, or '
                   'locally connected, as in cuda-convnet\'s model (3x3 '
                   'windows of 64, then 32 filters, weights not shared '
                   'between positions).',
                   {'enum_values': list(params_lib.TOP_LAYERS)}),
    # Training.
    'train_dir': ('Directory where to write event logs and checkpoints.', {}),
    'max_steps': ('Number of batches to run (the global step to stop at).',
                  {'lower_bound': 1}),
    'initial_learning_rate': (
        'Learning rate at step 0; it is divided by 10 every 350 epochs. The '
        'tutorial\'s 0.1 suits one worker; asynchronous distributed training '
        'with several may need less.', {'lower_bound': 0.0}),
    'min_fraction_of_examples_in_queue': (
        'Fraction of an epoch of training images queued before training '
        'starts: more mixes better, less starts sooner.',
        {'lower_bound': 0.0, 'upper_bound': 1.0}),
    'log_device_placement': ('Whether to log device placement.', {}),
    'log_frequency': ('How often to log results to the console.',
                      {'lower_bound': 1}),
    'save_checkpoint_secs': ('Seconds between checkpoints (one is always '
                             'written at the end).', {'lower_bound': 1}),
    'save_summaries_steps': ('Steps between two writes of the TensorBoard '
                             'summaries.', {'lower_bound': 1}),
    # Evaluation, prediction, export.
    'checkpoint_dir': ('Directory where to read model checkpoints.', {}),
    'moving_average': ('Use the moving averages of the weights (the '
                       'tutorial\'s way); --nomoving_average uses the raw '
                       'weights, to see what the averages give.', {}),
    'eval_dir': ('Directory where to write event logs.', {}),
    'eval_data': ('Either "test" (the 10,000 test images) or "train_eval" '
                  '(the 50,000 training images, undistorted).',
                  {'enum_values': list(params_lib.EVAL_DATA)}),
    'eval_interval_secs': ('How often to look for a new checkpoint to '
                           'evaluate.', {'lower_bound': 1}),
    'run_once': ('Whether to run eval only once.', {}),
}

# The flags of the training scripts (one device, towers, workers).
TRAINING = ('data_dir', 'data_url', 'data_md5', 'batch_size', 'use_fp16',
            'mixed_precision', 'top_layers', 'gpu_memory_growth', 'xla',
            'train_dir', 'max_steps', 'initial_learning_rate',
            'min_fraction_of_examples_in_queue', 'log_device_placement',
            'log_frequency', 'save_checkpoint_secs', 'save_summaries_steps')

_DEFINE_BY_TYPE = {int: flags.DEFINE_integer, float: flags.DEFINE_float,
                   bool: flags.DEFINE_boolean, str: flags.DEFINE_string}


def define(*names):
  """Defines the shared flags `names` as flags of the calling script."""
  fields = {field.name: field for field in
            dataclasses.fields(params_lib.Params)}
  for name in names:
    if name in FLAGS:  # Another script of this process defined it already.
      flags.declare_key_flag(name)
      continue
    help_text, extra = _HELP[name]
    field = fields[name]
    if 'enum_values' in extra:
      flags.DEFINE_enum(name, field.default, extra['enum_values'], help_text)
    else:
      _DEFINE_BY_TYPE[field.type](name, field.default, help_text, **extra)


def params():
  """The Params of the flags this process defined; defaults for the rest.

  What is slow on this machine (a choice of precision, GPUs this
  TensorFlow has no code for) is warned about, once, on stderr.
  """
  made = params_lib.Params(**{
      field.name: FLAGS[field.name].value
      for field in dataclasses.fields(params_lib.Params)
      if field.name in FLAGS})
  for warning in devices.warnings(made):
    sys.stderr.write('Warning: %s\n' % warning)
    sys.stderr.flush()
  return made
