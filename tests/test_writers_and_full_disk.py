"""One writer per training directory, and a full disk that loses nothing.

Seen from outside: the scripts run as processes. A full disk is a small
filesystem made for the test (small_filesystem.py: mounted, or in a
namespace of its own; skipped, saying why, where neither can be made).
"""

import errno
import os
import re
import signal
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

from cifar10_support import checkpoints
from cifar10_support import files
from cifar10_support.quiet import tf
import cifar_data
import conftest
import helpers
from helpers import quick_args
from helpers import run_main
from helpers import run_scripts
from small_filesystem import SmallFilesystem



def test_a_train_dir_has_one_writer_and_its_hold_ends_with_it(
    data_dir, tmp_path, processes):
  train_dir = str(tmp_path / 'train')
  holder = processes('cifar10_train.py', '--train_dir=' + train_dir,
                     *helpers.UNTIL_STOPPED, *quick_args(data_dir))
  holder.wait_for_line(helpers.LOG_LINE.pattern)
  # Stopped, it holds the folder still, and leaves the cores to the rest.
  os.kill(holder.process.pid, signal.SIGSTOP)

  # A second trainer is refused at once, in one line naming who trains
  # there; it writes nothing (not even its queue's warm-up line).
  second = processes('cifar10_train.py', '--train_dir=' + train_dir,
                     *helpers.UNTIL_STOPPED, *quick_args(data_dir))
  # Towers too. Evaluation only reads: it needs no hold.
  towers = run_main('cifar10_multi_gpu_train.py', '--num_gpus=2',
                    '--train_dir=' + train_dir, *quick_args(data_dir))
  assert towers.returncode == 1
  assert re.match(helpers.TRAIN_DIR_IN_USE, towers.stderr).group(3) == (
      str(holder.process.pid))
  evaluation = run_main('cifar10_eval.py', '--run_once',
                        '--checkpoint_dir=' + train_dir,
                        '--eval_dir=' + str(tmp_path / 'eval'),
                        *quick_args(data_dir, training=False))
  assert evaluation.returncode == 0, evaluation.stderr
  # Prediction and export read beside it too.
  image = str(tmp_path / 'image.png')
  with open(image, 'wb') as f, tf.Graph().as_default(), tf.Session() as sess:
    f.write(sess.run(tf.io.encode_png(cifar_data.learnable_images([1], seed=0)[0])))
  prediction = run_main('cifar10_predict.py', '--checkpoint_dir=' + train_dir,
                        image)
  assert prediction.returncode == 0, prediction.stderr
  assert prediction.stdout.startswith(image + ': ')
  export = run_main('cifar10_export.py', '--checkpoint_dir=' + train_dir,
                    '--export_dir=' + str(tmp_path / 'export'))
  assert export.returncode == 0, export.stderr
  assert os.path.isfile(tmp_path / 'export' / 'saved_model.pb')
  assert second.finish() == 1
  assert second.lines == []
  match = re.match(helpers.TRAIN_DIR_IN_USE, second.stderr())
  assert match, second.stderr()
  assert match.groups() == (train_dir, 'cifar10_train.py',
                            str(holder.process.pid), socket.gethostname())
  # One writer: one file of summaries. (The holder is stopped: nothing
  # comes of it until it is killed.)
  assert len(helpers.event_files(train_dir)) == 1

  # Killed, it holds nothing: the operating system ended the hold, and no
  # lock is left to delete by hand.
  os.kill(holder.process.pid, signal.SIGKILL)
  assert holder.finish() == -signal.SIGKILL
  latest = tf.train.latest_checkpoint(train_dir)
  step = checkpoints.checkpoint_step(latest)
  resumed = run_main('cifar10_train.py', '--train_dir=' + train_dir,
                     '--max_steps=%d' % (step + 10), *quick_args(data_dir))
  assert resumed.returncode == 0, resumed.stderr
  assert resumed.stdout.splitlines()[0] == 'Resuming from %s, at step %d.' % (
      latest, step)


