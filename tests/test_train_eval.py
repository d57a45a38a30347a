"""Training and evaluation, in process and as the scripts a user runs."""

import json
import os
import re
import time

import numpy as np
import pytest

import cifar10_eval
from cifar10_support import params as params_lib
from cifar10_support import runtime
from cifar10_support.quiet import tf
import cifar10_train
import cifar_data
from conftest import COUNTS
from conftest import TRAINED_STEPS
from helpers import cross_entropy_on_test_set
from helpers import EVAL_LINE
from helpers import LOG_LINE
from helpers import quick_args
from helpers import resolved
from helpers import run_main
from helpers import run_script
from helpers import run_scripts

TRAINABLE = ['conv1/weights', 'conv1/biases', 'conv2/weights', 'conv2/biases',
             'local3/weights', 'local3/biases', 'local4/weights',
             'local4/biases', 'softmax_linear/weights', 'softmax_linear/biases']


def _train(params, max_steps, capsys):
  """Trains to `max_steps`; returns the stdout lines."""
  cifar10_train.train(*resolved(params.replace(max_steps=max_steps)))
  return capsys.readouterr().out.splitlines()


def _checkpoint(params, step):
  return os.path.join(params.train_dir, 'model.ckpt-%d' % step)


def test_training_lowers_the_loss_and_saves_moving_averages(trained):
  _, train_dir, lines = trained
  last = os.path.join(train_dir, 'model.ckpt-%d' % TRAINED_STEPS)
  logged = [LOG_LINE.match(line) for line in lines]
  assert [int(m.group(1)) for m in logged if m] == list(
      range(10, TRAINED_STEPS + 1, 10))
  for m in filter(None, logged):
    assert float(m.group(3)) > 0 and float(m.group(4)) > 0
  assert lines[-1] == 'Done training: step %d; checkpoint %s.' % (
      TRAINED_STEPS, last)
  assert tf.train.latest_checkpoint(train_dir) == last

  stored = dict(tf.train.list_variables(last))
  for name in TRAINABLE:
    assert name in stored
    assert stored[name + '/ExponentialMovingAverage'] == stored[name]
  assert tf.train.load_variable(last, 'global_step') == TRAINED_STEPS
  # The averages lag behind the weights.
  raw = tf.train.load_variable(last, 'local4/weights')
  averaged = tf.train.load_variable(last,
                                    'local4/weights/ExponentialMovingAverage')
  assert not np.allclose(raw, averaged)

  # The first checkpoint (step 0) is the untrained model: about ln(10).
  initial = cross_entropy_on_test_set(os.path.join(train_dir, 'model.ckpt-0'),
                                      trained[0])
  final = cross_entropy_on_test_set(last, trained[0])
  assert initial == pytest.approx(np.log(10), abs=0.1)
  assert final < 0.5 * initial


def test_evaluation_of_the_moving_averages_counts_every_test_record(
    trained, capsys, tmp_path):
  data_dir, train_dir, _ = trained
  checkpoint = os.path.join(train_dir, 'model.ckpt-%d' % TRAINED_STEPS)
  # A copy of the checkpoint whose raw weights are useless: only the moving
  # averages can give a good precision.
  reader = tf.train.load_checkpoint(checkpoint)
  with tf.Graph().as_default():
    stored = {}
    for name, _ in tf.train.list_variables(checkpoint):
      value = reader.get_tensor(name)
      if name in TRAINABLE:
        value = np.zeros_like(value)
      stored[name] = tf.Variable(value, name=name)
    saver = tf.train.Saver(stored)
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      saver.save(sess, str(tmp_path / 'scrambled' / 'model.ckpt'),
                 global_step=TRAINED_STEPS)
  params = params_lib.Params(
      data_dir=data_dir, checkpoint_dir=str(tmp_path / 'scrambled'),
      eval_dir=str(tmp_path / 'eval'), run_once=True)
  cifar10_eval.evaluate(*resolved(params))
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2
  match = EVAL_LINE.match(lines[0])
  assert match, lines
  precision, correct, total, step, images_per_sec = match.groups()
  assert float(images_per_sec) > 0
  assert (int(total), int(step)) == (250, TRAINED_STEPS)
  assert float(precision) == pytest.approx(int(correct) / 250, abs=5e-4)
  assert float(precision) > 0.5  # Ten classes: chance is 0.1.

  # The summary holds the precision at the checkpoint's step.
  events = [os.path.join(params.eval_dir, f)
            for f in os.listdir(params.eval_dir)]
  values = [(e.step, v.simple_value)
            for path in events for e in tf.train.summary_iterator(path)
            for v in e.summary.value if v.tag == 'Precision @ 1']
  assert values == [(TRAINED_STEPS,
                     pytest.approx(float(precision), abs=5e-4))]


