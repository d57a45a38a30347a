"""Placement on GPUs, proven without one: TensorFlow's kernel registry.

The Linux wheel of TensorFlow is its CUDA build: its registry lists the GPU
kernels even on a machine with no GPU. The graphs the training scripts build
for GPUs (float32, the tutorial's float16, and mixed precision) are checked
op by op: the input pipeline pinned to the CPU, the
variables once on the CPU, and every op of a tower, forward and backward,
with a GPU kernel for its types (so that soft placement never moves a tower
op to the CPU, with copies back and forth every step). The tensors that
cross between the CPU and a GPU each step are listed, and few.
"""

import collections
import re

import pytest
from tensorflow.python.framework import kernels

import cifar10
import cifar10_multi_gpu_train
from cifar10_support import checkpoints
from cifar10_support import devices
from cifar10_support import params as params_lib
from cifar10_support import runtime
from cifar10_support.quiet import tf
import cifar10_train
from helpers import resolved

def _build_has_cuda_kernels():
  return any(kernel.device_type == 'GPU' for kernel in
             kernels.get_registered_kernels_for_op('Conv2D').kernel)


pytestmark = pytest.mark.skipif(
    not _build_has_cuda_kernels(),
    reason='this build of TensorFlow has no CUDA kernels (the Linux x86-64 '
    'wheel has them): where the graphs would run on GPUs cannot be read '
    'from its kernel registry')

# Ops that run on the CPU by design, not each step's work: summaries (every
# save_summaries_steps) and what feeds them.
SUMMARY_OP_TYPES = {'ScalarSummary', 'HistogramSummary', 'ImageSummary',
                    'MergeSummary'}


def _gpu_kernel_exists(op):
  """Whether the registry has a GPU kernel for this op and its types."""
  for kernel in kernels.get_registered_kernels_for_op(op.type).kernel:
    # DEFAULT kernels are registered for every device (resource variables,
    # control flow).
    if kernel.device_type not in ('GPU', 'DEFAULT'):
      continue
    fits = True
    for constraint in kernel.constraint:
      allowed = constraint.allowed_values.list.type
      if constraint.name in op.node_def.attr and allowed:
        if op.node_def.attr[constraint.name].type not in allowed:
          fits = False
          break
    if fits:
      return True
  return False


def _built_graph(script_train, params, monkeypatch, *args):
  """The graph a training script builds, captured before it runs."""
  built = []
  monkeypatch.setattr(runtime, 'run_training',
                      lambda *a, **k: built.append(tf.get_default_graph()))
  script_train(*resolved(params), *args)
  return built[0]


def _device(op):
  return tf.DeviceSpec.from_string(op.device or '')


def _feeds_only_summaries(op, graph, memo=None):
  """Whether the op's outputs are used, and only by summaries (which run on
  the CPU every save_summaries_steps, not each step)."""
  memo = {} if memo is None else memo
  if op not in memo:
    memo[op] = False  # While its consumers are looked at.
    consumers = [c for t in op.outputs for c in t.consumers()]
    memo[op] = bool(consumers) and all(
        c.type in SUMMARY_OP_TYPES or _feeds_only_summaries(c, graph, memo)
        for c in consumers)
  return memo[op]


def _on_cpu(op, graph):
  """Whether the op runs on the CPU: pinned there, colocated with an op
  pinned there, or using a resource (a variable) that lives there, as the
  placer puts it."""
  if _device(op).device_type == 'CPU':
    return True
  for group in op.colocation_groups():
    name = group.decode()[len('loc:@'):]
    if name != op.name and _on_cpu(graph.get_operation_by_name(name), graph):
      return True
  return any(t.dtype == tf.resource and _on_cpu(t.op, graph)
             for t in op.inputs)


def _crossings(graph):
  """The tensors a step moves between the CPU and the GPUs, by direction."""
  crossing = collections.defaultdict(set)
  for op in graph.get_operations():
    if op.type in SUMMARY_OP_TYPES or _feeds_only_summaries(op, graph):
      continue
    for tensor in op.inputs:
      source = tensor.op
      if _feeds_only_summaries(source, graph):
        continue
      if _on_cpu(source, graph) != _on_cpu(op, graph):
        crossing['to GPU' if _on_cpu(source, graph) else 'to CPU'].add(
            tensor.name)
  return crossing


