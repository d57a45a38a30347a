"""A small filesystem that a test can fill: what a full disk does, for real.

A tmpfs of a few MB, mounted at a folder of the test's:

- mounted for every process, where this one may mount (root);
- otherwise mounted in a user and mount namespace of its own
  (`unshare --user --map-root-user --mount`, which needs no privilege where
  the kernel allows unprivileged user namespaces): the scripts then run in
  that namespace (`command`), and the test sees its files through
  /proc/<pid>/root (`view`);
- where neither is allowed, the test is skipped, with the reason printed.
"""

import os
import subprocess

import conftest

_MAX_SIZE = 64 << 20  # Never fill a filesystem larger than this.


class SmallFilesystem(object):
  """A tmpfs of `size_mb` MB at `path` (made, then removed).

  Attributes:
    path: Where the scripts see it.
    how: 'mount' or 'namespace'.
  """

  def __init__(self, path, size_mb=16):
    self.path = os.path.abspath(path)
    os.makedirs(self.path)
    self._holder = None
    reasons = []
    try:
      mount = subprocess.run(
          ['mount', '-t', 'tmpfs', '-o', 'size=%dm' % size_mb, 'tmpfs',
           self.path], capture_output=True, text=True, check=False)
      mounted = mount.returncode == 0
      if not mounted:
        reasons.append('mount: ' + (mount.stderr.strip() or 'failed'))
    except OSError as e:
      mounted = False
      reasons.append('mount: %s' % e)
    if mounted:
      self.how = 'mount'
    else:
      try:
        self._holder = subprocess.Popen(
            ['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c',
             'mount -t tmpfs -o size=%dm tmpfs "$0" && echo mounted && exec '
             'sleep 100000' % size_mb, self.path],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if self._holder.stdout.readline().strip() != 'mounted':
          reasons.append('unshare: ' + (self._holder.stderr.read().strip() or
                                        'failed'))
          self._holder.kill()
          self._holder = None
      except OSError as e:
        reasons.append('unshare: %s' % e)
      if not self._holder:
        conftest.require(False, 'no small filesystem can be made here, to '
                         'fill: %s' % '; '.join(reasons))
      self.how = 'namespace'
    # What is filled must be the small filesystem, never the disk.
    stat = os.statvfs(self.view(self.path))
    if stat.f_blocks * stat.f_frsize > _MAX_SIZE:
      self.close()
      raise AssertionError('%s is not the small filesystem' % self.path)

  def view(self, path):
    """Where this process sees `path`, a path of the small filesystem."""
    if self.how == 'mount':
      return path
    return '/proc/%d/root%s' % (self._holder.pid, os.path.abspath(path))

  def command(self, args):
    """`args`, run where the scripts see the small filesystem (from the
    folder of the scripts)."""
    if self.how == 'mount':
      return list(args)
    return ['nsenter', '--target', str(self._holder.pid), '--user',
            '--mount', '--preserve-credentials',
            '--wd=' + os.path.dirname(os.path.dirname(
                os.path.abspath(__file__)))] + list(args)

  def make_read_only(self, folder):
    """Makes `folder` of it read-only, as a disk remounted read-only after
    errors is, for every file made from now on: a read-only bind mount of
    the folder over itself. (A remount of the filesystem itself is refused
    while a process holds a file open for writing; files open already stay
    writable.)"""
    for options in (['--bind'], ['-o', 'remount,bind,ro']):
      subprocess.run(self.command(['mount'] + options + [folder, folder]),
                     check=True, capture_output=True)

  def fill(self, leave_bytes=0):
    """Fills it up, but for `leave_bytes`: a file of zeros, written until
    the filesystem says it has no space left."""
    stat = os.statvfs(self.view(self.path))
    assert stat.f_blocks * stat.f_frsize <= _MAX_SIZE
    free = stat.f_bavail * stat.f_frsize - leave_bytes
    with open(self.view(os.path.join(self.path, 'filler')), 'wb',
              buffering=0) as f:
      chunk = b'\0' * 65536
      try:
        while free > 0:
          free -= f.write(chunk[:min(len(chunk), free)])
      except OSError:
        pass  # Full.

  def close(self):
    if self.how == 'mount':  # Whatever is mounted there, and below.
      subprocess.run(['umount', '--recursive', '--lazy', self.path],
                     check=False)
    elif self._holder:
      self._holder.kill()
      self._holder.wait()
