"""Trains CIFAR-10 on several machines: parameter servers and workers.

Between-graph replication on TensorFlow's distributed runtime: every worker
builds the whole model; tf.train.replica_device_setter places its variables
on the parameter servers, and its input pipeline and computation on the
worker itself (its GPU, where it has one). Start one process per task, e.g.
1 parameter server and 2 workers:

    python cifar10_distributed_train.py --ps_hosts=ps0:2222 \
        --worker_hosts=worker0:2222,worker1:2222 --job_name=ps --task_index=0
    python cifar10_distributed_train.py --ps_hosts=ps0:2222 \
        --worker_hosts=worker0:2222,worker1:2222 --job_name=worker --task_index=0
    python cifar10_distributed_train.py --ps_hosts=ps0:2222 \
        --worker_hosts=worker0:2222,worker1:2222 --job_name=worker --task_index=1

or, instead of the four flags, the TF_CONFIG environment variable, with a
"chief" job (TensorFlow 2's and Kubeflow's way: the chief is worker 0, the
"worker" job's tasks workers 1, 2, ...) or without one (worker 0 is the
chief):

    TF_CONFIG='{"cluster": {"ps": ["ps0:2222"], "chief": ["worker0:2222"],
                            "worker": ["worker1:2222"]},
                "task": {"type": "worker", "index": 0}}'

Worker 0 is the chief: it initialises the variables, or restores them from
the newest checkpoint in its --train_dir, and writes the checkpoints and
summaries there, on its own disk, the same as cifar10_train.py's (either
resumes from the other's; cifar10_eval.py evaluates them). The other
workers wait for it, and every task for the parameter servers, saying so.
Each worker applies its own updates as it computes them (asynchronous), or,
with --sync_replicas, the gradients of --replicas_to_aggregate workers are
averaged into each update (tf.train.SyncReplicasOptimizer); any other
workers are backups, whose late gradients are dropped.

A worker that dies can be started again: it rejoins. A parameter server that
dies can be started again too: the chief restores the newest checkpoint
into it, and every worker carries on from there. When each worker is done
(its training ended, or failed), it tells the parameter servers, which stop
once every worker has.
"""

import json
import os

from absl import flags

import cifar10
from cifar10_support import command_line
from cifar10_support import devices
from cifar10_support import runtime
from cifar10_support import scripts
from cifar10_support.quiet import tf
from cifar10_support.scripts import UserError

FLAGS = flags.FLAGS
command_line.define(*command_line.TRAINING)

flags.DEFINE_list('ps_hosts', None,
                  'Parameter servers, host:port,host:port,...')
flags.DEFINE_list('worker_hosts', None, 'Workers, host:port,host:port,...')
flags.DEFINE_enum('job_name', None, ['ps', 'worker'],
                  'The job of this process.')
flags.DEFINE_integer('task_index', None, 'The index of this process in its '
                     'job (required with the cluster flags).', lower_bound=0)
flags.DEFINE_boolean('sync_replicas', False,
                     'Aggregate the gradients of several workers into each '
                     'update, instead of each worker updating on its own.')
flags.DEFINE_integer('replicas_to_aggregate', None,
                     'With --sync_replicas: gradients averaged into each '
                     'update; the number of workers by default. The workers '
                     'beyond it are backups.', lower_bound=1)
flags.DEFINE_integer('wait_secs', 30 * 60,
                     'How long a task waits for the others (the parameter '
                     'servers, the chief) before it gives up.', lower_bound=1)

CLUSTER_FLAGS = ('ps_hosts', 'worker_hosts', 'job_name', 'task_index')


def cluster_and_task():
  """The cluster and this process's place in it, from flags or TF_CONFIG.

  Returns:
    (tf.train.ClusterSpec with jobs 'ps' and 'worker', job name, task index).

  Raises:
    UserError: no cluster given, or an inconsistent one.
  """
  if any(FLAGS[name].present for name in CLUSTER_FLAGS):
    for name in CLUSTER_FLAGS:
      if FLAGS[name].value is None or FLAGS[name].value == []:
        raise UserError('--%s is required with a cluster given by flags.' %
                        name)
    jobs = {'ps': FLAGS.ps_hosts, 'worker': FLAGS.worker_hosts}
    job_name, task_index = FLAGS.job_name, FLAGS.task_index
    source = '--task_index'
  elif os.environ.get('TF_CONFIG'):
    jobs, job_name, task_index = _parse_tf_config(os.environ['TF_CONFIG'])
    source = 'TF_CONFIG\'s task index'
  else:
    raise UserError('no cluster: give --ps_hosts, --worker_hosts, --job_name '
                    'and --task_index, or set TF_CONFIG (see the README).')
  for job, hosts in jobs.items():
    for host in hosts:
      host_name, _, port = host.rpartition(':')
      if not host_name or not port.isdigit():
        raise UserError('%s host %r is not host:port.' % (job, host))
  if task_index >= len(jobs[job_name]):
    raise UserError('%s=%d, but the cluster has %d %s task(s), 0-%d.' %
                    (source, task_index, len(jobs[job_name]), job_name,
                     len(jobs[job_name]) - 1))
  return tf.train.ClusterSpec(jobs), job_name, task_index


