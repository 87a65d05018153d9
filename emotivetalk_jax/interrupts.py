"""Clean ends for the command line: SIGINT and SIGTERM become one line and exit 130 / 143.

`handle_signals()` turns both signals into `Interrupted` (a KeyboardInterrupt) raised in the
main thread, so every `finally` / `except BaseException` cleanup on the way out runs
(temporary files and folders, worker processes); a second signal during that cleanup exits
at once. Where raising would go wrong, the signal is held and raised later:
- inside `deferred()` blocks (orbax reads and writes: interrupting its event loop prints
  tracebacks from its threads), raised when the block ends;
- inside garbage-collector callbacks and `__del__` (Python prints and swallows exceptions
  there), delivered again to the main thread moments later (and raised by any `check()`
  before that: the pipeline's stages and steps call it).
Python runs signal handlers only between bytecodes of the main thread, so a signal that
arrives during a long call into C (an XLA compile) would wait for it: a watchdog thread,
woken through `signal.set_wakeup_fd`, calls `on_stuck` and exits after `grace` seconds if
the handler has not run by then.
`train` installs its own SIGTERM handler while it runs (save a checkpoint, then stop),
which takes precedence. Without `handle_signals` (plain Python use) all of this is a no-op.

`Outputs` records, before a command runs, which of its output folders do not exist yet, and
removes them when the command fails, unless they hold resumable work (a training workdir
with a checkpoint, a `prepare` cache with finished clips).
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from emotivetalk_jax.validate import missing_ancestors


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the main thread was."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class _State:
    calls = 0  # signals the Python-level handler has seen
    deferring = 0
    pending: int | None = None  # a signal received and not yet raised where it can propagate
    redeliver = False  # `pending` arrived where an exception is swallowed: send it again
    redelivering: int | None = None  # the signal the watchdog is sending again
    handled = False  # the command line has caught it


def _swallowing(frame) -> bool:
    """Whether an exception raised in `frame` would be printed and dropped by Python (a gc
    callback or a finaliser somewhere up the stack)."""
    codes = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in codes or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _raise_pending() -> None:
    signum, _State.pending = _State.pending, None
    raise Interrupted(signum)


def check() -> None:
    """Raise a signal that arrived where it could not be raised (see the module docstring)."""
    if _State.pending is not None and not _State.deferring and not _State.handled:
        _raise_pending()


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT / SIGTERM inside the block; raise it when the block ends."""
    _State.deferring += 1
    try:
        yield
    finally:
        _State.deferring -= 1
    check()


def mark_handled() -> None:
    """The command line caught the interrupt: nothing more is raised while it cleans up."""
    _State.handled = True


def received() -> int | None:
    """A signal still held (not raised) when the command ended, if any."""
    return _State.pending


def _watchdog(read_fd: int, handler, on_stuck, grace: float) -> None:
    """Thread: for each SIGINT / SIGTERM the C-level handler reports, give the Python handler
    `grace` seconds to run; if it has not (the main thread is inside C), end the process. A
    signal the handler had to hold where exceptions are swallowed is delivered again."""
    import _thread
    import select

    seen, deadline, signum = 0, None, 0
    while True:
        if select.select([read_fd], [], [], 0.05)[0]:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                data = b""
            if not data:
                os.close(read_fd)
                return
            for sig in data:
                if sig in (signal.SIGINT, signal.SIGTERM) and signal.getsignal(sig) is handler:
                    seen, signum = seen + 1, sig  # ours (not e.g. `train`'s own SIGTERM save)
                    deadline = deadline or time.monotonic() + grace
        if deadline is not None and _State.calls >= seen:
            deadline = None
        if deadline is not None and time.monotonic() > deadline:
            try:
                if on_stuck is not None:
                    on_stuck(signum)
            finally:
                os._exit(128 + signum)
        if _State.redeliver and _State.pending is not None and not _State.deferring:
            _State.redeliver, _State.redelivering = False, _State.pending
            _thread.interrupt_main(_State.pending)


@contextmanager
def handle_signals(on_stuck: Callable[[int], None] | None = None, grace: float = 3.0) -> Iterator[None]:
    """SIGINT / SIGTERM -> `Interrupted` inside the block (main thread only; elsewhere a no-op).
    `on_stuck(signum)`: the last words (clean up, print a line) when the main thread cannot
    take the signal within `grace` seconds (see the module docstring)."""

    def handler(signum, frame):
        _State.calls += 1
        if _State.redelivering == signum:  # the watchdog delivering a held signal again
            _State.redelivering = None
            if _State.pending is None or _State.handled:
                return  # raised meanwhile
        elif _State.pending is not None or _State.handled:  # a second signal while cleaning up: leave now
            os._exit(128 + signum)
        if _State.deferring or _swallowing(frame):
            _State.pending, _State.redeliver = signum, not _State.deferring
            return
        _State.pending = None
        raise Interrupted(signum)

    _State.pending, _State.handled, _State.calls, _State.redeliver = None, False, 0, False
    old, wake = {}, None
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, handler)
        r, w = os.pipe()
        os.set_blocking(w, False)
        wake = (r, w, signal.set_wakeup_fd(w, warn_on_full_buffer=False))
        threading.Thread(target=_watchdog, args=(r, handler, on_stuck, grace), daemon=True,
                         name="emotivetalk-signals").start()
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if wake is not None:
            r, w, previous = wake
            signal.set_wakeup_fd(previous)
            os.close(w)  # the watchdog reads end-of-file and returns
        _State.pending, _State.deferring, _State.handled, _State.calls = None, 0, False, 0
        _State.redeliver, _State.redelivering = False, None


def ignore_sigint() -> None:
    """Worker-process initializer: a terminal's Ctrl-C reaches the whole process group; the
    parent alone decides (and stops the workers), so workers print no traceback of their own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Outputs:
    """Output paths a command may create; `remove_created` undoes the folders it did create."""

    def __init__(self, paths: list[str | os.PathLike], keep: Callable[[Path], bool] | None = None):
        # (outermost folder missing now, the output path inside it)
        self.items = [(chain[0], Path(p)) for p in paths if (chain := missing_ancestors(p))]
        self.keep = keep or (lambda p: False)

    def remove_created(self) -> list[Path]:
        """Remove each recorded folder that exists now, unless its output holds resumable work."""
        removed = []
        for top, path in self.items:
            if top.exists() and not self.keep(path):
                shutil.rmtree(top, ignore_errors=True) if top.is_dir() else top.unlink(missing_ok=True)
                removed.append(top)
        return removed


__all__ = ["Interrupted", "Outputs", "check", "deferred", "handle_signals", "ignore_sigint", "mark_handled", "received"]
