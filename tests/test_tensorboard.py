"""What TensorBoard shows: the event files, and a real TensorBoard serving them."""

import collections
import contextlib
import datetime
import io
import json
import math
import os
import re
import shlex
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
from google.protobuf import text_format
import pytest

import cifar10_eval
import cifar10_multi_gpu_train
from cifar10_support import data as data_lib
from cifar10_support import params as params_lib
from cifar10_support.quiet import tf
import cifar10_train
import cifar_data
from conftest import REPO_DIR
from conftest import SMALL_QUEUE_FRACTION
import helpers
from helpers import resolved

STEPS = 30
SUMMARY_STEPS = [1, 11, 21]  # Every 10 steps; each labelled with the step it ends.
LAYERS = ['conv1', 'conv2', 'local3', 'local4', 'softmax_linear']
LOSSES = ['cross_entropy', 'local3/weight_loss', 'local4/weight_loss',
          'total_loss']
TRAIN_SCALARS = (
    {'learning_rate', 'examples_per_sec'} |
    {loss for loss in LOSSES} | {loss + ' (raw)' for loss in LOSSES} |
    {'%s/%s/sparsity' % (layer, layer) for layer in LAYERS})
# The input queues report how full they are (tf.train's own summaries).
QUEUE_SCALAR = re.compile(r'^(input_producer|shuffle_batch|batch_prefetch)/'
                          r'fraction_\w+_full$')
HISTOGRAMS = (
    {'%s/%s/activations' % (layer, layer) for layer in LAYERS} |
    {'%s/%s' % (layer, part) for layer in LAYERS
     for part in ['weights', 'biases']} |
    {'%s/%s/gradients' % (layer, part) for layer in LAYERS
     for part in ['weights', 'biases']})
IMAGES = {'images/image/0', 'images/image/1', 'images/image/2'}


def _read_events(log_dir):
  """{'scalars'|'histograms'|'images': {tag: [(step, value)]}}, graphs."""
  found = collections.defaultdict(lambda: collections.defaultdict(list))
  graphs = 0
  for path in sorted(helpers.event_files(log_dir)):
    for event in tf.train.summary_iterator(path):
      graphs += event.HasField('graph_def')
      for value in event.summary.value:
        kind = value.WhichOneof('value')
        if kind == 'simple_value':
          found['scalars'][value.tag].append((event.step, value.simple_value))
        elif kind == 'histo':
          found['histograms'][value.tag].append((event.step, value.histo))
        elif kind == 'image':
          found['images'][value.tag].append((event.step, value.image))
  return found, graphs


def _png_size(png):
  """(width, height, colour type) of PNG bytes."""
  assert png[:8] == b'\x89PNG\r\n\x1a\n'
  width, height, _, colour_type = struct.unpack('>IIBB', png[16:26])
  return width, height, colour_type


@pytest.fixture(scope='module')
def logs(tmp_path_factory):
  """A short training and one evaluation (and a two-tower training)."""
  root = str(tmp_path_factory.mktemp('tensorboard'))
  data_dir = os.path.join(root, 'data')
  cifar_data.make_data_dir(data_dir)
  train_dir = os.path.join(root, 'logs', 'train')
  params = params_lib.Params(
      data_dir=data_dir, batch_size=16,
      min_fraction_of_examples_in_queue=SMALL_QUEUE_FRACTION,
      max_steps=STEPS, save_summaries_steps=10, log_frequency=10,
      train_dir=train_dir, checkpoint_dir=train_dir,
      eval_dir=os.path.join(root, 'logs', 'eval'), run_once=True)
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    cifar10_train.train(*resolved(params))
    cifar10_eval.evaluate(*resolved(params))
    cifar10_multi_gpu_train.train(
        *resolved(params.replace(
            train_dir=os.path.join(root, 'multi', 'train'), max_steps=20)),
        devices=['/cpu:0', '/cpu:1'],
        config=tf.ConfigProto(device_count={'CPU': 2},
                              allow_soft_placement=True))
  labels = np.fromfile(os.path.join(data_dir, 'cifar-10-batches-bin',
                                    'test_batch.bin'), np.uint8)[::3073]
  return dict(root=root, printed=printed.getvalue().splitlines(),
              test_labels=labels,
              train=_read_events(os.path.join(root, 'logs', 'train')),
              eval=_read_events(os.path.join(root, 'logs', 'eval')),
              multi=_read_events(os.path.join(root, 'multi', 'train')))


