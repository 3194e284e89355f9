"""Ctrl-C through a Lightning Trainer: an interruption, not a failure with exit status 1.

Lightning catches KeyboardInterrupt inside ``fit``, ignores SIGINT from then on and calls
``sys.exit(1)``; the command line would then exit 1 with nothing on stderr, and a staged output
would be marked as failed with "SystemExit: 1". ``fit`` turns that back into the KeyboardInterrupt
it was, so that callers record "interrupted" and the CLI exits 130.

A Ctrl-C whose KeyboardInterrupt is raised inside a destructor (Lightning's ``Profiler.__del__`` runs
when a client's Trainer is collected) is printed as "Exception ignored" and lost: training would go
on to the end and exit 0. :func:`install` makes SIGINT also set a flag, and :func:`check`, called
between clients, raises the interruption that was swallowed.
"""
from __future__ import annotations

import signal
import threading
from typing import Any

_pending = False


def _on_sigint(signum: int, frame: Any) -> None:
    global _pending
    _pending = True
    raise KeyboardInterrupt


def install() -> None:
    """Ctrl-C raises KeyboardInterrupt as usual, and is remembered for :func:`check` (main thread only)."""
    global _pending
    _pending = False
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)


def check() -> None:
    """Raise the KeyboardInterrupt of a Ctrl-C that something swallowed (once)."""
    global _pending
    if _pending:
        _pending = False
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