MODEL_VARIABLES = {'%s/%s' % (layer, kind)
                   for layer in ['conv1', 'conv2', 'local3', 'local4',
                                 'softmax_linear']
                   for kind in ['weights', 'biases']}


# The float16 loss scale (cifar10.float16_loss_scale), read by the towers.
_LOSS_SCALE = {'loss_scale/current_loss_scale'}


def _variable_of_read(tensor, graph):
  """The variable a ReadVariableOp reads, or None."""
  if tensor.op.type != 'ReadVariableOp':
    return None
  return tensor.op.inputs[0].op.name


def _check_placement(graph, tower_prefixes):
  """The checks of both scripts' graphs; returns the crossings."""
  ops = graph.get_operations()
  # The input pipeline: readers, queues, decoding, crops, distortions.
  input_types = {'FixedLengthRecordReaderV2', 'ReaderReadUpToV2',
                 'RandomShuffleQueueV2', 'FIFOQueueV2', 'DecodeRaw',
                 'QueueDequeueManyV2', 'QueueEnqueueManyV2', 'GatherV2'}
  input_ops = [op for op in ops if op.type in input_types or
               op.name.startswith(('input_producer', 'shuffle_batch',
                                   'data_augmentation', 'batch_prefetch'))]
  assert len(input_ops) > 20
  assert not [op.name for op in input_ops if not _on_cpu(op, graph)]
  # The variables, once, on the CPU; the loss averages' too with towers.
  handles = [op for op in ops if op.type == 'VarHandleOp']
  names = [op.name for op in handles]
  assert len(names) == len(set(names))
  model = [op for op in handles if op.name in MODEL_VARIABLES or
           op.name.endswith('ExponentialMovingAverage') and
           op.name.rsplit('/', 1)[0] in MODEL_VARIABLES or
           op.name == 'global_step']
  assert len(model) == 21
  assert all(_on_cpu(op, graph) for op in model)
  # Each op off the CPU: a GPU kernel for its types, unless only summaries
  # (every save_summaries_steps, on the CPU) use it.
  memo = {}
  on_gpu = [op for op in ops if not _on_cpu(op, graph)]
  assert len(on_gpu) > 300
  without_kernel = sorted(
      '%s (%s)' % (op.name, op.type) for op in on_gpu
      if not _gpu_kernel_exists(op) and op.type not in SUMMARY_OP_TYPES and
      not _feeds_only_summaries(op, graph, memo))
  assert not without_kernel
  # No op asks for a GPU and must run on the CPU all the same (for a
  # resource it uses lives there): soft placement would move it, silently.
  assert not [op.name for op in ops
              if _device(op).device_type == 'GPU' and _on_cpu(op, graph)]
  if tower_prefixes:
    for op in on_gpu:
      assert op.name.startswith(tower_prefixes), op.name
  return _crossings(graph)


# float32; the tutorial's float16; mixed precision as on a GPU (float32
# variables, float16 computation with loss scaling).
PRECISIONS = {'float32': {}, 'use_fp16': {'use_fp16': True},
              'mixed': {'mixed_precision': True}}


@pytest.fixture(params=sorted(PRECISIONS))
def gpu_params(request, data_dir, monkeypatch):
  # As on a machine with two GPUs (one a tower): mixed precision then
  # computes in float16.
  monkeypatch.setattr(devices, 'gpus',
                      lambda: ['/physical_device:GPU:0',
                               '/physical_device:GPU:1'])
  params = params_lib.Params(data_dir=data_dir, batch_size=16,
                             **PRECISIONS[request.param])
  assert devices.precision(params).compute_dtype == (
      tf.float32 if request.param == 'float32' else tf.float16)
  return params


def _loss_scales(graph):
  """What the training graph multiplies its total losses by, before the
  gradients (mixed precision's loss scaling): the variables read."""
  return sorted(
      factor.op.inputs[0].op.name
      for op in graph.get_operations()
      if op.type == 'Mul' and 'gradients' not in op.name.split('/')
      for loss, factor in [op.inputs, op.inputs[::-1]]
      if re.search(r'(^|/)total_loss(_\d+)?$', loss.op.name) and
      factor.op.type == 'ReadVariableOp')


def _check_loss_scale(graph, params, towers):
  """float16 computation of float32 variables: each tower's loss times the
  dynamic loss scale, a variable on the CPU."""
  scaled = params.mixed_precision  # Here: float16, as on a GPU.
  assert _loss_scales(graph) == (
      ['loss_scale/current_loss_scale'] * towers if scaled else [])
  if scaled:
    scale = graph.get_operation_by_name('loss_scale/current_loss_scale')
    assert _on_cpu(scale, graph)


