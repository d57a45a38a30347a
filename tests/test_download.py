"""maybe_download_and_extract(), against file:// URLs and a local HTTP server."""

import functools
import hashlib
import http.server
import os
import threading

import pytest

import cifar10
from cifar10_support import data as data_lib
from cifar10_support import params as params_lib
from cifar10_support.scripts import UserError
import cifar_data
from helpers import EVAL_LINE
from helpers import run_main

ARCHIVE_NAME = 'cifar-10-binary.tar.gz'
ALL_FILES = data_lib.TRAIN_FILENAMES + data_lib.EVAL_FILENAMES


@pytest.fixture
def archive(tmp_path):
  """A good archive outside the data dir: (path, md5)."""
  source = tmp_path / 'mirror'
  source.mkdir()
  path = str(source / ARCHIVE_NAME)
  return path, cifar_data.make_archive(path)


class _Handler(http.server.SimpleHTTPRequestHandler):
  truncate_to = None  # Send only this many bytes, announcing them all.

  def log_message(self, *args):
    pass

  def copyfile(self, source, outputfile):
    if self.truncate_to is None:
      super().copyfile(source, outputfile)
    else:
      outputfile.write(source.read(self.truncate_to))


@pytest.fixture
def http_server(archive):
  """Serves the archive's folder on 127.0.0.1; yields (base URL, handler)."""
  handler = type('Handler', (_Handler,), {})
  server = http.server.ThreadingHTTPServer(
      ('127.0.0.1', 0),
      functools.partial(handler, directory=os.path.dirname(archive[0])))
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield 'http://127.0.0.1:%d/' % server.server_address[1], handler
  finally:
    server.shutdown()
    server.server_close()


def _listing(data_dir):
  """Every file under data_dir, relative."""
  found = []
  for root, _, files in os.walk(data_dir):
    for name in files:
      found.append(os.path.relpath(os.path.join(root, name), data_dir))
  return sorted(found)


def _extracted_ok(data_dir):
  data = data_lib.read(data_dir)
  return (data.num_train_examples, data.num_eval_examples) == (5 * 3, 3)


EXTRACTED = sorted(['cifar-10-batches-bin/' + name
                    for name in ALL_FILES + ('batches.meta.txt',)])


def test_defaults_are_the_official_archive():
  params = params_lib.Params()
  assert params.data_url == cifar10.DATA_URL == (
      'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz')
  assert params.data_md5 == cifar10.DATA_MD5 == (
      'c32a1d4ab5d03f1284b67883e8d87530')
  assert params.data_dir == cifar10.DATA_DIR == '/tmp/cifar10_data'


def test_file_url_download_and_extract(tmp_path, archive, capsys):
  data_dir = str(tmp_path / 'data')
  data = cifar10.maybe_download_and_extract(
      data_dir, 'file://' + archive[0], archive[1])
  # The data set, read and checked: its folder, classes and counts.
  assert data == data_lib.DataSet(
      os.path.join(data_dir, 'cifar-10-batches-bin'), data_lib.CLASS_NAMES,
      5 * 3, 3)
  assert _listing(data_dir) == sorted([ARCHIVE_NAME] + EXTRACTED)
  assert _extracted_ok(data_dir)
  out = capsys.readouterr().out
  assert '>> Downloaded %s: ' % ARCHIVE_NAME in out
  assert 'MD5 %s' % archive[1] in out
  assert '>> Extracting' in out


def test_http_download_with_progress(tmp_path, archive, http_server, capsys):
  data_dir = str(tmp_path / 'data')
  url, _ = http_server
  cifar10.maybe_download_and_extract(data_dir, url + ARCHIVE_NAME, archive[1])
  assert _listing(data_dir) == sorted([ARCHIVE_NAME] + EXTRACTED)
  assert _extracted_ok(data_dir)
  out = capsys.readouterr().out
  assert '>> Downloading %s 100.0%%' % ARCHIVE_NAME in out