def test_a_second_run_resumes_at_the_saved_step(quick_params, capsys):
  params = quick_params
  _train(params, 30, capsys)
  first_files = set(os.listdir(params.train_dir))
  lines = _train(params, 50, capsys)
  assert lines[0] == 'Resuming from %s, at step 30.' % _checkpoint(params, 30)
  steps = [int(m.group(1)) for m in map(LOG_LINE.match, lines) if m]
  assert steps == [40, 50]
  assert tf.train.load_variable(_checkpoint(params, 50), 'global_step') == 50
  # Nothing of the first run was deleted.
  assert first_files <= set(os.listdir(params.train_dir))
  # At --max_steps already: nothing to do, nothing written.
  files = set(os.listdir(params.train_dir))
  lines = _train(params, 50, capsys)
  assert lines == ['%s is at step 50, --max_steps=50: nothing to train.' %
                   _checkpoint(params, 50)]
  assert set(os.listdir(params.train_dir)) == files


# What cifar10_train.py wrote at earlier revisions of main: each variable's
# shape and type, and the number of files its values were saved in.
EARLIER_CHECKPOINTS = os.path.join(os.path.dirname(__file__), 'data',
                                   'checkpoints_of_earlier_versions.json')


def _earlier_layout(revision):
  with open(EARLIER_CHECKPOINTS) as f:
    return json.load(f)['revisions'][revision]


def _earlier_checkpoint(revision, train_dir, step):
  """A checkpoint at `step` as cifar10_train.py wrote it at `revision`: its
  variables (random weights), saved in as many shards; returns its path."""
  layout = _earlier_layout(revision)
  rng = np.random.default_rng(0)
  with tf.Graph().as_default():
    variables = []
    for i, (name, (shape, dtype)) in enumerate(
        sorted(layout['variables'].items())):
      if name in COUNTS:
        value = np.int64(step * (32 if name == 'examples_seen' else 1))
      else:
        value = (rng.normal(size=shape) * 0.05).astype(dtype)
      with tf.device('/cpu:%d' % (i % layout['shards'])):
        variables.append(tf.Variable(value, name=name))
    saver = tf.train.Saver(variables, sharded=layout['shards'] > 1)
    with tf.Session(config=tf.ConfigProto(device_count={'CPU': 2})) as sess:
      sess.run(tf.global_variables_initializer())
      return saver.save(sess, os.path.join(train_dir, 'model.ckpt'),
                        global_step=step)


@pytest.mark.parametrize('revision', ['58ac3c4', '35957dd'])
def test_checkpoints_of_earlier_versions_resume_and_evaluate(
    revision, quick_params, capsys):
  # 58ac3c4: main before this round (2 shards, no count of the examples
  # seen); 35957dd: main before its layout changed (cifar10_support/).
  params = quick_params
  os.makedirs(params.train_dir)
  checkpoint = _earlier_checkpoint(revision, params.train_dir, 7)
  assert len([name for name in os.listdir(params.train_dir)
              if '.data-' in name]) == _earlier_layout(revision)['shards']
  lines = _train(params, 8, capsys)
  assert lines[0] == 'Resuming from %s, at step 7.' % checkpoint
  assert lines[-1] == 'Done training: step 8; checkpoint %s.' % (
      _checkpoint(params, 8))
  # What it writes is what 35957dd wrote: either reads the other's.
  reader = tf.train.load_checkpoint(_checkpoint(params, 8))
  assert {name: [shape, reader.get_variable_to_dtype_map()[name].name]
          for name, shape in reader.get_variable_to_shape_map().items()} == (
              _earlier_layout('35957dd')['variables'])
  cifar10_eval.evaluate(*resolved(params))
  match = EVAL_LINE.match(capsys.readouterr().out.splitlines()[0])
  assert match.group(3, 4) == ('250', '8')