@pytest.fixture
def small_filesystems(tmp_path):
  """Makes SmallFilesystems, removed at the test's end."""
  made = []
  yield lambda name, size_mb=16: made.append(
      SmallFilesystem(str(tmp_path / name), size_mb)) or made[-1]
  for filesystem in made:
    filesystem.close()


def _wait_for_summaries(folder, timeout_secs=60):
  """Waits until an event file of `folder` holds a summary, whole."""
  deadline = time.time() + timeout_secs
  while time.time() < deadline:
    for path in helpers.event_files(folder):
      try:
        if any(event.summary.value
               for event in tf.train.summary_iterator(path)):
          return
      except tf.errors.DataLossError:
        pass  # A record not yet written whole.
    time.sleep(0.1)
  raise AssertionError('no summary in %s within %d s' % (folder,
                                                         timeout_secs))


def _no_space_line(flag, folder, written, consequence):
  """The one line a script says when a write fails for want of space."""
  return (r'^Error: --%s=%s: no space left on device, writing %s\. %s\n$' %
          (flag, re.escape(folder), written, consequence))


def _assert_whole_events(folder):
  """Every event file of `folder` reads to its end: no half-written record."""
  paths = helpers.event_files(folder)
  assert paths
  for path in paths:
    for _ in tf.train.summary_iterator(path):
      pass


def test_training_on_a_full_disk_stops_and_keeps_its_last_checkpoint(
    data_dir, small_filesystems, processes):
  # Two trainings at once, each on a 16 MB filesystem. One writes a
  # checkpoint every second: its first (8.5 MB) fits, its second does not.
  # The other writes summaries every step, and no checkpoint after its
  # first: the test fills its filesystem once it logs, and it must not go
  # on without its summaries.
  runs = {'checkpoints': ['--save_checkpoint_secs=1'],
          'summaries': ['--save_checkpoint_secs=3600',
                        '--save_summaries_steps=1']}
  filesystems = {name: small_filesystems(name) for name in runs}
  trainings = {name: processes(
      'cifar10_train.py',
      '--train_dir=' + os.path.join(filesystems[name].path, 'train'),
      *helpers.UNTIL_STOPPED, *(flags + quick_args(data_dir)),
      wrap=filesystems[name].command) for name, flags in runs.items()}
  trainings['summaries'].wait_for_line(helpers.LOG_LINE.pattern)
  filesystems['summaries'].fill()
  lines_when_full = len(trainings['summaries'].lines)

  for name, training in trainings.items():
    train_dir = os.path.join(filesystems[name].path, 'train')
    assert training.finish(timeout=120) == 1, training.stderr()
    written = (r'model\.ckpt-\d+\.(data-00000-of-00001|index|meta)'
               if name == 'checkpoints' else r'events\.out\.tfevents\.\S+')
    assert re.match(_no_space_line(
        'train_dir', train_dir, written,
        r'Training stopped at step \d+; the last checkpoint, %s, is kept, '
        r'and what was half-written removed\. Free some space, and run it '
        r'again to resume\.' % re.escape(os.path.join(train_dir,
                                                      'model.ckpt-0'))),
                    training.stderr()), training.stderr()
    # The last complete checkpoint is listed, and whole; nothing
    # half-written is left; the summaries written are whole.
    seen = filesystems[name].view(train_dir)
    assert tf.train.latest_checkpoint(seen) == os.path.join(seen,
                                                            'model.ckpt-0')
    helpers.assert_readable(os.path.join(seen, 'model.ckpt-0'))
    assert not [n for n in os.listdir(seen)
                if re.search(r'_temp$|\.tmp|tempstate|\.part', n)]
    _assert_whole_events(seen)
  # Without its summaries, training stopped at once: its next log line, ten
  # steps on, flushes them, if no summary failed to write before.
  assert len([line for line in trainings['summaries'].lines[lines_when_full:]
              if helpers.LOG_LINE.match(line)]) <= 1


