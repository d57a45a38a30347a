"""tools/benchmark.py's parts that print what the README cites (not its speeds:
figures are measured by running it, never asserted by a test)."""

import datetime
import json
import os
import re
import subprocess
import types

import pytest

import benchmark
from cifar10_support import runtime
import conftest
from conftest import REPO_DIR
from helpers import run_main
from helpers import run_script


@pytest.mark.parametrize('precision', [[], ['--mixed_precision']])
def test_profile_prints_the_ops_of_a_traced_step_by_type(precision, tmp_path):
  # A step on a batch in memory: no data needed (none where --data_dir
  # points).
  result = run_main('tools/benchmark.py', '--profile', '--batch_size=16',
                    '--data_dir=' + str(tmp_path / 'none'), *precision)
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''
  lines = result.stdout.splitlines()
  assert re.match(r'^One training step, batch 16, traced: [\d.]+ ms of ops '
                  r'\([\d.]+ ms wall time, traced\)\.$', lines[0]), lines
  rows = [re.match(r'^(\w+)\s+([\d.]+)\s+([\d.]+)%\s+(\d+)$', line)
          for line in lines[2:]]
  assert all(rows) and rows, lines
  types = {m.group(1) for m in rows}
  # The convolutions, forward and backward, are there, whatever kernels
  # this build of TensorFlow runs them with.
  assert any('Conv2D' in t and 'Backprop' not in t for t in types), types
  assert any('Conv2DBackpropFilter' in t for t in types), types
  shares = [float(m.group(3)) for m in rows]
  assert shares == sorted(shares, reverse=True) and sum(shares) <= 100.5


# The rows of the benchmark's table: label, and the figure of the JSON.
TABLE = [
    ('training, real input pipeline', 'training_examples_per_sec'),
    ('  all steps, summary steps included',
     'training_all_steps_examples_per_sec'),
    ('  launch to first step (queue fill included)', 'first_step_secs'),
    ('  peak resident memory', 'peak_rss_mb'),
    ('training with --mixed_precision', 'mixed_precision_examples_per_sec'),
    ('training step on the real input pipeline', 'step_with_input_per_sec'),
    ('  the same, batch in memory, in turn with it', 'step_alone_per_sec'),
    ('input pipeline alone', 'input_alone_per_sec'),
    ('evaluation, whole test set', 'evaluation_images_per_sec'),
    ('  launch to printed result (--run_once)',
     'evaluation_launch_to_result_secs'),
    ('forward pass alone, in memory', 'forward_alone_per_sec'),
    ('two-tower training', 'two_tower_examples_per_sec'),
    ('training FLOP rate', 'training_gflops'),
    ("  as a share of the convolutions' rate alone", 'share_of_convolutions'),
    ('  as a share of the matmul rate', 'share_of_matmul'),
    ("  mixed precision, share of bfloat16's",
     'mixed_precision_share_of_convolutions'),
]
# The figures derived from others: the FLOP rates, and their shares.
DERIVED = {'training_gflops', 'share_of_convolutions', 'share_of_matmul',
           'mixed_precision_share_of_convolutions'}


def _printed(value, key):
  """A figure as the table prints it (without its unit)."""
  if key.startswith(('share', 'mixed_precision_share')):
    return '%.0f%%' % (100 * value)
  if key.endswith('_secs'):
    return '%.1f' % value
  return '%.0f' % value


