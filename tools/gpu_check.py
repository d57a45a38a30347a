"""Checks the tutorial on the GPUs of this machine: one command, minutes.

    python tools/gpu_check.py            # a table, and gpu_check.json

On a machine with one or more NVIDIA GPUs (TensorFlow's CUDA build, see the
README's "On GPUs"), on small synthetic data of the real layout, in float32
and with --mixed_precision, it:

1. traces a training step on the first GPU and counts the ops that ran on a
   GPU and on the CPU (and the GPU's kernels and copies); and compares two
   towers' gradients (one per GPU) with one tower's;
2. runs, each in its own process, cifar10_train.py on one GPU
   (--training_steps, 200), cifar10_multi_gpu_train.py with 1 tower and with
   one per GPU, and cifar10_eval.py --run_once on that GPU while
   cifar10_train.py, resuming the first run's checkpoint, trains on it (GPU
   memory growth lets both fit).

It prints a table (examples/sec, the peak GPU memory of each run, read per
GPU from nvidia-smi, precision @ 1) and writes the figures as JSON. With no
GPU it says so in one line and exits 0; the checks that need no GPU (the
kernel registry's) are the tests of tests/test_gpu_placement.py.
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

# Run as `python tools/gpu_check.py`: the tutorial's scripts and modules are
# one folder up.
REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_DIR)

import cifar10  # pylint: disable=g-import-not-at-top,wrong-import-position
from cifar10_support import command_line
from cifar10_support import data as data_lib
from cifar10_support import devices as devices_lib
from cifar10_support import params as params_lib
from cifar10_support import runtime
from cifar10_support import scripts
from cifar10_support.quiet import tf

command_line.define('batch_size')
flags.DEFINE_integer('training_steps', 200, 'Training steps of each run.',
                     lower_bound=20)
flags.DEFINE_string('figures_json', 'gpu_check.json',
                    'Where to write the figures.')

FLAGS = flags.FLAGS

# The memory used on each GPU, in MiB, a line per GPU: 'index, MiB'. Per GPU,
# not per process: in a container, nvidia-smi gives the host's process IDs,
# which match none of the container's.
NVIDIA_SMI_MEMORY = ['nvidia-smi', '--query-gpu=index,memory.used',
                     '--format=csv,noheader,nounits']


def parse_gpu_memory(output):
  """{GPU index: MiB used} of NVIDIA_SMI_MEMORY's output."""
  used = {}
  for line in output.splitlines():
    index, _, mib = line.partition(',')
    if index.strip().isdigit() and mib.strip().isdigit():
      used[int(index)] = int(mib)
  return used


class GpuMemoryWatcher(object):
  """Polls nvidia-smi: the memory used on the GPUs, over time.

  `peak_during(start, end)` is the most the GPUs held together between two
  times, less what they held before `start`: a run's peak, where the runs
  come one after the other.
  """

  def __init__(self, interval_secs=0.2, query=NVIDIA_SMI_MEMORY):
    self.samples = []  # (time, total MiB of all GPUs).
    self._query = query
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._watch, args=(interval_secs,),
                                    daemon=True)
    self._thread.start()

  def _watch(self, interval_secs):
    while True:
      try:
        output = subprocess.run(self._query, capture_output=True, text=True,
                                timeout=10, check=False).stdout
      except (OSError, subprocess.TimeoutExpired):
        return  # No nvidia-smi: no memory figures.
      used = parse_gpu_memory(output)
      if used:
        self.samples.append((time.time(), sum(used.values())))
      if self._stop.wait(interval_secs):
        return

  def peak_during(self, start, end):
    """The peak MiB between `start` and `end` above the level before; None
    without samples."""
    before = [mib for when, mib in self.samples if when < start]
    during = [mib for when, mib in self.samples if start <= when <= end]
    if not during:
      return None
    return max(during) - (before[-1] if before else 0)

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
    raise scripts.UserError('%s failed:\n%s%s' % (what, stdout, stderr))
  return stdout.splitlines()