def test_nan_loss_stops_training_and_keeps_the_last_checkpoint(
    quick_params):
  # As a user sees it: one line, status 1, no traceback.
  params = quick_params
  result = run_script('cifar10_train.py', '--initial_learning_rate=1e9',
                      '--max_steps=1000', '--train_dir=' + params.train_dir,
                      *quick_args(params.data_dir))
  assert result.returncode == 1
  match = re.match(r'^Error: loss is (NaN|infinite) at step (\d+): training '
                   r'diverged and was stopped; the last checkpoint, (\S+), is '
                   r'kept\. Lower the learning rate, or check the [^\n]+\n$',
                   result.stderr)
  assert match, result.stderr
  assert 1 <= int(match.group(2)) < 1000
  assert match.group(3) == _checkpoint(params, 0)
  assert tf.train.latest_checkpoint(params.train_dir) == _checkpoint(params, 0)
  assert np.all(np.isfinite(tf.train.load_variable(_checkpoint(params, 0),
                                                   'local3/weights')))


def test_log_device_placement_prints_where_each_op_runs(data_dir, tmp_path,
                                                        capfd):
  # TensorFlow's own lines, one per op of the graph, written to the
  # process's stdout: here, all on the CPU. Without the flag, none.
  for flag in ('--log_device_placement', '--nolog_device_placement'):
    result = run_main('cifar10_train.py', flag, '--max_steps=1',
                      '--train_dir=' + str(tmp_path / flag),
                      *quick_args(data_dir))
    assert result.returncode == 0, result.stderr
    placed = dict(re.findall(r'^(\S+): \(\w+\): (/\S+)$',
                             capfd.readouterr().out, re.M))
    if flag == '--log_device_placement':
      assert placed['conv1/Conv2D'] == (
          '/job:localhost/replica:0/task:0/device:CPU:0')
      assert len(placed) > 500
    else:
      assert placed == {}


def test_scripts_train_then_evaluate_with_clean_output(data_dir, tmp_path):
  train_dir = str(tmp_path / 'train')
  common = quick_args(data_dir, training=False)
  train = run_script('cifar10_train.py', '--train_dir=' + train_dir,
                     '--max_steps=20', *quick_args(data_dir))
  assert train.returncode == 0, train.stderr
  lines = train.stdout.splitlines()
  assert lines[0] == ('Filling the input queue with 200 CIFAR images before '
                      'starting to train.')
  assert [int(LOG_LINE.match(l).group(1)) for l in lines
          if LOG_LINE.match(l)] == [10, 20]
  assert lines[-1].startswith('Done training: step 20; checkpoint ')
  # No deprecation notices of the v1 APIs, no banners, no cancelled-enqueue
  # warnings of the input threads: nothing at all, here.
  assert train.stderr == ''

  evaluation = run_script('cifar10_eval.py', '--run_once',
                          '--checkpoint_dir=' + train_dir,
                          '--eval_dir=' + str(tmp_path / 'eval'), *common)
  assert evaluation.returncode == 0, evaluation.stderr
  assert evaluation.stderr == ''
  lines = evaluation.stdout.splitlines()
  assert len(lines) == 2
  assert lines[1].startswith('  by class: airplane ')
  match = EVAL_LINE.match(lines[0])
  assert match, evaluation.stdout
  assert match.group(3, 4) == ('250', '20')

  # The training images instead: all 5 x 64 of them, once each.
  on_training_images = run_main(
      'cifar10_eval.py', '--run_once', '--eval_data=train_eval',
      '--checkpoint_dir=' + train_dir, '--eval_dir=' + str(tmp_path / 'eval'),
      *common)
  assert on_training_images.returncode == 0, on_training_images.stderr
  match = EVAL_LINE.match(on_training_images.stdout.splitlines()[0])
  assert match.group(3, 4) == ('320', '20')



