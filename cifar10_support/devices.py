"""The machine: its GPUs and CPU, the sessions' configuration, traced steps.

What decides, everywhere, what this machine has and how a session uses it:

- `gpus()`: whether a GPU is present (CUDA_VISIBLE_DEVICES= hides them);
  `cpu_has_fast_bfloat16()`: whether the CPU multiplies bfloat16 fast;
  `precision()`: the types the model computes in here;
  `warnings()`: a choice of precision that is slow here, --xla where it
  does nothing, GPUs this TensorFlow has no code for.
- `session_config()`: the configuration of every session the scripts and
  tools open (GPU memory taken as needed, XLA); `cpu_only_config()` for a
  session that leaves the GPUs alone.
- `gpu_code_warning()`: a GPU this build of TensorFlow has no compiled code
  for, said once, in plain words.
- `trace_device()`, `ops_by_device()`, `gpu_kernels_and_copies()` and
  `op_times_by_type()`: the devices of a traced step's statistics, the
  entries a GPU trace adds (its streams, its copies) told apart from the ops
  the executor ran.
"""

import collections
import re

from cifar10_support.quiet import tf


def gpus():
  """The names of the GPUs TensorFlow sees here: what decides, everywhere,
  whether a GPU is present. (CUDA_VISIBLE_DEVICES= hides them all.)"""
  return [gpu.name for gpu in tf.config.list_physical_devices('GPU')]


def cpu_has_fast_bfloat16():
  """Whether this CPU multiplies bfloat16 fast (AVX512-BF16 or AMX)."""
  try:
    with open('/proc/cpuinfo') as f:
      flags = set(
          re.search(r'^flags\s*:(.*)$', f.read(), re.M).group(1).split())
  except (OSError, AttributeError):
    return False
  return bool(flags & {'avx512_bf16', 'amx_bf16'})


def precision_warning(use_fp16, mixed_precision, on_gpu, fast_bfloat16):
  """What to tell a user whose choice of precision is slow here, or None.

  Args:
    use_fp16: --use_fp16 (float16 variables and computation).
    mixed_precision: --mixed_precision.
    on_gpu: Whether the model runs on a GPU (gpus()).
    fast_bfloat16: Whether the CPU computes bfloat16 fast
      (cpu_has_fast_bfloat16()).
  """
  if on_gpu:
    return None
  if use_fp16:
    return ('--use_fp16 on a CPU is slow: float16 has no fast CPU kernels '
            '(several to hundreds of times slower than float32, by CPU); '
            '--mixed_precision computes in bfloat16 instead, fast on CPUs '
            'with AVX512-BF16 or AMX.')
  if mixed_precision and not fast_bfloat16:
    return ('--mixed_precision computes in bfloat16 on a CPU, which is slow '
            'on this one (it has neither AVX512-BF16 nor AMX).')
  return None


def xla_warning(xla, on_gpu):
  """What to tell a user of --xla (xla) on a machine without a GPU, or None.

  The session option (session_config) compiles clusters of ops placed on a
  GPU only: on a CPU, TensorFlow runs the step as it is. (XLA's CPU
  auto-clustering, TF_XLA_FLAGS=--tf_xla_cpu_global_jit, halved the
  training's speed where it was measured: docs/speed.md.)
  """
  if xla and not on_gpu:
    return ('--xla compiles what runs on a GPU; on a CPU it changes nothing '
            '(XLA\'s CPU auto-clustering, '
            'TF_XLA_FLAGS=--tf_xla_cpu_global_jit, halved the training\'s '
            'speed where measured: docs/speed.md).')
  return None


def precision(params):
  """The Precision of params (params.Params) here: it asks for the GPUs."""
  return params.precision(on_gpu=bool(gpus()))


def warnings(params):
  """What a script tells its user, once, about this machine: a choice of
  precision that is slow here, --xla where it does nothing, GPUs this
  TensorFlow has no code for."""
  present = gpus()
  found = [precision_warning(params.use_fp16, params.mixed_precision,
                             bool(present), cpu_has_fast_bfloat16()),
           xla_warning(params.xla, bool(present))]
  if present:
    found.append(gpu_code_warning(gpu_compute_capabilities(),
                                  build_compute_capabilities()))
  return [warning for warning in found if warning]


