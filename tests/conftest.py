"""Shared fixtures: parsed flags, small data sets, and quick training runs."""

import contextlib
import io
import os
import sys

from absl import flags
from absl.testing import flagsaver
import pytest

import cifar10  # pylint: disable=unused-import  (defines the model flags)
import cifar10_eval  # pylint: disable=unused-import  (defines eval flags)
import cifar10_train  # pylint: disable=unused-import  (defines train flags)

sys.path.insert(0, os.path.dirname(__file__))
import cifar_data  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Training in the tests waits for few images: 200 of the 320 of an epoch of
# the small data.
SMALL_QUEUE_FRACTION = 0.625


def pytest_configure(config):
  del config
  if not FLAGS.is_parsed():
    FLAGS(['pytest'])


@pytest.fixture(autouse=True)
def _restore_flags(tmp_path):
  """Every test starts from the default flag values and leaves them so.

  Except --data_dir, an empty folder: the default one, /tmp/cifar10_data, may
  hold data (the user's own, with other classes) that the tests must not see.
  """
  with flagsaver.flagsaver():
    FLAGS.data_dir = str(tmp_path / 'no_data')
    yield


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


def _set_quick_flags(data_dir, work_dir):
  FLAGS.data_dir = data_dir
  FLAGS.train_dir = os.path.join(work_dir, 'train')
  FLAGS.eval_dir = os.path.join(work_dir, 'eval')
  FLAGS.checkpoint_dir = FLAGS.train_dir
  FLAGS.batch_size = 32
  FLAGS.min_fraction_of_examples_in_queue = SMALL_QUEUE_FRACTION
  FLAGS.log_frequency = 10
  FLAGS.run_once = True


@pytest.fixture
def quick_flags(data_dir, tmp_path):
  """Flags for a quick training and evaluation on the small data."""
  _set_quick_flags(data_dir, str(tmp_path))
  return FLAGS


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
  with flagsaver.flagsaver(), contextlib.redirect_stdout(printed):
    _set_quick_flags(data_dir, work_dir)
    FLAGS.max_steps = TRAINED_STEPS
    FLAGS.batch_size = TRAINED_BATCH_SIZE
    cifar10_train.train()
  return data_dir, os.path.join(work_dir, 'train'), printed.getvalue(
      ).splitlines()
