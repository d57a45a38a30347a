"""gpu_check.py, the one command for the first machine with GPUs, walked here
as far as a CPU allows; and the traces of GPU steps it and the benchmark
read."""

import json
import stat
import time

import pytest

from cifar10_support import devices
from cifar10_support.quiet import tf
import gpu_check
from helpers import run_main


def _gpu_step_trace():
  """The step statistics of a traced step on a GPU, as TensorFlow writes
  them (xplane_to_step_stats): the executor's entries of the CPU and GPU,
  then the GPU's own: every kernel again in 'stream:all' and in its stream,
  the copies in 'memcpy' and in their stream, the waits in 'sync'."""
  stats = tf.RunMetadata().step_stats
  entries = {
      '/job:localhost/replica:0/task:0/device:CPU:0': [
          ('shuffle_batch', 'shuffle_batch = QueueDequeueManyV2(q, n)', 100),
          ('conv1/weights/Read',
           '[cpu 0.1MB] conv1/weights/Read = ReadVariableOp(conv1/weights)',
           5),
          ('GradientDescent/update_conv1',
           'GradientDescent/update_conv1 = ResourceApplyGradientDescent(a, '
           'b, c)', 50)],
      # Launches of the GPU ops, as the executor times them.
      '/job:localhost/replica:0/task:0/device:GPU:0': [
          ('conv1/Conv2D', 'conv1/Conv2D = Conv2D(Cast, conv1/Cast)', 3),
          ('conv1/Relu', 'conv1/Relu = Relu(conv1/BiasAdd)', 2)],
      '/device:GPU:0/stream:all': [
          ('conv1/Conv2D:Conv2D', 'implicit_convolve_sgemm grid:1', 400),
          ('conv1/Conv2D:Conv2D', 'cudnn::winograd grid:2', 100),
          ('conv1/Relu:Relu', 'Eigen::TensorExecutor grid:3', 20)],
      '/device:GPU:0/stream:7': [
          ('conv1/Conv2D:Conv2D', 'implicit_convolve_sgemm grid:1', 400),
          ('conv1/Conv2D:Conv2D', 'cudnn::winograd grid:2', 100),
          ('conv1/Relu:Relu', 'Eigen::TensorExecutor grid:3', 20)],
      '/device:GPU:0/stream:12<MemcpyH2D>': [
          ('Cast', 'MemcpyH2D 1179648 bytes', 30)],
      '/device:GPU:0/memcpy': [('Cast', 'MemcpyH2D 1179648 bytes', 30)],
      '/device:GPU:0/sync': [('cuStreamSynchronize', 'ThreadId 7', 10)],
      '/device:GPU:0/stream:': [('cuEventRecord', 'cuEventRecord', 1)],
  }
  for device, nodes in entries.items():
    entry = stats.dev_stats.add(device=device)
    for node_name, label, micros in nodes:
      entry.node_stats.add(node_name=node_name, timeline_label=label,
                           all_end_rel_micros=micros)
  return stats


def test_a_gpu_step_is_counted_from_its_trace_each_op_once():
  trace = _gpu_step_trace()
  # What TensorFlow's own device names do with them: gpu_check counted so,
  # and would have died on its first traced step.
  with pytest.raises(ValueError, match='stream'):
    tf.DeviceSpec.from_string('/device:GPU:0/stream:all')
  assert devices.trace_device('/device:GPU:0/stream:12<MemcpyH2D>') == (
      'GPU', 0, 'stream:12<MemcpyH2D>')
  assert devices.trace_device(
      '/job:localhost/replica:0/task:0/device:CPU:0') == ('CPU', 0, None)
  assert gpu_check.count_placement(trace) == {
      'ops': {'CPU': 3, 'GPU': 2}, 'gpu_kernels': 3, 'gpu_copies': 1}
  # The profile (benchmark.py --profile): the CPU's ops as its executor
  # timed them, the GPU's kernels once each, by the op that launched them,
  # and its copies; not the launches, nor the kernels' second entries.
  assert devices.op_times_by_type(trace) == {
      'QueueDequeueManyV2': [100, 1], 'ReadVariableOp': [5, 1],
      'ResourceApplyGradientDescent': [50, 1], 'Conv2D': [500, 2],
      'Relu': [20, 1], 'MemcpyH2D': [30, 1]}