def test_training_events_hold_what_the_tutorial_promises(logs):
  events, graphs = logs['train']
  assert graphs >= 1
  scalars = events['scalars']
  assert {t for t in scalars if not QUEUE_SCALAR.match(t)} == TRAIN_SCALARS
  assert set(events['histograms']) == HISTOGRAMS
  assert set(events['images']) == IMAGES

  for tag, points in scalars.items():
    assert all(math.isfinite(value) for _, value in points), tag
    if tag != 'examples_per_sec':
      assert [step for step, _ in points] == SUMMARY_STEPS, tag
  assert [step for step, _ in scalars['examples_per_sec']] == [10, 20, 30]
  assert all(value > 0 for _, value in scalars['examples_per_sec'])
  assert [value for _, value in scalars['learning_rate']] == pytest.approx(
      [0.1] * 3)
  # After one step, a loss's average is that step's loss.
  for loss in LOSSES:
    assert scalars[loss][0][1] == pytest.approx(scalars[loss + ' (raw)'][0][1],
                                                rel=1e-5)
  for layer in LAYERS:
    for _, sparsity in scalars['%s/%s/sparsity' % (layer, layer)]:
      assert 0 <= sparsity <= 1

  for tag, points in events['histograms'].items():
    assert [step for step, _ in points] == SUMMARY_STEPS, tag
    for _, histogram in points:
      assert histogram.num > 0 and math.isfinite(histogram.sum), tag
  assert events['histograms']['conv1/conv1/activations'][0][1].num == (
      16 * 24 * 24 * 64)
  assert events['histograms']['local3/weights'][0][1].num == 2304 * 384

  for tag, points in events['images'].items():
    assert [step for step, _ in points] == SUMMARY_STEPS
    for _, image in points:
      assert (image.height, image.width, image.colorspace) == (24, 24, 3)
      assert _png_size(image.encoded_image_string) == (24, 24, 2)  # RGB.


def test_examples_per_sec_is_the_figure_of_the_log_line_of_its_step(logs):
  events, _ = logs['train']
  logged = [helpers.LOG_LINE.match(line) for line in logs['printed']]
  # The first training's lines (the two-tower training's come after).
  logged = [(int(m.group(1)), float(m.group(3))) for m in logged if m][:3]
  assert [step for step, _ in logged] == [10, 20, 30]
  summarised = events['scalars']['examples_per_sec']
  assert [step for step, _ in summarised] == [10, 20, 30]
  for (step, printed), (_, value) in zip(logged, summarised):
    assert round(value, 1) == pytest.approx(printed, abs=0.051), step
  # And both are the clock's: each line says when it was printed, and its
  # figure covers the 10 steps of 16 images since the line before.
  printed_at = [datetime.datetime.strptime(line.split(': step')[0],
                                           '%Y-%m-%d %H:%M:%S.%f')
                for line in logs['printed'] if helpers.LOG_LINE.match(line)][:3]
  elapsed = (printed_at[2] - printed_at[0]).total_seconds()
  assert sum(10 * 16 / value for _, value in summarised[1:]) == (
      pytest.approx(elapsed, rel=0.1))


def test_evaluation_events_line_up_with_training_steps(logs):
  events, _ = logs['eval']
  scalars = events['scalars']
  precision_line = [l for l in logs['printed'] if 'precision @ 1 = ' in l][0]
  assert scalars['Precision @ 1'] == [
      (STEPS, pytest.approx(float(precision_line.split('= ')[1][:5]),
                            abs=5e-4))]
  by_class = {tag.split('/')[1]: points for tag, points in scalars.items()
              if tag.startswith('Precision @ 1 by class/')}
  assert sorted(by_class) == sorted(data_lib.CLASS_NAMES)
  # The classes' precisions, weighted by their counts, make the precision.
  counts = np.bincount(logs['test_labels'], minlength=10)
  weighted = sum(by_class[name][0][1] * counts[i]
                 for i, name in enumerate(data_lib.CLASS_NAMES))
  assert weighted / counts.sum() == pytest.approx(
      scalars['Precision @ 1'][0][1], abs=1e-5)
  for points in by_class.values():
    assert [step for step, _ in points] == [STEPS]
    assert 0 <= points[0][1] <= 1
  printed_by_class = [l for l in logs['printed'] if l.startswith('  by class:')]
  assert printed_by_class == ['  by class: ' + ', '.join(
      '%s %.3f' % (name, by_class[name][0][1])
      for name in data_lib.CLASS_NAMES)]


