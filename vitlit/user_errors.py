"""Errors a user can fix, shown as one message (``Error: <what>. <what to do>``) and exit status 1, no traceback.

The command-line entry points (train.py, vitlit.eval, vitlit.predict, vitlit.export) run inside
:func:`user_errors_as_messages`. ``HYDRA_FULL_ERROR=1`` shows the full traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import InstantiationException

# Raised with a message that names the file or key and says what to do (bad data, config values, files,
# checkpoints): a traceback through Lightning adds nothing.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)


def _user_errors() -> tuple[type[BaseException], ...]:
    """``USER_ERRORS``, and the training's NaN-loss stop when training ran: looked up, not imported, so that
    the commands that never train (predict, demo, export) do not load Lightning for it."""
    faults = sys.modules.get("vitlit.training.faults")
    return USER_ERRORS if faults is None else (*USER_ERRORS, faults.NonFiniteLossError)


def user_message(error: BaseException) -> str | None:
    """``Error: <message>`` for an error the user can fix, else None. Hydra wraps errors raised while it builds a
    config's object (``InstantiationException``); their message is the cause's."""
    user_errors = _user_errors()
    if isinstance(error, InstantiationException) and isinstance(error.__cause__, user_errors):
        error = error.__cause__
    if not isinstance(error, (*user_errors, InstantiationException)):  # Hydra's names the target and the cause
        return None
    return f"Error: {error}"


@contextmanager
def user_errors_as_messages() -> Iterator[None]:
    try:
        yield
    except Exception as error:
        message = user_message(error)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(message) from None
