"""Makes the code under test see another machine than this one.

    CIFAR10_TESTS_AS_IF=gpus,slow_bfloat16 python -m pytest

conftest.py applies it in the test process and puts this folder on the
PYTHONPATH of every process the tests start, where Python imports this file
at start-up (it is a sitecustomize). The machines, comma-separated:

- gpus: two NVIDIA GPUs are installed. As TensorFlow does, CUDA_VISIBLE_DEVICES
  set to '' or -1 hides them.
- slow_bfloat16: the CPU has neither AVX512-BF16 nor AMX.
- no_cuda_kernels: TensorFlow is a build without CUDA kernels (as on macOS
  or aarch64 Linux): its kernel registry lists none for a GPU.

The code decides each of these in one place (cifar10_support.devices.gpus,
cifar10_support.devices.cpu_has_fast_bfloat16, TensorFlow's kernel
registry), which is patched here as it is imported.
"""

import importlib.abc
import importlib.machinery
import os
import sys

AS_IF = frozenset(filter(None, os.environ.get('CIFAR10_TESTS_AS_IF',
                                              '').split(',')))
MACHINES = frozenset(['gpus', 'slow_bfloat16', 'no_cuda_kernels'])


def _gpus():
  if os.environ.get('CUDA_VISIBLE_DEVICES') in ('', '-1'):
    return []
  return ['/physical_device:GPU:0', '/physical_device:GPU:1']


def _without_gpu_kernels(registered):
  """get_registered_kernels_for_op, without the kernels of GPUs."""

  def kernels_for_op(name):
    kernel_list = registered(name)
    others = [k for k in kernel_list.kernel if k.device_type != 'GPU']
    del kernel_list.kernel[:]
    kernel_list.kernel.extend(others)
    return kernel_list

  return kernels_for_op


def _patch(module):
  if module.__name__ == 'cifar10_support.devices':
    if 'gpus' in AS_IF:
      module.gpus = _gpus
    if 'slow_bfloat16' in AS_IF:
      module.cpu_has_fast_bfloat16 = lambda: False
  elif 'no_cuda_kernels' in AS_IF:  # tensorflow.python.framework.kernels
    module.get_registered_kernels_for_op = _without_gpu_kernels(
        module.get_registered_kernels_for_op)


_PATCHED = ('cifar10_support.devices', 'tensorflow.python.framework.kernels')


class _PatchAfterImport(importlib.abc.MetaPathFinder):
  """Patches the modules of _PATCHED once they are imported."""

  def find_spec(self, name, path, target=None):
    if name not in _PATCHED:
      return None
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None:
      return None
    exec_module = spec.loader.exec_module

    def exec_then_patch(module):
      exec_module(module)
      _patch(module)

    spec.loader.exec_module = exec_then_patch
    return spec


def install():
  unknown = AS_IF - MACHINES
  if unknown:
    raise ValueError('CIFAR10_TESTS_AS_IF: unknown %s; known: %s' % (
        ', '.join(sorted(unknown)), ', '.join(sorted(MACHINES))))
  for name in _PATCHED:
    if name in sys.modules:
      _patch(sys.modules[name])
  sys.meta_path.insert(0, _PatchAfterImport())


if AS_IF:
  install()
