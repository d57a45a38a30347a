"""One writer per train dir, a full disk said, nothing left half-written.

- `hold_train_dir`: the one process that writes a training directory holds
  it, by a lock the operating system releases when that process ends,
  however it ends; another trainer refuses to start there (TrainDirInUse).
- `SummaryWriter`: tf.summary.FileWriter, but its failures to write are
  raised, where TensorFlow's drops events silently (a full disk, on
  TensorFlow 2.21), so that training stops rather than going on unlogged.
- `out_of_space` and `NoSpaceError`: a write that failed for want of space
  (a full disk, or a quota), said in one line that names the folder and the
  file.
- `remove_half_written`, `drop_partial_record`, `write_files_whole`: what a
  failed write leaves is removed, what was whole is kept.
"""

import contextlib
from datetime import datetime
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import struct
import sys
import tempfile
import time

from cifar10_quiet import tf
from cifar10_common import UserError

# The file, in a training directory, whose lock says who trains there.
TRAIN_DIR_LOCK = 'cifar10_train.lock'


class TrainDirInUse(UserError):
  """Another process trains in the training directory."""


class NoSpaceError(UserError):
  """A write failed for want of space; what was half-written is removed."""


# How TensorFlow says it: '<path>; No space left on device'.
_NO_SPACE_MESSAGE = re.compile(
    r'(?:(\S+); )?(No space left on device|Disk quota exceeded)')


def out_of_space(error):
  """Whether `error` is a write that failed for want of space: a full disk
  (ENOSPC) or a full quota (EDQUOT), raised by Python or by TensorFlow."""
  if isinstance(error, OSError):
    return error.errno in (errno.ENOSPC, errno.EDQUOT)
  return (isinstance(error, tf.errors.OpError) and
          bool(_NO_SPACE_MESSAGE.search(error.message)))


def no_space_error(flag, directory, error, consequence):
  """The NoSpaceError a user sees: one line naming the folder and the file.

  Args:
    flag: The flag that gave the folder, e.g. 'train_dir'.
    directory: The folder.
    error: The out_of_space error.
    consequence: What happened, and what is kept, e.g. 'Training stopped at
      step 19; ...'.
  """
  if isinstance(error, OSError):
    path, quota = error.filename, error.errno == errno.EDQUOT
  else:
    match = _NO_SPACE_MESSAGE.search(error.message)
    path, quota = match.group(1), match.group(2) == 'Disk quota exceeded'
  written = ''
  if path:
    # TensorFlow writes a checkpoint's files under temporary names.
    path = re.sub(r'\.tempstate\d+$', '', str(path))
    if os.path.abspath(path).startswith(os.path.abspath(directory) + os.sep):
      path = os.path.relpath(path, directory)
    written = ', writing %s' % path
  return NoSpaceError('--%s=%s: no space left %s%s. %s' % (
      flag, directory, 'within the disk quota' if quota else 'on device',
      written, consequence))


def ensure_writable_dir(path, flag_name):
  """Creates directory `path` if needed and checks that it can be written.

  Args:
    path: The directory.
    flag_name: The flag that gave it, for the error message.

  Raises:
    UserError: it cannot be created or written.
  """
  if not path:
    raise UserError('--%s is empty: give a directory.' % flag_name)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError('--%s=%s cannot be created: %s.' %
                    (flag_name, path, e.strerror)) from None
  try:  # Writing is the only sure test (permissions, read-only disks, root).
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise UserError('--%s=%s is not writable: %s.' %
                    (flag_name, path, e.strerror)) from None



# One writer per training directory.


@contextlib.contextmanager
def hold_train_dir(train_dir):
  """Holds `train_dir` for this process, the one that writes it, until the end.

  The hold is an exclusive lock (flock) on train_dir/TRAIN_DIR_LOCK, which
  the operating system releases when the process ends, however it ends
  (kill -9, a power cut): no stale lock is ever left to delete. The file
  says who holds it. (On a network filesystem that does not honour locks,
  two trainers are not kept apart: see the README.)

  Raises:
    TrainDirInUse: another process holds it; nothing is written.
    UserError: the directory cannot be created or written.
  """
  ensure_writable_dir(train_dir, 'train_dir')
  path = os.path.join(train_dir, TRAIN_DIR_LOCK)
  lock = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise TrainDirInUse(
          '--train_dir=%s is in use: %s. A training directory has one '
          'writer: wait for that one to end, or stop it, or train in another '
          '--train_dir.' % (train_dir, _holder(lock))) from None
    holder = json.dumps({
        'script': os.path.basename(sys.argv[0]) or 'python',
        'pid': os.getpid(), 'host': socket.gethostname(),
        'since': datetime.now().strftime('%Y-%m-%d %H:%M:%S')})
    try:
      os.ftruncate(lock, 0)
      os.pwrite(lock, holder.encode() + b'\n', 0)
    except OSError as error:
      if not out_of_space(error):
        raise
      raise no_space_error('train_dir', train_dir,
                           OSError(error.errno, error.strerror, path),
                           'Training did not start.') from None
    yield
  finally:
    os.close(lock)  # Releases the hold.