def _gradients_applied(graph, to_cpu):
  """Each tensor crossing to the CPU is a gradient, applied to a variable."""
  for name in to_cpu:
    consumers = {op.type for op in graph.get_tensor_by_name(name).consumers()}
    assert consumers & {'ResourceApplyGradientDescent', 'AddN', 'ExpandDims',
                        'Pack', 'ConcatV2', 'AddV2', 'RealDiv', 'Identity',
                        'Mul'}, (name, consumers)


def test_one_gpu_training_graph(gpu_params, monkeypatch):
  graph = _built_graph(cifar10_train.train, gpu_params, monkeypatch)
  crossings = _check_placement(graph, tower_prefixes=None)
  _check_loss_scale(graph, gpu_params, towers=1)
  # Each step: the batch and the variables' values to the GPU, the
  # gradients back: nothing else.
  to_gpu, to_cpu = crossings['to GPU'], crossings['to CPU']
  reads = {_variable_of_read(graph.get_tensor_by_name(t), graph)
           for t in to_gpu} - {None}
  # With float16 loss scaling, the scale too (a scalar).
  assert reads == MODEL_VARIABLES | (_LOSS_SCALE if gpu_params.mixed_precision
                                     else set())
  batch = [t for t in to_gpu if not _variable_of_read(
      graph.get_tensor_by_name(t), graph)]
  assert len(batch) == 2  # Images and labels.
  # local3 and local4 weights read twice.
  assert len(to_gpu) <= 2 + 12 + len(reads - MODEL_VARIABLES)
  assert len(to_cpu) == 10  # One gradient per variable.
  # Applied; with float16 loss scaling, if all are finite (TensorFlow's
  # loss-scale optimizer: IsFinite, then If), and summarised as applied
  # (Select).
  assert {op.type for name in to_cpu
          for op in graph.get_tensor_by_name(name).consumers()} - (
              SUMMARY_OP_TYPES) == (
                  {'IsFinite', 'If', 'Select'} if gpu_params.mixed_precision
                  else {'ResourceApplyGradientDescent'})


def test_two_gpu_towers_graph(gpu_params, monkeypatch):
  graph = _built_graph(cifar10_multi_gpu_train.train, gpu_params,
                       monkeypatch, ['/gpu:0', '/gpu:1'])
  crossings = _check_placement(graph, tower_prefixes=('tower_0/',
                                                      'tower_1/'))
  _check_loss_scale(graph, gpu_params, towers=2)
  for op in graph.get_operations():
    for tower in range(2):
      if op.name.startswith('tower_%d/' % tower) and not _on_cpu(op, graph):
        assert _device(op).to_string() == '/device:GPU:%d' % tower
  to_gpu, to_cpu = crossings['to GPU'], crossings['to CPU']
  for tower in range(2):
    mine = [t for t in to_gpu if t.startswith('tower_%d/' % tower)]
    reads = {_variable_of_read(graph.get_tensor_by_name(t), graph)
             for t in mine} - {None}
    assert reads == MODEL_VARIABLES | (
        _LOSS_SCALE if gpu_params.mixed_precision else set())
    assert len(mine) <= 2 + 12 + len(reads - MODEL_VARIABLES)
  # In: one batch per tower (a dequeue of the shared prefetch queue); out:
  # each tower's gradients and loss terms, averaged on the CPU.
  batches = [t for t in to_gpu if not _variable_of_read(
      graph.get_tensor_by_name(t), graph)]
  assert sorted(batches) == ['tower_0/fifo_queue_Dequeue:0',
                             'tower_0/fifo_queue_Dequeue:1',
                             'tower_1/fifo_queue_Dequeue:0',
                             'tower_1/fifo_queue_Dequeue:1']
  assert len(to_cpu) <= 2 * (10 + 3 + 1)
  _gradients_applied(graph, to_cpu)


def _input_pipeline(graph, model_input):
  """The ops that make a batch, up to the model's input tensor: those it is
  computed from, and the queue runners' (readers, decoding, crops) that fill
  the queues it is dequeued from."""
  from tensorflow.python.ops import op_selector  # pylint: disable=g-import-not-at-top
  ends = [model_input.op] + [
      op for runner in graph.get_collection(tf.GraphKeys.QUEUE_RUNNERS)
      for op in runner.enqueue_ops]
  return [op for op in op_selector.get_backward_walk_ops(ends)
          if op.type not in ('VarHandleOp', 'ReadVariableOp', 'Const')]


