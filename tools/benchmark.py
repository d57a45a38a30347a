"""Measures how fast the tutorial trains and evaluates on this machine.

    python tools/benchmark.py                      # synthetic data, real layout
    python tools/benchmark.py --data_dir=/tmp/cifar10_data   # the real data
    python tools/benchmark.py --compare_with=REVISION         # before, after

One run measures, each in a fresh process so that none inherits another's
threads or memory:

- training with the real input pipeline (cifar10_train.py as a user runs it,
  batch 128): median examples/sec of its log lines after a warm-up, the
  rate of all those steps' time (the steps that write the summaries
  included), seconds from launch to the first step (queue fill included),
  peak resident memory;
- training with --mixed_precision (bfloat16 on a CPU);
- the training step on the real input pipeline and the same step on a batch
  already in memory, in one process, block by block in turn: how much the
  input pipeline costs the step, apart from the drift of a machine's speed
  between processes;
- the input pipeline alone: distorted batches dequeued, no model;
- evaluation (cifar10_eval.py --run_once): images/sec over the whole test
  set, seconds from launch to the printed result, and the forward pass alone
  on a batch in memory;
- two-tower training (cifar10_multi_gpu_train.py --num_gpus=2);
- the machine's ceilings: the model's convolutions alone (forward and
  backward, its shapes, batch 128) in float32 and in bfloat16, and float32
  matrix multiply GFLOP/s (numpy), with the training FLOP rate as a share of
  each (the FLOPs counted in the training graph: training_flops_per_image).

It prints a table, checks the speed targets (targets()) and writes the
figures as JSON (--json). With --compare_with=REVISION it measures that git
revision too, in turn with this checkout, each measurement of one then of
the other, for a before/after table from one run: its scripts, and its own
benchmark.py for what is measured in one process. --repeats=N runs
everything N times and reports medians. --profile instead traces one
training step and prints the time of its ops by type.
"""

import collections
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

from absl import flags
import numpy as np

# Run as `python tools/benchmark.py`: the tutorial's modules are one folder up.
REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_DIR)

import cifar10  # pylint: disable=g-import-not-at-top,wrong-import-position
from cifar10_support import command_line
from cifar10_support import data as data_lib
from cifar10_support import devices
from cifar10_support import kernels
from cifar10_support import params as params_lib
from cifar10_support import runtime
from cifar10_support import scripts
from cifar10_support.quiet import tf

command_line.define('data_dir', 'batch_size', 'top_layers', 'mixed_precision')
flags.DEFINE_integer('steps', 300, 'Training steps of each training run.',
                     lower_bound=60)
flags.DEFINE_integer('warmup_steps', 50, 'Training steps not measured.',
                     lower_bound=10)
flags.DEFINE_string('json', 'benchmark.json', 'Where to write the figures.')
flags.DEFINE_string('compare_with', None,
                    'A git revision to measure too, in turn with this '
                    'checkout, for a before/after table.')
flags.DEFINE_integer('repeats', 1, 'Runs of each measurement; the table '
                     'shows their medians.', lower_bound=1)
flags.DEFINE_integer('ceilings_batch_size', 128,
                     'The batch of the convolutions measured alone (the '
                     'machine\'s ceiling); smaller is quicker, less true.',
                     lower_bound=1)
flags.DEFINE_integer('synthetic_images',
                     data_lib.NUM_EXAMPLES_PER_EPOCH_FOR_EVAL,
                     'Without --data_dir: the images of each of the six '
                     'files of the synthetic data (CIFAR-10\'s 10,000); '
                     'fewer is quicker.', lower_bound=100)
flags.DEFINE_integer('matmul_size', 4096,
                     'The size of the square matrices of the matmul '
                     'ceiling; smaller is quicker, less true.', lower_bound=1)
flags.DEFINE_boolean('profile', False,
                     'Instead of the benchmark: trace one training step (on a '
                     'batch in memory, after a warm-up) and print the time '
                     'of its ops by type.')
