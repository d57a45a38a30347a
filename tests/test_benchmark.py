"""benchmark.py's parts that print what the README cites (not its speeds:
figures are measured by running it, never asserted by a test)."""

import re

import pytest

import cifar10_runtime
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
  # filter gradient, the fully connected layers, LRN's products: 110.8.
  assert round(flops / 1e6, 1) == 110.8
  assert round(by_type['Conv2D'] / 1e6, 2) == 35.02
  assert round(by_type['Conv2DBackpropInput'] / 1e6, 2) == 29.49
  local, _ = cifar10_runtime.training_flops_per_image(
      top_layers='locally_connected')
  assert round(local / 1e6, 1) == 131.0
  more_classes, _ = cifar10_runtime.training_flops_per_image(num_classes=100)
  assert more_classes > flops
