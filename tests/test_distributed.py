"""Distributed training: 1 parameter server and 2 workers on 127.0.0.1."""

import json
import os
import re
import signal
import socket
import time

import pytest

from cifar10_common import tf
from conftest import FLAGS
from conftest import SMALL_QUEUE_FRACTION
from helpers import cross_entropy_on_test_set
from helpers import EVAL_LINE
from helpers import run_script

SCRIPT = 'cifar10_distributed_train.py'
WORKER_LOG_LINE = (
    r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}: worker %d: global step (\d+), '
    r'loss = (\d+\.\d\d) \((\d+\.\d) examples/sec of this worker; '
    r'(\d+\.\d{3}) sec/batch\)$')
DONE_LINE = r'^Done training: worker %d, global step (\d+); (.*)\.$'
# Bounded waits: generous for a loaded 2-core machine, but no test hangs.
TIMEOUT = 240


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


@pytest.fixture
def cluster(data_dir, tmp_path, processes):
  """Starts tasks of a 1-ps, 2-worker cluster: cluster('ps', 0, *flags)."""
  ps_port, *worker_ports = _free_ports(3)
  hosts = ['--ps_hosts=127.0.0.1:%d' % ps_port,
           '--worker_hosts=' + ','.join('127.0.0.1:%d' % p
                                        for p in worker_ports)]
  common = ['--data_dir=' + data_dir, '--train_dir=' + str(tmp_path / 'train'),
            '--batch_size=64', '--log_frequency=5',
            '--min_fraction_of_examples_in_queue=%g' % SMALL_QUEUE_FRACTION]

  def start(job_name, task_index, *flags, tf_config=False):
    """Starts a task; with tf_config, its cluster is given by TF_CONFIG."""
    if not tf_config:
      return processes(SCRIPT, *(hosts + common + [
          '--job_name=' + job_name, '--task_index=%d' % task_index] +
                                 list(flags)))
    env = dict(os.environ, TF_CONFIG=json.dumps({
        'cluster': {'ps': ['127.0.0.1:%d' % ps_port],
                    'worker': ['127.0.0.1:%d' % p for p in worker_ports]},
        'task': {'type': job_name, 'index': task_index}}))
    return processes(SCRIPT, *(common + list(flags)), env=env)
  start.train_dir = str(tmp_path / 'train')
  start.data_dir = data_dir
  return start


def _check_trained(cluster, target_steps, tmp_path):
  """The checkpoint reached the target, learnt, and cifar10_eval.py reads it."""
  train_dir = cluster.train_dir
  latest = tf.train.latest_checkpoint(train_dir)
  step = tf.train.load_variable(latest, 'global_step')
  assert step >= target_steps
  FLAGS.data_dir = cluster.data_dir
  initial = cross_entropy_on_test_set(os.path.join(train_dir, 'model.ckpt-0'))
  assert cross_entropy_on_test_set(latest) < 0.7 * initial
  evaluation = run_script('cifar10_eval.py', '--run_once',
                          '--data_dir=' + cluster.data_dir,
                          '--checkpoint_dir=' + train_dir,
                          '--eval_dir=' + str(tmp_path / 'eval'))
  assert evaluation.returncode == 0, evaluation.stderr
  match = EVAL_LINE.match(evaluation.stdout.splitlines()[0])
  assert match.group(3, 4) == ('250', str(step))


