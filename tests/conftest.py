"""Shared fixtures: small data sets, their Params, and quick training runs.

The library reads no flags: the tests give each function its settings, as
a cifar10_runtime.Params, and run the scripts (with flags) as a user does.
"""

import contextlib
import io
import os
import sys

import pytest

import cifar10_runtime
import cifar10_train

sys.path.insert(0, os.path.dirname(__file__))
import cifar_data  # pylint: disable=g-import-not-at-top

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Training in the tests waits for few images: 200 of the 320 of an epoch of
# the small data.
SMALL_QUEUE_FRACTION = 0.625


@pytest.fixture
def processes():
  """Starts scripts in the background; all are killed at the test's end,
  whatever happens."""
  import helpers  # pylint: disable=g-import-not-at-top  (it imports us)
  started = []
  yield lambda *args, **kwargs: started.append(
      helpers.ScriptProcess(*args, **kwargs)) or started[-1]
  for process in started:
    process.kill()


@pytest.fixture
def data_dir(tmp_path):
  """A --data_dir with 5 x 64 training and 250 test records, learnable."""
  root = tmp_path / 'data'
  cifar_data.make_data_dir(str(root))
  return str(root)


def quick_params_for(data_dir, work_dir):
  """Params for a quick training and evaluation on the small data."""
  train_dir = os.path.join(work_dir, 'train')
  return cifar10_runtime.Params(
      data_dir=data_dir, train_dir=train_dir, checkpoint_dir=train_dir,
      eval_dir=os.path.join(work_dir, 'eval'), batch_size=32,
      min_fraction_of_examples_in_queue=SMALL_QUEUE_FRACTION,
      log_frequency=10, run_once=True)


@pytest.fixture
def quick_params(data_dir, tmp_path):
  """Params for a quick training and evaluation on the small data."""
  return quick_params_for(data_dir, str(tmp_path))


# Enough for the learnable data to be learnt, reliably: batches of 32 are
# too noisy at the tutorial's learning rate of 0.1, and the loss falls at a
# random moment between steps 50 and 150. When this was set, 22 of 22
# single-tower runs had learnt by step 150, and 16 of 16 two-tower runs by
# step 200.
TRAINED_STEPS = 200
TRAINED_BATCH_SIZE = 64


@pytest.fixture(scope='session')
def trained(tmp_path_factory):
  """One quick training of TRAINED_STEPS steps, shared by the tests.

  Returns:
    (data_dir, train_dir, the lines the training printed). Tests copy the
    train dir before they change anything in it.
  """
  work_dir = str(tmp_path_factory.mktemp('trained'))
  data_dir = os.path.join(work_dir, 'data')
  cifar_data.make_data_dir(data_dir)
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    cifar10_train.train(quick_params_for(data_dir, work_dir).replace(
        max_steps=TRAINED_STEPS, batch_size=TRAINED_BATCH_SIZE))
  return data_dir, os.path.join(work_dir, 'train'), printed.getvalue(
      ).splitlines()
