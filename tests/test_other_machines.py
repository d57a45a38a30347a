"""What differs on other machines than this one: GPUs and CPUs with and
without fast bfloat16 (faked: in a script's own process by helpers.as_if,
in this one by patching cifar10_support.devices), the kernel's range of
ports, a Python with a sitecustomize of its own."""

import json
import os
import socket
import subprocess
import sys

import pytest

from cifar10_support import devices
from conftest import REPO_DIR
import helpers
from helpers import as_if
from helpers import quick_args
from helpers import run_main
from helpers import run_scripts

USE_FP16_WARNING = (
    'Warning: --use_fp16 on a CPU is slow: float16 has no fast CPU kernels '
    '(several to hundreds of times slower than float32, by CPU); '
    '--mixed_precision computes in bfloat16 instead, fast on CPUs with '
    'AVX512-BF16 or AMX.\n')
MIXED_PRECISION_WARNING = (
    'Warning: --mixed_precision computes in bfloat16 on a CPU, which is slow '
    'on this one (it has neither AVX512-BF16 nor AMX).\n')


def _as_on(monkeypatch, gpus=0, fast_bfloat16=None):
  """Makes this process's code see a machine of `gpus` GPUs (and a CPU
  with fast bfloat16 or not, if said)."""
  monkeypatch.setattr(devices, 'gpus', lambda: [
      '/physical_device:GPU:%d' % i for i in range(gpus)])
  if fast_bfloat16 is not None:
    monkeypatch.setattr(devices, 'cpu_has_fast_bfloat16',
                        lambda: fast_bfloat16)


@pytest.mark.parametrize('gpus, fast_bfloat16, precision, warning', [
    (0, None, '--use_fp16', USE_FP16_WARNING),
    (1, None, '--use_fp16', ''),
    (0, False, '--mixed_precision', MIXED_PRECISION_WARNING),
    (0, True, '--mixed_precision', ''),
    (1, False, '--mixed_precision', ''),  # A GPU computes it, in float16.
])
def test_a_slow_precision_is_warned_of_where_it_is_slow(
    gpus, fast_bfloat16, precision, warning, data_dir, tmp_path, monkeypatch):
  # Each script warns, once, of a precision slow on its machine (here, an
  # evaluation with nothing to evaluate yet, which stops at once).
  _as_on(monkeypatch, gpus, fast_bfloat16)
  empty = str(tmp_path / 'empty')
  os.makedirs(empty)
  result = run_main('cifar10_eval.py', '--run_once', precision,
                    '--data_dir=' + data_dir, '--checkpoint_dir=' + empty,
                    '--eval_dir=' + str(tmp_path / 'eval'))
  assert result.returncode == 1
  assert result.stderr == warning + (
      'Error: no checkpoint in --checkpoint_dir=%s yet: train first '
      '(cifar10_train.py --train_dir=%s).\n' % (empty, empty))


XLA_WARNING = (
    "Warning: --xla compiles what runs on a GPU; on a CPU it changes nothing "
    "(XLA's CPU auto-clustering, TF_XLA_FLAGS=--tf_xla_cpu_global_jit, halved "
    "the training's speed where measured: docs/speed.md).\n")


@pytest.mark.parametrize('gpus, warning', [(0, XLA_WARNING), (1, '')])
def test_xla_without_a_gpu_is_said_to_change_nothing(gpus, warning, tmp_path,
                                                     monkeypatch):
  # The session option compiles what is placed on a GPU only: without one,
  # --xla would do nothing unsaid. (The training stops at once here: no
  # data, and none to download.)
  _as_on(monkeypatch, gpus)
  nowhere = 'file://' + str(tmp_path / 'no' / 'cifar-10-binary.tar.gz')
  result = run_main('cifar10_train.py', '--xla', '--data_url=' + nowhere,
                    '--data_dir=' + str(tmp_path / 'data'),
                    '--train_dir=' + str(tmp_path / 'train'))
  assert result.returncode == 1
  assert result.stderr.startswith(warning + 'Error: could not download '), (
      result.stderr)


