"""User-facing errors: one line, non-zero exit, no traceback."""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """Bad input the user can fix (config, data, update files). Printed as one line."""


EXIT_USER_ERROR = 2


def run_cli(main: Callable[[], None]) -> None:
    """Run ``main`` and turn a :class:`UserError` into a one-line message and exit status 2."""
    try:
        main()
    except UserError as err:
        message = " ".join(str(err).split())
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
