"""Measures how fast the tutorial trains and evaluates on this machine.

    python benchmark.py                      # synthetic data of the real layout
    python benchmark.py --data_dir=/tmp/cifar10_data   # the real data

One run measures, each in a fresh process so that none inherits another's
threads or memory:

- training with the real input pipeline (cifar10_train.py as a user runs it,
  batch 128): median examples/sec of its log lines after a warm-up, seconds
  from launch to the first step (queue fill included), peak resident memory;
- the model's training step alone, on a batch already in memory;
- the input pipeline alone: distorted batches dequeued, no model;
- evaluation (cifar10_eval.py --run_once): images/sec over the whole test
  set, and the forward pass alone on a batch in memory;
- two-tower training (cifar10_multi_gpu_train.py --num_gpus=2);
- the machine's ceiling: float32 matrix multiply GFLOP/s (numpy, a large
  matmul), and the training FLOP rate as a share of it.

It prints a table and writes the figures as JSON (--json).
"""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

from absl import flags
import numpy as np

import cifar10  # Its flags: --data_dir (real data), --batch_size.
import cifar10_common
from cifar10_common import tf
import cifar10_input
import cifar10_train

REPO_DIR = os.path.dirname(os.path.abspath(__file__))

flags.DEFINE_integer('steps', 300, 'Training steps of each training run.',
                     lower_bound=60)
flags.DEFINE_integer('warmup_steps', 50, 'Training steps not measured.',
                     lower_bound=10)
flags.DEFINE_string('json', 'benchmark.json', 'Where to write the figures.')
flags.DEFINE_enum('measure', None,
                  ['model_alone', 'forward_alone', 'input_alone'],
                  'Internal: measure one thing in this process, print JSON.')

FLAGS = flags.FLAGS

# Multiply-accumulates of one image's forward pass, from the layer shapes.
FORWARD_MACS = {
    'conv1': (24 * 24 * 64, 5 * 5 * 3),    # outputs x (kernel x in channels)
    'conv2': (12 * 12 * 64, 5 * 5 * 64),
    'local3': (384, 6 * 6 * 64),           # outputs x inputs
    'local4': (192, 384),
    'softmax_linear': (10, 192),
}


def flops_per_training_image():
  """FLOPs of one image's forward and backward pass; and the arithmetic.

  A multiply-accumulate is 2 FLOPs. The backward pass computes, per layer,
  the gradient of the weights (as many MACs as the forward pass) and of the
  layer's input (as many again), except for conv1, whose input is the image.
  Pooling, LRN, ReLU and the biases are left out: they add well under 1%.

  Returns:
    (FLOPs, list of text lines showing the arithmetic).
  """
  lines = []
  total = 0
  for layer, (outputs, per_output) in FORWARD_MACS.items():
    forward = 2 * outputs * per_output
    backward = forward * (1 if layer == 'conv1' else 2)
    total += forward + backward
    lines.append('%-15s %7d outputs x %5d MACs x 2 = %6.2f MFLOP forward, '
                 '%6.2f backward' % (layer, outputs, per_output, forward / 1e6,
                                     backward / 1e6))
  lines.append('%-15s %.1f MFLOP per training image' % ('total', total / 1e6))
  return total, lines


def _write_synthetic_data(data_dir):
  """Random images and labels in the binary layout, as many as CIFAR-10."""
  batches_dir = os.path.join(data_dir, cifar10_input.BATCHES_DIR_NAME)
  os.makedirs(batches_dir)
  rng = np.random.default_rng(0)
  for name in cifar10_input.TRAIN_FILENAMES + cifar10_input.EVAL_FILENAMES:
    records = rng.integers(0, 256, size=(10000, cifar10_input.RECORD_BYTES),
                           dtype=np.uint8)
    records[:, 0] = rng.integers(0, 10, size=10000)
    records.tofile(os.path.join(batches_dir, name))


def _median_rate(seconds_per_step, examples_per_step):
  return examples_per_step / float(np.median(seconds_per_step))