@pytest.mark.parametrize('gpus, num_gpus, said', [
    (1, 2, '--num_gpus=2, but 1 GPU found: tower 1 runs on the CPU.'),
    (1, 3, '--num_gpus=3, but 1 GPU found: towers 1 to 2 run on the CPU.'),
    (0, 2, '--num_gpus=2, but no GPU found: all 2 towers run on the CPU.'),
    (2, 2, None),
])
def test_towers_without_a_gpu_are_said_and_run_on_the_cpu(
    gpus, num_gpus, said, data_dir, tmp_path, monkeypatch):
  # --num_gpus=N towers on a machine of fewer GPUs: said once, and trained
  # (what has no GPU runs on the CPU).
  _as_on(monkeypatch, gpus)
  result = run_main('cifar10_multi_gpu_train.py', '--num_gpus=%d' % num_gpus,
                    '--max_steps=1', '--train_dir=%s' % (tmp_path / 'train'),
                    *quick_args(data_dir, batch_size=8))
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''
  lines = result.stdout.splitlines()
  assert [line for line in lines if line.startswith('--num_gpus')] == (
      [said] if said else [])
  assert lines[-1] == 'Done training: step 1; checkpoint %s.' % (
      tmp_path / 'train' / 'model.ckpt-1')


PRECISION_OF_A_TRAINING = '''
import json, sys
import tensorflow.compat.v1 as tf
checkpoint = tf.train.latest_checkpoint(sys.argv[1])
graph = tf.GraphDef()
with open(sys.argv[1] + '/graph.pbtxt') as f:
  from google.protobuf import text_format
  text_format.Parse(f.read(), graph)
print(json.dumps({
    'variables': sorted(name for name, _ in tf.train.list_variables(
        checkpoint)),
    'convolutions': sorted({tf.as_dtype(node.attr['T'].type).name
                            for node in graph.node if node.op == 'Conv2D'}),
}))
'''


def test_mixed_precision_with_a_gpu_computes_float16_with_a_loss_scale(
    data_dir, tmp_path):
  # With a GPU, --mixed_precision computes in float16 and scales the loss
  # (its scale saved with the checkpoints); on a CPU, in bfloat16, which
  # needs no scale.
  train_dirs = {machine: str(tmp_path / machine) for machine in
                ('gpus=1', 'gpus=0')}
  for (machine, train_dir), result in zip(train_dirs.items(), run_scripts(
      *[('cifar10_train.py', '--mixed_precision', '--max_steps=1',
         '--train_dir=' + train_dir, *quick_args(data_dir, batch_size=2))
        for train_dir in train_dirs.values()],
      env=[as_if(machine + ',fast_bfloat16') for machine in train_dirs])):
    assert result.returncode == 0, (machine, result.stderr)
    assert result.stderr == ''
  seen = {}
  for machine, train_dir in train_dirs.items():
    result = subprocess.run([sys.executable, '-c', PRECISION_OF_A_TRAINING,
                             train_dir], capture_output=True, text=True,
                            check=True)
    seen[machine] = json.loads(result.stdout)
  scale = ['loss_scale/current_loss_scale', 'loss_scale/good_steps']
  assert seen['gpus=1']['convolutions'] == ['float16']
  assert set(scale) <= set(seen['gpus=1']['variables'])
  assert seen['gpus=0']['convolutions'] == ['bfloat16']
  assert not set(scale) & set(seen['gpus=0']['variables'])
  # The rest is the same model, in float32 (checkpoints interchangeable).
  assert sorted(set(seen['gpus=1']['variables']) - set(scale)) == (
      seen['gpus=0']['variables'])


def test_a_python_with_a_sitecustomize_of_its_own_keeps_it(tmp_path):
  # Debian's and Ubuntu's system Pythons have a sitecustomize: as_if's
  # (which Python finds first) runs it too.
  system = tmp_path / 'system'
  system.mkdir()
  (system / 'sitecustomize.py').write_text(
      'import os\nos.environ["SYSTEM_SITECUSTOMIZE"] = "ran"\n')
  env = as_if('gpus=3')
  env['PYTHONPATH'] += os.pathsep + str(system)
  result = subprocess.run(
      [sys.executable, '-c',
       'import os\n'
       'from cifar10_support import devices\n'
       'print(len(devices.gpus()), os.environ.get("SYSTEM_SITECUSTOMIZE"))'],
      cwd=REPO_DIR, env=env, capture_output=True, text=True, check=True)
  assert result.stdout == '3 ran\n'


@pytest.mark.parametrize('port_range, outside', [
    ('32768\t60999\n', range(10000, 32768)),  # Linux's default.
    ('10000 20000\n', range(20001, 65536)),  # No room below: above it.
    ('1024 65535\n', None),  # No room outside: any free port.
])
def test_free_ports_with_any_range_of_ephemeral_ports(port_range, outside,
                                                      tmp_path, monkeypatch):
  (tmp_path / 'ip_local_port_range').write_text(port_range)
  monkeypatch.setattr(helpers, 'PORT_RANGE_FILE',
                      str(tmp_path / 'ip_local_port_range'))
  ports = helpers.free_ports(5)
  assert len(set(ports)) == 5
  for port in ports:
    if outside:
      assert port in outside
    with socket.socket() as server:
      server.bind(('', port))  # Free.