def _png_folder(folder, count=20):
  """A folder of images of two classes, a and b, for prepare_data.py."""
  images = cifar_data.learnable_images(np.arange(count) % 2, seed=4)
  with tf.Graph().as_default(), tf.Session() as sess:
    for i, image in enumerate(images):
      os.makedirs(os.path.join(folder, 'ab'[i % 2]), exist_ok=True)
      with open(os.path.join(folder, 'ab'[i % 2], '%d.png' % i), 'wb') as f:
        f.write(sess.run(tf.io.encode_png(image)))
  return folder


def test_evaluation_export_prepare_and_download_on_a_full_disk(
    trained, small_filesystems, tmp_path):
  data_dir, train_dir, _ = trained
  full = small_filesystems('full', size_mb=4)
  # A data set prepared there before the disk filled up.
  images = _png_folder(str(tmp_path / 'images'))
  data = os.path.join(full.path, 'data')
  assert run_main('prepare_data.py', '--image_dir=' + images,
                  '--output_dir=' + full.view(data)).returncode == 0
  batches = full.view(os.path.join(data, 'cifar-10-batches-bin'))
  before = {name: open(os.path.join(batches, name), 'rb').read()
            for name in os.listdir(batches)}
  archive = str(tmp_path / 'cifar-10-binary.tar.gz')
  cifar_data.make_archive(archive)
  full.fill()

  evaluation, export, prepare, download = run_scripts(
      ('cifar10_eval.py', '--run_once', '--checkpoint_dir=' + train_dir,
       '--data_dir=' + data_dir,
       '--eval_dir=' + os.path.join(full.path, 'eval')),
      ('cifar10_export.py', '--checkpoint_dir=' + train_dir,
       '--export_dir=' + os.path.join(full.path, 'export')),
      ('prepare_data.py', '--image_dir=' + images, '--output_dir=' + data,
       '--seed=3'),
      ('cifar10_train.py', '--data_dir=' + os.path.join(full.path, 'cifar'),
       '--data_url=file://' + archive, '--data_md5=',
       '--train_dir=' + str(tmp_path / 'train')),
      wrap=full.command)

  assert evaluation.returncode == 1
  assert re.match(_no_space_line(
      'eval_dir', os.path.join(full.path, 'eval'), r'events\.out\.tfevents\.\S+',
      r'Evaluation stopped; its summaries written whole are kept\.'),
                  evaluation.stderr), evaluation.stderr
  _assert_whole_events(full.view(os.path.join(full.path, 'eval')))

  assert export.returncode == 1
  assert re.match(_no_space_line(
      'export_dir', os.path.join(full.path, 'export'), r'\S+',
      r'Nothing was exported: the partial SavedModel was removed\.'),
                  export.stderr), export.stderr
  assert not os.path.exists(full.view(os.path.join(full.path, 'export')))

  assert prepare.returncode == 1
  assert re.match(_no_space_line(
      'output_dir', data, r'cifar-10-batches-bin/data_batch_1\.bin',
      r'The data set was not written: nothing half-written is left, and what '
      r'was there before is as it was\.'), prepare.stderr), prepare.stderr
  assert {name: open(os.path.join(batches, name), 'rb').read()
          for name in os.listdir(batches)} == before

  assert download.returncode == 1
  assert re.match(_no_space_line(
      'data_dir', os.path.join(full.path, 'cifar'),
      r'(cifar-10-binary\.tar\.gz|cifar-10-batches-bin/\S+)',
      r'Nothing half-written is kept\. CIFAR-10 needs about 355 MB there: the '
      r'archive \(170 MB\) and its batch files \(184 MB\)\.'),
                  download.stderr), download.stderr
  for root, _, names in os.walk(full.view(os.path.join(full.path, 'cifar'))):
    assert not [n for n in names if n.endswith('.part')], (root, names)
    for name in names:
      if name.endswith('.bin'):  # Only batch files extracted whole.
        assert os.path.getsize(os.path.join(root, name)) == 3 * 3073


