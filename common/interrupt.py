"""Ctrl-C through a Lightning Trainer: an interruption, not a failure with exit status 1.

Lightning catches KeyboardInterrupt inside ``fit``, ignores SIGINT from then on and calls
``sys.exit(1)``; the command line would then exit 1 with nothing on stderr, and a staged output
would be marked as failed with "SystemExit: 1". ``fit`` turns that back into the KeyboardInterrupt
it was, so that callers record "interrupted" and the CLI exits 130.

A Ctrl-C whose KeyboardInterrupt is raised inside a destructor (Lightning's ``Profiler.__del__`` runs
when a client's Trainer is collected) is printed as "Exception ignored" and lost: training would go
on to the end and exit 0. :func:`install` makes SIGINT also set a flag, and :func:`check` raises the
interruption that was swallowed. It is called between clients, and between local steps by
``common.interrupt_callback.StopOnInterrupt``; the swallowed exception's "Exception ignored" report
is not printed, so the CLI's one line ("error: interrupted") is all the user sees.

:func:`deferred` holds a Ctrl-C back while a few file operations must not be cut in two (the rename
that makes a staged run complete): the interruption is raised when the block ends.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Any, Iterator

_pending = False
_deferred = 0
_held = False  # a SIGINT that arrived inside a deferred() block
_previous_hook = sys.unraisablehook


def _on_sigint(signum: int, frame: Any) -> None:
    global _pending, _held
    _pending = True
    if _deferred:
        _held = True
        return
    raise KeyboardInterrupt


def _unraisable(report: Any) -> None:
    """Keep quiet about a KeyboardInterrupt a destructor swallowed: the flag has it, check() raises it."""
    if isinstance(report.exc_value, KeyboardInterrupt) and _pending:
        return
    _previous_hook(report)


def install() -> None:
    """Ctrl-C raises KeyboardInterrupt as usual, and is remembered for :func:`check` (main thread only)."""
    global _pending, _previous_hook
    _pending = False
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)
        if sys.unraisablehook is not _unraisable:
            _previous_hook = sys.unraisablehook
            sys.unraisablehook = _unraisable


def check() -> None:
    """Raise the KeyboardInterrupt of a Ctrl-C that something swallowed (once)."""
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block a Ctrl-C does not cut in two: a SIGINT inside it is raised when the block has ended."""
    global _deferred, _held, _pending
    _deferred += 1
    try:
        yield
    finally:
        _deferred -= 1
    if _deferred == 0 and _held:  # only a Ctrl-C that arrived inside the block, not an older one already raised
        _held = _pending = False
        raise KeyboardInterrupt


def fit(trainer: Any, *args: Any, **kwargs: Any) -> None:
    try:
        trainer.fit(*args, **kwargs)
    except SystemExit as err:
        if getattr(trainer, "interrupted", False):
            signal.signal(signal.SIGINT, _on_sigint)  # Lightning left Ctrl-C ignored
            raise KeyboardInterrupt from err
        raise


def failure_note(err: BaseException) -> str:
    """What a FAILED note says about ``err``."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    return f"{type(err).__name__}: {err}"