def _parse_tf_config(text):
  """({'ps': hosts, 'worker': hosts}, job, index) of a TF_CONFIG.

  A "chief" job is worker 0, and the "worker" job's tasks follow it.
  """
  expected = ('TF_CONFIG must be JSON like {"cluster": {"ps": ["host:port"], '
              '"chief": ["host:port"], "worker": ["host:port", ...]}, "task": '
              '{"type": "worker", "index": 0}} ("chief" optional)')
  try:
    config = json.loads(text)
    cluster, task = config['cluster'], config['task']
    chief = list(cluster.get('chief', []))
    jobs = {'ps': list(cluster['ps']),
            'worker': chief + list(cluster.get('worker', []))}
    job_name, task_index = task['type'], int(task['index'])
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise UserError('%s; it has %s (%s).' % (
        expected, text.strip()[:200], scripts.first_line(e))) from None
  if job_name == 'chief' and task_index == 0:
    job_name = 'worker'
  elif job_name == 'worker':
    task_index += len(chief)
  if (job_name not in jobs or task_index < 0 or not all(jobs.values()) or
      len(chief) > 1):
    raise UserError('%s; its task is %r, index %d, and its cluster %s.' % (
        expected, task['type'], int(task['index']), json.dumps(cluster)))
  return jobs, job_name, task_index


def done_queues(cluster):
  """A queue on each parameter server, where each worker, once done, puts
  its index.

  Workers and parameter servers build the same queues (same shared names, same
  devices), so that they share them.
  """
  queues = []
  for ps_task in range(cluster.num_tasks('ps')):
    with tf.device('/job:ps/task:%d' % ps_task):
      queues.append(tf.FIFOQueue(-1, tf.int32, shapes=[],
                                 shared_name='done_queue_%d' % ps_task,
                                 name='done_queue_%d' % ps_task))
  return queues


def serve(server, cluster, task_index):
  """A parameter server's life: serve until every worker is done.

  Each worker counts once, however many times it says it is done (a worker
  started again after its end says it again).
  """
  num_workers = cluster.num_tasks('worker')
  with tf.Graph().as_default():
    queue = done_queues(cluster)[task_index]
    queued, dequeue = queue.size(), queue.dequeue()
    # Signals are taken in before the line below says it serves.
    with scripts.StopSignals() as stop, tf.Session(
        server.target, config=devices.cpu_only_config(
            device_filters=['/job:ps/task:%d' % task_index])) as sess:
      print('Parameter server %d serving at %s, until the %d worker%s done.' %
            (task_index, cluster.task_address('ps', task_index), num_workers,
             ' is' if num_workers == 1 else 's are'), flush=True)
      done_workers = set()
      # Polled, not a blocking dequeue: a signal must stop it at once.
      while not stop.received:
        for _ in range(sess.run(queued)):  # Each there now: none waits.
          done_workers.add(int(sess.run(dequeue)))
        if len(done_workers) >= num_workers:
          print('All %d workers are done: stopping.' % num_workers,
                flush=True)
          return
        stop.wait(0.5)
  raise scripts.Interrupted(
      'Parameter server %d stopped by %s.' % (task_index, stop.received),
      stop.signum)


def worker_gpu(cluster, task_index, num_gpus):
  """The GPU a worker trains on, or None on a machine without GPUs.

  Workers that share a machine (the same host in the cluster's worker
  addresses) take one GPU each, in the order they are listed: on a machine
  of 2 GPUs, its first worker GPU 0, its second GPU 1, a third GPU 0 again.
  (Each would take GPU 0 otherwise: TensorFlow's choice for a worker.)

  Args:
    cluster: The tf.train.ClusterSpec.
    task_index: The worker's index.
    num_gpus: The GPUs of this machine (devices.gpus()).
  """
  if not num_gpus:
    return None
  hosts = [address.rpartition(':')[0]
           for address in cluster.job_tasks('worker')]
  return hosts[:task_index].count(hosts[task_index]) % num_gpus