def test_checksum_mismatch_keeps_nothing(tmp_path, archive, http_server):
  data_dir = str(tmp_path / 'data')
  url, _ = http_server
  with pytest.raises(UserError) as error:
    cifar10.maybe_download_and_extract(data_dir, url + ARCHIVE_NAME, '0' * 32)
  message = str(error.value)
  assert 'has MD5 %s, expected %s' % (archive[1], '0' * 32) in message
  assert 'was not kept' in message
  assert _listing(data_dir) == []  # No archive, no partial file, no data.
  # A later run with the right checksum downloads it again, and works.
  cifar10.maybe_download_and_extract(data_dir, url + ARCHIVE_NAME, archive[1])
  assert _extracted_ok(data_dir)


def test_interrupted_download_keeps_nothing(tmp_path, archive, http_server):
  data_dir = str(tmp_path / 'data')
  url, handler = http_server
  handler.truncate_to = 1000
  with pytest.raises(UserError) as error:
    cifar10.maybe_download_and_extract(data_dir, url + ARCHIVE_NAME, '')
  assert 'download of %s' % (url + ARCHIVE_NAME) in str(error.value)
  assert _listing(data_dir) == []


def test_no_network_says_where_to_put_the_archive(tmp_path):
  data_dir = str(tmp_path / 'data')
  with pytest.raises(UserError) as error:
    cifar10.maybe_download_and_extract(
        data_dir, 'http://127.0.0.1:9/' + ARCHIVE_NAME, cifar10.DATA_MD5)
  message = str(error.value)
  assert message.startswith('could not download http://127.0.0.1:9/')
  assert 'put the archive at %s' % os.path.join(data_dir, ARCHIVE_NAME) in (
      message)
  assert '--data_url=file://' in message
  assert _listing(data_dir) == []


def test_extracted_data_is_used_as_it_is(tmp_path):
  data_dir = str(tmp_path / 'data')
  cifar_data.make_data_dir(data_dir, records_per_train_file=5, test_records=5)
  before = _listing(data_dir)
  # No download is tried: the URL would fail.
  cifar10.maybe_download_and_extract(data_dir, 'http://127.0.0.1:9/x.tar.gz',
                                     cifar10.DATA_MD5)
  assert _listing(data_dir) == before


def test_archive_put_by_hand_is_checked_and_extracted(tmp_path, archive):
  data_dir = tmp_path / 'data'
  data_dir.mkdir()
  by_hand = str(data_dir / ARCHIVE_NAME)
  cifar_data.make_archive(by_hand)
  with open(by_hand, 'rb') as f:
    md5 = hashlib.md5(f.read()).hexdigest()
  cifar10.maybe_download_and_extract(str(data_dir), 'http://127.0.0.1:9/' +
                                     ARCHIVE_NAME, md5)
  assert _extracted_ok(str(data_dir))


def test_archive_by_hand_with_wrong_checksum_is_kept(tmp_path):
  data_dir = tmp_path / 'data'
  data_dir.mkdir()
  by_hand = str(data_dir / ARCHIVE_NAME)
  actual_md5 = cifar_data.make_archive(by_hand)
  with pytest.raises(UserError) as error:
    cifar10.maybe_download_and_extract(str(data_dir), 'http://127.0.0.1:9/' +
                                       ARCHIVE_NAME, cifar10.DATA_MD5)
  assert str(error.value) == (
      '%s has MD5 %s, expected %s: it is corrupt or not the CIFAR-10 binary '
      'archive. Delete it to download it again, or pass --data_md5=%s if you '
      'trust it.' % (by_hand, actual_md5, cifar10.DATA_MD5, actual_md5))
  assert _listing(str(data_dir)) == [ARCHIVE_NAME]


