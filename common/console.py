"""Progress display for long work: a rich progress bar on a terminal, silence otherwise.

Lives in protocol/ because every package imports protocol; rich is imported only when a terminal is attached.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator


class _Silent:
    def advance(self, n: int = 1) -> None:
        """Nothing to show."""

    def update(self, description: str) -> None:
        """Nothing to show."""


class _RichTask:
    def __init__(self, progress, task):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def update(self, description: str) -> None:
        self._progress.update(self._task, description=description)


@contextlib.contextmanager
def progress(total: int | None, description: str, *, enabled: bool | None = None) -> Iterator:
    """A progress bar over ``total`` steps on stderr; quiet when stderr is not a terminal.

    Yields an object with ``advance(n=1)`` and ``update(description)``.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield _Silent()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.console import Console
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        yield _RichTask(bar, bar.add_task(description, total=total))


def log_to_stderr(name: str) -> None:
    """Send one timestamped line per event of logger ``name`` to stderr, whatever the root logger's level.

    For the daemons (``parity agent``, ``parity watch``): their log is their output.
    """
    import logging
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(min(logging.INFO, logging.getLogger().getEffectiveLevel()))


@contextlib.contextmanager
def stop_on_signals(handler) -> Iterator[None]:
    """While the block runs (a daemon's main loop), SIGTERM and SIGINT call ``handler(signum, frame)``; the previous
    handlers are restored afterwards, whatever happens."""
    import signal
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
