"""tools/benchmark.py's parts that print what the README cites (not its speeds:
figures are measured by running it, never asserted by a test)."""

import json
import re

import benchmark
from helpers import run_script
from helpers import run_scripts


def test_profile_prints_the_ops_of_a_traced_step_by_type(tmp_path):
  # A step on a batch in memory: no data needed (none where --data_dir
  # points).
  no_data = '--data_dir=' + str(tmp_path / 'none')
  for result in run_scripts(
      ('tools/benchmark.py', '--profile', '--batch_size=16', no_data),
      ('tools/benchmark.py', '--profile', '--batch_size=16', no_data,
       '--mixed_precision')):
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
  result = run_script('tools/benchmark.py', '--data_dir=' + data_dir,
                      '--steps=60', '--warmup_steps=10', '--batch_size=16',
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
  flops, by_type = benchmark.training_flops_per_image()
  # conv2's forward (29.5 MFLOP) and both its gradients, conv1 forward and
  # filter gradient, the fully connected layers, LRN's products and its
  # few elementwise ops: 110.5.
  assert round(flops / 1e6, 1) == 110.5
  assert round(by_type['Conv2D'] / 1e6, 2) == 35.02
  assert round(by_type['Conv2DBackpropInput'] / 1e6, 2) == 29.49
  local, _ = benchmark.training_flops_per_image(
      top_layers='locally_connected')
  assert round(local / 1e6, 1) == 130.8
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