def test_tf_cpp_min_log_level_0_shows_what_is_otherwise_silenced():
  # The notices of the v1 APIs used on purpose are dropped, unless a user
  # asks for all of TensorFlow's messages.
  code = ('from cifar10_support import quiet\n'
          'quiet.tf.train.string_input_producer(["a"])')
  quiet, everything = [
      run_script('-c', code, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL=level))
      for level in ('1', '0')]
  assert quiet.returncode == everything.returncode == 0, everything.stderr
  assert quiet.stderr == ''
  assert re.search(r'string_input_producer \(from \S+\) is deprecated',
                   everything.stderr), everything.stderr

# Each script's flags, all of them, and the defaults the README states.
_TRAINING_FLAGS = {
    'data_dir', 'data_url', 'data_md5', 'batch_size', 'use_fp16',
    'mixed_precision', 'top_layers', 'gpu_memory_growth', 'xla', 'train_dir',
    'max_steps', 'initial_learning_rate', 'min_fraction_of_examples_in_queue',
    'log_device_placement', 'log_frequency', 'save_checkpoint_secs',
    'save_summaries_steps'}
_MODEL_READING_FLAGS = {'checkpoint_dir', 'moving_average', 'top_layers',
                        'use_fp16', 'mixed_precision', 'gpu_memory_growth'}
SCRIPT_FLAGS = {
    'cifar10_train.py': _TRAINING_FLAGS,
    'cifar10_multi_gpu_train.py': _TRAINING_FLAGS | {'num_gpus'},
    'cifar10_distributed_train.py': _TRAINING_FLAGS | {
        'ps_hosts', 'worker_hosts', 'job_name', 'task_index', 'sync_replicas',
        'replicas_to_aggregate', 'wait_secs'},
    'cifar10_eval.py': {
        'data_dir', 'data_url', 'data_md5', 'batch_size', 'use_fp16',
        'mixed_precision', 'top_layers', 'gpu_memory_growth', 'checkpoint_dir',
        'moving_average', 'eval_dir', 'eval_data', 'eval_interval_secs',
        'run_once'},
    'cifar10_predict.py': _MODEL_READING_FLAGS | {'top_k'},
    'cifar10_export.py': _MODEL_READING_FLAGS | {'export_dir'},
    'prepare_data.py': {'image_dir', 'output_dir', 'test_fraction', 'seed'},
}
README_DEFAULTS = {
    'max_steps': '1000000', 'save_checkpoint_secs': '600',
    'save_summaries_steps': '100', 'log_frequency': '10', 'batch_size': '128',
    'min_fraction_of_examples_in_queue': '0.4', 'initial_learning_rate': '0.1',
    'eval_interval_secs': '300', 'num_gpus': '1', 'top_k': '3',
    'train_dir': '/tmp/cifar10_train', 'data_dir': '/tmp/cifar10_data',
    'eval_dir': '/tmp/cifar10_eval', 'checkpoint_dir': '/tmp/cifar10_train',
    'eval_data': 'test', 'moving_average': 'true', 'gpu_memory_growth': 'true',
    'top_layers': 'fully_connected', 'test_fraction': '0.2'}


def _listed_flags(helpshort):
  """{flag: its default as --helpshort prints it, or None}."""
  listed = {}
  for block in re.split(r'\n(?=  --)', helpshort):
    name = re.match(r'  --(?:\[no\])?(\w+):', block)
    if name:
      default = re.search(r"\(default: '([^']*)'\)", block)
      listed[name.group(1)] = default.group(1) if default else None
  return listed


