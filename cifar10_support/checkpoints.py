"""Checkpoints: the newest, checked against the model built, restored.

Each problem a user can meet with a checkpoint is said here, once: none
yet, files missing or damaged (CheckpointUnreadable: training resumes from
the checkpoint before instead; evaluation skips it and waits for the next),
or a checkpoint of another model (CheckpointError, naming the --top_layers,
the number of classes or the float type it was trained with).
"""

import os

from cifar10_support.quiet import tf
from cifar10_support.scripts import first_line
from cifar10_support.scripts import UserError

# The collection of the variables that checkpoints written before them lack
# (the examples seen, the float16 loss scale): a training resumed from one
# restores the others and gives these their initial values
# (runtime.run_training); every other variable a checkpoint must hold.
RESTORED_IF_PRESENT = 'restored_if_present'


class CheckpointError(UserError):
  """A checkpoint is missing, unreadable, or not one of this model."""


class CheckpointUnreadable(CheckpointError):
  """A checkpoint's files are missing, truncated or corrupt."""


def latest_checkpoint(checkpoint_dir):
  """The newest checkpoint of a training directory.

  Raises:
    CheckpointError: there is none (yet).
  """
  path = tf.train.latest_checkpoint(checkpoint_dir)
  if path is None:
    raise CheckpointError(
        'no checkpoint in --checkpoint_dir=%s yet: train first '
        '(cifar10_train.py --train_dir=%s).' % (checkpoint_dir, checkpoint_dir))
  return path


def checkpoint_step(checkpoint_path):
  """The global step stored in a checkpoint.

  Raises:
    CheckpointUnreadable: it has no readable global step.
  """
  try:
    return int(tf.train.load_variable(checkpoint_path, 'global_step'))
  except (tf.errors.OpError, ValueError) as e:
    raise CheckpointUnreadable(
        'cannot read the global step of checkpoint %s: %s' %
        (checkpoint_path, first_line(e))) from None


def _unreadable(path, error):
  return CheckpointUnreadable('checkpoint %s cannot be read: %s' %
                              (path, first_line(error)))


def check_checkpoint(path, variables):
  """Checks that a checkpoint can be read and fits the model built.

  A checkpoint of the other top_layers, of data with another number of
  classes, or of the other float type, does not fit: the message then says
  which, and what to pass.

  Args:
    path: The checkpoint's path prefix (e.g. /tmp/cifar10_train/model.ckpt-9).
    variables: {name in the checkpoint: variable} of every variable restored
      from it (a Saver's var_list).

  Raises:
    CheckpointUnreadable: its files are missing, truncated or corrupt.
    CheckpointError: it holds another model (variables missing, or of other
      shapes or types).
  """
  try:
    reader = tf.train.load_checkpoint(path)
    stored_shapes = reader.get_variable_to_shape_map()
    stored_dtypes = reader.get_variable_to_dtype_map()
  except (tf.errors.OpError, ValueError) as e:
    raise _unreadable(path, e) from None
  expected = {name: (v.shape.as_list(), v.dtype.base_dtype)
              for name, v in variables.items()}
  missing = sorted(set(expected) - set(stored_shapes))
  problem = None
  if missing:
    problem = 'it has no %s%s.' % (
        missing[0], ' (nor %d other variables)' % (len(missing) - 1)
        if len(missing) > 1 else '')
  else:
    for name, (shape, dtype) in sorted(expected.items()):
      if list(stored_shapes[name]) != shape:
        problem = 'its %s has shape %s, where this model has %s.' % (
            name, list(stored_shapes[name]), shape)
        break
      if stored_dtypes[name] != dtype:
        problem = 'its %s is %s, where this model\'s is %s.' % (
            name, stored_dtypes[name].name, dtype.name)
        break
  if problem:
    hints = _why_the_model_differs(stored_shapes, stored_dtypes, expected)
    raise CheckpointError('checkpoint %s is not one of this model: %s%s' % (
        path, problem, ' Its model differs: %s.' % '; '.join(hints)
        if hints else ''))
  try:  # Reads every value: finds truncated or corrupt data files.
    for name in expected:
      reader.get_tensor(name)
  except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as e:
    # A truncated data file raises IndexError ("Read less bytes than
    # requested"), a corrupt one an OpError.
    raise _unreadable(path, e) from None


