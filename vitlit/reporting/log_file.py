"""The run's log file, which stops quietly when its disk fills up or turns read-only.

Python's ``logging.FileHandler`` prints ``--- Logging error ---`` and a traceback on every record once its file
cannot be written; on a full disk that buries the one message that says what happened.
"""

from __future__ import annotations

import contextlib
import logging
import sys


class LogFileHandler(logging.FileHandler):
    """A ``FileHandler`` that, at the first failed write, says so in one line on stderr and writes no more.

    The console handler goes on showing every record. Other errors are reported as logging always does.
    """

    failed: OSError | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed is None:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            return super().handleError(record)
        self.failed = error
        if self.stream is not None:
            with contextlib.suppress(OSError):
                self.stream.close()  # closes even when flushing its buffer fails again
            self.stream = None  # close() and logging.shutdown() find nothing left to flush
        sys.stderr.write(
            f"vitlit: cannot write the log file {self.baseFilename} ({error.strerror}); "
            "the rest of the log goes to the console only\n"
        )