def test_a_run_prints_its_table_and_writes_its_figures(tmp_path):
  # The whole benchmark as the README runs it, made small: synthetic data
  # (no --data_dir) of 200 images a file, batches of 16, 60 steps a training
  # run, small ceilings.
  json_path = str(tmp_path / 'figures.json')
  result = run_script('tools/benchmark.py', '--synthetic_images=200',
                      '--steps=60', '--warmup_steps=10', '--batch_size=16',
                      '--ceilings_batch_size=8', '--matmul_size=256',
                      '--json=' + json_path)
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''
  lines = result.stdout.splitlines()
  assert re.match(r'^Measuring now on .+ \(\d+ cores\), TensorFlow [\d.]+, '
                  r'synthetic data, 1 repeat\(s\)\.$', lines[0]), lines[0]
  with open(json_path) as f:
    written = json.load(f)
  assert (written['batch_size'], written['steps'], written['repeats'],
          written['data']) == (16, 60, 1, 'synthetic')
  flops = written['mflop_per_training_image'] * 1e6
  assert round(flops / 1e6, 1) == 110.5
  # The figures: the medians of the samples, and the FLOP rates those
  # make, each computed here again.
  figures, samples = written['figures']['now'], written['samples']['now']
  assert set(samples) == {key for _, key in TABLE} - DERIVED
  for key, values in samples.items():
    assert len(values) == 1 and figures[key] == values[0] > 0, key
  assert figures['training_gflops'] == pytest.approx(
      figures['training_examples_per_sec'] * flops / 1e9)
  assert figures['share_of_convolutions'] == pytest.approx(
      figures['training_gflops'] / written['convolutions_gflops'])
  assert figures['share_of_matmul'] == pytest.approx(
      figures['training_gflops'] / written['matmul_gflops'])
  assert figures['mixed_precision_share_of_convolutions'] == pytest.approx(
      figures['mixed_precision_examples_per_sec'] * flops / 1e9 /
      written['bfloat16_convolutions_gflops'])
  rows = {line[:46]: line[46:].split() for line in lines}
  for label, key in TABLE:
    assert rows['%-46s' % label][0] == _printed(figures[key], key), label
  for label, key in CEILINGS:
    assert rows['%-46s' % label] == ['%.0f' % written[key], 'GFLOP/s']
  targets = lines[lines.index('Targets (now):') + 1:]
  targets = targets[:targets.index('')]
  assert targets and all(re.match(r'^  \[(met|MISSED)\] ', t) for t in targets)
  assert lines[-1] == 'Figures written to %s.' % json_path


# The ceilings' rows at the tests' sizes (--ceilings_batch_size=8,
# --matmul_size=256).
CEILINGS = [('convolutions alone, float32, batch 8', 'convolutions_gflops'),
            ('convolutions alone, bfloat16, batch 8',
             'bfloat16_convolutions_gflops'),
            ('float32 matmul, numpy 256x256', 'matmul_gflops')]


def test_a_comparison_measures_a_revision_in_turn_with_this_checkout(
    tmp_path, monkeypatch):
  # --compare_with=HEAD: the revision's files, from git, measured in turn
  # with this checkout, measurement by measurement, then both in the table
  # with their ratio, and the targets against the revision. (What one
  # measurement of a tree is, the test above runs; here each tree's figures
  # are given: 1.0, 2.0, ... for HEAD, twice as much for this checkout.)
  git = subprocess.run(['git', 'show', 'HEAD:cifar10_train.py'], cwd=REPO_DIR,
                       capture_output=True, text=True)
  conftest.require(git.returncode == 0, 'the checkout is not a git '
                   'repository: --compare_with has no revision to measure')
  measured = []

  def measure_tree(tree, data_dir, work_dir):
    with open(os.path.join(tree, 'cifar10_train.py')) as f:
      name = 'HEAD' if f.read() == git.stdout and tree != REPO_DIR else 'now'
    for i, key in enumerate(sorted({key for _, key in TABLE} - DERIVED), 1):
      measured.append((name, key))
      yield key, float(i) * (2 if name == 'now' else 1)

  monkeypatch.setattr(benchmark, '_measure_tree', measure_tree)
  json_path = str(tmp_path / 'figures.json')
  result = run_main('tools/benchmark.py', '--compare_with=HEAD',
                    '--synthetic_images=100', '--ceilings_batch_size=8',
                    '--matmul_size=256', '--json=' + json_path)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith('Measuring HEAD and now on ')
  # In turn: HEAD's first figure, this checkout's, HEAD's second, ...
  assert measured[:4] == [('HEAD', measured[0][1]), ('now', measured[0][1]),
                          ('HEAD', measured[2][1]), ('now', measured[2][1])]
  assert len(measured) == 2 * (len(TABLE) - len(DERIVED))
  rows = {line[:46]: line[46:].split() for line in lines}
  with open(json_path) as f:
    written = json.load(f)
  for label, key in TABLE:
    before, now = (written['figures'][tree][key] for tree in ('HEAD', 'now'))
    assert now == pytest.approx(2 * before), key
    cells = rows['%-46s' % label]
    assert cells[0] == _printed(before, key), (label, cells)
    if not key.startswith(('share', 'mixed_precision_share')):
      assert cells[-1] == '2.00x', (label, cells)
  targets = lines[lines.index('Targets (now, against HEAD):') + 1:]
  targets = targets[:targets.index('')]
  assert '  [met] training as fast as before, >= 0.9x (2.00x)' in targets
  assert '  [MISSED] peak memory no higher than before, within 2% (+100.0%)' in (
      targets)


