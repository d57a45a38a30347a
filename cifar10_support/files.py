"""The folders the scripts write: one writer each, every failed write said.

- `hold_train_dir`: the one process that writes a training directory holds
  it, by a lock the operating system releases when that process ends,
  however it ends; another trainer refuses to start there (TrainDirInUse).
- `EventFile`: a file of TensorBoard events whose failures to write are
  raised, where TensorFlow's summary writer drops events silently (a full
  disk, on TensorFlow 2.21), so that training stops rather than going on
  unlogged.
- `writes_said`: a write into a folder of the user's that fails, for want of
  space or any reason the system gives (permissions, a read-only disk, the
  folder gone), becomes one line (WriteError) that names the flag, the
  folder, the reason and the file.
- `remove_half_written`, `drop_partial_record`, `write_files_whole`: what a
  failed write leaves is removed, what was whole is kept.
"""

import collections
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

from cifar10_support.quiet import tf
from cifar10_support.scripts import UserError

# The file, in a training directory, whose lock says who trains there.
TRAIN_DIR_LOCK = 'cifar10_train.lock'


class TrainDirInUse(UserError):
  """Another process trains in the training directory."""


class WriteError(UserError):
  """A write into a folder failed; what was half-written is removed."""


# A failed write: its errno, the file (or folder) it wrote, what to say of
# the reason, and what the user can do about it.
WriteFailure = collections.namedtuple('WriteFailure',
                                      ['errno', 'path', 'reason', 'remedy'])

# The failures of writes, in the words a user reads, and what to do.
_WRITE_ERRORS = {
    errno.ENOSPC: ('No space left on device', 'no space left on device',
                   'Free some space'),
    errno.EDQUOT: ('Disk quota exceeded',
                   'no space left within the disk quota', 'Free some space'),
    errno.EACCES: ('Permission denied', 'permission denied',
                   'Make it writable'),
    errno.EPERM: ('Operation not permitted', 'operation not permitted',
                  'Make it writable'),
    errno.EROFS: ('Read-only file system', 'read-only file system',
                  'Make it writable'),
    errno.ENOENT: ('No such file or directory', 'no such file or directory',
                   'Put it back'),
}
# How TensorFlow says them: '<path>; No space left on device'.
_TENSORFLOW_WRITE_ERROR = re.compile(
    r'(\S+); (%s)' % '|'.join(re.escape(message) for message, _, _ in
                              _WRITE_ERRORS.values()))
_ERRNO_OF_MESSAGE = {message: number for number, (message, _, _) in
                     _WRITE_ERRORS.items()}


def write_failure(error, directory):
  """What failed, if `error` is a write into `directory` that failed.

  Args:
    error: An exception, of Python (OSError) or of TensorFlow (its message
      '<path>; <reason>').
    directory: The folder written.

  Returns:
    A WriteFailure, or None if `error` is not a failed write there (or of a
    reason not known here).
  """
  if isinstance(error, OSError):
    number, path = error.errno, error.filename
  elif isinstance(error, tf.errors.OpError):
    match = _TENSORFLOW_WRITE_ERROR.search(error.message)
    if not match:
      return None
    number, path = _ERRNO_OF_MESSAGE[match.group(2)], match.group(1)
  else:
    return None
  if number not in _WRITE_ERRORS or not path:
    return None
  # TensorFlow writes a checkpoint's files under temporary names.
  path = re.sub(r'\.tempstate\d+$', '', os.path.abspath(str(path)))
  directory = os.path.abspath(directory)
  if path != directory and not path.startswith(directory + os.sep):
    return None
  if path == directory and number == errno.ENOENT:
    return _folder_gone(directory)
  _, reason, remedy = _WRITE_ERRORS[number]
  return WriteFailure(number, path, reason, remedy)


def _folder_gone(directory):
  return WriteFailure(errno.ENOENT, os.path.abspath(directory),
                      'the folder is gone', 'Make it again')


def folder_gone(failure, directory):
  """Whether a WriteFailure of writes_said is the going of `directory`."""
  return failure == _folder_gone(directory)


def write_error(flag, directory, failure, consequence):
  """The WriteError a user sees: one line naming the folder and the file.

  Args:
    flag: The flag that gave the folder, e.g. 'train_dir'.
    directory: The folder.
    failure: The WriteFailure.
    consequence: What happened, and what is kept, e.g. 'Training stopped at
      step 19; ...'.
  """
  written = ''
  if failure.path != os.path.abspath(directory):
    written = ', writing %s' % os.path.relpath(failure.path, directory)
  return WriteError('--%s=%s: %s%s. %s' % (flag, directory, failure.reason,
                                           written, consequence))