def session_config(params=None, **kwargs):
  """The configuration of every session the scripts and tools open.

  GPU memory is taken as needed (gpu_memory_growth), not all at once, so
  that evaluation, a benchmark or a second worker can run beside training on
  one GPU; with xla, TensorFlow compiles clusters of the graph's ops
  (auto-clustering).

  Args:
    params: params.Params (gpu_memory_growth, xla, log_device_placement);
      the tutorial's defaults if None.
    **kwargs: More tf.ConfigProto fields.

  Returns:
    A tf.ConfigProto.
  """
  gpu_memory_growth, xla, log_device_placement = (
      (params.gpu_memory_growth, params.xla, params.log_device_placement)
      if params else (True, False, False))
  config = tf.ConfigProto(log_device_placement=log_device_placement,
                          **kwargs)
  config.gpu_options.allow_growth = gpu_memory_growth
  if xla:
    config.graph_options.optimizer_options.global_jit_level = (
        tf.OptimizerOptions.ON_1)
  return config


def cpu_only_config(**kwargs):
  """A session that uses no GPU, and so takes no GPU memory: image decoding,
  a parameter server."""
  return tf.ConfigProto(device_count={'GPU': 0}, **kwargs)


def gpu_code_warning(compute_capabilities, build_capabilities):
  """What to tell a user whose GPUs this TensorFlow has no machine code for.

  On such a GPU, CUDA compiles TensorFlow's kernels from PTX when a process
  starts: many minutes the first time, and TensorFlow warns about it in
  every session. Said once here, with what to do.

  Args:
    compute_capabilities: {GPU name: (major, minor)} of the GPUs present.
    build_capabilities: The build's, e.g. ['sm_60', ..., 'compute_90']
      (tf.sysconfig.get_build_info()['cuda_compute_capabilities']): 'sm_80'
      is machine code for compute capability 8.0 (and 8.x), 'compute_90'
      PTX, which CUDA compiles for 9.0 and later as a process starts.

  Returns:
    The warning, or None when every GPU has machine code.
  """
  machine_code = {divmod(int(code[len('sm_'):]), 10)
                  for code in build_capabilities if code.startswith('sm_')}
  # Machine code for X.Y runs on a GPU of X.Z, for any Z >= Y (CUDA's rule).
  without = sorted(
      name for name, (major, minor) in compute_capabilities.items()
      if not any(major == built_major and minor >= built_minor
                 for built_major, built_minor in machine_code))
  if not without or not machine_code:
    return None
  ptx = [code[len('compute_'):] for code in build_capabilities
         if code.startswith('compute_')]
  return (
      '%s: compute capability %s, for which this TensorFlow has no compiled '
      'GPU code (it has code for %s%s). CUDA compiles it from PTX as each '
      'process starts: the first start can take many minutes, and TensorFlow '
      'warns about it in every session. To compile once, let CUDA keep what '
      'it compiles: export CUDA_CACHE_MAXSIZE=4294967296 (cached in '
      '~/.nv/ComputeCache). Or install a TensorFlow built for this GPU.' % (
          ', '.join(without),
          ', '.join(sorted({'%d.%d' % tuple(compute_capabilities[name])
                            for name in without})),
          ', '.join('%d.%d' % c for c in sorted(machine_code)),
          '; PTX for %s' % ', '.join('%s.%s' % (p[:-1], p[-1]) for p in ptx)
          if ptx else ''))


def gpu_compute_capabilities():
  """{GPU name: (major, minor)} of the GPUs present."""
  found = {}
  for gpu in tf.config.list_physical_devices('GPU'):
    details = tf.config.experimental.get_device_details(gpu)
    if 'compute_capability' in details:
      found[gpu.name] = tuple(details['compute_capability'])
  return found


