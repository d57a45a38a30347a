"""Machines of their own, on this one: each task of a distributed training.

A `Machines` gives each process it starts what differs between real
machines:

- a filesystem of its own at a path they all share (`root`): a mount
  namespace where a private folder of that machine is mounted at `root`, so
  that `--train_dir=<root>/train` is a different folder on each, as on
  separate disks (the test reads each machine's through `disk(name)`);
- a name and an address of its own: its host name, and an /etc/hosts that
  maps every machine's name to its loopback address (127.0.0.2, .3, ...),
  so that the cluster flags name machines, as a user's do.

TensorFlow's servers listen on every address of a machine (not only the
one the cluster names), so the machines' ports differ, where real machines
could share one.

The namespaces are made with `unshare`: as root, a mount and UTS namespace;
otherwise in a user namespace too (`--map-root-user`), where the kernel
allows unprivileged ones. Where neither can be made, the tests that need
machines are skipped, saying why (and fail where CI asks for every check,
see conftest.require).
"""

import os
import subprocess

import conftest
import helpers

# Run by `sh -c` in the new namespaces: $1 the machine's private folder, $2
# the shared path, $3 its hosts file, $4 its name; then the command.
_ENTER = ('mount --bind "$1" "$2" && mount --bind "$3" /etc/hosts && '
          'hostname "$4" && shift 4 && exec "$@"')


def _unshare():
  """The unshare command line that can make a machine here, or a skip."""
  candidates = [['unshare', '--mount', '--uts', '--propagation', 'private']]
  if os.geteuid() != 0:
    candidates = []
  candidates.append(['unshare', '--user', '--map-root-user', '--mount',
                     '--uts', '--propagation', 'private'])
  reasons = []
  for command in candidates:
    try:
      probe = subprocess.run(
          command + ['sh', '-c', 'mount -t tmpfs none /mnt && hostname probe'],
          capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
      reasons.append('%s: %s' % (' '.join(command[:2]), e))
      continue
    if probe.returncode == 0:
      return command
    reasons.append('%s: %s' % (' '.join(command), probe.stderr.strip()))
  conftest.require(False, 'no machine of its own can be made here (a mount '
                   'and UTS namespace): %s' % '; '.join(reasons))


class Machines(object):
  """Named machines, each with its own disk at `root` and its own address.

  Args:
    base: A folder of the test's.
    names: The machines' names, e.g. ['ps0', 'worker0', 'worker1'].
  """

  def __init__(self, base, names):
    self._unshare = _unshare()
    self.root = os.path.join(str(base), 'machine')
    os.makedirs(self.root)
    self.addresses = {name: '127.0.0.%d' % (i + 2)
                      for i, name in enumerate(names)}
    self._hosts = os.path.join(str(base), 'hosts')
    with open(self._hosts, 'w') as f:
      f.write('127.0.0.1 localhost\n')
      for name, address in self.addresses.items():
        f.write('%s %s\n' % (address, name))
    self._disks = os.path.join(str(base), 'disks')
    for name in names:
      os.makedirs(self.disk(name))

  def disk(self, name, path=None):
    """Where this process sees `path` (under root) of machine `name`."""
    disk = os.path.join(self._disks, name)
    if path is None:
      return disk
    return os.path.join(disk, os.path.relpath(path, self.root))

  def path(self, relative):
    """The path, on every machine, of `relative` on its disk."""
    return os.path.join(self.root, relative)

  def command(self, name):
    """Wraps a command line to run on machine `name` (ScriptProcess's
    `wrap`)."""
    return lambda args: self._unshare + [
        'sh', '-c', _ENTER, 'sh', self.disk(name), self.root, self._hosts,
        name] + list(args)

  def start(self, processes, name, script, *args, env=None):
    """Starts a script on machine `name`, in the background (with the
    `processes` fixture, which kills it at the test's end)."""
    return processes(script, *args, env=env, wrap=self.command(name))

  def run(self, name, script, *args):
    """Runs a script on machine `name`; returns the CompletedProcess."""
    return helpers.run_scripts([script] + list(args),
                               wrap=self.command(name))[0]