flags.DEFINE_enum('measure', None,
                  ['step_pair', 'forward_alone', 'input_alone'],
                  'Internal: measure one thing in this process, print JSON.')

FLAGS = flags.FLAGS


# Steps timed together: the rate of such a block is a throughput, including
# the occasional slow step, as the training log's examples/sec is.
BLOCK_STEPS = 20


def _start(kind):
  """A graph and session of one measurement, warmed up.

  Args:
    kind: 'input_alone' (distorted batches only), 'forward_alone' (logits of
      a batch in memory), 'step_alone' (a training step on a batch in
      memory) or 'step_with_input' (a training step on the real pipeline).

  Returns:
    (session, the fetch to time, the queue runners' coordinator).
  """
  batch = FLAGS.batch_size
  num_classes = cifar10.NUM_CLASSES  # Of a batch in memory: CIFAR-10's.
  graph = tf.Graph()
  with graph.as_default():
    if kind in ('input_alone', 'step_with_input'):
      data = data_lib.read(FLAGS.data_dir)
      num_classes = data.num_classes
      images, labels = cifar10.distorted_inputs(data, batch)
    else:
      rng = np.random.default_rng(0)
      images = tf.Variable(rng.normal(size=(batch, 24, 24, 3)).astype(
          np.float32), trainable=False,
                           collections=[tf.GraphKeys.LOCAL_VARIABLES])
      labels = tf.constant(rng.integers(0, num_classes, size=batch).astype(
          np.int32))
    if kind == 'input_alone':
      fetch = [images, labels]
    elif kind == 'forward_alone':
      fetch = _inference(images, num_classes)
    else:
      global_step = tf.train.get_or_create_global_step()
      loss = cifar10.loss(_inference(images, num_classes), labels)
      fetch = cifar10.train(loss, global_step, examples_per_step=batch)
    session = tf.Session(config=devices.session_config())
    session.run([tf.global_variables_initializer(),
                 tf.local_variables_initializer()])
    coord = tf.train.Coordinator()
    if tf.get_collection(tf.GraphKeys.QUEUE_RUNNERS):
      tf.train.start_queue_runners(session, coord)
  for _ in range(BLOCK_STEPS):
    session.run(fetch)
  return session, fetch, coord


def _model_flags():
  """The model's flags, as the scripts measured take them."""
  return (['--top_layers=' + FLAGS.top_layers] +
          (['--mixed_precision'] if FLAGS.mixed_precision else []))


def _inference(images, num_classes):
  """The model measured: its top layers and precision, as the flags say."""
  precision = devices.precision(params_lib.Params(
      mixed_precision=FLAGS.mixed_precision))
  return cifar10.inference(tf.cast(images, precision.compute_dtype),
                           num_classes, FLAGS.top_layers,
                           precision.variable_dtype)


def _block_rate(session, fetch):
  """Images per second over one block of BLOCK_STEPS runs of `fetch`."""
  start = time.perf_counter()
  for _ in range(BLOCK_STEPS):
    session.run(fetch)
  return BLOCK_STEPS * FLAGS.batch_size / (time.perf_counter() - start)