def _why_the_model_differs(stored_shapes, stored_dtypes, expected):
  """The options a checkpoint was trained with that the model lacks."""

  def stored(name):
    for key in (name, name + '/ExponentialMovingAverage'):
      if key in stored_shapes:
        return list(stored_shapes[key]), stored_dtypes[key]
    return None

  def built(name):
    for key in (name, name + '/ExponentialMovingAverage'):
      if key in expected:
        return expected[key]
    return None

  hints = []
  local3 = stored('local3/weights'), built('local3/weights')
  if all(local3) and len(local3[0][0]) != len(local3[1][0]):
    hints.append('it was trained with --top_layers=%s' % (
        'locally_connected' if len(local3[0][0]) == 3 else 'fully_connected'))
  classes = stored('softmax_linear/biases'), built('softmax_linear/biases')
  if all(classes) and classes[0][0] != classes[1][0]:
    hints.append('it has %d classes, where this model has %d (from the '
                 'batches.meta.txt of the data, or its absence)' %
                 (classes[0][0][0], classes[1][0][0]))
  conv1 = stored('conv1/weights'), built('conv1/weights')
  if all(conv1) and conv1[0][1] != conv1[1][1]:
    hints.append('it was trained %s --use_fp16' % (
        'with' if conv1[0][1] == tf.float16 else 'without'))
  return hints


def checkpoint_to_resume(train_dir, variables):
  """The newest checkpoint in `train_dir` that can be read, if any.

  A checkpoint whose files are missing or damaged is skipped, with a message,
  for the one before; it is never trusted.

  Args:
    train_dir: The training directory.
    variables: {name: variable} of the model being trained.

  Returns:
    The checkpoint's path, or None if there is no checkpoint.

  Raises:
    CheckpointError: the checkpoints are of another model, or none of them
      can be read.
  """
  state = tf.train.get_checkpoint_state(train_dir)
  if not state or not state.model_checkpoint_path:
    return None
  candidates = [state.model_checkpoint_path] + [
      path for path in reversed(state.all_model_checkpoint_paths)
      if path != state.model_checkpoint_path]
  for path in candidates:
    try:
      check_checkpoint(path, variables)
      return path
    except CheckpointUnreadable as e:
      print('Skipping %s.' % e, flush=True)
    except CheckpointError as e:
      raise CheckpointError(
          '--train_dir=%s holds checkpoints of another model: %s Train in '
          'another --train_dir.' % (train_dir, e)) from None
  raise CheckpointError(
      'none of the checkpoints in --train_dir=%s can be read (see above). '
      'They were kept: move them away to train from scratch there.' %
      train_dir)


def restore(session, saver, path):
  """Restores a checkpoint that check_checkpoint passed.

  Raises:
    CheckpointUnreadable: its files went missing or are damaged.
    CheckpointError: it cannot be restored into this model.
  """
  try:
    saver.restore(session, path)
  except (tf.errors.NotFoundError, tf.errors.DataLossError) as e:
    raise _unreadable(path, e) from None
  except (tf.errors.InvalidArgumentError, ValueError) as e:
    raise CheckpointError('checkpoint %s cannot be restored into this model: '
                          '%s' % (path, first_line(e))) from None



def kept_checkpoint(train_dir):
  """What a run stopped before its end keeps: its last checkpoint, if any."""
  if not os.path.isdir(train_dir):
    return 'the folder is gone, and its checkpoints with it'
  latest = tf.train.latest_checkpoint(train_dir)
  return ('the last checkpoint, %s, is kept' % latest if latest
          else 'no checkpoint had been written yet')
