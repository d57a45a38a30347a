"""Checks the tutorial on the GPUs of this machine: one command, minutes.

    python gpu_check.py            # a table, and gpu_check.json

On a machine with one or more NVIDIA GPUs (TensorFlow's CUDA build, see the
README's "On GPUs"), on small synthetic data of the real layout, in float32
and with --mixed_precision, it:

1. traces a training step on the first GPU and counts the ops that ran on a
   GPU and on the CPU; and compares two towers' gradients (one per GPU) with
   one tower's;
2. runs, each in its own process, cifar10_train.py on one GPU
   (--training_steps, 200), cifar10_multi_gpu_train.py with 1 tower and with
   one per GPU, and cifar10_eval.py --run_once on that GPU while
   cifar10_train.py trains on it (GPU memory growth lets both fit).

It prints a table (examples/sec, peak GPU memory of each process, precision
@ 1) and writes the figures as JSON. With no GPU it says so in one line and
exits 0; the checks that need no GPU (the kernel registry's) are the tests
of tests/test_gpu_placement.py.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from absl import flags
import numpy as np

import cifar10
import cifar10_common
import cifar10_input
import cifar10_params
import cifar10_runtime
from cifar10_quiet import tf

flags.DEFINE_integer('training_steps', 200, 'Training steps of each run.',
                     lower_bound=20)
flags.DEFINE_string('figures_json', 'gpu_check.json',
                    'Where to write the figures.')

FLAGS = flags.FLAGS
REPO_DIR = os.path.dirname(os.path.abspath(__file__))


class _GpuMemoryWatcher(object):
  """Polls nvidia-smi: the peak GPU memory of each process, in MiB."""

  def __init__(self, interval_secs=0.2):
    self.peaks = {}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._watch, args=(interval_secs,),
                                    daemon=True)
    self._thread.start()

  def _watch(self, interval_secs):
    while not self._stop.wait(interval_secs):
      try:
        output = subprocess.run(
            ['nvidia-smi', '--query-compute-apps=pid,used_memory',
             '--format=csv,noheader,nounits'], capture_output=True, text=True,
            timeout=10, check=False).stdout
      except (OSError, subprocess.TimeoutExpired):
        return  # No nvidia-smi: no memory figures.
      for line in output.splitlines():
        pid, _, used = line.partition(',')
        if pid.strip().isdigit() and used.strip().isdigit():
          pid, used = int(pid), int(used)
          self.peaks[pid] = max(self.peaks.get(pid, 0), used)

  def stop(self):
    self._stop.set()
    self._thread.join()


def _start(script, args, env=None):
  return subprocess.Popen(
      [sys.executable, os.path.join(REPO_DIR, script)] + args, cwd=REPO_DIR,
      env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def _finish(process, what):
  stdout, stderr = process.communicate()
  if process.returncode:
    raise cifar10_common.UserError('%s failed:\n%s%s' % (what, stdout, stderr))
  return stdout.splitlines()


def _examples_per_sec(lines):
  rates = [float(m.group(3)) for m in map(cifar10_runtime.LOG_LINE.match,
                                          lines) if m]
  rates = rates[len(rates) // 3:]  # After the warm-up.
  return sorted(rates)[len(rates) // 2] if rates else None


def _precision(lines):
  for match in map(cifar10_runtime.EVAL_LINE.match, lines):
    if match:
      return float(match.group(1))
  return None


def run_checks(data_dir, work_dir, num_gpus):
  """Every run; returns the rows of the table."""
  rows = []
  watcher = _GpuMemoryWatcher()
  try:
    common = ['--data_dir=' + data_dir,
              '--max_steps=%d' % FLAGS.training_steps,
              '--log_frequency=10']
    for precision_flag in ([], ['--mixed_precision']):
      label = ' (mixed precision)' if precision_flag else ''
      runs = [('cifar10_train.py, 1 GPU' + label, 'cifar10_train.py', [],
               {'CUDA_VISIBLE_DEVICES': '0'})]
      for towers in sorted({1, num_gpus}):
        runs.append(('cifar10_multi_gpu_train.py, %d tower(s)%s' % (
            towers, label), 'cifar10_multi_gpu_train.py',
                     ['--num_gpus=%d' % towers], None))
      for name, script, args, env in runs:
        train_dir = tempfile.mkdtemp(dir=work_dir)
        process = _start(script, common + args + precision_flag +
                         ['--train_dir=' + train_dir], env)
        lines = _finish(process, name)
        rows.append({'run': name, 'examples_per_sec': _examples_per_sec(lines),
                     'peak_gpu_mib': watcher.peaks.get(process.pid)})
      # Evaluation beside training, on one GPU.
      train_dir = tempfile.mkdtemp(dir=work_dir)
      one_gpu = {'CUDA_VISIBLE_DEVICES': '0'}
      # A first checkpoint, for evaluation to find at once.
      _finish(_start('cifar10_train.py', common + precision_flag + [
          '--train_dir=' + train_dir, '--max_steps=20'], one_gpu),
              'a first checkpoint')
      training = _start('cifar10_train.py', common + precision_flag + [
          '--train_dir=' + train_dir], one_gpu)
      evaluation = _start('cifar10_eval.py', [
          '--data_dir=' + data_dir, '--checkpoint_dir=' + train_dir,
          '--eval_dir=' + tempfile.mkdtemp(dir=work_dir), '--run_once'],
                          one_gpu)
      eval_lines = _finish(evaluation, 'evaluation beside training')
      train_lines = _finish(training, 'training beside evaluation')
      rows.append({'run': 'training beside evaluation, 1 GPU' + label,
                   'examples_per_sec': _examples_per_sec(train_lines),
                   'peak_gpu_mib': watcher.peaks.get(training.pid)})
      rows.append({'run': 'evaluation beside training, 1 GPU' + label,
                   'precision': _precision(eval_lines),
                   'peak_gpu_mib': watcher.peaks.get(evaluation.pid)})
  finally:
    watcher.stop()
  return rows


def placement_of_a_step(data_dir, device, mixed_precision=False):
  """Runs one traced training step with the model on `device`.

  Returns:
    {device name: number of ops that ran there}.
  """
  params = cifar10_params.Params(data_dir=data_dir, batch_size=128,
                                  mixed_precision=mixed_precision)
  with tf.Graph().as_default():
    with tf.device('/cpu:0'):
      global_step = tf.train.get_or_create_global_step()
      images, labels = cifar10.distorted_inputs(
          data_dir, params.batch_size, params.compute_dtype)
    with tf.device(device):
      loss = cifar10.loss(cifar10.inference(
          images, variable_dtype=params.variable_dtype), labels)
      train_op = cifar10.train(loss, global_step,
                               loss_scale=params.loss_scale)
    config = cifar10_params.session_config(params, allow_soft_placement=True)
    with tf.train.MonitoredSession(session_creator=tf.train.ChiefSessionCreator(
        config=config)) as sess:
      sess.run(train_op)  # The first step: warm-up.
      metadata = tf.RunMetadata()
      sess.run(train_op, options=tf.RunOptions(
          trace_level=tf.RunOptions.FULL_TRACE), run_metadata=metadata)
  counts = {}
  for stats in metadata.step_stats.dev_stats:
    kind = tf.DeviceSpec.from_string(stats.device).device_type
    counts[kind] = counts.get(kind, 0) + len(stats.node_stats)
  return counts


def towers_equal_one(devices, mixed_precision=False):
  """The largest relative difference between the gradients of one tower of
  128 images and the mean of two towers of 64, on `devices` (two)."""
  rng = np.random.default_rng(7)
  images = rng.normal(size=(128, 24, 24, 3)).astype(np.float32)
  labels = rng.integers(0, 10, size=128).astype(np.int32)
  params = cifar10_params.Params(mixed_precision=mixed_precision)
  results, initial = [], None
  for halves in (False, True):
    with tf.Graph().as_default():
      tower_grads = []
      with tf.variable_scope(tf.get_variable_scope()):
        parts = [slice(0, 64), slice(64, 128)] if halves else [slice(0, 128)]
        for i, part in enumerate(parts):
          with tf.device(devices[i]), tf.name_scope('tower_%d' % i) as scope:
            logits = cifar10.inference(
                tf.cast(tf.constant(images[part]), params.compute_dtype),
                variable_dtype=params.variable_dtype)
            cifar10.loss(logits, tf.constant(labels[part]))
            # This tower's terms only: the collection holds every tower's.
            loss = tf.add_n(tf.get_collection('losses', scope))
            tower_grads.append(
                [g for g, _ in cifar10.gradients(loss, params.loss_scale)])
            tf.get_variable_scope().reuse_variables()
      mean = [tf.add_n(list(g)) / len(g) for g in zip(*tower_grads)]
      variables = tf.trainable_variables()
      with tf.Session(config=cifar10_params.session_config(
          params, allow_soft_placement=True)) as sess:
        sess.run(tf.global_variables_initializer())
        if initial is None:  # The same weights for both.
          initial = sess.run(variables)
        for variable, value in zip(variables, initial):
          variable.load(value, sess)
        results.append(sess.run(mean))
  return max(float(np.max(np.abs(b - a)) / (np.max(np.abs(a)) or 1.0))
             for a, b in zip(*results))


def _synthetic_data(data_dir, records=2048):
  """Random CIFAR-format files: what the runs train on."""
  batches_dir = os.path.join(data_dir, cifar10_input.BATCHES_DIR_NAME)
  os.makedirs(batches_dir)
  rng = np.random.default_rng(0)
  for name in cifar10_input.TRAIN_FILENAMES + cifar10_input.EVAL_FILENAMES:
    data = rng.integers(0, 256, size=(records, cifar10_input.RECORD_BYTES),
                        dtype=np.uint8)
    data[:, 0] %= 10
    data.tofile(os.path.join(batches_dir, name))


def _table(rows):
  print('%-52s %14s %12s %10s' % ('run', 'examples/sec', 'peak GPU MiB',
                                  'precision'))
  for row in rows:
    print('%-52s %14s %12s %10s' % (
        row['run'], '%.1f' % row['examples_per_sec']
        if row.get('examples_per_sec') else '',
        row.get('peak_gpu_mib') or '', '%.3f' % row['precision']
        if row.get('precision') is not None else ''))


def main(argv):
  del argv
  found = cifar10_params.gpus()
  if not found:
    print('No GPU found: nothing to check on this machine (the checks that '
          'need none are tests/test_gpu_placement.py).')
    return
  work_dir = tempfile.mkdtemp(prefix='cifar10_gpu_check_')
  data_dir = os.path.join(work_dir, 'data')
  _synthetic_data(data_dir)
  started = time.time()
  print('%d GPU(s): %s' % (len(found), ', '.join(found)),
        flush=True)
  figures = {'gpus': found, 'placement': {},
             'towers_equal_one': {}}
  two = ['/gpu:0', '/gpu:1' if len(found) > 1 else '/gpu:0']
  for mixed in (False, True):
    key = 'mixed precision' if mixed else 'float32'
    figures['placement'][key] = placement_of_a_step(data_dir, '/gpu:0', mixed)
    figures['towers_equal_one'][key] = towers_equal_one(two, mixed)
    print('%s: ops of a step by device %s; two towers vs one, largest '
          'relative gradient difference %.2g' % (
              key, figures['placement'][key],
              figures['towers_equal_one'][key]), flush=True)
  figures['runs'] = run_checks(data_dir, work_dir, len(found))
  _table(figures['runs'])
  figures['seconds'] = time.time() - started
  with open(FLAGS.figures_json, 'w') as f:
    json.dump(figures, f, indent=2)
  print('Done in %.0f s; figures written to %s.' % (figures['seconds'],
                                                    FLAGS.figures_json))


if __name__ == '__main__':
  cifar10_common.run(main)
