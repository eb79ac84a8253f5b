"""Progress a person can follow in a log: plain lines when the output is not a terminal.

A rich progress bar redraws one line in place, which a log file (`merino-mobile demo > log`)
cannot show: it would hold nothing for the many minutes a profile takes. `LineProgress` is the
same `progress(message, done, total)` callback, printing a plain line when a phase starts, at most
every `every_s` seconds while it runs, and when it completes: the phase, done/total, the elapsed
time and an estimate of the time left.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LineProgress:
    """A `progress(message, done, total)` callback writing periodic plain lines."""

    def __init__(self, write: Callable[[str], None], every_s: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write, self.every_s, self.clock = write, every_s, clock
        self.total: int | None = None
        self.started = self.last = 0.0
        self.done = 0

    def __call__(self, message: str, done: int, total: int) -> None:
        now = self.clock()
        if total != self.total:  # a new phase (the exports, then the points, have own totals)
            self.total, self.started, self.last = total, now, -float("inf")
        finished = total > 0 and done >= total and self.done < total
        self.done = done
        if not finished and now - self.last < self.every_s:
            return
        self.last = now
        elapsed = now - self.started
        eta = (f", eta {_clock(elapsed / done * (total - done))}" if 0 < done < total
               else "")
        self.write(f"[{done}/{total}] {message} (elapsed {_clock(elapsed)}{eta})")