@pytest.mark.parametrize('error, expected', [
    (OSError(errno.ENOSPC, 'No space left on device', '/d/data_batch_1.bin'),
     '--output_dir=/d: no space left on device, writing data_batch_1.bin. '
     'Not written.'),
    (OSError(errno.EDQUOT, 'Disk quota exceeded', '/d/data_batch_1.bin'),
     '--output_dir=/d: no space left within the disk quota, writing '
     'data_batch_1.bin. Not written.'),
    (tf.errors.ResourceExhaustedError(
        None, None, '/d/model.ckpt-9.data-00000-of-00001.tempstate123; Disk '
        'quota exceeded'),
     '--output_dir=/d: no space left within the disk quota, writing '
     'model.ckpt-9.data-00000-of-00001. Not written.'),
    # Not only space: what TensorFlow says of a read-only disk, of an
    # immutable folder; what Python says of permissions; a folder gone.
    (tf.errors.PermissionDeniedError(
        None, None, '/d/events.out.tfevents.1.h.2; Read-only file system'),
     '--output_dir=/d: read-only file system, writing '
     'events.out.tfevents.1.h.2. Not written.'),
    (tf.errors.PermissionDeniedError(
        None, None, '/d/graph.pbtxt.tmp0123456789abcdef0123456789abcdef; '
        'Operation not permitted'),
     '--output_dir=/d: operation not permitted, writing '
     'graph.pbtxt.tmp0123456789abcdef0123456789abcdef. Not written.'),
    (OSError(errno.EACCES, 'Permission denied', '/d/sub/batches.meta.txt'),
     '--output_dir=/d: permission denied, writing sub/batches.meta.txt. Not '
     'written.'),
    (OSError(errno.ENOENT, 'No such file or directory', '/d'),
     '--output_dir=/d: the folder is gone. Not written.'),
])
def test_a_failed_write_is_said_in_one_line(error, expected):
  # A quota (EDQUOT) fails a write as a full disk (ENOSPC) does, and any
  # other reason the system gives, in Python or in TensorFlow: each said,
  # in its words, naming the file written in the folder.
  failure = files.write_failure(error, '/d')
  assert str(files.write_error('output_dir', '/d', failure,
                                       'Not written.')) == expected


@pytest.mark.parametrize('error', [
    OSError(errno.EACCES, 'Denied'),  # No file named.
    OSError(errno.ENOSPC, 'No space left on device', '/elsewhere/f'),
    OSError(errno.EIO, 'Input/output error', '/d/f'),
    tf.errors.ResourceExhaustedError(None, None, 'OOM when allocating tensor'),
    ValueError('/d/f; No space left on device'),
])
def test_what_is_not_a_failed_write_into_the_folder_passes_through(error):
  assert files.write_failure(error, '/d') is None
  with pytest.raises(type(error)):
    with files.writes_said('output_dir', '/d', 'Not written.'):
      raise error


@pytest.mark.parametrize('made_again', [False, True])
def test_a_file_missing_from_a_folder_that_went_is_the_folder_gone(
    tmp_path, made_again):
  # The folder removed while a file in it was written; TensorFlow, saving a
  # checkpoint, may make an empty one again at its path meanwhile: either
  # way the folder is gone, and the consequence is told so.
  folder = tmp_path / 'out'
  folder.mkdir()
  told = []

  def consequence(failure):
    told.append(files.folder_gone(failure, str(folder)))
    return 'Not written.'

  with pytest.raises(files.WriteError) as error:
    with files.writes_said('output_dir', str(folder), consequence):
      os.rename(folder, tmp_path / 'elsewhere')
      if made_again:
        folder.mkdir()
      raise OSError(errno.ENOENT, 'No such file or directory',
                    str(folder / 'events.out.tfevents.1.h.2'))
  assert str(error.value) == (
      '--output_dir=%s: the folder is gone. Not written.' % folder)
  assert told == [True]
  # A file missing from a folder still there is that file's.
  with pytest.raises(files.WriteError) as error:
    with files.writes_said('output_dir', str(folder), consequence):
      raise OSError(errno.ENOENT, 'No such file or directory',
                    str(folder / 'sub' / 'f'))
  assert str(error.value) == ('--output_dir=%s: no such file or directory, '
                              'writing sub/f. Not written.' % folder)
  assert told == [True, False]