def _first_convolution_input(graph):
  convolutions = [op for op in graph.get_operations()
                  if op.type == 'Conv2D' and op.name.endswith('conv1/Conv2D')]
  return convolutions[0].inputs[0]


@pytest.mark.parametrize('precision', sorted(PRECISIONS))
def test_evaluation_prediction_and_export_prepare_images_on_the_cpu(
    precision, trained, tmp_path, monkeypatch):
  # Their images are read (or fed), decoded, cropped and standardised on the
  # CPU, and cross to the GPU once, as a batch; where a GPU kernel exists for
  # these ops, unpinned, they would run on the GPU, each record or image
  # going CPU -> GPU -> CPU in the reader threads.
  from cifar10_support import classifier as classifier_lib  # pylint: disable=g-import-not-at-top
  import cifar10_eval  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(devices, 'gpus',
                      lambda: ['/physical_device:GPU:0'])
  data_dir, train_dir, _ = trained
  params = params_lib.Params(
      data_dir=data_dir, checkpoint_dir=train_dir, batch_size=16,
      eval_dir=str(tmp_path / 'eval'), run_once=True, **PRECISIONS[precision])
  graphs = {'evaluation': cifar10_eval.Evaluation(*resolved(params)).graph}
  # A classifier restores the checkpoint: float32 weights, or float16 ones.
  if precision == 'use_fp16':
    monkeypatch.setattr(checkpoints, 'restore', lambda *args: None)
    monkeypatch.setattr(checkpoints, 'check_checkpoint',
                        lambda *args: None)
  for any_size in (False, True):  # Prediction's, and export's.
    classifier = classifier_lib.Classifier(
        train_dir, cifar10.model_as_trained(params, devices.precision(params)),
        any_size=any_size)
    classifier.close()
    graphs['any size' if any_size else '32x32'] = classifier.graph
  for what, graph in graphs.items():
    model_input = _first_convolution_input(graph)
    pipeline = _input_pipeline(graph, model_input)
    assert len(pipeline) > (20 if what == 'evaluation' else 5), what
    assert not [op.name for op in pipeline if not _on_cpu(op, graph)], what
    # The model itself is not pinned: it goes to the GPU.
    convolution, = [op for op in model_input.consumers()
                    if op.type == 'Conv2D']
    assert not _on_cpu(convolution, graph), what


def test_workers_sharing_a_machine_each_take_their_own_gpu(data_dir):
  # Workers listed on the same host take a GPU each, in their order (a and
  # b each a machine of 2 GPUs); TensorFlow would put all on GPU 0.
  import cifar10_distributed_train  # pylint: disable=g-import-not-at-top
  cluster = tf.train.ClusterSpec({
      'ps': ['p:1'], 'worker': ['a:1', 'a:2', 'b:1', 'a:3']})
  assert [cifar10_distributed_train.worker_gpu(cluster, i, 2)
          for i in range(4)] == [0, 1, 0, 0]
  assert cifar10_distributed_train.worker_gpu(cluster, 1, 0) is None
  # The graph of worker 1: its model on its GPU (1), its input pipeline on
  # its CPU, the variables on the parameter server.
  params = params_lib.Params(data_dir=data_dir, batch_size=16)
  with tf.Graph().as_default() as graph:
    cifar10_distributed_train.build_worker_graph(*resolved(params), cluster, 1,
                                                 gpu=1)
  convolutions = [op for op in graph.get_operations()
                  if op.type.startswith('Conv2D')]
  assert len(convolutions) >= 6  # Forward, and the gradients.
  assert {_device(op).to_string() for op in convolutions} == {
      '/job:worker/task:1/device:GPU:1'}
  pipeline = _input_pipeline(graph, _first_convolution_input(graph))
  assert {_device(op).to_string() for op in pipeline} == {
      '/job:worker/task:1/device:CPU:0'}
  model = [op for op in graph.get_operations() if op.type == 'VarHandleOp' and
           op.name in MODEL_VARIABLES]
  assert len(model) == 10
  assert {_device(op).to_string() for op in model} == {
      '/job:ps/task:0/device:CPU:0'}
