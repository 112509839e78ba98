"""The progress bar for people: a rich bar while a backfill runs on a terminal (none when stderr
is not a TTY). The final tables are in ``rdsrecorder.tables``."""

from __future__ import annotations

import logging
import os
import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING

from rdsrecorder.hooks import Hooks

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


class ProgressHooks(Hooks):
    """Files done / known, bytes copied and byte rate, ETA. enabled=None: only on a terminal."""

    def __init__(self, enabled: bool | None = None, console: Console | None = None) -> None:
        if enabled is None and console is None and not _maybe_terminal():
            enabled = False  # rich (about 25 ms of start-up) is not even imported
        self.console: Console | None = console
        if enabled is not False and console is None:
            from rich.console import Console

            self.console = Console(stderr=True)
        self.enabled = (
            bool(self.console and self.console.is_terminal) if enabled is None else enabled
        )
        self._progress: Progress | None = None
        self._files: TaskID | None = None
        self._done = 0
        self._pending: dict[str, int] = {}
        self._in_flight = 0
        self._bytes = 0
        self._started = time.monotonic()

    def __enter__(self) -> ProgressHooks:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} files"),
                TextColumn("{task.fields[copied]}"),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._files = self._progress.add_task("copying", total=0, copied="", rate="")
            # Logs go through rich while the bar is shown, so they do not garble it.
            self._handler = _RichHandler(self._progress.console)
            logging.getLogger().addHandler(self._handler)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._update()
            self._progress.stop()
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()
            self._progress = None

    def _update(self) -> None:
        if self._progress is None or self._files is None:
            return
        total = self._done + self._in_flight + sum(self._pending.values())
        elapsed_s = max(1e-3, time.monotonic() - self._started)
        self._progress.update(
            self._files,
            total=max(total, self._done),
            completed=self._done,
            copied=human_bytes(self._bytes),
            rate=f"{human_bytes(self._bytes / elapsed_s)}/s",
        )

    def files_pending(self, instance: str, count: int) -> None:
        self._pending[instance] = count
        self._update()

    def file_started(self, instance: str) -> None:
        self._in_flight += 1
        self._pending[instance] = max(0, self._pending.get(instance, 0) - 1)
        self._update()

    def file_finished(
        self, instance: str, outcome: str, duration_s: float, log_timestamp_s: float
    ) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        self._done += 1
        self._update()

    def bytes_downloaded(self, instance: str, count: int) -> None:
        self._bytes += count
        self._update()


def _maybe_terminal() -> bool:
    """Whether rich could find stderr to be a terminal: a TTY, or one of the variables that tell
    it so (``TTY_COMPATIBLE``, ``FORCE_COLOR``)."""
    if "TTY_COMPATIBLE" in os.environ or "FORCE_COLOR" in os.environ:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed: rich decides
        return True


class _RichHandler(logging.Handler):
    def __init__(self, console: Console) -> None:
        super().__init__()
        self._console = console
        root = logging.getLogger()
        if root.handlers:
            self.setFormatter(root.handlers[0].formatter)
            for f in root.handlers[0].filters:
                self.addFilter(f)
        self._replaced = [h for h in root.handlers if isinstance(h, logging.StreamHandler)]
        for h in self._replaced:
            root.removeHandler(h)

    def emit(self, record: logging.LogRecord) -> None:
        self._console.print(self.format(record), markup=False, highlight=False)

    def close(self) -> None:
        root = logging.getLogger()
        for h in self._replaced:
            root.addHandler(h)
        super().close()