def test_helpshort_lists_each_scripts_flags_with_their_defaults():
  scripts = sorted(SCRIPT_FLAGS)
  for script, result in zip(scripts, run_scripts(
      *[(script, '--helpshort') for script in scripts])):
    assert result.returncode == 1, result.stderr  # absl's help exits with 1.
    assert result.stderr == ''
    listed = _listed_flags(result.stdout)
    assert set(listed) == SCRIPT_FLAGS[script], script
    for flag, default in listed.items():
      if flag in README_DEFAULTS:
        assert default == README_DEFAULTS[flag], (script, flag)
  # The same defaults in the library, for a program of one's own.
  params = params_lib.Params()
  for flag, default in README_DEFAULTS.items():
    if hasattr(params, flag):
      assert str(getattr(params, flag)).lower() == default, flag


@pytest.mark.parametrize('script, flag, message', [
    ('cifar10_train.py', '--batch_size=0',
     'flag --batch_size=0: 0 is not a positive integer'),
    ('cifar10_train.py', '--max_steps=-5',
     'flag --max_steps=-5: -5 is not a positive integer'),
    ('cifar10_train.py', '--log_frequency=0',
     'flag --log_frequency=0: 0 is not a positive integer'),
    ('cifar10_train.py', '--min_fraction_of_examples_in_queue=1.5',
     'flag --min_fraction_of_examples_in_queue=1.5: 1.5 is not a number in '
     'the range [0.0, 1.0]'),
    ('cifar10_eval.py', '--eval_interval_secs=0',
     'flag --eval_interval_secs=0: 0 is not a positive integer'),
    ('cifar10_eval.py', '--eval_data=validation',
     'flag --eval_data=validation: value should be one of <test|train_eval>'),
])
def test_bad_flags_are_one_clear_line(script, flag, message, tmp_path):
  result = run_main(script, flag, '--train_dir=' + str(tmp_path / 'out'),
                    '--eval_dir=' + str(tmp_path / 'out'))
  assert result.returncode == 2
  assert result.stderr == 'Error: %s (see --helpshort)\n' % message
  assert result.stdout == ''
  assert not os.path.exists(str(tmp_path / 'out'))


def test_a_flag_of_another_script_is_refused(tmp_path):
  # Seen from outside: each script knows its own flags only.
  result = run_script('cifar10_train.py', '--num_gpus=2',
                      '--train_dir=' + str(tmp_path / 'out'))
  assert result.returncode == 2
  assert result.stderr == ('Error: Unknown command line flag \'num_gpus\' '
                           '(see --helpshort)\n')
  assert result.stdout == ''
  assert not os.path.exists(str(tmp_path / 'out'))


def test_eval_without_checkpoint_says_so(data_dir, tmp_path):
  empty = str(tmp_path / 'empty')
  os.makedirs(empty)
  result = run_main('cifar10_eval.py', '--run_once', '--data_dir=' + data_dir,
                    '--checkpoint_dir=' + empty,
                    '--eval_dir=' + str(tmp_path / 'eval'))
  assert result.returncode == 1
  assert result.stderr == (
      'Error: no checkpoint in --checkpoint_dir=%s yet: train first '
      '(cifar10_train.py --train_dir=%s).\n' % (empty, empty))