def _holder(lock, wait_secs=2.0):
  """Who holds a lock file, as its holder wrote it (just after taking it)."""
  deadline = time.time() + wait_secs
  while True:
    try:
      holder = json.loads(os.pread(lock, 4096, 0).decode())
      return ('%(script)s trains there, pid %(pid)d on host %(host)s, since '
              '%(since)s' % holder)
    except (ValueError, KeyError, TypeError):
      if time.time() > deadline:
        return 'another process trains there'
      time.sleep(0.05)


# Summaries whose failures are said.


class _EventRecords(object):
  """An event file, written through tf.io.TFRecordWriter: an event file is
  a TFRecord file of Event protos. Its failures are raised."""

  def __init__(self, logdir):
    self._logdir = logdir
    # Named as TensorFlow names them; never another's file.
    name = 'events.out.tfevents.%010d.%s.%d' % (time.time(),
                                                socket.gethostname(),
                                                os.getpid())
    for count in range(1000):
      self.path = os.path.join(logdir, name + ('.%d' % count if count else ''))
      try:
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                         0o666))
        break
      except FileExistsError:
        continue
    self._records = tf.io.TFRecordWriter(self.path)
    self.add_event(tf.Event(wall_time=time.time(),
                            file_version='brain.Event:2'))

  def get_logdir(self):
    return self._logdir

  def add_event(self, event):
    self._write(self._records.write, event.SerializeToString())

  def flush(self):
    self._write(self._records.flush)

  def close(self):
    self._write(self._records.close)

  def _write(self, write, *args):
    """write(*args); if it fails, the file keeps its whole records only."""
    try:
      write(*args)
    except tf.errors.OpError:
      drop_partial_record(self.path)
      raise

  def reopen(self):
    pass


class SummaryWriter(tf.summary.FileWriter):
  """tf.summary.FileWriter, whose failures to write are raised.

  TensorFlow's writes from a thread of its own, through a writer that drops
  what it cannot write: with the disk full, training went on for minutes and
  the summaries were lost. This one writes in the calling thread and raises
  the error (tf.errors.ResourceExhaustedError: '...; No space left on
  device'), its file then cut to its whole records. Its events go to a file
  of their own; `path` names it.
  """

  def __init__(self, logdir, graph=None):  # pylint: disable=super-init-not-called
    self._closed = False
    # tf.summary.FileWriter's own base: its events, our file.
    super(tf.summary.FileWriter, self).__init__(  # pylint: disable=bad-super-call
        _EventRecords(logdir), graph)

  @property
  def path(self):
    return self.event_writer.path

  @classmethod
  def for_hooks(cls, logdir):
    """A SummaryWriter of `logdir` that TensorFlow's hooks write through too
    (they take their writers from tf.summary.FileWriterCache), until it is
    closed."""
    writer = cls(logdir)
    with tf.summary.FileWriterCache._lock:  # pylint: disable=protected-access
      tf.summary.FileWriterCache._cache[logdir] = writer  # pylint: disable=protected-access
    return writer

  def close(self):
    with tf.summary.FileWriterCache._lock:  # pylint: disable=protected-access
      cache = tf.summary.FileWriterCache._cache  # pylint: disable=protected-access
      if cache.get(self.get_logdir()) is self:
        del cache[self.get_logdir()]
    if not self._closed:
      self._closed = True
      self.event_writer.close()


def drop_partial_record(path):
  """Cuts an event (TFRecord) file after its last whole record.

  A write that failed for want of space can leave part of a record at the
  end, which readers then report as corrupt.
  """
  size, whole = os.path.getsize(path), 0
  with open(path, 'rb') as f:
    while True:
      header = f.read(12)  # The length, and a checksum of it.
      if len(header) < 12:
        break
      end = whole + 12 + struct.unpack('<Q', header[:8])[0] + 4
      if end > size:
        break
      whole = end
      f.seek(whole)
  if whole < size:
    os.truncate(path, whole)


# Half-written files.

# What TensorFlow leaves of a checkpoint (sharded: a folder), of the graph or
# of the 'checkpoint' file, when writing them fails or the process dies.
_HALF_WRITTEN = re.compile(r'(_temp|\.tmp[0-9a-f]{32}|\.tempstate\d+)$')


def remove_half_written(train_dir):
  """Removes what was half-written in a training directory that this process
  holds; returns the names removed."""
  removed = []
  for name in sorted(os.listdir(train_dir)):
    path = os.path.join(train_dir, name)
    if _HALF_WRITTEN.search(name):
      if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        os.remove(path)
      removed.append(name)
  return removed


def write_files_whole(contents_by_path):
  """Writes files all or none: each under a temporary name first, then all
  renamed. If a write fails, the temporary files are removed and the files
  of those names are as they were.

  Args:
    contents_by_path: {path: bytes}.

  Raises:
    OSError: a write failed.
  """
  temporary = {}
  try:
    for path, contents in contents_by_path.items():
      temporary[path] = '%s.part%d' % (path, os.getpid())
      try:
        with open(temporary[path], 'wb') as f:
          f.write(contents)
      except OSError as e:  # Named by the file it was to be.
        raise OSError(e.errno, e.strerror, path) from None
    for path, part in temporary.items():
      os.replace(part, path)
  finally:
    for part in temporary.values():
      if os.path.exists(part):
        os.remove(part)