@contextlib.contextmanager
def writes_said(flag, directory, consequence):
  """Turns a write into `directory` that fails within the block into its one
  line: a WriteError, raised without a traceback.

  Any other error passes through as it is. A file not found in a folder
  that has gone (removed, or replaced by another) is said as the folder
  gone: TensorFlow, saving a checkpoint, may have made an empty one again
  since.

  Args:
    flag: The flag that gave the folder, e.g. 'eval_dir'.
    directory: The folder.
    consequence: f(WriteFailure) -> what happened and what is kept (it may
      clean up first); or that text.
  """
  folder = folder_identity(directory)
  try:
    yield
  except Exception as error:  # pylint: disable=broad-except
    failure = write_failure(error, directory)
    if failure is None:
      raise
    if (failure.errno == errno.ENOENT and folder and
        folder_identity(directory) != folder):
      failure = _folder_gone(directory)
    said = consequence(failure) if callable(consequence) else consequence
    raise write_error(flag, directory, failure, said) from None


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


def check_still_there(directory, identity):
  """Raises FileNotFoundError if `directory` is not the folder it was (whose
  folder_identity was `identity`): removed, or replaced by another, while a
  process wrote into it. (TensorFlow would make it again, and write a
  checkpoint alone into an empty folder.)"""
  if folder_identity(directory) != identity:
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT),
                            directory)


def folder_identity(directory):
  """What tells the folder `directory` from another made at its path later
  (for check_still_there); None if there is none."""
  try:
    folder = os.stat(directory)
  except FileNotFoundError:
    return None
  return folder.st_dev, folder.st_ino


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
    with writes_said('train_dir', train_dir, 'Training did not start.'):
      try:
        os.ftruncate(lock, 0)
        os.pwrite(lock, holder.encode() + b'\n', 0)
      except OSError as error:  # Named by the file written.
        raise OSError(error.errno, error.strerror, path) from None
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


# Events whose failures are said.


class EventFile(object):
  """A file of TensorBoard events (a TFRecord file of Event protos), written
  in the calling thread, its failures raised.

  TensorFlow's summary writer writes from a thread of its own, through a
  writer that drops what it cannot write: with the disk full, training went
  on for minutes and the summaries were lost. This one raises the error
  (tf.errors.ResourceExhaustedError: '...; No space left on device'), its
  file then cut to its whole records; and where its file is gone (its folder
  removed), it says so at the next flush rather than writing on into
  nothing. It serves as tf.train.SummarySaverHook's summary_writer.

  Args:
    logdir: The folder; the file is named as TensorFlow names its own.
    graph: A tf.Graph, written first (TensorBoard's graph), or None.
  """

  def __init__(self, logdir, graph=None):
    self._logdir = logdir
    name = 'events.out.tfevents.%010d.%s.%d' % (time.time(),
                                                socket.gethostname(),
                                                os.getpid())
    for count in range(1000):  # Never another's file.
      self.path = os.path.join(logdir, name + ('.%d' % count if count else ''))
      try:
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                         0o666))
        break
      except FileExistsError:
        continue
    self._records = tf.io.TFRecordWriter(self.path)
    self._closed = False
    self.add_event(tf.Event(wall_time=time.time(),
                            file_version='brain.Event:2'))
    if graph is not None:
      self.add_graph(graph)

  def get_logdir(self):
    return self._logdir

  def add_event(self, event):
    self._write(self._records.write, event.SerializeToString())

  def add_summary(self, summary, global_step=None):
    """Adds a tf.Summary (or its serialised bytes) at `global_step`."""
    if isinstance(summary, bytes):
      summary = tf.Summary.FromString(summary)
    self.add_event(tf.Event(wall_time=time.time(), step=global_step or 0,
                            summary=summary))

  def add_session_log(self, session_log, global_step=None):
    self.add_event(tf.Event(wall_time=time.time(), step=global_step or 0,
                            session_log=session_log))

  def add_graph(self, graph, global_step=None):
    self.add_event(tf.Event(wall_time=time.time(), step=global_step or 0,
                            graph_def=graph.as_graph_def(
                                add_shapes=True).SerializeToString()))

  def flush(self):
    # Where the folder or the file was removed, writing on would go into
    # nothing.
    for path in (self._logdir, self.path):
      if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    self._write(self._records.flush)

  def close(self):
    if not self._closed:
      self._closed = True
      self._write(self._records.close)

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    try:
      self.close()
    except (tf.errors.OpError, OSError):
      if exc_info[0] is None:
        raise  # Else the error that ended the block is the one to say.
    return False

  def _write(self, write, *args):
    """write(*args); if it fails, the file keeps its whole records only."""
    try:
      write(*args)
    except tf.errors.OpError:
      if os.path.exists(self.path):
        drop_partial_record(self.path)
      raise


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

# What TensorFlow leaves of a checkpoint (its files under temporary names, or
# a sharded one's folder), of the graph or of the 'checkpoint' file, when
# writing them fails or the process dies.
_HALF_WRITTEN = re.compile(r'(_temp|\.tmp[0-9a-f]{32}|\.tempstate\d+)$')


def remove_half_written(train_dir):
  """Removes what was half-written in a training directory that this process
  holds; returns the names removed (none where the folder is gone)."""
  removed = []
  try:
    names = sorted(os.listdir(train_dir))
  except OSError:
    return removed
  for name in names:
    path = os.path.join(train_dir, name)
    if _HALF_WRITTEN.search(name):
      if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        try:
          os.remove(path)
        except OSError:
          continue  # Where it cannot be written, it cannot be removed.
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
