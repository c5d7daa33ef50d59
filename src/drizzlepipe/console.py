"""Progress on the console that never collides with log records.

:class:`Progress` draws one line (``\\r[#####     ]  50% Single drizzle 4/8 | 1.2s``) on standard
error while a map runs, when standard error is a terminal. Log records that would be written to
the same stream meanwhile are held and written, in order, once the line is finished, so a
terminal shows whole lines only; handlers writing elsewhere (a log file) get every record at
once. Without a terminal nothing is drawn: a long map (at least :data:`QUIET_BELOW` tasks) logs
its progress at INFO every quarter instead, so a log file says how far a run got.
"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["Progress", "QUIET_BELOW", "stop_holding"]

log = logging.getLogger(__name__)

#: Maps of fewer tasks than this log no progress lines when nothing is drawn.
QUIET_BELOW = 20


class _Hold(logging.Filter):
    """Keeps the records a handler would write while a progress line is drawn."""

    def __init__(self):
        super().__init__()
        self.records = []

    def filter(self, record):
        self.records.append(record)
        return False


def _handlers_on(stream):
    """Every handler of every logger that writes to ``stream``."""
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    found = []
    for logger in loggers:
        for handler in logger.handlers:
            if getattr(handler, "stream", None) is stream and handler not in found:
                found.append(handler)
    return found


def stop_holding():
    """Let every handler of this process write again: for a worker process forked while a
    progress line was drawn, whose copies of the handlers would otherwise keep its records."""
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", ()):
            for hold in [f for f in handler.filters if isinstance(f, _Hold)]:
                handler.removeFilter(hold)


class Progress:
    """A progress line for ``total`` tasks named ``label`` (a context manager).

    Parameters
    ----------
    label : str
        What the tasks do ("Single drizzle").
    total : int
        Number of tasks.
    enabled : bool or None
        Draw the line (None: when the stream is a terminal).
    stream : file, optional
        Where to draw (default: standard error).
    """

    def __init__(self, label, total, enabled=None, stream=None, width=30):
        self.label = label or "Tasks"
        self.total = max(int(total), 1)
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.drawing = bool(enabled)
        self.width = width
        self.done = 0
        self._started = None
        self._holds = []
        self._quarter = 0

    def __enter__(self):
        self._started = time.perf_counter()
        if self.drawing:
            for handler in _handlers_on(self.stream):
                hold = _Hold()
                handler.addFilter(hold)
                self._holds.append((handler, hold))
            self._draw()
        return self

    def update(self, done=None):
        """Record that ``done`` tasks (default: one more) have finished."""
        self.done = self.done + 1 if done is None else int(done)
        if self.drawing:
            self._draw()
        elif self.total >= QUIET_BELOW:
            quarter = 4 * self.done // self.total
            if quarter > self._quarter and self.done < self.total:
                self._quarter = quarter
                log.info("%s: %d of %d done", self.label, self.done, self.total)

    def _draw(self):
        filled = int(round(self.width * self.done / self.total))
        bar = "#" * filled + " " * (self.width - filled)
        elapsed = time.perf_counter() - self._started
        percent = 100 * self.done // self.total
        line = f"\r[{bar}] {percent:3d}% {self.label} {self.done}/{self.total} | {elapsed:.1f}s"
        self.stream.write(line)
        self.stream.flush()

    def __exit__(self, *exc):
        if not self.drawing:
            return
        self.stream.write("\n")
        self.stream.flush()
        for handler, hold in self._holds:
            handler.removeFilter(hold)
            for record in hold.records:
                handler.handle(record)
        self._holds = []
