"""Ctrl-C through a Lightning Trainer: an interruption, not a failure with exit status 1.

Lightning catches KeyboardInterrupt inside ``fit``, ignores SIGINT from then on and calls
``sys.exit(1)``; the command line would then exit 1 with nothing on stderr, and a staged output
would be marked as failed with "SystemExit: 1". ``fit`` turns that back into the KeyboardInterrupt
it was, so that callers record "interrupted" and the CLI exits 130.
"""
from __future__ import annotations

import signal
from typing import Any


def fit(trainer: Any, *args: Any, **kwargs: Any) -> None:
    try:
        trainer.fit(*args, **kwargs)
    except SystemExit as err:
        if getattr(trainer, "interrupted", False):
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning left Ctrl-C ignored
            raise KeyboardInterrupt from err
        raise


def failure_note(err: BaseException) -> str:
    """What a FAILED note says about ``err``."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    return f"{type(err).__name__}: {err}"
