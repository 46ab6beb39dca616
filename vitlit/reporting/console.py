"""Log records on the terminal without garbling Lightning's rich progress bar."""

from __future__ import annotations

import logging

from rich import get_console


class RichConsoleHandler(logging.Handler):
    """Prints each record through rich's shared console, the one ``RichProgressBar`` draws on.

    A plain ``StreamHandler`` writes past the live progress bar, which then redraws over the text;
    rich's console prints above the bar instead. Lines are never wrapped, so logs stay greppable.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            get_console().print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        except Exception:  # a logging handler must never raise into the code that logged
            self.handleError(record)
