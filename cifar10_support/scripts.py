"""How the scripts run and stop: one entry point, one-line errors, clean stops.

Every script ends with `scripts.run(main)`: its flags are parsed
(a bad one is one line, status 2), and a problem a user can fix (a
UserError, raised with its message where it is found) is one line on
stderr, status 1, without a traceback. Ctrl-C and SIGTERM are taken in by
`StopSignals`, where a loop can stop cleanly (training saves a checkpoint),
and end the script with status 128 + the signal's number.
"""

import functools
import io
import os
import signal
import sys
import threading
import time

from cifar10_support import quiet


class UserError(Exception):
  """A problem the user can fix (data, flags, files); its message says how.

  Scripts report it as one line, without a traceback (see `run`).
  """


class Interrupted(Exception):
  """A script was stopped by a signal, cleanly; its message says what was kept.

  `run` prints the message and exits with status 128 + the signal's number,
  as a shell does for a process killed by that signal.
  """

  def __init__(self, message, signum):
    super().__init__(message)
    self.signum = signum


class StopSignals(object):
  """Turns SIGINT (Ctrl-C) and SIGTERM into a request to stop cleanly.

  Within `with StopSignals() as stop:`, the first such signal sets
  `stop.received` (the signal's name) and `stop.signum`, and wakes
  `stop.wait()`; the loop that checks them then finishes its work (saves a
  checkpoint, stops its threads). A second signal ends the process at once,
  with status 128 + its number, for a user who does not want to wait: even
  while TensorFlow holds the main thread (a step waiting for its input), for
  a thread watches the signals (through signal.set_wakeup_fd) besides the
  main thread's handler. Signals can only be caught in the main thread;
  elsewhere this does nothing.

  Args:
    what_is_kept: Called on a second signal; returns what the user keeps
      (e.g. 'the last checkpoint, ..., is kept'), said before the exit.
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)
  # Signals are the process's: the one taking them in now, for the waits
  # that must end on one however deep they are (stop_if_signalled, pause).
  active = None

  def __init__(self, what_is_kept=None):
    self.received = None
    self.signum = None
    self._what_is_kept = what_is_kept
    self._event = threading.Event()
    self._previous = {}
    self._previous_wakeup_fd = None
    self._pipe = None

  def _on_signal(self, signum):
    """Called once per signal, by the watching thread."""
    name = signal.Signals(signum).name
    if self.signum is None:
      self.signum = signum
      # Said before the main thread can see it and print its own last line.
      print('Caught %s: stopping cleanly (send it again to stop at once).' %
            name, flush=True)
      self.received = name
      self._event.set()
      return
    kept = self._what_is_kept() if self._what_is_kept else None
    print('Caught %s while stopping: stopped at once%s.' % (
        name, '; ' + kept if kept else ''), flush=True)
    sys.stderr.flush()
    os._exit(128 + signum)  # pylint: disable=protected-access

  def _handle(self, signum, frame):
    """The main thread's handler: the watching thread may have seen it."""
    del signum, frame  # The watching thread reads every signal from the pipe.

  def _watch(self, read_fd):
    """Reads the signals' numbers from the wakeup pipe until it is closed."""
    while True:
      try:
        numbers = os.read(read_fd, 64)
      except OSError:
        numbers = b''
      if not numbers:
        os.close(read_fd)
        return
      for number in numbers:
        if number in self.SIGNALS:
          self._on_signal(number)

  def wait(self, seconds):
    """Sleeps `seconds`, or less if a signal comes; True if one came."""
    return self._event.wait(seconds)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      read_fd, write_fd = os.pipe()
      os.set_blocking(write_fd, False)
      self._pipe = (read_fd, write_fd)
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
      self._previous_wakeup_fd = signal.set_wakeup_fd(
          write_fd, warn_on_full_buffer=False)
      threading.Thread(target=self._watch, args=(read_fd,),
                       name='stop_signals', daemon=True).start()
      StopSignals.active = self
    return self

  def __exit__(self, *exc_info):
    if self._pipe:
      StopSignals.active = None
      signal.set_wakeup_fd(self._previous_wakeup_fd)
      for signum, handler in self._previous.items():
        signal.signal(signum, handler)
      self._previous = {}
      os.close(self._pipe[1])  # The watching thread reads the end, and ends.
      self._pipe = None
    return False



def stop_if_signalled(waiting_for):
  """Ends a wait on a signal taken in by the StopSignals active now: raises
  Interrupted ('Stopped by SIGTERM while waiting for <waiting_for>.').
  Nothing else to save: a wait has done nothing yet."""
  stop = StopSignals.active
  if stop is not None and stop.received:
    raise Interrupted('Stopped by %s while waiting for %s.' % (
        stop.received, waiting_for), stop.signum)


def pause(seconds):
  """Sleeps `seconds`, or less if the active StopSignals takes in a signal."""
  stop = StopSignals.active
  if stop is None:
    time.sleep(seconds)
  else:
    stop.wait(seconds)

def first_line(error):
  """The first line of an error's message, without TensorFlow's details."""
  message = (getattr(error, 'message', None) or str(error)).strip()
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  if not lines:
    return repr(error)
  if lines[0] == 'Graph execution error:':
    # Then where the op was defined, "Node: 'name'", and the message.
    for line, next_line in zip(lines, lines[1:]):
      if line.startswith('Node: '):
        return next_line
  return lines[0]


def parse_flags(argv):
  """absl's parsing of a script's command line; a bad flag is one line.

  Returns:
    The arguments that are not flags.

  Raises:
    SystemExit: status 2, after the one line on stderr.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    sys.stderr.write('Error: %s (see --helpshort)\n' % error)
    sys.stderr.flush()
    sys.exit(2)


def run_main(main, argv):
  """Runs a script's main(argv); what a user can fix is one line, no traceback.

  A UserError exits with status 1, a clean stop on a signal (Interrupted)
  with 128 + the signal's number, as does a Ctrl-C that comes outside a
  loop that handles it (during a download, say), and an output whose reader
  has gone (SIGPIPE's).

  Raises:
    SystemExit: with that status.
  """
  try:
    main(argv)
  except UserError as error:
    sys.stderr.write('Error: %s\n' % error)
    sys.stderr.flush()
    sys.exit(1)
  except Interrupted as stop:
    print(stop, flush=True)
    sys.exit(128 + stop.signum)
  except KeyboardInterrupt:
    print('Stopped by SIGINT.', flush=True)
    sys.exit(128 + signal.SIGINT)
  except BrokenPipeError:
    # Whoever read its output has gone (`... | head`): it stops, as a shell
    # tool does on SIGPIPE, with no traceback, and nothing more to print.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(128 + signal.SIGPIPE)


def run(main):
  """Runs a script's `main` with absl: the entry point of every script.

  Its stderr is rid of TensorFlow's runtime noise, its stdout buffered by
  line, its flags parsed by parse_flags and its main run by run_main.

  Args:
    main: the script's main function, taking the remaining argv.
  """
  from absl import app  # pylint: disable=g-import-not-at-top

  quiet.filter_runtime_noise_from_stderr()
  # Lines are printed by more than one thread (StopSignals, the queue
  # warm-up's progress). Written through at once (PYTHONUNBUFFERED), a line
  # and its newline are two writes, and another thread's line can come
  # between them; buffered by line, each line is written whole.
  if isinstance(sys.stdout, io.TextIOWrapper):  # Not a notebook's stream.
    sys.stdout.reconfigure(line_buffering=True, write_through=False)
  app.run(functools.partial(run_main, main), flags_parser=parse_flags)