def build_worker_graph(params, data, precision, cluster, task_index, gpu=None,
                       replicas_to_aggregate=None):
  """A worker's training graph, in the default graph.

  Args:
    params: cifar10_support.params.Params: the settings.
    data: cifar10_support.data.DataSet: this worker's copy of the data.
    precision: cifar10_support.params.Precision: the model's types.
    cluster: The tf.train.ClusterSpec.
    task_index: This worker's index; worker 0 is the chief.
    gpu: The GPU the model runs on (worker_gpu()), or None for the CPU.
    replicas_to_aggregate: None for asynchronous updates; otherwise the
      workers' gradients averaged into each synchronous update.

  Returns:
    (train op, loss, hooks the session must run).
  """
  worker_device = '/job:worker/task:%d' % task_index
  # The model on this worker's GPU (or CPU), the variables on the parameter
  # servers; the input pipeline on this worker's CPU (cifar10 puts it there).
  with tf.device(tf.train.replica_device_setter(
      worker_device=worker_device + (
          '' if gpu is None else '/device:GPU:%d' % gpu),
      cluster=cluster)):
    global_step = tf.train.get_or_create_global_step()
    images, labels = cifar10.distorted_inputs(
        data, params.batch_size, precision.compute_dtype,
        params.min_fraction_of_examples_in_queue)
    logits = cifar10.inference(images, data.num_classes, params.top_layers,
                               precision.variable_dtype)
    loss = cifar10.loss(logits, labels)
    train_op, hooks = build_train_op(
        loss, global_step, params, data.num_train_examples, precision,
        task_index == 0, cluster.num_tasks('worker'), replicas_to_aggregate)
  return train_op, loss, hooks


def train(params, data, server, cluster, task_index, sync_replicas=False,
          replicas_to_aggregate=None, wait_secs=30 * 60):
  """A worker's life: train until params.max_steps, then tell the servers.

  Args:
    params: cifar10_support.params.Params: the settings.
    data: cifar10_support.data.DataSet: this worker's copy of the data.
    server: This worker's tf.train.Server.
    cluster: The tf.train.ClusterSpec.
    task_index: This worker's index; worker 0 is the chief.
    sync_replicas: Aggregate the gradients of several workers into each
      update.
    replicas_to_aggregate: With sync_replicas, the gradients in each update;
      all workers' by default.
    wait_secs: How long it waits for the parameter servers and the chief.
  """
  num_workers = cluster.num_tasks('worker')
  is_chief = task_index == 0
  replicas_to_aggregate = replicas_to_aggregate or num_workers
  gpus = devices.gpus()
  precision = params.precision(on_gpu=bool(gpus))
  gpu = worker_gpu(cluster, task_index, len(gpus))
  on_gpu = '' if gpu is None else '; on GPU %d' % gpu
  if sync_replicas:
    print('Worker %d of %d%s: synchronous, each update averages the '
          'gradients of %d workers (%d backup)%s.' % (
              task_index, num_workers, ' (chief)' if is_chief else '',
              replicas_to_aggregate, num_workers - replicas_to_aggregate,
              on_gpu), flush=True)
  else:
    print('Worker %d of %d%s: asynchronous updates%s.' % (
        task_index, num_workers, ' (chief)' if is_chief else '', on_gpu),
          flush=True)

  with tf.Graph().as_default():
    train_op, loss, hooks = build_worker_graph(
        params, data, precision, cluster, task_index, gpu,
        replicas_to_aggregate if sync_replicas else None)
    say_done = [queue.enqueue(task_index) for queue in done_queues(cluster)]
    worker_device = '/job:worker/task:%d' % task_index
    # Talk to the servers and to this worker only: other workers may be
    # down. Soft placement: ops without a GPU kernel run on its CPU.
    config = devices.session_config(
        params, device_filters=['/job:ps', worker_device],
        allow_soft_placement=True)
    worker = runtime.Worker(
        index=task_index, target=server.target, device=worker_device,
        parameter_servers=tuple(
            ('parameter server %d' % i, address)
            for i, address in enumerate(cluster.job_tasks('ps'))),
        chief_address=cluster.task_address('worker', 0), wait_secs=wait_secs)
    try:
      runtime.run_training(train_op, loss, params, data.class_names,
                           config=config, worker=worker, hooks=hooks)
    except scripts.Interrupted:
      raise  # Stopped by the user, to be started again, maybe: not done.
    except Exception:
      _say_done(server, worker, config, say_done)  # Done, if not well.
      raise
    _say_done(server, worker, config, say_done)


def _say_done(server, worker, config, say_done):
  """Tells the parameter servers that this worker is done, where they are
  up (they may be gone already, or never came)."""
  if runtime.unreachable(worker.parameter_servers, timeout_secs=2):
    return
  config.operation_timeout_in_ms = 10000
  try:
    with tf.Session(server.target, config=config) as sess:
      sess.run(say_done)
  except tf.errors.OpError:
    pass