def test_use_fp16_trains_and_its_checkpoint_evaluates(tmp_path):
  # float16 has no fast kernels on a CPU (on some, 9 examples/sec): a few
  # steps, on 16 test images. That a float16 step computes what a float32
  # one does is test_model.py::test_fp16_step_is_the_float32_step.
  data_dir = str(tmp_path / 'data')
  cifar_data.make_data_dir(data_dir, records_per_train_file=16,
                           test_records=16)
  train_dir = str(tmp_path / 'train')
  common = ['--use_fp16', '--data_dir=' + data_dir, '--batch_size=8']
  train = run_main('cifar10_train.py', '--train_dir=' + train_dir,
                   '--max_steps=3', '--min_fraction_of_examples_in_queue=0.1',
                   *common)
  assert train.returncode == 0, train.stderr
  # The one line it says: float16 is slow on a CPU, and what is faster.
  assert train.stderr == (
      'Warning: --use_fp16 on a CPU is slow: float16 has no fast CPU kernels '
      '(several to hundreds of times slower than float32, by CPU); '
      '--mixed_precision computes in bfloat16 instead, fast on CPUs with '
      'AVX512-BF16 or AMX.\n')
  last = os.path.join(train_dir, 'model.ckpt-3')
  assert train.stdout.splitlines()[-1] == (
      'Done training: step 3; checkpoint %s.' % last)
  stored = tf.train.load_checkpoint(last).get_variable_to_dtype_map()
  assert {dtype for name, dtype in stored.items()
          if name not in COUNTS} == {tf.float16}

  evaluation = run_main('cifar10_eval.py', '--run_once',
                        '--checkpoint_dir=' + train_dir,
                        '--eval_dir=' + str(tmp_path / 'eval'), *common)
  assert evaluation.returncode == 0, evaluation.stderr
  match = EVAL_LINE.match(evaluation.stdout.splitlines()[0])
  assert match.group(3, 4) == ('16', '3')


def _slow_queue_batch(count, min_after_dequeue, secs_per_image):
  """A batch of `count` from a shuffling queue whose images come slowly."""
  queue = tf.RandomShuffleQueue(100, min_after_dequeue=min_after_dequeue,
                                dtypes=[tf.int32], shapes=[[]])
  slow_image = tf.py_func(lambda: time.sleep(secs_per_image) or np.int32(1),
                          [], tf.int32, stateful=True)
  tf.train.add_queue_runner(tf.train.QueueRunner(
      queue, [queue.enqueue(tf.reshape(slow_image, []))]))
  return queue.dequeue_many(count)


def test_queue_warm_up_reports_its_progress(capsys):
  # A queue that fills slowly, 20 images at 20 ms each: the hook reports
  # every 50 ms until the first step is done.
  with tf.Graph().as_default():
    batch = _slow_queue_batch(4, 20, 0.02)
    hook = runtime._QueueWarmupHook(  # pylint: disable=protected-access
        report_interval_secs=0.05)
    with tf.train.MonitoredSession(hooks=[hook]) as sess:
      assert sess.run(batch).tolist() == [1, 1, 1, 1]
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == ('Filling the input queue with 20 CIFAR images before '
                      'starting to train.')
  progress = [re.match(r'^Filling the input queue: (\d+) of 20 images '
                       r'\(\d+ s\)$', line) for line in lines[1:-1]]
  assert len(progress) >= 2 and all(progress), lines
  counts = [int(m.group(1)) for m in progress]
  assert counts == sorted(counts) and counts[-1] <= 20
  assert re.match(r'^Input queue filled; first step done in \d+\.\d s\.$',
                  lines[-1])


def test_examples_per_sec_leaves_out_the_queue_warm_up(capsys):
  # The first step waits 1 s, as it waits for the queue to fill; the next
  # ones take a millisecond or so. Counted with that wait, the first line's
  # sec/batch would be at least 1 s / 10 steps.
  calls = []

  def waiting_the_first_time():
    calls.append(1)
    if len(calls) == 1:
      time.sleep(1.0)
    return np.int32(1)

  with tf.Graph().as_default():
    global_step = tf.train.get_or_create_global_step()
    batch = tf.py_func(waiting_the_first_time, [], tf.int32, stateful=True)
    step = tf.group(batch, global_step.assign_add(1))
    logger = runtime._LoggerHook(  # pylint: disable=protected-access
        tf.constant(2.5), batch_size=1, batches_per_step=1, log_frequency=10,
        train_dir=None)
    with tf.train.MonitoredSession(hooks=[logger]) as sess:
      for _ in range(10):
        sess.run(step)
  logged = [LOG_LINE.match(line)
            for line in capsys.readouterr().out.splitlines()]
  (first,) = [m for m in logged if m]
  assert first.group(1) == '10'
  assert float(first.group(4)) < 0.05  # sec/batch of steps 2 to 10 alone.
