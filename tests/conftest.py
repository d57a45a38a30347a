"""Shared fixtures: small data sets, their Params, and quick training runs.

The library reads no flags: the tests give each function its settings, as
a params_lib.Params, and run the scripts (with flags) as a user does.

The tests check the CPU path on every machine: this process and every
script it starts see no GPU, whatever the machine has (how the graphs are
placed on GPUs is checked from TensorFlow's kernel registry, in
test_gpu_placement.py; on real GPUs, tools/gpu_check.py checks the rest).
A test makes a script see another machine (GPUs, a CPU with or without
fast bfloat16) with helpers.as_if; in this process, by patching
cifar10_support.devices.
"""

import os
import sys

# Before TensorFlow is imported, by this module or by any script started.
os.environ['CUDA_VISIBLE_DEVICES'] = ''

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

import contextlib  # pylint: disable=g-import-not-at-top,g-bad-import-order
import fcntl  # pylint: disable=g-import-not-at-top
import io  # pylint: disable=g-import-not-at-top
import json  # pylint: disable=g-import-not-at-top

import pytest  # pylint: disable=g-import-not-at-top

from cifar10_support import kernels  # pylint: disable=g-import-not-at-top
from cifar10_support import params as params_lib  # pylint: disable=g-import-not-at-top
import cifar10_train  # pylint: disable=g-import-not-at-top

sys.path.insert(0, _TESTS_DIR)
import cifar_data  # pylint: disable=g-import-not-at-top

REPO_DIR = os.path.dirname(_TESTS_DIR)
# The tools (benchmark.py, gpu_check.py), which the tests import too.
sys.path.insert(0, os.path.join(REPO_DIR, 'tools'))

# The variables of a training that count (steps, examples): integers, whatever
# the model's float type.
COUNTS = ('global_step', 'examples_seen')

# Training in the tests waits for few images: 200 of the 320 of an epoch of
# the small data.
SMALL_QUEUE_FRACTION = 0.625


# The files whose tests take longest, longest first (as measured here, 2
# cores, with --durations=0): they start first, on different workers, and
# the short ones fill in at the end.
LONGEST_FIRST = ['test_distributed.py', 'test_gpu_check.py',
                 'test_train_eval.py', 'test_faults.py', 'test_benchmark.py',
                 'test_writers_and_full_disk.py', 'test_multi_gpu.py',
                 'test_other_machines.py', 'test_precision_and_devices.py',
                 'test_own_data.py', 'test_gpu_placement.py']


def pytest_configure(config):
  # This project's CPU kernels are compiled here, once, before any test
  # starts a script (whose output they check): a new checkout's first run
  # compiles them (about 20 seconds); the next find them in ~/.cache/cifar10.
  # (xdist's workers find them built by the controller.)
  if not hasattr(config, 'workerinput'):
    kernels.library()


def pytest_collection_modifyitems(items):
  def rank(item):
    name = os.path.basename(str(item.fspath))
    return (LONGEST_FIRST.index(name) if name in LONGEST_FIRST else
            len(LONGEST_FIRST))
  items.sort(key=rank)  # Stable: each file's tests keep their order.


# Set by .ci/run: a test that cannot run here for want of a capability of the
# machine (to mount a small filesystem, to make a machine of its own) fails
# rather than skips, so that CI cannot pass without checking it. A
# contributor's plain `pytest` skips it, saying why.
STRICT = os.environ.get('CIFAR10_TESTS_STRICT') == '1'


def require(capable, reason):
  """Skips the test unless `capable`, saying `reason`; fails under STRICT."""
  if capable:
    return
  if STRICT:
    pytest.fail('CIFAR10_TESTS_STRICT=1, and ' + reason, pytrace=False)
  pytest.skip(reason)


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
  return params_lib.Params(
      data_dir=data_dir, train_dir=train_dir, checkpoint_dir=train_dir,
      eval_dir=os.path.join(work_dir, 'eval'), batch_size=32,
      min_fraction_of_examples_in_queue=SMALL_QUEUE_FRACTION,
      log_frequency=10, run_once=True)


@pytest.fixture
def quick_params(data_dir, tmp_path):
  """Params for a quick training and evaluation on the small data."""
  return quick_params_for(data_dir, str(tmp_path))


# The learning rate of the tests that train until the model has learnt:
# half the tutorial's 0.1. Their small data in batches of 32 or 64 learns
# at either, but at 0.1 it learns at the edge of divergence: loss spikes up
# to 9.6 (from 2-4), and some runs diverge or stall (own data 1 of 20,
# float16 1 of 6, synchronous workers 1 of 18; tests/README.md has the
# counts). At 0.05 no run of any of them diverged or stalled.
LEARNING_RATE = 0.05

# Enough for the learnable data to be learnt, reliably: at LEARNING_RATE,
# 15 of 15 single-tower and 15 of 15 two-tower runs here reached precision
# 1.000 by step 200, their loss at its floor (2.24, the weight decay) by
# step 150, its highest after step 10 at most 4.25. (At 0.1: 15 and 15
# learnt, with spikes up to 9.6.)
TRAINED_STEPS = 200
TRAINED_BATCH_SIZE = 64


def shared_dir(tmp_path_factory, name):
  """A folder of this run shared by its pytest-xdist workers (each has a
  temporary folder of its own, below a common one)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent
  return str(root / name)


@contextlib.contextmanager
def made_once(directory):
  """Yields whether `directory` must be made: True to the first process of
  the run that asks, which makes it while the others wait; False after."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, '.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    done = os.path.join(directory, '.done')
    must_make = not os.path.exists(done)
    yield must_make
    if must_make:
      open(done, 'w').close()


@pytest.fixture(scope='session')
def trained(tmp_path_factory):
  """One quick training of TRAINED_STEPS steps, shared by the tests (and by
  the parallel workers of a run).

  Returns:
    (data_dir, train_dir, the lines the training printed). Tests copy the
    train dir before they change anything in it.
  """
  from helpers import resolved  # pylint: disable=g-import-not-at-top  (it imports us)
  work_dir = shared_dir(tmp_path_factory, 'trained')
  data_dir = os.path.join(work_dir, 'data')
  printed_path = os.path.join(work_dir, 'printed.json')
  with made_once(work_dir) as must_make:
    if must_make:
      cifar_data.make_data_dir(data_dir)
      printed = io.StringIO()
      params = quick_params_for(data_dir, work_dir).replace(
          max_steps=TRAINED_STEPS, batch_size=TRAINED_BATCH_SIZE,
          initial_learning_rate=LEARNING_RATE)
      with contextlib.redirect_stdout(printed):
        cifar10_train.train(*resolved(params))
      with open(printed_path, 'w') as f:
        json.dump(printed.getvalue().splitlines(), f)
  with open(printed_path) as f:
    return data_dir, os.path.join(work_dir, 'train'), json.load(f)