def _measure_in_process(kind):
  """Runs one in-memory measurement; returns its figures."""
  batch = FLAGS.batch_size
  with tf.Graph().as_default():
    if kind == 'input_alone':
      with tf.device('/cpu:0'):
        images, labels = cifar10.distorted_inputs()
      fetch = [images, labels]
    else:
      rng = np.random.default_rng(0)
      images = tf.Variable(rng.normal(size=(batch, 24, 24, 3)).astype(
          np.float32), trainable=False, collections=[])
      labels = tf.constant(rng.integers(0, 10, size=batch).astype(np.int32))
      logits = cifar10.inference(images)
      if kind == 'forward_alone':
        fetch = logits
      else:
        global_step = tf.train.get_or_create_global_step()
        fetch = cifar10.train(cifar10.loss(logits, labels), global_step)
    with tf.Session(config=cifar10_train.session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      if kind != 'input_alone':
        sess.run(images.initializer)
      coord = tf.train.Coordinator()
      threads = tf.train.start_queue_runners(sess, coord)
      for _ in range(10):
        sess.run(fetch)
      durations = []
      for _ in range(FLAGS.steps):
        start = time.perf_counter()
        sess.run(fetch)
        durations.append(time.perf_counter() - start)
      coord.request_stop()
      coord.join(threads, stop_grace_period_secs=10)
  return {'per_sec': _median_rate(durations, batch), 'runs': len(durations)}


def _matmul_gflops(size=4096, repeats=5):
  """float32 matrix multiply GFLOP/s of numpy on this machine: the best of 5."""
  rng = np.random.default_rng(0)
  a = rng.random((size, size), dtype=np.float32)
  b = rng.random((size, size), dtype=np.float32)
  a @ b  # pylint: disable=pointless-statement
  best = min(_timed(lambda: a @ b) for _ in range(repeats))
  return 2.0 * size ** 3 / best / 1e9


def _timed(function):
  start = time.perf_counter()
  function()
  return time.perf_counter() - start


def _run_measurement(kind, data_dir):
  """Runs `--measure=kind` in a fresh process; returns its figures."""
  output = subprocess.run(
      [sys.executable, os.path.abspath(__file__), '--measure=' + kind,
       '--data_dir=' + data_dir, '--steps=%d' % FLAGS.steps,
       '--batch_size=%d' % FLAGS.batch_size],
      cwd=REPO_DIR, capture_output=True, text=True, check=False)
  if output.returncode:
    raise RuntimeError('%s failed:\n%s' % (kind, output.stderr))
  return json.loads(output.stdout.strip().splitlines()[-1])


_LOG_LINE = re.compile(r'.*: step (\d+), loss = \S+ \(([\d.]+) examples/sec;')
_EVAL_LINE = re.compile(r'.*: precision @ 1 = .* images, step \d+; '
                        r'([\d.]+) images/sec\)$')


def _run_script(script, args):
  """Runs a script; returns (stdout lines, seconds to the first step, peak RSS).

  The first step's time is when its 'first step done' line is read, from
  the launch: imports, graph building and the queue warm-up included.
  """
  start = time.perf_counter()
  process = subprocess.Popen([sys.executable, script] + args, cwd=REPO_DIR,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  lines = []
  first_step_secs = None
  for line in process.stdout:
    lines.append(line.rstrip('\n'))
    if first_step_secs is None and 'first step done' in line:
      first_step_secs = time.perf_counter() - start
  _, status, usage = os.wait4(process.pid, 0)
  stderr = process.stderr.read()
  if status:
    raise RuntimeError('%s %s failed:\n%s\n%s' % (script, ' '.join(args),
                                                  '\n'.join(lines), stderr))
  return lines, first_step_secs, usage.ru_maxrss * 1024


def _training_figures(script, extra_args, data_dir, work_dir):
  """Runs a training script; returns its figures and train dir."""
  train_dir = os.path.join(work_dir, os.path.splitext(script)[0])
  lines, first_step_secs, peak_rss = _run_script(
      script, ['--data_dir=' + data_dir, '--train_dir=' + train_dir,
               '--max_steps=%d' % FLAGS.steps, '--log_frequency=10',
               '--batch_size=%d' % FLAGS.batch_size] + extra_args)
  rates = [float(m.group(2)) for m in map(_LOG_LINE.match, lines)
           if m and int(m.group(1)) > FLAGS.warmup_steps]
  return {'examples_per_sec': float(np.median(rates)),
          'log_lines': len(rates),
          'first_step_secs': first_step_secs,
          'peak_rss_bytes': peak_rss}, train_dir


def _describe_machine():
  """CPU, cores, Python and TensorFlow versions."""
  model = platform.processor()
  try:
    with open('/proc/cpuinfo') as f:
      model = re.search(r'model name\s*: (.*)', f.read()).group(1)
  except (OSError, AttributeError):
    pass
  return {'cpu': model, 'cores': os.cpu_count(), 'python': platform.python_version(),
          'tensorflow': tf.version.VERSION}


def run_benchmark():
  """Measures everything; prints the table; writes the JSON."""
  work_dir = tempfile.mkdtemp(prefix='cifar10_benchmark_')
  try:
    real_data = FLAGS['data_dir'].present
    data_dir = FLAGS.data_dir
    if not real_data:
      data_dir = os.path.join(work_dir, 'data')
      _write_synthetic_data(data_dir)
    results = {'machine': _describe_machine(),
               'data': 'real: ' + data_dir if real_data else 'synthetic',
               'batch_size': FLAGS.batch_size, 'steps': FLAGS.steps}
    print('Measuring on %s (%d cores), TensorFlow %s; %s data.' % (
        results['machine']['cpu'], results['machine']['cores'],
        results['machine']['tensorflow'], 'real' if real_data else
        'synthetic'), flush=True)

    results['matmul_gflops'] = _matmul_gflops()
    results['training'], train_dir = _training_figures(
        'cifar10_train.py', [], data_dir, work_dir)
    eval_lines, _, _ = _run_script(
        'cifar10_eval.py', ['--data_dir=' + data_dir, '--run_once',
                            '--checkpoint_dir=' + train_dir,
                            '--eval_dir=' + os.path.join(work_dir, 'eval'),
                            '--batch_size=%d' % FLAGS.batch_size])
    results['evaluation_images_per_sec'] = float(
        [m for m in map(_EVAL_LINE.match, eval_lines) if m][0].group(1))
    for kind in ['model_alone', 'forward_alone', 'input_alone']:
      results[kind + '_per_sec'] = _run_measurement(kind, data_dir)['per_sec']
    results['two_towers'], _ = _training_figures(
        'cifar10_multi_gpu_train.py', ['--num_gpus=2'], data_dir, work_dir)
  finally:
    shutil.rmtree(work_dir, ignore_errors=True)

  flops, arithmetic = flops_per_training_image()
  training_rate = results['training']['examples_per_sec']
  results['training_gflops'] = training_rate * flops / 1e9
  results['training_share_of_matmul'] = (results['training_gflops'] /
                                         results['matmul_gflops'])
  results['mflop_per_training_image'] = flops / 1e6

  table = [
      ('training, real input pipeline', '%.0f examples/sec' % training_rate),
      ('  start to first step', '%.1f s' %
       results['training']['first_step_secs']),
      ('  peak resident memory', '%.0f MB' %
       (results['training']['peak_rss_bytes'] / 1e6)),
      ('training step alone, batch in memory',
       '%.0f examples/sec' % results['model_alone_per_sec']),
      ('input pipeline alone', '%.0f images/sec' % results['input_alone_per_sec']),
      ('evaluation, whole test set', '%.0f images/sec' %
       results['evaluation_images_per_sec']),
      ('forward pass alone, batch in memory', '%.0f images/sec' %
       results['forward_alone_per_sec']),
      ('two-tower training', '%.0f examples/sec' %
       results['two_towers']['examples_per_sec']),
      ('float32 matmul (numpy, 4096^2)', '%.0f GFLOP/s' %
       results['matmul_gflops']),
      ('training FLOP rate', '%.0f GFLOP/s = %.0f%% of matmul' %
       (results['training_gflops'], 100 * results['training_share_of_matmul'])),
  ]
  print()
  for name, figure in table:
    print('%-40s %s' % (name, figure))
  print('\nFLOPs per training image, from the layer shapes:')
  for line in arithmetic:
    print('  ' + line)
  with open(FLAGS.json, 'w') as f:
    json.dump(results, f, indent=2, sort_keys=True)
  print('\nFigures written to %s.' % FLAGS.json)


def main(argv):
  del argv
  if FLAGS.measure:
    print(json.dumps(_measure_in_process(FLAGS.measure)))
  else:
    run_benchmark()


if __name__ == '__main__':
  cifar10_common.run(main)
