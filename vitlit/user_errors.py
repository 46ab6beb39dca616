"""Errors a user can fix, shown as one message (``Error: <what>. <what to do>``) and exit status 1, no traceback.

The command-line entry points (train.py, vitlit.eval, vitlit.predict, vitlit.export) run inside
:func:`user_errors_as_messages`. ``HYDRA_FULL_ERROR=1`` shows the full traceback instead.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import InstantiationException

from vitlit.training.write_errors import write_error, write_error_message

# Raised with a message that names the file or key and says what to do (bad data, config values, files,
# checkpoints): a traceback through Lightning adds nothing.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)
# The same, defined in modules that load torch or Lightning: looked up, not imported, so that commands that never
# load them (train.py --help, predict, demo, export) stay fast. An error of a module not loaded was never raised.
LOADED_USER_ERRORS = {
    "vitlit.training.faults": "NonFiniteLossError",
    "vitlit.data.image_folder": "DatasetDownloadError",
}


def _user_errors() -> tuple[type[BaseException], ...]:
    modules = [(sys.modules[module], name) for module, name in LOADED_USER_ERRORS.items() if module in sys.modules]
    loaded = [getattr(module, name) for module, name in modules]
    return (*USER_ERRORS, *loaded)


def user_message(error: BaseException) -> str | None:
    """``Error: <message>`` for an error the user can fix, else None. Hydra wraps errors raised while it builds a
    config's object (``InstantiationException``); their message is the cause's. A full or read-only disk behind
    any error is :func:`~vitlit.training.write_errors.write_error_message`."""
    if (disk := write_error(error)) is not None:
        return write_error_message(disk)
    user_errors = _user_errors()
    if isinstance(error, InstantiationException) and isinstance(error.__cause__, user_errors):
        error = error.__cause__
    if not isinstance(error, (*user_errors, InstantiationException)):  # Hydra's names the target and the cause
        return None
    return f"Error: {error}"


@contextmanager
def user_errors_as_messages() -> Iterator[None]:
    # A background writer (TensorBoard's) that hits a full disk dies with a traceback of its own; the main thread
    # gets the same error on its next write and reports it here, once.
    previous_hook = threading.excepthook

    def quiet_write_errors(args: threading.ExceptHookArgs) -> None:
        if write_error(args.exc_value) is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            previous_hook(args)

    threading.excepthook = quiet_write_errors
    try:
        yield
    except Exception as error:
        message = user_message(error)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(message) from None
    finally:
        threading.excepthook = previous_hook