def build_compute_capabilities():
  """The GPUs this build of TensorFlow has code for (see gpu_code_warning);
  none for a build without CUDA."""
  return list(tf.sysconfig.get_build_info().get('cuda_compute_capabilities',
                                                []))


# The devices of a traced step (RunMetadata.step_stats.dev_stats). The
# executor reports each op it ran under its device's full name, e.g.
# '/job:localhost/replica:0/task:0/device:GPU:0'. A GPU trace adds entries of
# the hardware's own, named after the device and a part of it
# (TensorFlow's xplane_to_step_stats): 'stream:all' (every kernel again),
# 'stream:7' (the kernels of one stream), 'stream:7<MemcpyH2D>' and 'memcpy'
# (copies), 'sync' (waits), 'stream:' (other events).
TraceDevice = collections.namedtuple('TraceDevice',
                                     ['device_type', 'index', 'part'])

_TRACE_DEVICE = re.compile(
    r'^(?:/job:[^/]+)?(?:/replica:\d+)?(?:/task:\d+)?/device:([A-Za-z_]+):'
    r'(\d+)(?:/(.*))?$')


def trace_device(name):
  """The device of an entry of a traced step, and the part of it.

  Args:
    name: A DeviceStepStats.device, e.g.
      '/job:localhost/replica:0/task:0/device:CPU:0' or
      '/device:GPU:0/stream:all'.

  Returns:
    TraceDevice(device_type, index, part): part is None for the executor's
    entry of a device (one NodeExecStats per op it ran), else what a GPU
    trace adds ('stream:all', 'stream:7', 'memcpy', ...).

  Raises:
    ValueError: the name is not a device's.
  """
  match = _TRACE_DEVICE.match(name)
  if not match:
    raise ValueError('%r is not the name of a device of a traced step' % name)
  return TraceDevice(match.group(1).upper(), int(match.group(2)),
                     match.group(3))


def ops_by_device(step_stats):
  """{device type: number of ops that ran there} in a traced step.

  Counted from the executor's entries only: a GPU trace lists each kernel
  again per stream and in 'stream:all', which are not ops of the graph.
  """
  counts = collections.Counter()
  for device in step_stats.dev_stats:
    where = trace_device(device.device)
    if where.part is None:
      counts[where.device_type] += len(device.node_stats)
  return dict(counts)


def gpu_kernels_and_copies(step_stats):
  """(kernels, copies) the GPUs ran in a traced step, each once."""
  kernels = copies = 0
  for device in step_stats.dev_stats:
    part = trace_device(device.device).part
    if part == 'stream:all':
      kernels += len(device.node_stats)
    elif part == 'memcpy':
      copies += len(device.node_stats)
  return kernels, copies


def op_times_by_type(step_stats):
  """The time of a traced step's ops, by type of op.

  On the CPU, the ops its executor ran, by the type of the kernel that ran
  ('_FusedConv2D' where TensorFlow fused a convolution with its bias and
  ReLU). On a GPU, its kernels, each once (the 'stream:all' entries; the
  executor's GPU entries time only their launches), by the op that launched
  them, and its copies, by kind ('MemcpyH2D', ...).

  Returns:
    {op type: [microseconds, count]}.
  """
  by_type = collections.defaultdict(lambda: [0, 0])
  for device in step_stats.dev_stats:
    where = trace_device(device.device)
    for node in device.node_stats:
      if where.part is None and where.device_type != 'GPU':
        # The label: '[allocator sizes] name = Type(inputs)'.
        match = re.search(r'\S+ = (\w+)\(', node.timeline_label)
        op_type = match.group(1) if match else node.node_name
      elif where.part == 'stream:all':
        # The op's full name: 'name:Type'.
        op_type = node.node_name.rpartition(':')[2] or node.node_name
      elif where.part == 'memcpy':
        op_type = node.timeline_label.split(' ', 1)[0]
      else:
        continue
      by_type[op_type][0] += node.all_end_rel_micros
      by_type[op_type][1] += 1
  return dict(by_type)