def test_multi_device_training_writes_the_same_tags(logs):
  single, _ = logs['train']
  multi, graphs = logs['multi']
  assert graphs >= 1
  for kind in ['scalars', 'histograms', 'images']:
    tags = {t for t in multi[kind] if not QUEUE_SCALAR.match(t)}
    assert tags == {t for t in single[kind] if not QUEUE_SCALAR.match(t)}
    assert not [t for t in multi[kind] if 'tower' in t]
  assert 'batch_prefetch/fraction_of_4_full' in multi['scalars']
  # The activations shown are the first tower's (each tower's would be
  # another batch's, under one tag).
  graph = tf.GraphDef()
  with open(os.path.join(logs['root'], 'multi', 'train', 'graph.pbtxt')) as f:
    text_format.Parse(f.read(), graph)
  nodes = {node.name: node for node in graph.node}
  merged, = [node for node in graph.node if node.op == 'MergeSummary']
  shown = {}
  for name in merged.input:  # The summaries written.
    node = nodes[name]
    if node.op == 'HistogramSummary':
      tag = tf.make_ndarray(nodes[node.input[0]].attr['value'].tensor)
      shown[tag.item().decode()] = node.input[1]
  assert {tag: shown[tag] for tag in shown if tag.endswith('/activations')} == {
      '%s/%s/activations' % (layer, layer): 'tower_0/%s/%s' % (layer, layer)
      for layer in LAYERS}


def readme_tensorboard_command(log_dir):
  """The README's TensorBoard command, as a user runs it, on `log_dir`.

  Its console script is the one beside this Python: the virtual
  environment's, as the README's `.venv/bin/tensorboard`.
  """
  with open(os.path.join(REPO_DIR, 'README.md')) as f:
    line, = [l for l in f if l.strip().startswith('.venv/bin/tensorboard ')]
  program, *args = shlex.split(line)
  logdir_args = [a for a in args if a.startswith('--logdir=')]
  assert len(logdir_args) == 1, line
  return ([os.path.join(os.path.dirname(sys.executable),
                        os.path.basename(program))] +
          ['--logdir=' + log_dir if a in logdir_args else a for a in args])


class _TensorBoard(object):
  """A real TensorBoard on 127.0.0.1, on a port of its choosing."""

  def __init__(self, log_dir, timeout=60):
    self.process = subprocess.Popen(
        readme_tensorboard_command(log_dir), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    self.output = []
    deadline = time.time() + timeout
    while True:  # It says where it listens; wait for that line, not longer.
      line = self.process.stdout.readline()
      if line:
        self.output.append(line)
      match = re.search(r'TensorBoard [\d.]+ at (http://127\.0\.0\.1:\d+)/',
                        line)
      if match:
        self.url = match.group(1)
        break
      if not line or time.time() > deadline:
        self.stop()
        raise AssertionError('TensorBoard did not start in %d s:\n%s' %
                             (timeout, ''.join(self.output)))

  def get(self, path, raw=False, **params):
    """GETs `path` with the query `params`: JSON, or the bytes if `raw`."""
    url = self.url + path + ('?' + urllib.parse.urlencode(params)
                             if params else '')
    with urllib.request.urlopen(url, timeout=30) as response:
      body = response.read()
    return body if raw else json.loads(body)

  def wait_for(self, path, ready, timeout=60):
    """GETs `path` until `ready(data)`, for at most `timeout` seconds."""
    deadline = time.time() + timeout
    while True:
      data = self.get(path)
      if ready(data):
        return data
      if time.time() > deadline or self.process.poll() is not None:
        raise AssertionError('TensorBoard never served %s as expected; last: '
                             '%r' % (path, data))
      time.sleep(0.5)

  def stop(self):
    self.process.terminate()
    try:
      self.process.wait(10)
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.process.wait(10)


def test_a_real_tensorboard_serves_the_runs(logs):
  events, _ = logs['train']
  eval_events, _ = logs['eval']
  board = _TensorBoard(os.path.join(logs['root'], 'logs'))
  try:
    assert sorted(board.wait_for(
        '/data/runs', lambda runs: {'train', 'eval'} <= set(runs))) == [
            'eval', 'train']
    tags = board.wait_for(
        '/data/plugin/scalars/tags',
        lambda tags: 'Precision @ 1' in tags.get('eval', {}) and
        'total_loss' in tags.get('train', {}))
    assert TRAIN_SCALARS <= set(tags['train'])

    for run, tag, expected in [
        ('train', 'total_loss', events['scalars']['total_loss']),
        ('train', 'total_loss (raw)', events['scalars']['total_loss (raw)']),
        ('train', 'learning_rate', events['scalars']['learning_rate']),
        ('eval', 'Precision @ 1', eval_events['scalars']['Precision @ 1'])]:
      served = board.get('/data/plugin/scalars/scalars', run=run, tag=tag)
      assert [(step, value) for _, step, value in served] == [
          (step, pytest.approx(value, rel=1e-6)) for step, value in expected]

    histogram_tags = board.get('/data/plugin/histograms/tags')['train']
    assert HISTOGRAMS <= set(histogram_tags)

    images = board.get('/data/plugin/images/images', run='train',
                       tag='images/image/0', sample=0)
    assert [image['step'] for image in images] == SUMMARY_STEPS
    png = board.get('/data/plugin/images/individualImage?' +
                    images[-1]['query'], raw=True)
    assert _png_size(png) == (24, 24, 2)
  finally:
    board.stop()
