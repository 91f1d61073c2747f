"""A progress bar for long commands: drawn on a terminal, silent everywhere else.

    for spec in progress(PATIENTS, label="patients", stream=self.stdout):
        ...
    with ProgressBar(total, label="planning", stream=self.stdout) as bar:
        services.plan_all(now, progress=bar)  # called with each batch's size

On a terminal the bar is one line redrawn in place (count, percent, rate, time left).
Anywhere else (CI logs, `| tee`, cron mail) it writes nothing: a carriage return per
step would turn a log into thousands of lines, and the commands print their own summary.
No dependency: the whole need is one line of text, and tqdm would add a runtime package
(and its own idea of when a stream is a terminal) to a clinical system for it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from types import TracebackType
from typing import Protocol, TypeVar

from django.core.management.base import OutputWrapper

T = TypeVar("T")

# Redraw at most this often: drawing every step of a 100,000-pump loop would cost more
# than the work on a slow terminal (or an SSH session).
MIN_INTERVAL_S = 0.1
BAR_WIDTH = 30
# Rate and time left are guesses until a few steps are done.
MIN_ELAPSED_FOR_RATE_S = 0.5
ERASE_TO_END = "\033[K"


class Stream(Protocol):
    def write(self, s: str, /) -> object: ...
    def flush(self) -> None: ...
    def isatty(self) -> bool: ...


def _plain(text: str) -> str:
    return text


def duration(seconds: float) -> str:
    """`0:07`, `12:30`, `1:02:03`: how long, as a clock reads."""
    whole = max(0, int(seconds + 0.5))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressBar:
    """Counts steps towards `total` and, on a terminal, draws them.

    `total` may be None (unknown: count and rate only) and may grow while the work runs
    (set `bar.total`); a count past the total raises the total, so the bar never shows
    more than 100 %. Calling the bar (`bar(n)`) is `advance(n)`, so it can be passed where
    a `progress(n)` callback is expected.
    """

    def __init__(
        self,
        total: int | None,
        *,
        label: str,
        stream: Stream,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        columns: int | None = None,
    ) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.stream = stream
        # Only a terminal gets the bar: isatty() is False for pipes, files, CI logs and
        # Django's call_command(stdout=StringIO()).
        self.active = enabled and stream.isatty()
        self._clock = clock
        self._columns = columns
        self._started = clock()
        self._drawn_at: float | None = None
        self._drawn_done = -1
        self._closed = False
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        # Block characters only where the terminal can show them; "#" everywhere else.
        self._full, self._empty = ("█", "░") if encoding in ("utf8", "utf16", "utf32") else ("#", "-")
        if self.active:
            self._draw(self._started)  # at once: the first step may be the slowest

    # -- counting

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.total is not None and self.done > self.total:
            self.total = self.done
        if self.active:
            now = self._clock()
            if self._drawn_at is None or now - self._drawn_at >= MIN_INTERVAL_S or self.done == self.total:
                self._draw(now)

    def __call__(self, n: int = 1) -> None:
        self.advance(n)

    def clear(self) -> None:
        """Erase the bar so other output starts on a clean line; the next step redraws it."""
        if self.active and self._drawn_at is not None:
            self._write("\r" + ERASE_TO_END)
            self._drawn_at = None

    def close(self) -> None:
        """Draw the final count and end the line (once), so what follows starts on its own."""
        if self._closed:
            return
        self._closed = True
        if self.active:
            if self._drawn_at is None or self._drawn_done != self.done:
                self._draw(self._clock())
            self._write("\n")

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        # Also on an exception: the bar shows where the work stopped and the traceback
        # starts on a line of its own.
        self.close()

    # -- drawing

    def line(self, now: float | None = None) -> str:
        """The bar's text as it would be drawn now (without the carriage return)."""
        elapsed = (self._clock() if now is None else now) - self._started
        rate = self.done / elapsed if elapsed >= MIN_ELAPSED_FOR_RATE_S else None
        parts = [f"{self.done:,}/{self.total:,}" if self.total is not None else f"{self.done:,}"]
        if rate is not None:
            parts.append(f"{rate:,.1f}/s")
        if self.total is not None and self.done >= self.total:
            parts.append(f"in {duration(elapsed)}")
        elif self.total is not None and rate:
            parts.append(f"ETA {duration((self.total - self.done) / rate)}")
        else:
            parts.append(f"{duration(elapsed)} elapsed")
        tail = "  ".join(parts)
        if self.total is None:
            return f"{self.label}: {tail}"
        fraction = self.done / self.total if self.total else 1.0
        columns = self._columns or shutil.get_terminal_size().columns
        # A line longer than the terminal wraps, and "\r" then redraws only its last row:
        # the bar gives up width first.
        width = max(0, min(BAR_WIDTH, columns - 1 - len(f"{self.label}: || 100%  {tail}")))
        filled = int(width * fraction)
        bar = self._full * filled + self._empty * (width - filled)
        return f"{self.label}: |{bar}| {int(fraction * 100):3d}%  {tail}"

    def _draw(self, now: float) -> None:
        self._drawn_at, self._drawn_done = now, self.done
        self._write("\r" + self.line(now) + ERASE_TO_END)

    def _write(self, text: str) -> None:
        if isinstance(self.stream, OutputWrapper):
            # OutputWrapper would end each write with a newline and colour stderr as an error.
            self.stream.write(text, style_func=_plain, ending="")
        else:
            self.stream.write(text)
        self.stream.flush()


def progress(
    items: Iterable[T],
    *,
    label: str,
    stream: Stream,
    total: int | None = None,
    enabled: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[T]:
    """Yield `items`, one step of a bar each (`total` defaults to `len(items)` if it has one)."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    with ProgressBar(total, label=label, stream=stream, enabled=enabled, clock=clock) as bar:
        for item in items:
            yield item
            bar.advance()