def _examples_per_sec(lines):
  rates = [float(m.group(3)) for m in map(runtime.LOG_LINE.match,
                                          lines) if m]
  rates = rates[len(rates) // 3:]  # After the warm-up.
  return sorted(rates)[len(rates) // 2] if rates else None


def _precision(lines):
  for match in map(runtime.EVAL_LINE.match, lines):
    if match:
      return float(match.group(1))
  return None


def run_checks(data_dir, work_dir, num_gpus, watcher):
  """Every run, one after the other; returns the rows of the table."""
  rows = []
  common = ['--data_dir=' + data_dir, '--batch_size=%d' % FLAGS.batch_size,
            '--log_frequency=10']
  one_gpu = {'CUDA_VISIBLE_DEVICES': '0'}
  for precision_flag in ([], ['--mixed_precision']):
    label = ' (mixed precision)' if precision_flag else ''
    runs = [('cifar10_train.py, 1 GPU' + label, 'cifar10_train.py', [],
             one_gpu)]
    for towers in sorted({1, num_gpus}):
      runs.append(('cifar10_multi_gpu_train.py, %d tower(s)%s' % (
          towers, label), 'cifar10_multi_gpu_train.py',
                   ['--num_gpus=%d' % towers], None))
    train_dirs = []
    for name, script, args, env in runs:
      train_dirs.append(tempfile.mkdtemp(dir=work_dir))
      started = time.time()
      lines = _finish(_start(script, common + args + precision_flag + [
          '--train_dir=' + train_dirs[-1],
          '--max_steps=%d' % FLAGS.training_steps], env), name)
      rows.append({'run': name, 'examples_per_sec': _examples_per_sec(lines),
                   'peak_gpu_mib': watcher.peak_during(started, time.time())})
    # Evaluation beside training, on one GPU, from the checkpoint of the
    # first run, which evaluation finds at once: the training resumes from
    # it for as many steps again (and, having it, does not write it again
    # while evaluation reads it).
    train_dir = train_dirs[0]
    started = time.time()
    training = _start('cifar10_train.py', common + precision_flag + [
        '--train_dir=' + train_dir,
        '--max_steps=%d' % (2 * FLAGS.training_steps)], one_gpu)
    evaluation = _start('cifar10_eval.py', [
        '--data_dir=' + data_dir, '--checkpoint_dir=' + train_dir,
        '--batch_size=%d' % FLAGS.batch_size,
        '--eval_dir=' + tempfile.mkdtemp(dir=work_dir), '--run_once'] +
                        precision_flag, one_gpu)
    eval_lines = _finish(evaluation, 'evaluation beside training')
    train_lines = _finish(training, 'training beside evaluation')
    rows.append({'run': 'training and evaluation together, 1 GPU' + label,
                 'examples_per_sec': _examples_per_sec(train_lines),
                 'precision': _precision(eval_lines),
                 'peak_gpu_mib': watcher.peak_during(started, time.time())})
  return rows


def placement_of_a_step(data, device, precision=params_lib.Precision(),
                        batch_size=cifar10.BATCH_SIZE):
  """Runs one traced training step with the model on `device`.

  Args:
    data: The data set (a data.DataSet).
    device: The model's device, e.g. '/gpu:0'.
    precision: The model's types (a params.Precision).
    batch_size: Images per batch.

  Returns:
    count_placement() of its trace.
  """
  with tf.Graph().as_default():
    with tf.device('/cpu:0'):
      global_step = tf.train.get_or_create_global_step()
    images, labels = cifar10.distorted_inputs(data, batch_size,
                                              precision.compute_dtype)
    # As cifar10_train.py builds it: the model on the device, the update
    # with the variables.
    with tf.device(device):
      loss = cifar10.loss(cifar10.inference(
          images, data.num_classes,
          variable_dtype=precision.variable_dtype), labels)
    train_op = cifar10.train(
        loss, global_step, examples_per_step=batch_size,
        examples_per_epoch=data.num_train_examples,
        loss_scale=(cifar10.float16_loss_scale() if precision.loss_scaled
                    else None))
    config = devices_lib.session_config(allow_soft_placement=True)
    with tf.train.MonitoredSession(session_creator=tf.train.ChiefSessionCreator(
        config=config)) as sess:
      sess.run(train_op)  # The first step: warm-up.
      metadata = tf.RunMetadata()
      sess.run(train_op, options=tf.RunOptions(
          trace_level=tf.RunOptions.FULL_TRACE), run_metadata=metadata)
  return count_placement(metadata.step_stats)


def count_placement(step_stats):
  """What a traced step ran where: {'ops': {device type: ops that ran
  there}, 'gpu_kernels': kernels run on GPUs, 'gpu_copies': copies to, from
  and between GPUs} (each once: see devices.trace_device)."""
  kernels, copies = devices_lib.gpu_kernels_and_copies(step_stats)
  return {'ops': devices_lib.ops_by_device(step_stats),
          'gpu_kernels': kernels, 'gpu_copies': copies}


def towers_equal_one(devices, precision=params_lib.Precision(),
                     images_per_step=128):
  """The largest relative difference between the gradients of one tower of
  `images_per_step` images and the mean of two towers of half as many, on
  `devices` (two), in `precision` (a params.Precision)."""
  rng = np.random.default_rng(7)
  half = images_per_step // 2
  images = rng.normal(size=(2 * half, 24, 24, 3)).astype(np.float32)
  labels = rng.integers(0, 10, size=2 * half).astype(np.int32)
  results, initial = [], None
  for halves in (False, True):
    with tf.Graph().as_default():
      tower_grads = []
      loss_scale = (cifar10.float16_loss_scale() if precision.loss_scaled
                    else None)
      with tf.variable_scope(tf.get_variable_scope()):
        parts = ([slice(0, half), slice(half, 2 * half)] if halves
                 else [slice(0, 2 * half)])
        for i, part in enumerate(parts):
          with tf.device(devices[i]), tf.name_scope('tower_%d' % i) as scope:
            logits = cifar10.inference(
                tf.cast(tf.constant(images[part]), precision.compute_dtype),
                variable_dtype=precision.variable_dtype)
            cifar10.loss(logits, tf.constant(labels[part]))
            # This tower's terms only: the collection holds every tower's.
            loss = tf.add_n(tf.get_collection('losses', scope))
            tower_grads.append(
                [g for g, _ in cifar10.gradients(loss, loss_scale)])
            tf.get_variable_scope().reuse_variables()
      mean = [tf.add_n(list(g)) / len(g) for g in zip(*tower_grads)]
      variables = tf.trainable_variables()
      # The same weights for both.
      values = [tf.placeholder(v.dtype.base_dtype, v.shape) for v in variables]
      assign = [v.assign(value) for v, value in zip(variables, values)]
      with tf.Session(config=devices_lib.session_config(
          allow_soft_placement=True)) as sess:
        sess.run(tf.global_variables_initializer())
        if initial is None:
          initial = sess.run(variables)
        sess.run(assign, dict(zip(values, initial)))
        results.append(sess.run(mean))
  return max(float(np.max(np.abs(b - a)) / (np.max(np.abs(a)) or 1.0))
             for a, b in zip(*results))


def _table(rows):
  print('%-52s %14s %12s %10s' % ('run', 'examples/sec', 'peak GPU MiB',
                                  'precision'))
  for row in rows:
    print('%-52s %14s %12s %10s' % (
        row['run'], '%.1f' % row['examples_per_sec']
        if row.get('examples_per_sec') else '',
        row['peak_gpu_mib'] if row.get('peak_gpu_mib') is not None else '',
        '%.3f' % row['precision'] if row.get('precision') is not None
        else ''))


def main(argv):
  del argv
  found = devices_lib.gpus()
  if not found:
    print('No GPU found: nothing to check on this machine (the checks that '
          'need none are tests/test_gpu_placement.py).')
    return
  for warning in devices_lib.warnings(params_lib.Params()):
    sys.stderr.write('Warning: %s\n' % warning)
    sys.stderr.flush()
  work_dir = tempfile.mkdtemp(prefix='cifar10_gpu_check_')
  data_dir = os.path.join(work_dir, 'data')
  data = data_lib.write_random_data_set(data_dir, records_per_file=2048)
  started = time.time()
  print('%d GPU(s): %s' % (len(found), ', '.join(found)),
        flush=True)
  figures = {'gpus': found, 'placement': {},
             'towers_equal_one': {}}
  two = ['/gpu:0', '/gpu:1' if len(found) > 1 else '/gpu:0']
  for mixed in (False, True):
    key = 'mixed precision' if mixed else 'float32'
    precision = params_lib.Precision.of(mixed_precision=mixed, on_gpu=True)
    figures['placement'][key] = placement_of_a_step(
        data, '/gpu:0', precision, FLAGS.batch_size)
    figures['towers_equal_one'][key] = towers_equal_one(two, precision,
                                                        FLAGS.batch_size)
    print('%s: ops of a step by device %s (GPU kernels %d, copies %d); two '
          'towers vs one, largest relative gradient difference %.2g' % (
              key, figures['placement'][key]['ops'],
              figures['placement'][key]['gpu_kernels'],
              figures['placement'][key]['gpu_copies'],
              figures['towers_equal_one'][key]), flush=True)
  watcher = GpuMemoryWatcher()
  try:
    figures['runs'] = run_checks(data_dir, work_dir, len(found), watcher)
  finally:
    watcher.stop()
  _table(figures['runs'])
  figures['seconds'] = time.time() - started
  with open(FLAGS.figures_json, 'w') as f:
    json.dump(figures, f, indent=2)
  print('Done in %.0f s; figures written to %s.' % (figures['seconds'],
                                                    FLAGS.figures_json))


if __name__ == '__main__':
  scripts.run(main)