def build_train_op(loss, global_step, params, examples_per_epoch, precision,
                   is_chief, num_workers, replicas_to_aggregate=None):
  """cifar10.train()'s step, each update from one worker or several.

  Args:
    loss: This worker's total loss.
    global_step: The global step variable.
    params: cifar10_support.params.Params: batch_size,
      initial_learning_rate.
    examples_per_epoch: The images of the data's training files.
    precision: cifar10_support.params.Precision: the model's types.
    is_chief: Whether this is worker 0.
    num_workers: The number of workers.
    replicas_to_aggregate: None for asynchronous updates; otherwise the
      workers' gradients averaged into each synchronous update.

  Returns:
    (train op, hooks the session must run).
  """
  hooks = []

  def synchronous(optimizer, variable_averages):
    # The moving averages of the weights are updated once per update, by
    # the chief, not by every worker.
    sync_optimizer = tf.train.SyncReplicasOptimizer(
        optimizer, replicas_to_aggregate=replicas_to_aggregate,
        total_num_replicas=num_workers, variable_averages=variable_averages,
        variables_to_average=tf.trainable_variables())
    hooks.append(_QuietlyEndingHook(
        sync_optimizer.make_session_run_hook(is_chief)))
    return sync_optimizer

  train_op = cifar10.train(
      loss, global_step,
      examples_per_step=params.batch_size * (replicas_to_aggregate or 1),
      examples_per_epoch=examples_per_epoch,
      initial_learning_rate=params.initial_learning_rate,
      wrap_optimizer=synchronous if replicas_to_aggregate else None,
      loss_scale=(cifar10.float16_loss_scale() if precision.loss_scaled
                  else None))
  return train_op, hooks


class _QuietlyEndingHook(tf.train.SessionRunHook):
  """SyncReplicasOptimizer's hook, whose chief thread ends without a wait.

  On the chief, that hook starts a thread that aggregates the workers'
  gradients. Once training is done, the thread waits for gradients that will
  never come: the monitored session, whose coordinator it joins, would wait
  its grace period (120 s) for it, then cancel it with a traceback. Here the
  thread has a coordinator of its own, for which the cancelling is a clean
  stop; its real errors are raised in the training loop. Each session (a new
  one after a parameter server's restart) gets a coordinator of its own:
  the old one was stopped with the old session.
  """

  def __init__(self, hook):
    self._hook = hook
    self._coord = None

  def begin(self):
    self._hook.begin()

  def after_create_session(self, session, coord):
    del coord  # The thread gets a coordinator of its own.
    if self._coord:
      self._coord.request_stop()
    self._coord = tf.train.Coordinator(
        clean_stop_exception_types=(tf.errors.CancelledError,
                                    tf.errors.OutOfRangeError))
    self._hook.after_create_session(session, self._coord)

  def after_run(self, run_context, run_values):
    self._coord.raise_requested_exception()

  def end(self, session):
    self._coord.request_stop()


def main(argv):
  del argv  # The settings are the flags' (or TF_CONFIG's).
  cluster, job_name, task_index = cluster_and_task()
  num_workers = cluster.num_tasks('worker')
  if (FLAGS.sync_replicas and
      (FLAGS.replicas_to_aggregate or num_workers) > num_workers):
    raise UserError('--replicas_to_aggregate=%d, but the cluster has %d '
                    'worker(s).' % (FLAGS.replicas_to_aggregate, num_workers))
  params = command_line.params()
  if job_name == 'ps':
    serve(start_server(cluster, job_name, task_index, params), cluster,
          task_index)
    return
  # Each worker reads its own copy of the data; a parameter server none.
  data = cifar10.maybe_download_and_extract(params.data_dir, params.data_url,
                                            params.data_md5)
  train(params, data, start_server(cluster, job_name, task_index, params),
        cluster, task_index, FLAGS.sync_replicas, FLAGS.replicas_to_aggregate,
        FLAGS.wait_secs)


def start_server(cluster, job_name, task_index, params):
  """This task's tf.train.Server.

  Raises:
    UserError: it cannot listen at its address.
  """
  # A parameter server keeps the variables on its CPU: it leaves the GPUs
  # alone.
  config = (devices.cpu_only_config() if job_name == 'ps'
            else devices.session_config(params))
  try:
    return tf.train.Server(cluster, job_name=job_name, task_index=task_index,
                           config=config)
  except tf.errors.OpError as e:
    raise UserError(
        'cannot start the %s %d server at %s (%s): is the port in use (a task '
        'of an earlier run still up?), or the host not this machine?' %
        (job_name, task_index, cluster.task_address(job_name, task_index),
         scripts.first_line(e))) from None


if __name__ == '__main__':
  scripts.run(main)