@pytest.mark.parametrize('mode', ['async', 'sync'])
def test_one_ps_two_workers_train_to_the_target(mode, cluster, tmp_path):
  target = 200 if mode == 'async' else 150
  # Asynchronous updates from two workers are stale by about one step: the
  # tutorial's learning rate of 0.1 then makes the loss lurch on this data
  # for hundreds of steps (or diverge), where half of it learns in 100.
  flags = ['--max_steps=%d' % target] + (
      ['--sync_replicas'] if mode == 'sync' else
      ['--initial_learning_rate=0.05'])
  # The cluster from flags for some tasks, from TF_CONFIG for the others.
  ps = cluster('ps', 0, *flags, tf_config=mode == 'sync')
  workers = [cluster('worker', 0, *flags, tf_config=mode == 'async'),
             cluster('worker', 1, *flags)]
  ps.wait_for_line(r'^Parameter server 0 serving at 127\.0\.0\.1:\d+, until '
                   r'the 2 workers are done\.$', timeout=TIMEOUT)
  for i, worker in enumerate(workers):
    worker.wait_for_line(DONE_LINE % i, timeout=TIMEOUT)
  # Every process ends promptly once training is done (with synchronous
  # replicas, TensorFlow's default would keep the chief 120 s longer).
  for process in workers + [ps]:
    assert process.finish(timeout=30) == 0, process.stderr()
    assert process.stderr() == '', process.process.args
  assert ps.lines[-1] == 'All 2 workers are done: stopping.'

  chief, other = workers
  assert chief.lines[0] == (
      'Worker 0 of 2 (chief): %s' % (
          'asynchronous updates.' if mode == 'async' else
          'synchronous, each update averages the gradients of 2 workers '
          '(0 backup).'))
  assert other.lines[0].startswith('Worker 1 of 2: ')
  for i, worker in enumerate(workers):
    logged = [re.match(WORKER_LOG_LINE % i, line) for line in worker.lines]
    global_steps = [int(m.group(1)) for m in logged if m]
    assert len(global_steps) >= 5, worker.lines
    assert global_steps == sorted(global_steps)
  assert chief.lines[-1].startswith('Done training: worker 0, global step ')
  assert chief.lines[-1].endswith(
      '; checkpoint %s.' % tf.train.latest_checkpoint(cluster.train_dir))
  assert other.lines[-1].endswith('; the chief writes the checkpoints.')
  if mode == 'async':
    # Each worker advances the global step: neither did all the steps.
    own_steps = [len([l for l in w.lines if re.match(WORKER_LOG_LINE % i, l)])
                 for i, w in enumerate(workers)]
    assert sum(own_steps) * 5 <= target + 10
  _check_trained(cluster, target, tmp_path)

  # cifar10_train.py resumes from the distributed training's checkpoint.
  step = tf.train.load_variable(
      tf.train.latest_checkpoint(cluster.train_dir), 'global_step')
  resumed = run_script('cifar10_train.py', '--train_dir=' + cluster.train_dir,
                       '--max_steps=%d' % (step + 10), '--batch_size=32',
                       '--data_dir=' + cluster.data_dir,
                       '--min_fraction_of_examples_in_queue=%g' %
                       SMALL_QUEUE_FRACTION)
  assert resumed.returncode == 0, resumed.stderr
  assert resumed.stdout.splitlines()[0].startswith('Resuming from ')
  assert resumed.stdout.splitlines()[-1].startswith(
      'Done training: step %d; ' % (step + 10))


def test_killed_workers_restart_and_rejoin_the_chief_from_its_checkpoint(
    cluster, tmp_path):
  target = 400
  flags = ['--max_steps=%d' % target, '--initial_learning_rate=0.05',
           '--save_checkpoint_secs=2']
  ps = cluster('ps', 0, *flags)
  chief = cluster('worker', 0, *flags)
  worker = cluster('worker', 1, *flags)

  # Worker 1 dies, and is started again: it rejoins.
  worker.wait_for_line(WORKER_LOG_LINE % 1, timeout=TIMEOUT)
  os.kill(worker.process.pid, signal.SIGKILL)
  assert worker.finish() == -signal.SIGKILL
  worker = cluster('worker', 1, *flags)
  rejoined_at = int(worker.wait_for_line(WORKER_LOG_LINE % 1,
                                         timeout=TIMEOUT).group(1))

  # The chief dies once it has written a checkpoint after step 0, and is
  # started again: it resumes from its latest checkpoint.
  chief.wait_for_line(WORKER_LOG_LINE % 0, timeout=TIMEOUT)
  deadline = time.time() + TIMEOUT
  while (tf.train.latest_checkpoint(cluster.train_dir) or '').endswith('-0'):
    assert time.time() < deadline, 'no checkpoint after step 0'
    time.sleep(0.2)
  os.kill(chief.process.pid, signal.SIGKILL)
  assert chief.finish() == -signal.SIGKILL
  latest = tf.train.latest_checkpoint(cluster.train_dir)
  chief = cluster('worker', 0, *flags)
  resumed = chief.wait_for_line(r'^Resuming from (\S+), at step (\d+)\.$',
                                timeout=TIMEOUT)

  for process in [chief, worker, ps]:
    assert process.finish(timeout=TIMEOUT) == 0, process.stderr()
  assert rejoined_at < target
  assert resumed.group(1) == latest
  assert int(resumed.group(2)) == tf.train.load_variable(latest, 'global_step')
  assert 0 < int(resumed.group(2)) < target
  assert worker.lines[-1].startswith('Done training: worker 1, ')
  assert chief.lines[-1].startswith('Done training: worker 0, ')
  assert ps.lines[-1] == 'All 2 workers are done: stopping.'
  _check_trained(cluster, target, tmp_path)


