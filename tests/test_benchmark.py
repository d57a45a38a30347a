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


@pytest.mark.parametrize('precision', [[], ['--mixed_precision']])
def test_profile_prints_the_ops_of_a_traced_step_by_type(precision):
  result = run_script('benchmark.py', '--profile', '--batch_size=16',
                      *precision)
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