# Not only a full disk: a folder whose writes start failing while a script
# writes into it, as a user or the system breaks it.
BREAKAGES = ('permissions', 'read-only', 'gone')


def _break(folder, breakage, small_filesystem, open_files_too=False):
  """Makes writes into `folder` fail from now on, by `breakage`; returns
  what undoes it (so that the test's folders can be removed).

  permissions: made immutable (chattr +i, for root, whom no mode stops), or
  unwritable (chmod a-w) for another user; read-only: a read-only mount of
  it over itself (small_filesystem's, where the scripts run); gone: removed.
  With open_files_too, the writes into files open already must fail too:
  only chattr +i, on a disk's filesystem (not a tmpfs), does that.
  """
  if breakage == 'gone':
    # Gone at once (a rename), then removed: shutil.rmtree alone deletes
    # the files one by one, and a script writing meanwhile would see some
    # gone from a folder still there.
    seen = small_filesystem.view(folder) if small_filesystem else folder
    os.rename(seen, seen + '.removed')
    shutil.rmtree(seen + '.removed')
    return lambda: None
  if breakage == 'read-only':
    small_filesystem.make_read_only(folder)
    return lambda: None
  if os.geteuid() == 0:
    immutable = subprocess.run(['chattr', '-R', '+i', folder],
                               capture_output=True, text=True)
    conftest.require(immutable.returncode == 0,
                     'chattr +i is refused here: %s' % immutable.stderr)
    return lambda: subprocess.run(['chattr', '-R', '-i', folder], check=True)
  conftest.require(not open_files_too, 'only root can stop the writes into a '
                   'file open already (chattr +i); chmod does not')
  subprocess.run(['chmod', '-R', 'a-w', folder], check=True)
  return lambda: subprocess.run(['chmod', '-R', 'u+w', folder], check=True)


# What the system says of each, writing a file there.
REASONS = {'read-only': 'read-only file system',
           'permissions': ('operation not permitted' if os.geteuid() == 0
                           else 'permission denied')}


def test_training_whose_folder_breaks_stops_in_one_line(
    data_dir, tmp_path, small_filesystems, processes):
  # Three trainings at once, a checkpoint every second; once each logs, its
  # --train_dir is broken. Each stops at its next write, in one line; what
  # it wrote before is kept, whole. (The one made read-only runs on a
  # filesystem of its own, where it can be; the others on the test's disk,
  # as this user: in the small filesystem's user namespace, a user who is
  # not root is root, whom no chmod stops.)
  filesystem = small_filesystems('fs', size_mb=64)
  train_dirs = {breakage: os.path.join(
      filesystem.path if breakage == 'read-only' else str(tmp_path), breakage)
                for breakage in BREAKAGES}
  trainings = {breakage: processes(
      'cifar10_train.py', '--train_dir=' + train_dir,
      '--save_checkpoint_secs=1', *helpers.UNTIL_STOPPED,
      *quick_args(data_dir),
      wrap=filesystem.command if breakage == 'read-only' else list)
               for breakage, train_dir in train_dirs.items()}
  undo = []
  try:
    for breakage, training in trainings.items():
      training.wait_for_line(helpers.LOG_LINE.pattern)
      undo.append(_break(train_dirs[breakage], breakage,
                         filesystem if breakage == 'read-only' else None))
    for breakage, training in trainings.items():
      train_dir = train_dirs[breakage]
      assert training.finish(timeout=120) == 1, training.stderr()
      if breakage == 'gone':
        assert re.match(
            r'^Error: --train_dir=%s: the folder is gone\. Training stopped '
            r'at step \d+; its checkpoints went with the folder\. Make it '
            r'again, and run it again to train from the start\.\n$' %
            re.escape(train_dir), training.stderr()), training.stderr()
        continue
      seen = (filesystem.view(train_dir) if breakage == 'read-only'
              else train_dir)
      latest = tf.train.latest_checkpoint(seen)
      assert re.match(
          r'^Error: --train_dir=%s: %s, writing \S+\. Training stopped at '
          r'step \d+; the last checkpoint, %s, is kept, and what was '
          r'half-written removed\. Make it writable, and run it again to '
          r'resume\.\n$' % (re.escape(train_dir), REASONS[breakage],
                            re.escape(os.path.join(
                                train_dir, os.path.basename(latest)))),
          training.stderr()), (breakage, training.stderr())
      helpers.assert_readable(latest)
      _assert_whole_events(seen)
  finally:
    for undo_it in undo:
      undo_it()