def test_a_port_in_use_is_one_clear_line(data_dir, tmp_path):
  with socket.socket() as taken:
    taken.bind(('127.0.0.1', 0))
    taken.listen()
    address = '127.0.0.1:%d' % taken.getsockname()[1]
    result = run_script(SCRIPT, '--ps_hosts=' + address,
                        '--worker_hosts=127.0.0.1:%d' % _free_ports(1)[0],
                        '--job_name=ps', '--data_dir=' + data_dir)
  assert result.returncode == 1
  assert result.stderr == (
      'Error: cannot start the ps 0 server at %s (Could not start gRPC '
      'server): is the port in use (a task of an earlier run still up?), or '
      'the host not this machine?\n' % address)


@pytest.mark.parametrize('flags, environment, message', [
    ([], None, 'no cluster: give --ps_hosts, --worker_hosts, --job_name and '
     '--task_index, or set TF_CONFIG (see the README).'),
    (['--ps_hosts=localhost:1', '--worker_hosts=localhost:2',
      '--job_name=worker', '--task_index=1'], None,
     '--task_index=1, but the cluster has 1 worker task(s), 0-0.'),
    (['--ps_hosts=localhost', '--worker_hosts=localhost:2',
      '--job_name=ps'], None, 'ps host \'localhost\' is not host:port.'),
    (['--worker_hosts=localhost:2', '--job_name=ps'], None,
     '--ps_hosts is required with a cluster given by flags.'),
    ([], 'not json', 'TF_CONFIG must be JSON like {"cluster": {"ps": '
     '["host:port"], "worker": ["host:port", ...]}, "task": {"type": '
     '"worker", "index": 0}}; it has not json (Expecting value: line 1 '
     'column 1 (char 0)).'),
    ([], json.dumps({'cluster': {'ps': ['a:1'], 'worker': ['b:2']},
                     'task': {'type': 'chief', 'index': 0}}),
     'TF_CONFIG must be JSON like {"cluster": {"ps": ["host:port"], '
     '"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}; '
     'its task is \'chief\', index 0, and its cluster {"ps": ["a:1"], '
     '"worker": ["b:2"]}.'),
    (['--sync_replicas', '--replicas_to_aggregate=3'],
     json.dumps({'cluster': {'ps': ['localhost:%d' % _free_ports(1)[0]],
                             'worker': ['localhost:%d' % _free_ports(1)[0]]},
                 'task': {'type': 'worker', 'index': 0}}),
     '--replicas_to_aggregate=3, but the cluster has 1 worker(s).'),
])
def test_bad_cluster_is_one_clear_line(flags, environment, message,
                                       data_dir, tmp_path, monkeypatch):
  if environment is None:
    monkeypatch.delenv('TF_CONFIG', raising=False)
  else:
    monkeypatch.setenv('TF_CONFIG', environment)
  result = run_script(SCRIPT, '--data_dir=' + data_dir,
                      '--train_dir=' + str(tmp_path / 'train'), *flags)
  assert result.returncode == 1
  assert result.stderr == 'Error: %s\n' % message
  assert not os.path.exists(tmp_path / 'train')
