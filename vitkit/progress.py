"""A small progress bar for long loops (decoding, prediction, explanations), written to stderr."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


class Progress:
    """``with Progress(total, "decoding") as bar: bar.update(n)``.

    On a terminal it redraws one line at most ten times a second; elsewhere (logs, CI) it
    prints a single summary line when done. ``VITKIT_PROGRESS=0`` silences it.
    """

    def __init__(self, total: int, label: str, stream: TextIO | None = None, enabled: bool | None = None):
        self.total = max(int(total), 0)
        self.label = label
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = os.environ.get("VITKIT_PROGRESS", "1") != "0"
        self.enabled = enabled and self.total > 0
        self.interactive = self.enabled and getattr(self.stream, "isatty", lambda: False)()
        self.done = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def update(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self.interactive and (now - self._drawn > 0.1 or self.done >= self.total):
            self._drawn = now
            self.stream.write("\r" + self._line(now))
            self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        line = self._line(time.monotonic())
        self.stream.write(("\r" + line + "\n") if self.interactive else line + "\n")
        self.stream.flush()
        self.enabled = False

    def _line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        width = 30
        filled = int(width * min(self.done / self.total, 1.0))
        remaining = (self.total - self.done) / rate if rate > 0 else 0.0
        return (
            f"{self.label}: [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"{rate:,.0f}/s {elapsed:.0f}s elapsed, {max(remaining, 0):.0f}s left"
        )