def test_truncated_archive_is_reported(tmp_path):
  data_dir = tmp_path / 'data'
  data_dir.mkdir()
  by_hand = str(data_dir / ARCHIVE_NAME)
  cifar_data.make_archive(by_hand, records=300)
  with open(by_hand, 'r+b') as f:
    f.truncate(os.path.getsize(by_hand) // 2)
  with pytest.raises(UserError) as error:
    cifar10.maybe_download_and_extract(
        str(data_dir), 'http://127.0.0.1:9/' + ARCHIVE_NAME, '')
  assert str(error.value).startswith('cannot extract %s: ' % by_hand)
  assert 'corrupt or truncated' in str(error.value)
  # The user's archive stays; no partial file is left to be trusted.
  listing = _listing(str(data_dir))
  assert ARCHIVE_NAME in listing
  assert not [f for f in listing if f.endswith('.part')]
  # The batch files extracted before the damage are whole (all 300 records
  # of each); the missing ones make the next run try again.
  extracted = [f for f in listing if f.endswith('.bin')]
  assert len(extracted) < len(ALL_FILES)
  for name in extracted:
    assert os.path.getsize(os.path.join(str(data_dir), name)) == (
        300 * data_lib.RECORD_BYTES)


def test_downloaded_corrupt_archive_is_not_kept(tmp_path):
  source = tmp_path / 'mirror'
  source.mkdir()
  with open(str(source / ARCHIVE_NAME), 'wb') as f:
    f.write(b'this is not a tar.gz archive')
  data_dir = str(tmp_path / 'data')
  with pytest.raises(UserError) as error:
    cifar10.maybe_download_and_extract(
        data_dir, 'file://' + str(source / ARCHIVE_NAME), '')
  assert 'cannot extract' in str(error.value)
  assert ARCHIVE_NAME not in _listing(data_dir)


def test_archive_without_test_batch_is_not_cifar10(tmp_path):
  source = tmp_path / 'mirror'
  source.mkdir()
  path = str(source / ARCHIVE_NAME)
  md5 = cifar_data.make_archive(path, skip=('test_batch.bin',))
  with pytest.raises(UserError) as error:
    cifar10.maybe_download_and_extract(str(tmp_path / 'data'),
                                       'file://' + path, md5)
  assert 'has no cifar-10-batches-bin/test_batch.bin' in str(error.value)


def test_data_url_and_data_md5_flags_of_the_scripts(tmp_path, archive):
  path, md5 = archive
  common = ['--data_url=file://' + path, '--batch_size=4', '--max_steps=2',
            '--min_fraction_of_examples_in_queue=0.5']
  # The right MD5: downloaded, checked, unpacked, trained on.
  data_dir = str(tmp_path / 'data')
  result = run_main('cifar10_train.py', '--data_dir=' + data_dir,
                    '--train_dir=' + str(tmp_path / 'train'),
                    '--data_md5=' + md5, *common)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  downloaded = '>> Downloaded %s: %d bytes, MD5 %s.' % (
      ARCHIVE_NAME, os.path.getsize(path), md5)
  assert lines[lines.index(downloaded) + 1].startswith('>> Extracting ')
  assert lines[-1].startswith('Done training: step 2;')
  assert _extracted_ok(data_dir)

  # The default MD5, the official archive's: this one is refused, not kept.
  data_dir = str(tmp_path / 'data2')
  result = run_main('cifar10_train.py', '--data_dir=' + data_dir,
                    '--train_dir=' + str(tmp_path / 'train2'), *common)
  assert result.returncode == 1
  assert result.stderr == (
      'Error: downloaded file://%s (%d bytes) has MD5 %s, expected %s: it is '
      'corrupt or not the CIFAR-10 binary archive, and was not kept. Check '
      '--data_url, or pass --data_md5=%s if you trust this archive.\n' % (
          path, os.path.getsize(path), md5, cifar10.DATA_MD5, md5))
  assert _listing(data_dir) == []
  assert not os.path.exists(tmp_path / 'train2')

  # --data_md5= (empty): no check.
  result = run_main('cifar10_eval.py', '--data_dir=' + data_dir,
                    '--data_md5=', '--data_url=file://' + path, '--run_once',
                    '--checkpoint_dir=' + str(tmp_path / 'train'),
                    '--eval_dir=' + str(tmp_path / 'eval'), '--batch_size=4')
  assert result.returncode == 0, result.stderr
  assert downloaded in result.stdout.splitlines()
  assert EVAL_LINE.match(result.stdout.splitlines()[-2]).group(3, 4) == (
      '3', '2')