def _measure_in_process(kind):
  """Runs one in-process measurement; returns its figures.

  'step_pair' runs the training step on the real input pipeline and on a
  batch in memory in the same process, block by block in turn, so that the
  cost of the input pipeline is measured apart from the drift of the
  machine's speed between processes.
  """
  kinds = ['step_with_input', 'step_alone'] if kind == 'step_pair' else [kind]
  started = {k: _start(k) for k in kinds}
  rates = {k: [] for k in kinds}
  for _ in range(max(1, FLAGS.steps // BLOCK_STEPS)):
    for k in kinds:
      rates[k].append(_block_rate(*started[k][:2]))
  for session, _, coord in started.values():
    coord.request_stop()
    session.close()
  return {k: float(np.median(v)) for k, v in rates.items()}


def training_flops_per_image(num_classes=cifar10.NUM_CLASSES,
                             top_layers='fully_connected',
                             batch_size=cifar10.BATCH_SIZE):
  """FLOPs of one image's training step, counted in the graph built.

  The forward pass and the gradients of the weights, as cifar10.train
  computes them, with TensorFlow's own count of each op's FLOPs (a
  multiply-accumulate is 2). Counted for a whole batch and divided, so that
  what is done once per batch (the weight decay) is shared out. LRN is
  counted as TensorFlow's ops compute it (kernels.tensorflow_ops_only:
  TensorFlow has no count for the fused kernel's ops), so that the count is
  the same on every machine and revision.

  Args:
    num_classes: The model's classes.
    top_layers: The model's top layers.
    batch_size: The batch of the step.

  Returns:
    (FLOPs per image, {op type: FLOPs per image}, largest first).
  """
  from tensorflow.python.framework import ops as ops_lib  # pylint: disable=g-import-not-at-top
  from tensorflow.python.ops import op_selector  # pylint: disable=g-import-not-at-top
  graph = tf.Graph()
  with graph.as_default(), kernels.tensorflow_ops_only():
    logits = cifar10.inference(tf.zeros([batch_size, 24, 24, 3]), num_classes,
                               top_layers)
    loss = cifar10.loss(logits, tf.zeros([batch_size], tf.int32))
    gradients = tf.gradients(loss, tf.trainable_variables())
  # Only what the step runs: the ops the gradients need (tf.gradients also
  # builds the gradient of the images, which no step computes).
  needed = op_selector.get_backward_walk_ops([g.op for g in gradients],
                                             control_inputs=True)
  by_type = {}
  for op in needed:
    try:
      flops = ops_lib.get_stats_for_node_def(graph, op.node_def, 'flops').value
    except ValueError:  # No count registered: shapes, casts, copies.
      flops = None
    if flops:
      by_type[op.type] = by_type.get(op.type, 0) + flops / batch_size
  by_type = dict(sorted(by_type.items(), key=lambda item: -item[1]))
  return sum(by_type.values()), by_type


def _convolutions_gflops(dtype=tf.float32, batch=128, runs=10, repeats=5):
  """The model's convolutions alone, in TensorFlow: GFLOP/s.

  conv1 and conv2 at the model's shapes and batch 128, forward and backward
  (conv1's filter gradient; conv2's filter and input gradients), the best
  of 5 blocks of 10 runs: the ceiling the training step's convolutions
  could reach on this machine.

  Args:
    dtype: tf.float32, or tf.bfloat16: the ceiling of mixed precision here.
    batch: Images per batch.
    runs: Runs of the convolutions in each timed block.
    repeats: Timed blocks; the best counts.
  """
  from tensorflow.python.framework import ops as ops_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)

  def variable(shape):
    return tf.Variable(tf.constant(
        rng.normal(size=shape).astype(np.float32) * 0.05, dtype=dtype))

  graph = tf.Graph()
  with graph.as_default():
    x1, w1 = variable([batch, 24, 24, 3]), variable([5, 5, 3, 64])
    x2, w2 = variable([batch, 12, 12, 64]), variable([5, 5, 64, 64])
    y1 = tf.nn.conv2d(x1, w1, [1, 1, 1, 1], padding='SAME')
    y2 = tf.nn.conv2d(x2, w2, [1, 1, 1, 1], padding='SAME')
    dy1, dy2 = variable(y1.shape.as_list()), variable(y2.shape.as_list())
    grads = (tf.gradients(y1, [w1], grad_ys=dy1) +
             tf.gradients(y2, [x2, w2], grad_ys=dy2))
    # Sums of the results, fetched: each run computes them all.
    fetch = [tf.reduce_sum(t) for t in [y1, y2] + grads]
    # The four convolutions a step runs (not conv1's input gradient).
    convolutions = [y1.op, y2.op] + [g.op for g in grads]
    assert sorted(op.type for op in convolutions) == [
        'Conv2D', 'Conv2D', 'Conv2DBackpropFilter', 'Conv2DBackpropFilter',
        'Conv2DBackpropInput'], [op.type for op in convolutions]
    flops = sum(ops_lib.get_stats_for_node_def(graph, op.node_def,
                                               'flops').value
                for op in convolutions)
    with tf.Session(config=devices.session_config()) as session:
      session.run(tf.global_variables_initializer())
      for _ in range(runs):
        session.run(fetch)
      best = min(_timed(lambda: [session.run(fetch) for _ in range(runs)])
                 for _ in range(repeats))
  return flops * runs / best / 1e9


def profile_one_step():
  """Prints the time of one training step's ops, by type (--profile).

  The step runs on a batch in memory, traced after a warm-up of BLOCK_STEPS
  steps. The ops' times add up to more than the step's wall time where ops
  run at once (on 2 cores, and within oneDNN).
  """
  session, fetch, _ = _start('step_alone')
  metadata = tf.RunMetadata()
  start = time.perf_counter()
  session.run(fetch, options=tf.RunOptions(
      trace_level=tf.RunOptions.FULL_TRACE), run_metadata=metadata)
  wall = time.perf_counter() - start
  by_type = devices.op_times_by_type(metadata.step_stats)
  session.close()
  total = sum(micros for micros, _ in by_type.values())
  print('One training step, batch %d, traced: %.1f ms of ops (%.1f ms wall '
        'time, traced).' % (FLAGS.batch_size, total / 1e3, wall * 1e3))
  print('%-40s %10s %7s %6s' % ('op type', 'ms', 'share', 'ops'))
  for op_type, (micros, count) in sorted(by_type.items(),
                                         key=lambda item: -item[1][0]):
    if micros >= 0.005 * total:
      print('%-40s %10.1f %6.1f%% %6d' % (op_type, micros / 1e3,
                                          100.0 * micros / total, count))


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


def _run_measurement(tree, kind, data_dir):
  """Runs `--measure=kind` in a fresh process of `tree`, by its own
  benchmark.py (in tools/, or, in older trees, at the top); returns its
  figures."""
  benchmark = os.path.join(tree, 'tools', 'benchmark.py')
  if not os.path.exists(benchmark):
    benchmark = os.path.join(tree, 'benchmark.py')
  output = subprocess.run(
      [sys.executable, benchmark, '--measure=' + kind,
       '--data_dir=' + data_dir, '--steps=%d' % FLAGS.steps,
       '--batch_size=%d' % FLAGS.batch_size] + _model_flags(),
      cwd=tree, capture_output=True, text=True, check=False)
  if output.returncode:
    raise RuntimeError('%s failed:\n%s' % (kind, output.stderr))
  return json.loads(output.stdout.strip().splitlines()[-1])


def _run_script(tree, script, args, awaited):
  """Runs a script of `tree`; returns (stdout lines, secs to a line, RSS).

  Args:
    tree: The checkout whose script runs.
    script: Its file name.
    args: Its command line.
    awaited: A regex: the seconds from the launch to the first line it
      matches are returned (imports, graph building, queue warm-up
      included).

  Returns:
    The lines printed, the seconds to the awaited line (None if none came),
    the peak resident memory of the process, in bytes.
  """
  start = time.perf_counter()
  process = subprocess.Popen([sys.executable, os.path.join(tree, script)] +
                             args, cwd=tree, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  peak_rss = []
  watcher = threading.Thread(target=_watch_peak_rss,
                             args=(process.pid, peak_rss), daemon=True)
  watcher.start()
  lines = []
  awaited_secs = None
  for line in process.stdout:
    lines.append(line.rstrip('\n'))
    if awaited_secs is None and re.search(awaited, line):
      awaited_secs = time.perf_counter() - start
  watcher.join()
  stderr = process.stderr.read()
  if process.wait():
    raise RuntimeError('%s %s failed:\n%s\n%s' % (script, ' '.join(args),
                                                  '\n'.join(lines), stderr))
  return lines, awaited_secs, max(peak_rss, default=0)


def _watch_peak_rss(pid, peak_rss):
  """Appends the peak resident memory of process `pid` (bytes) until it ends.

  The process's own high-water mark, VmHWM, read every 50 ms. (Not wait4's
  ru_maxrss: Linux carries a forked child's maximum across its exec, so a
  script started by this process, which holds TensorFlow and the ceilings'
  tensors, would report this process's memory when it is the larger.)
  """
  while True:
    try:
      with open('/proc/%d/status' % pid) as f:
        high_water_kb = int(re.search(r'^VmHWM:\s*(\d+) kB', f.read(),
                                      re.M).group(1))
    except (OSError, AttributeError):
      return  # Ended (a zombie has no memory lines).
    peak_rss.append(high_water_kb * 1024)
    time.sleep(0.05)


def _training_figures(tree, script, extra_args, data_dir, train_dir):
  """Runs a training script; returns its figures."""
  lines, first_step_secs, peak_rss = _run_script(
      tree, script, ['--data_dir=' + data_dir, '--train_dir=' + train_dir,
                     '--max_steps=%d' % FLAGS.steps, '--log_frequency=10',
                     '--batch_size=%d' % FLAGS.batch_size] + extra_args +
      _model_flags(), awaited='first step done')
  rates = [float(m.group(3)) for m in map(runtime.LOG_LINE.match,
                                           lines)
           if m and int(m.group(1)) > FLAGS.warmup_steps]
  return {'examples_per_sec': float(np.median(rates)),
          # Every logged stretch is as many steps, so the rate of their whole
          # time, the summary steps' (every --save_summaries_steps) included,
          # is the harmonic mean of their rates.
          'examples_per_sec_all_steps': statistics.harmonic_mean(rates),
          'first_step_secs': first_step_secs,
          'peak_rss_mb': peak_rss / 1e6}


def _describe_machine():
  """CPU, cores, Python and TensorFlow versions."""
  model = platform.processor()
  try:
    with open('/proc/cpuinfo') as f:
      model = re.search(r'model name\s*: (.*)', f.read()).group(1)
  except (OSError, AttributeError):
    pass
  return {'cpu': model, 'cores': os.cpu_count(),
          'python': platform.python_version(),
          'tensorflow': tf.version.VERSION}


def _checkout(revision, work_dir):
  """The files of `revision` in a folder, where its scripts run, and its own
  benchmark.py measures it in-process (--measure, whose command line and
  figures every revision with a benchmark.py shares)."""
  tree = os.path.join(work_dir, 'tree_' + re.sub(r'\W', '_', revision))
  os.makedirs(tree)
  archive = subprocess.run(['git', 'archive', '--format=tar', revision],
                           cwd=REPO_DIR, capture_output=True, check=False)
  if archive.returncode:
    raise scripts.UserError('--compare_with=%s: %s' % (
        revision, archive.stderr.decode().strip()))
  with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
    tar.extractall(tree, filter='data')
  return tree


def _measure_tree(tree, data_dir, work_dir):
  """Every figure of one tree: a generator of (name, value), one at a time.

  Yielding lets the caller interleave the trees, measurement by measurement.
  """
  train_dir = tempfile.mkdtemp(dir=work_dir)
  training = _training_figures(tree, 'cifar10_train.py', [], data_dir,
                               train_dir)
  yield 'training_examples_per_sec', training['examples_per_sec']
  yield 'training_all_steps_examples_per_sec', training[
      'examples_per_sec_all_steps']
  yield 'first_step_secs', training['first_step_secs']
  yield 'peak_rss_mb', training['peak_rss_mb']
  eval_lines, eval_secs, _ = _run_script(
      tree, 'cifar10_eval.py', [
          '--data_dir=' + data_dir, '--run_once',
          '--checkpoint_dir=' + train_dir,
          '--eval_dir=' + tempfile.mkdtemp(dir=work_dir),
          '--batch_size=%d' % FLAGS.batch_size] + _model_flags(),
      awaited=runtime.EVAL_LINE)
  yield 'evaluation_images_per_sec', float(
      [m for m in map(runtime.EVAL_LINE.match, eval_lines)
       if m][0].group(5))
  yield 'evaluation_launch_to_result_secs', eval_secs
  if not FLAGS.mixed_precision:  # (With it, every row is mixed precision.)
    yield 'mixed_precision_examples_per_sec', _training_figures(
        tree, 'cifar10_train.py', ['--mixed_precision'], data_dir,
        tempfile.mkdtemp(dir=work_dir))['examples_per_sec']
  pair = _run_measurement(tree, 'step_pair', data_dir)
  yield 'step_with_input_per_sec', pair['step_with_input']
  yield 'step_alone_per_sec', pair['step_alone']
  for kind in ['forward_alone', 'input_alone']:
    yield kind + '_per_sec', _run_measurement(tree, kind, data_dir)[kind]
  two_towers = _training_figures(tree, 'cifar10_multi_gpu_train.py',
                                 ['--num_gpus=2'], data_dir,
                                 tempfile.mkdtemp(dir=work_dir))
  yield 'two_tower_examples_per_sec', two_towers['examples_per_sec']


# name, unit, label: the rows of the table, in order.
_ROWS = [
    ('training_examples_per_sec', 'examples/sec',
     'training, real input pipeline'),
    ('training_all_steps_examples_per_sec', 'examples/sec',
     '  all steps, summary steps included'),
    ('first_step_secs', 's', '  launch to first step (queue fill included)'),
    ('peak_rss_mb', 'MB', '  peak resident memory'),
    ('mixed_precision_examples_per_sec', 'examples/sec',
     'training with --mixed_precision'),
    ('step_with_input_per_sec', 'examples/sec',
     'training step on the real input pipeline'),
    ('step_alone_per_sec', 'examples/sec',
     '  the same, batch in memory, in turn with it'),
    ('input_alone_per_sec', 'images/sec', 'input pipeline alone'),
    ('evaluation_images_per_sec', 'images/sec', 'evaluation, whole test set'),
    ('evaluation_launch_to_result_secs', 's',
     '  launch to printed result (--run_once)'),
    ('forward_alone_per_sec', 'images/sec', 'forward pass alone, in memory'),
    ('two_tower_examples_per_sec', 'examples/sec', 'two-tower training'),
    ('training_gflops', 'GFLOP/s', 'training FLOP rate'),
    ('share_of_convolutions', '%',
     "  as a share of the convolutions' rate alone"),
    ('share_of_matmul', '%', '  as a share of the matmul rate'),
    ('mixed_precision_share_of_convolutions', '%',
     "  mixed precision, share of bfloat16's"),
]


# Speeds within this share of the revision compared with count as the same:
# what interleaved runs of one tree differ by (see docs/speed.md).
SAME_SPEED = 0.9
# The figures compared with the revision's: (figure, what it is).
_COMPARED = [('training_examples_per_sec', 'training'),
             ('mixed_precision_examples_per_sec', 'mixed precision training'),
             ('evaluation_images_per_sec', 'evaluation'),
             ('two_tower_examples_per_sec', 'two-tower training')]


def targets(figures, before=None, fast_bfloat16=True):
  """The speed targets, each (text, met?), for one tree's figures.

  Args:
    figures: The figures of this checkout.
    before: Those of the revision compared with, if any: then the same
      speeds, within the noise of one run (SAME_SPEED), and no more memory.
    fast_bfloat16: Whether the CPU computes bfloat16 fast (AVX512-BF16 or
      AMX), where mixed precision must pay.

  Returns:
    A list of (text, met?).
  """
  training = figures['training_examples_per_sec']
  input_cost = 1 - (figures['step_with_input_per_sec'] /
                    figures['step_alone_per_sec'])
  two_towers = figures['two_tower_examples_per_sec'] / training - 1
  found = [
      ('launch to first step <= 4 s (%.1f s)' % figures['first_step_secs'],
       figures['first_step_secs'] <= 4),
      ('evaluation, launch to printed result <= 5 s (%.1f s)' %
       figures['evaluation_launch_to_result_secs'],
       figures['evaluation_launch_to_result_secs'] <= 5),
      ('peak resident memory of training <= 1 GB (%.0f MB)' %
       figures['peak_rss_mb'], figures['peak_rss_mb'] <= 1000),
      ('the input pipeline costs the training step <= 5%% (%.1f%%)' %
       (100 * input_cost), input_cost <= 0.05),
      ('two towers no more than 5%% slower than one (%+.1f%%)' %
       (100 * two_towers), two_towers >= -0.05),
  ]
  mixed = figures.get('mixed_precision_examples_per_sec')
  if mixed and fast_bfloat16:
    found.append(('mixed precision training >= 1.5x float32 (%.2fx)' %
                  (mixed / training), mixed >= 1.5 * training))
  for key, what in _COMPARED if before else []:
    if figures.get(key) and before.get(key):
      ratio = figures[key] / before[key]
      found.append(('%s as fast as before, >= %.1fx (%.2fx)' % (
          what, SAME_SPEED, ratio), ratio >= SAME_SPEED))
  if before:
    growth = figures['peak_rss_mb'] / before['peak_rss_mb'] - 1
    found.append(('peak memory no higher than before, within 2%% (%+.1f%%)' %
                  (100 * growth), growth <= 0.02))
  return found


def run_benchmark():
  """Measures everything; prints the table and the targets; writes JSON."""
  work_dir = tempfile.mkdtemp(prefix='cifar10_benchmark_')
  try:
    real_data = FLAGS['data_dir'].present
    data_dir = FLAGS.data_dir
    if real_data:
      data = data_lib.read(data_dir)
    else:
      data_dir = os.path.join(work_dir, 'data')
      data = data_lib.write_random_data_set(data_dir,
                                            FLAGS.synthetic_images)
    trees = {'now': REPO_DIR}
    if FLAGS.compare_with:
      trees = {FLAGS.compare_with: _checkout(FLAGS.compare_with, work_dir),
               'now': REPO_DIR}
    machine = _describe_machine()
    print('Measuring %s on %s (%d cores), TensorFlow %s, %s data, %d '
          'repeat(s).' % (' and '.join(trees), machine['cpu'],
                          machine['cores'], machine['tensorflow'],
                          'real' if real_data else 'synthetic',
                          FLAGS.repeats), flush=True)
    samples, ceilings = _measure(trees, data_dir, work_dir)
  finally:
    shutil.rmtree(work_dir, ignore_errors=True)
  flops, flops_by_op_type = training_flops_per_image(data.num_classes,
                                                     FLAGS.top_layers)
  figures = {name: _figures(tree_samples, ceilings, flops)
             for name, tree_samples in samples.items()}
  _print_table(figures, ceilings)
  print('\nTargets (%s%s):' % ('now', ', against %s' % FLAGS.compare_with
                                if FLAGS.compare_with else ''))
  for text, met in targets(figures['now'], figures.get(FLAGS.compare_with),
                           devices.cpu_has_fast_bfloat16()):
    print('  [%s] %s' % ('met' if met else 'MISSED', text))
  print('\nFLOPs per training image, counted in the training graph '
        '(%.1f MFLOP), by op type:' % (flops / 1e6))
  for op_type, op_flops in flops_by_op_type.items():
    if op_flops >= 0.001 * flops:
      print('  %-22s %7.2f MFLOP' % (op_type, op_flops / 1e6))
  with open(FLAGS.json, 'w') as f:
    json.dump(dict(ceilings, machine=machine, data='real' if real_data else
                   'synthetic', batch_size=FLAGS.batch_size, steps=FLAGS.steps,
                   repeats=FLAGS.repeats, mflop_per_training_image=flops / 1e6,
                   figures=figures, samples=samples), f, indent=2,
              sort_keys=True)
  print('\nFigures written to %s.' % FLAGS.json)


def _measure(trees, data_dir, work_dir):
  """Every measurement, FLAGS.repeats times, the trees in turn.

  Returns:
    ({tree: {figure: [samples]}}, {ceiling: GFLOP/s}): the machine's
    ceilings, matmul_gflops, convolutions_gflops (float32) and
    bfloat16_convolutions_gflops, medians.
  """
  samples = {name: collections.defaultdict(list) for name in trees}
  ceilings = collections.defaultdict(list)
  for _ in range(FLAGS.repeats):
    ceilings['matmul_gflops'].append(_matmul_gflops(FLAGS.matmul_size))
    ceilings['convolutions_gflops'].append(
        _convolutions_gflops(tf.float32, FLAGS.ceilings_batch_size))
    ceilings['bfloat16_convolutions_gflops'].append(
        _convolutions_gflops(tf.bfloat16, FLAGS.ceilings_batch_size))
    measuring = {name: _measure_tree(tree, data_dir, work_dir)
                 for name, tree in trees.items()}
    for figure in zip(*measuring.values()):  # Tree by tree, in turn.
      for name, (key, value) in zip(trees, figure):
        samples[name][key].append(value)
  return ({name: dict(values) for name, values in samples.items()},
          {key: float(np.median(values)) for key, values in ceilings.items()})


def _figures(samples, ceilings, flops):
  """One tree's figures: medians of its samples, and its FLOP rates."""
  figures = {key: float(np.median(values)) for key, values in samples.items()}
  figures['training_gflops'] = (figures['training_examples_per_sec'] *
                                flops / 1e9)
  # The ceiling of the table's training: the convolutions in its precision.
  figures['share_of_convolutions'] = figures['training_gflops'] / ceilings[
      'bfloat16_convolutions_gflops' if FLAGS.mixed_precision else
      'convolutions_gflops']
  figures['share_of_matmul'] = (figures['training_gflops'] /
                                ceilings['matmul_gflops'])
  mixed = figures.get('mixed_precision_examples_per_sec')
  figures['mixed_precision_share_of_convolutions'] = (
      mixed * flops / 1e9 / ceilings['bfloat16_convolutions_gflops']
      if mixed else None)
  return figures


# The ceilings' rows: label, and the key of their figure.
CEILINGS = [
    ('convolutions alone, float32, batch %(batch)d', 'convolutions_gflops'),
    ('convolutions alone, bfloat16, batch %(batch)d',
     'bfloat16_convolutions_gflops'),
    ('float32 matmul, numpy %(size)dx%(size)d', 'matmul_gflops')]


def _print_table(figures, ceilings):
  """The figures, tree beside tree (and their ratio), then the ceilings."""
  trees = list(figures)
  print('\nMedians of %d repeat(s), %d steps each, batch %d:\n' %
        (FLAGS.repeats, FLAGS.steps, FLAGS.batch_size))
  print('%-46s' % '' + ''.join('%20s' % name for name in trees) +
        ('%10s' % 'ratio' if len(trees) == 2 else ''))
  for key, unit, label in _ROWS:
    values = [figures[name].get(key) for name in trees]
    if all(value is None for value in values):
      continue  # Not measured in this run (with --mixed_precision).
    cells = ['-' if value is None else
             '%.0f%%' % (100 * value) if unit == '%' else
             '%.1f %s' % (value, unit) if unit == 's' else
             '%.0f %s' % (value, unit) for value in values]
    row = '%-46s' % label + ''.join('%20s' % cell for cell in cells)
    if len(trees) == 2 and None not in values and unit != '%':
      row += '%9.2fx' % (values[1] / values[0])
    print(row)
  for label, key in CEILINGS:
    print('%-46s%20s' % (label % {'batch': FLAGS.ceilings_batch_size,
                                  'size': FLAGS.matmul_size},
                         '%.0f GFLOP/s' % ceilings[key]))


def main(argv):
  del argv
  if FLAGS.profile:
    profile_one_step()
  elif FLAGS.measure:
    print(json.dumps(_measure_in_process(FLAGS.measure)))
  else:
    run_benchmark()


if __name__ == '__main__':
  scripts.run(main)