def test_gpu_memory_is_read_per_gpu_from_nvidia_smi(tmp_path):
  # Per GPU, not per process: in a container nvidia-smi gives the host's
  # process IDs, which match none of the container's.
  assert gpu_check.parse_gpu_memory('0, 1520\n1, 3\n\n') == {0: 1520, 1: 3}
  script = tmp_path / 'nvidia-smi'
  counter = tmp_path / 'count'
  # Each call: GPU 0 at 100, 100, 600, 900, 700, ... MiB; GPU 1 at 5.
  script.write_text(
      '#!/bin/sh\nn=$(cat %s 2>/dev/null || echo 0)\necho $((n + 1)) > %s\n'
      'case $n in 0|1) m=100;; 2) m=600;; 3) m=900;; *) m=700;; esac\n'
      'echo "0, $m"\necho "1, 5"\n' % (counter, counter))
  script.chmod(script.stat().st_mode | stat.S_IEXEC)
  watcher = gpu_check.GpuMemoryWatcher(interval_secs=0.01,
                                       query=[str(script)])
  deadline = time.time() + 30
  try:
    while len(watcher.samples) < 6 and time.time() < deadline:
      time.sleep(0.01)
  finally:
    watcher.stop()
  times = [when for when, _ in watcher.samples]
  assert [mib for _, mib in watcher.samples[:5]] == [105, 105, 605, 905, 705]
  # A run from the second sample on: its peak above the level before.
  assert watcher.peak_during(times[1], times[4]) == 905 - 105
  assert watcher.peak_during(times[-1] + 1, times[-1] + 2) is None


def test_gpu_check_without_a_gpu_says_so_and_succeeds():
  result = run_main('tools/gpu_check.py')
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''
  assert result.stdout == (
      'No GPU found: nothing to check on this machine (the checks that need '
      'none are tests/test_gpu_placement.py).\n')


def test_gpu_check_walks_every_step_on_a_cpu(tmp_path, monkeypatch):
  # The whole command, as on a machine with two GPUs: its traced steps and
  # tower checks in this process (the GPUs faked: soft placement runs them
  # on the CPU, in float16 for mixed precision, as on a GPU), every script
  # run in its own process (which sees no GPU), the table, the JSON.
  monkeypatch.setattr(devices, 'gpus', lambda: [
      '/physical_device:GPU:0', '/physical_device:GPU:1'])
  figures_path = str(tmp_path / 'gpu_check.json')
  result = run_main('tools/gpu_check.py', '--training_steps=20',
                    '--batch_size=8', '--figures_json=' + figures_path)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == ('2 GPU(s): /physical_device:GPU:0, '
                      '/physical_device:GPU:1')
  with open(figures_path) as f:
    figures = json.load(f)
  for precision in ('float32', 'mixed precision'):
    placement = figures['placement'][precision]
    # No GPU here: every op on the CPU, no kernel, no copy.
    assert set(placement['ops']) == {'CPU'} and placement['ops']['CPU'] > 100
    assert (placement['gpu_kernels'], placement['gpu_copies']) == (0, 0)
    # float16 keeps 11 bits of mantissa (2e-6 in float32).
    assert figures['towers_equal_one'][precision] < (
        0.01 if precision == 'mixed precision' else 1e-4)
  rows = {row['run']: row for row in figures['runs']}
  for label in ('', ' (mixed precision)'):
    for run in ('cifar10_train.py, 1 GPU',
                'cifar10_multi_gpu_train.py, 1 tower(s)',
                'cifar10_multi_gpu_train.py, 2 tower(s)',
                'training and evaluation together, 1 GPU'):
      row = rows.pop(run + label)
      assert row['examples_per_sec'] > 0, row
      assert row['peak_gpu_mib'] is None  # No nvidia-smi here.
      if run.startswith('training and evaluation'):
        assert 0 <= row['precision'] <= 1
  assert not rows
  assert [line.split()[0] for line in lines[3:-1]] == ['run'] + [
      row['run'].split()[0] for row in figures['runs']]
  assert lines[-1] == 'Done in %.0f s; figures written to %s.' % (
      figures['seconds'], figures_path)