def _copy_checkpoint(checkpoint_path, checkpoint_dir, step):
  """Copies a checkpoint into checkpoint_dir as its newest, at `step`."""
  for name in os.listdir(os.path.dirname(checkpoint_path)):
    if name.startswith(os.path.basename(checkpoint_path) + '.'):
      shutil.copy(os.path.join(os.path.dirname(checkpoint_path), name),
                  os.path.join(checkpoint_dir, 'model.ckpt-%d%s' % (
                      step, name[len(os.path.basename(checkpoint_path)):])))
  with open(os.path.join(checkpoint_dir, 'checkpoint'), 'w') as f:
    f.write('model_checkpoint_path: "model.ckpt-%d"\n' % step)


def test_evaluation_whose_folder_breaks_stops_in_one_line(
    trained, tmp_path, processes):
  # Two evaluations, each of its copy of a training's checkpoint; once each
  # has evaluated it, its --eval_dir is broken, and a newer checkpoint comes:
  # it stops at its next write, in one line. (A read-only mount stops no
  # evaluation: it writes into the file it opened at its start, as before.
  # Nor does chattr +i on a tmpfs: hence a folder of the test's disk.)
  data_dir, train_dir, _ = trained
  latest = tf.train.latest_checkpoint(train_dir)
  evaluations, eval_dirs, checkpoint_dirs = {}, {}, {}
  for breakage in ('permissions', 'gone'):
    checkpoint_dir = checkpoint_dirs[breakage] = str(tmp_path / breakage)
    os.makedirs(checkpoint_dir)
    _copy_checkpoint(latest, checkpoint_dir, 1)
    eval_dirs[breakage] = str(tmp_path / 'eval' / breakage)
    evaluations[breakage] = processes(
        'cifar10_eval.py', '--checkpoint_dir=' + checkpoint_dir,
        '--eval_dir=' + eval_dirs[breakage], '--eval_interval_secs=1',
        *quick_args(data_dir, training=False))
  undo = []
  try:
    for breakage, evaluation in evaluations.items():
      evaluation.wait_for_line(r'^\S+ \S+: precision @ 1 = ')
      # Broken once its first summaries are on disk: a record still in
      # the writer's buffer when the file is made immutable cannot be cut
      # from it, nor its start written already (the graph's, of several
      # writes).
      _wait_for_summaries(eval_dirs[breakage])
      undo.append(_break(eval_dirs[breakage], breakage, None,
                         open_files_too=True))
      _copy_checkpoint(latest, checkpoint_dirs[breakage], 2)
    for breakage, evaluation in evaluations.items():
      eval_dir = eval_dirs[breakage]
      assert evaluation.finish(timeout=120) == 1, evaluation.stderr()
      if breakage == 'gone':
        assert evaluation.stderr() == (
            'Error: --eval_dir=%s: the folder is gone. Evaluation stopped; '
            'its summaries went with the folder.\n' % eval_dir)
      else:
        assert re.match(
            r'^Error: --eval_dir=%s: %s, writing events\.out\.tfevents\.\S+\. '
            r'Evaluation stopped; its summaries written whole are kept\.\n$' %
            (re.escape(eval_dir), REASONS[breakage]), evaluation.stderr()), (
                evaluation.stderr())
        _assert_whole_events(eval_dir)
  finally:
    for undo_it in undo:
      undo_it()
