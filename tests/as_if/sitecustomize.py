"""Makes a script see another machine than this one (helpers.as_if).

    CIFAR10_TESTS_AS_IF=gpus=1,slow_bfloat16 PYTHONPATH=tests/as_if \
        python cifar10_train.py ...

Python imports this file as a process starts (it is a sitecustomize, on the
PYTHONPATH). The machine, its facts comma-separated:

- gpus=N: N NVIDIA GPUs are installed (0 for none). The real ones stay
  hidden (the tests set CUDA_VISIBLE_DEVICES=''), so TensorFlow runs what
  the code places on a GPU on the CPU (soft placement): the code's choices
  (float16, the loss scale, one tower per GPU, its messages) are those of a
  machine with GPUs, the speed is not.
- slow_bfloat16: the CPU has neither AVX512-BF16 nor AMX.
- fast_bfloat16: the CPU has AVX512-BF16 or AMX.

The code decides each of these in one place, patched here as it is
imported: cifar10_support.devices.gpus and .cpu_has_fast_bfloat16. (Not
patched: whether quiet hears CUDA's start-up error as noise, which it
decides from /dev/nvidia*.)

A Python may have a sitecustomize of its own (Debian's and Ubuntu's system
Pythons do): it is run after this one, as if this one were not there.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

_FACTS = frozenset(filter(None, os.environ.get('CIFAR10_TESTS_AS_IF',
                                               '').split(',')))
_PATCHED = 'cifar10_support.devices'


def _patches():
  """{name in cifar10_support.devices: what replaces it}."""
  patches = {}
  for fact in _FACTS:
    name, _, value = fact.partition('=')
    if name == 'gpus' and value.isdigit():
      patches['gpus'] = lambda count=int(value): [
          '/physical_device:GPU:%d' % i for i in range(count)]
    elif fact in ('slow_bfloat16', 'fast_bfloat16'):
      patches['cpu_has_fast_bfloat16'] = (
          lambda fast=fact == 'fast_bfloat16': fast)
    else:
      raise ValueError('CIFAR10_TESTS_AS_IF: unknown %r; known: gpus=N, '
                       'slow_bfloat16, fast_bfloat16' % fact)
  return patches


class _PatchAfterImport(importlib.abc.MetaPathFinder):
  """Patches cifar10_support.devices once it is imported."""

  def __init__(self, patches):
    self._patches = patches

  def find_spec(self, name, path, target=None):
    if name != _PATCHED:
      return None
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None:
      return None
    exec_module = spec.loader.exec_module

    def exec_then_patch(module):
      exec_module(module)
      for attribute, value in self._patches.items():
        setattr(module, attribute, value)

    spec.loader.exec_module = exec_then_patch
    return spec


def _run_the_next_sitecustomize():
  """Runs the sitecustomize this one hides, if the path has another."""
  here = os.path.dirname(os.path.abspath(__file__))
  rest = [entry for entry in sys.path
          if os.path.abspath(entry or os.curdir) != here]
  spec = importlib.machinery.PathFinder.find_spec('sitecustomize', rest)
  if spec is not None:
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


if _FACTS:
  sys.meta_path.insert(0, _PatchAfterImport(_patches()))
_run_the_next_sitecustomize()
