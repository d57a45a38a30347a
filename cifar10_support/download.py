"""Downloads and unpacks the CIFAR-10 binary archive: all or nothing, checked.

`cifar10.maybe_download_and_extract()`, the tutorial's entry point, calls
`maybe_download_and_extract` here. A download goes to a temporary file that
is renamed only once complete and verified (MD5); unpacking writes each batch
file under a temporary name too; the data set, unpacked now or before, is
read and checked once (data.read) and returned.
"""

import contextlib
import errno
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib

from cifar10_support import data
from cifar10_support import files
from cifar10_support.scripts import UserError

# Where the data set comes from, and the MD5 of the official archive.
DATA_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'
DATA_MD5 = 'c32a1d4ab5d03f1284b67883e8d87530'

# Seconds between two progress lines of a download.
_PROGRESS_INTERVAL_SECS = 0.5


def _md5_of_file(path):
  """Returns the hex MD5 digest of a file."""
  md5 = hashlib.md5(usedforsecurity=False)
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      md5.update(chunk)
  return md5.hexdigest()


def _print_progress(message, final=False):
  """Prints a progress line, in place on a terminal."""
  if sys.stdout.isatty():
    sys.stdout.write('\r' + message + ('\n' if final else ''))
  else:
    sys.stdout.write(message + '\n')
  sys.stdout.flush()


@contextlib.contextmanager
def _named_write_errors(path):
  """Writes to a file object fail with an OSError that names no file: this
  names `path`, what is being written (under a temporary name)."""
  try:
    yield
  except OSError as e:
    if e.filename or not e.errno:
      raise
    raise OSError(e.errno, e.strerror, path) from None


def _download(url, dest_path, expected_md5):
  """Downloads `url` to `dest_path`, all or nothing, checking its MD5.

  The bytes go to a temporary file beside `dest_path`, renamed only once the
  download is complete and verified, so no partial file is ever left under
  the archive's name.

  Args:
    url: URL to download (http, https, ftp or file).
    dest_path: Where the archive goes.
    expected_md5: Hex MD5 the archive must have, or '' for no check.

  Raises:
    UserError: the download failed or gave the wrong bytes.
  """
  filename = os.path.basename(dest_path)
  part_fd, part_path = tempfile.mkstemp(
      dir=os.path.dirname(dest_path), prefix=filename + '.', suffix='.part')
  try:
    with _named_write_errors(dest_path), os.fdopen(part_fd, 'wb') as part_file:
      try:
        response = urllib.request.urlopen(url, timeout=60)
      except (urllib.error.URLError, OSError, ValueError) as e:
        raise UserError(
            'could not download %s (%s). Without network access, put the '
            'archive at %s (or pass --data_url=file:///path/to/%s), or unpack '
            'it so that %s holds data_batch_1.bin ... test_batch.bin.' %
            (url, getattr(e, 'reason', e), dest_path, filename,
             os.path.join(os.path.dirname(dest_path),
                          data.BATCHES_DIR_NAME))) from None
      with response:
        received, actual_md5 = _copy_with_progress(response, part_file, url,
                                                   filename)
    if expected_md5 and actual_md5 != expected_md5.lower():
      raise UserError(
          'downloaded %s (%d bytes) has MD5 %s, expected %s: it is corrupt or '
          'not the CIFAR-10 binary archive, and was not kept. Check '
          '--data_url, or pass --data_md5=%s if you trust this archive.' %
          (url, received, actual_md5, expected_md5, actual_md5))
    os.replace(part_path, dest_path)
  except BaseException:
    if os.path.exists(part_path):
      os.remove(part_path)
    raise
  _print_progress('>> Downloaded %s: %d bytes, MD5 %s.' %
                  (filename, received, actual_md5), final=True)


def _copy_with_progress(response, part_file, url, filename):
  """Copies a download into `part_file`, saying how far it got.

  Returns:
    (bytes received, their hex MD5).

  Raises:
    UserError: the download broke off, or stopped short of its length.
  """
  md5 = hashlib.md5(usedforsecurity=False)
  total = int(response.headers.get('Content-Length') or 0)
  received, last_report = 0, 0.0
  while True:
    try:
      chunk = response.read(1 << 20)
    except (OSError, http.client.HTTPException) as e:
      raise UserError('download of %s failed after %d bytes: %r' %
                      (url, received, e)) from None
    if not chunk:
      break
    part_file.write(chunk)
    md5.update(chunk)
    received += len(chunk)
    if time.time() - last_report >= _PROGRESS_INTERVAL_SECS:
      last_report = time.time()
      _print_progress('>> Downloading %s %.1f%%' % (
          filename, 100.0 * received / total) if total else
                      '>> Downloading %s %.1f MB' % (filename, received / 1e6))
  if total and received != total:
    raise UserError('download of %s stopped at %d of %d bytes.' %
                    (url, received, total))
  return received, md5.hexdigest()


