"""benchmark.py's parts that print what the README cites (not its speeds:
figures are measured by running it, never asserted by a test)."""

import json
import re
import subprocess
import sys

import pytest

import cifar10_runtime
from conftest import REPO_DIR
from helpers import run_script
from helpers import run_scripts


def test_profile_prints_the_ops_of_a_traced_step_by_type():
  for result in run_scripts(
      ('benchmark.py', '--profile', '--batch_size=16'),
      ('benchmark.py', '--profile', '--batch_size=16', '--mixed_precision')):
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


def test_a_run_prints_its_table_and_writes_its_figures(data_dir, tmp_path):
  # The whole benchmark, as the README runs it, made small: the tests' data
  # (250 test images), batches of 16, 60 steps a training run.
  json_path = str(tmp_path / 'figures.json')
  result = run_script('benchmark.py', '--data_dir=' + data_dir, '--steps=60',
                      '--warmup_steps=10', '--batch_size=16',
                      '--json=' + json_path)
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''
  lines = result.stdout.splitlines()
  assert re.match(r'^Measuring now on .+ \(\d+ cores\), TensorFlow [\d.]+, '
                  r'real data, 1 repeat\(s\)\.$', lines[0]), lines[0]
  with open(json_path) as f:
    written = json.load(f)
  assert (written['batch_size'], written['steps'], written['repeats'],
          written['data']) == (16, 60, 1, 'real')
  assert round(written['mflop_per_training_image'], 1) == 110.5
  figures = written['figures']['now']
  rows = {line[:46]: line[46:].strip() for line in lines}
  for label, key in TABLE:
    value = figures[key]
    assert value > 0, key
    printed = rows['%-46s' % label]
    if key.startswith(('share', 'mixed_precision_share')):
      assert printed == '%.0f%%' % (100 * value), key
    elif key.endswith('_secs'):
      assert printed == '%.1f s' % value, key
    else:
      assert float(printed.split()[0]) == round(value), key
  for label, key in [("the model's convolutions alone, float32",
                      'convolutions_gflops'),
                     ("the model's convolutions alone, bfloat16",
                      'bfloat16_convolutions_gflops'),
                     ('float32 matmul, numpy 4096x4096', 'matmul_gflops')]:
    assert rows['%-46s' % label] == '%.0f GFLOP/s' % written[key]
  # Each target, met or missed, said once.
  targets = lines[lines.index('Targets (now):') + 1:]
  targets = targets[:targets.index('')]
  assert targets and all(re.match(r'^  \[(met|MISSED)\] ', t) for t in targets)
  assert lines[-1] == 'Figures written to %s.' % json_path


def test_flops_per_training_image_from_the_graph():
  flops, by_type = cifar10_runtime.training_flops_per_image()
  # conv2's forward (29.5 MFLOP) and both its gradients, conv1 forward and
  # filter gradient, the fully connected layers, LRN's products and its
  # few elementwise ops: 110.5.
  assert round(flops / 1e6, 1) == 110.5
  assert round(by_type['Conv2D'] / 1e6, 2) == 35.02
  assert round(by_type['Conv2DBackpropInput'] / 1e6, 2) == 29.49
  local, _ = cifar10_runtime.training_flops_per_image(
      top_layers='locally_connected')
  assert round(local / 1e6, 1) == 130.8
  more_classes, _ = cifar10_runtime.training_flops_per_image(num_classes=100)
  assert more_classes > flops


def _figures(**changes):
  """Figures of one tree, as the benchmark measures them."""
  figures = {
      'training_examples_per_sec': 1600.0, 'first_step_secs': 3.5,
      'peak_rss_mb': 900.0, 'mixed_precision_examples_per_sec': 2600.0,
      'step_with_input_per_sec': 1650.0, 'step_alone_per_sec': 1700.0,
      'evaluation_images_per_sec': 4300.0,
      'evaluation_launch_to_result_secs': 4.8,
      'two_tower_examples_per_sec': 1700.0, 'share_of_matmul': 0.9}
  figures.update(changes)
  return figures


def _targets(figures, before=None):
  """benchmark._targets(figures, before), run in a process of its own (the
  benchmark's flags would clash with other scripts' in this one)."""
  result = subprocess.run(
      [sys.executable, '-c',
       'import json, sys; import benchmark; '
       'print(json.dumps(benchmark._targets(*json.load(sys.stdin))))'],
      input=json.dumps([figures, before]), cwd=REPO_DIR, capture_output=True,
      text=True, check=True)
  return dict(json.loads(result.stdout))


def test_targets_of_the_second_round_are_relative_to_the_code_before():
  before = _figures(mixed_precision_examples_per_sec=None,
                    training_examples_per_sec=1300.0, peak_rss_mb=890.0)
  assert _targets(_figures(), before) == {
      'training >= 55% of the matmul rate (90%)': True,
      'training step on the input pipeline within 5% of the step alone '
      '(2.9% below)': True,
      'evaluation >= 3,000 images/sec (4300)': True,
      'launch to first step <= 10 s (3.5 s)': True,
      'peak resident memory <= 1 GB (900 MB)': True,
      'two towers no more than 5% slower than one (+6.2%)': True,
      'evaluation launch to result <= 5 s (4.8 s)': True,
      'evaluation >= 6,000 images/sec (4300)': False,
      'launch to first step <= 4 s (3.5 s)': True,
      'training >= 1.5x before (1.23x)': False,
      'mixed precision training >= 2x the float32 training before (2.00x)':
          True,
      'peak memory no higher than before, within 2% (+1.1%)': True,
  }
  # Without a revision to compare with, only the absolute targets.
  assert len(_targets(_figures())) == 9
  assert not _targets(_figures(peak_rss_mb=910.0), before)[
      'peak memory no higher than before, within 2% (+2.2%)']