def test_training_figures_read_the_log_lines(monkeypatch):
  # The steps after the warm-up (50): four stretches of 10 at 2,000
  # examples/sec, and one with a summary step at 1,000. The median leaves
  # that one out; the rate of all their time does not: 5 stretches of 1,280
  # examples in 4 x 0.64 + 1.28 s.
  rates = {10: 2000.0, 50: 2000.0, 60: 2000.0, 70: 2000.0, 80: 1000.0,
           90: 2000.0, 100: 2000.0}
  lines = [runtime.LOG_LINE_FORMAT % (
      datetime.datetime(2026, 12, 7, 12, 0, 0, 1), step, 2.3, rate,
      128 / rate) for step, rate in rates.items()] + ['Done training.']
  monkeypatch.setattr(benchmark, 'FLAGS', types.SimpleNamespace(
      steps=100, warmup_steps=50, batch_size=128, mixed_precision=False,
      top_layers='fully_connected'))
  monkeypatch.setattr(benchmark, '_run_script',
                      lambda *args, **kwargs: (lines, 3.2, 810e6))
  figures = benchmark._training_figures('tree', 'cifar10_train.py', [],
                                        'data', 'train')
  assert figures == {'examples_per_sec': 2000.0,
                     'examples_per_sec_all_steps': pytest.approx(
                         5 * 1280 / (4 * 0.64 + 1.28)),
                     'first_step_secs': 3.2, 'peak_rss_mb': 810.0}


def test_flops_per_training_image_from_the_graph():
  flops, by_type = benchmark.training_flops_per_image()
  # conv2's forward (29.5 MFLOP) and both its gradients, conv1 forward and
  # filter gradient, the fully connected layers, LRN's products and its
  # few elementwise ops: 110.5 (conv1's biases' gradient sums pool1's
  # maxima alone, a quarter of conv1's places).
  assert round(flops / 1e6, 1) == 110.5
  assert round(by_type['Conv2D'] / 1e6, 2) == 35.02
  assert round(by_type['Conv2DBackpropInput'] / 1e6, 2) == 29.49
  local, _ = benchmark.training_flops_per_image(
      top_layers='locally_connected')
  assert round(local / 1e6, 1) == 130.7
  more_classes, _ = benchmark.training_flops_per_image(num_classes=100)
  assert more_classes > flops


def _figures(**changes):
  """Figures of one tree, as the benchmark measures them."""
  figures = {
      'training_examples_per_sec': 1600.0, 'first_step_secs': 3.5,
      'peak_rss_mb': 900.0, 'mixed_precision_examples_per_sec': 2600.0,
      'step_with_input_per_sec': 1650.0, 'step_alone_per_sec': 1700.0,
      'evaluation_images_per_sec': 4300.0,
      'evaluation_launch_to_result_secs': 4.8,
      'two_tower_examples_per_sec': 1700.0}
  figures.update(changes)
  return figures


def test_the_current_targets_and_the_same_speed_as_a_revision():
  assert dict(benchmark.targets(_figures())) == {
      'launch to first step <= 4 s (3.5 s)': True,
      'evaluation, launch to printed result <= 5 s (4.8 s)': True,
      'peak resident memory of training <= 1 GB (900 MB)': True,
      'the input pipeline costs the training step <= 5% (2.9%)': True,
      'two towers no more than 5% slower than one (+6.2%)': True,
      'mixed precision training >= 1.5x float32 (1.62x)': True,
  }
  # Mixed precision must pay only where the CPU computes bfloat16 fast.
  assert len(benchmark.targets(_figures(), fast_bfloat16=False)) == 5
  # Against a revision: the same speeds, within the noise of one run, and
  # no more memory.
  before = _figures(training_examples_per_sec=1800.0, peak_rss_mb=890.0,
                    evaluation_images_per_sec=4700.0)
  compared = dict(benchmark.targets(_figures(), before)[6:])
  assert compared == {
      'training as fast as before, >= 0.9x (0.89x)': False,
      'mixed precision training as fast as before, >= 0.9x (1.00x)': True,
      'evaluation as fast as before, >= 0.9x (0.91x)': True,
      'two-tower training as fast as before, >= 0.9x (1.00x)': True,
      'peak memory no higher than before, within 2% (+1.1%)': True,
  }
  assert not dict(benchmark.targets(_figures(peak_rss_mb=910.0), before))[
      'peak memory no higher than before, within 2% (+2.2%)']
  assert not dict(benchmark.targets(_figures(
      step_with_input_per_sec=1600.0)))[
          'the input pipeline costs the training step <= 5% (5.9%)']