def _extract(archive_path, data_dir):
  """Extracts the CIFAR-10 batch files from the archive into `data_dir`.

  Only the expected files of the `cifar-10-batches-bin` folder are taken,
  each written to a temporary name and renamed when complete.

  Args:
    archive_path: Path of the .tar.gz archive.
    data_dir: Directory to extract into.

  Raises:
    UserError: the archive is corrupt, truncated, or lacks a batch file.
  """
  batches_dir = os.path.join(data_dir, data.BATCHES_DIR_NAME)
  os.makedirs(batches_dir, exist_ok=True)
  wanted = data.TRAIN_FILENAMES + data.EVAL_FILENAMES
  print('>> Extracting %s into %s' % (archive_path, batches_dir))
  sys.stdout.flush()
  found = set()
  try:
    with tarfile.open(archive_path, 'r:*') as archive:
      for member in archive:
        name = os.path.basename(member.name)
        parent = os.path.basename(os.path.dirname(member.name))
        if (not member.isfile() or parent != data.BATCHES_DIR_NAME or
            (name not in wanted and name != data.META_FILENAME)):
          continue
        part_fd, part_path = tempfile.mkstemp(dir=batches_dir,
                                              prefix=name + '.',
                                              suffix='.part')
        try:
          with _named_write_errors(os.path.join(batches_dir, name)), (
              os.fdopen(part_fd, 'wb')) as part_file:
            shutil.copyfileobj(archive.extractfile(member), part_file, 1 << 20)
          os.replace(part_path, os.path.join(batches_dir, name))
        finally:
          if os.path.exists(part_path):
            os.remove(part_path)
        found.add(name)
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    if files.write_failure(e, data_dir):
      raise  # Not the archive's fault.
    raise UserError('cannot extract %s: %s. The archive is corrupt or '
                    'truncated; delete it to download it again.' %
                    (archive_path, e)) from None
  missing = [name for name in wanted if name not in found]
  if missing:
    raise UserError('%s has no %s/%s: it is not the CIFAR-10 binary archive.' %
                    (archive_path, data.BATCHES_DIR_NAME,
                     ', '.join(missing)))


def maybe_download_and_extract(data_dir, data_url=DATA_URL,
                               expected_md5=DATA_MD5):
  """Download and extract the tarball from Alex's website.

  Nothing is downloaded when the batch files are already unpacked in
  `data_dir`; they are checked (whole records, labels in range). An archive
  already in `data_dir` is used rather than downloaded again.

  Args:
    data_dir: Where the data goes (its `cifar-10-batches-bin` folder).
    data_url: Where the archive comes from.
    expected_md5: The archive's MD5, '' for no check.

  Returns:
    The data set: a data.DataSet.

  Raises:
    UserError: the data could not be fetched or is not CIFAR-10.
  """
  if not data_dir:
    raise UserError('--data_dir is empty: give the CIFAR-10 data directory.')
  batches_dir = os.path.join(data_dir, data.BATCHES_DIR_NAME)
  data_files = (data.data_filenames(batches_dir, eval_data=False) +
                data.data_filenames(batches_dir, eval_data=True))
  missing = [os.path.basename(f) for f in data_files if not os.path.isfile(f)]
  if missing:
    _fetch_and_extract(data_dir, data_url, expected_md5,
                       partly_there=missing if len(missing) < len(data_files)
                       else None)
  # Unpacked now, or before (perhaps by hand): used if it is sound.
  return data.read(data_dir)


def _fetch_and_extract(data_dir, data_url, expected_md5, partly_there):
  """Downloads (unless there) and extracts the archive into data_dir.

  Args:
    data_dir: The folder.
    data_url: Where the archive comes from.
    expected_md5: The archive's MD5, '' for no check.
    partly_there: The batch files missing where others are there, or None.

  Raises:
    UserError: the archive could not be fetched or is not CIFAR-10's.
    WriteError: it could not be written there.
  """
  batches_dir = os.path.join(data_dir, data.BATCHES_DIR_NAME)
  if partly_there:
    print('>> %s: %s missing; fetching the archive.' %
          (batches_dir, ', '.join(partly_there)), flush=True)
  try:
    os.makedirs(data_dir, exist_ok=True)
  except OSError as e:
    raise UserError('cannot create data directory %s: %s' %
                    (data_dir, e.strerror)) from None
  filename = data_url.split('/')[-1]
  if not filename:
    raise UserError('--data_url=%s does not end with the name of an archive '
                    'file.' % data_url)
  archive_path = os.path.join(data_dir, filename)
  with files.writes_said('data_dir', data_dir, _what_is_kept):
    downloaded_now = not os.path.exists(archive_path)
    if downloaded_now:
      _download(data_url, archive_path, expected_md5)
    elif expected_md5:
      actual_md5 = _md5_of_file(archive_path)
      if actual_md5 != expected_md5.lower():
        raise UserError(
            '%s has MD5 %s, expected %s: it is corrupt or not the CIFAR-10 '
            'binary archive. Delete it to download it again, or pass '
            '--data_md5=%s if you trust it.' %
            (archive_path, actual_md5, expected_md5, actual_md5))
    try:
      _extract(archive_path, data_dir)
    except UserError:
      if downloaded_now:  # Ours, unverified (no MD5 given), useless: drop it.
        os.remove(archive_path)
      raise


def _what_is_kept(failure):
  """What a user is told after a write into --data_dir failed."""
  if failure.errno in (errno.ENOSPC, errno.EDQUOT):
    return ('Nothing half-written is kept. CIFAR-10 needs about 355 MB '
            'there: the archive (170 MB) and its batch files (184 MB).')
  return 'Nothing half-written is kept. %s, and run it again.' % (
      failure.remedy)
