"""Progress of long loops, readable on a terminal and in a log file.

On a terminal (stderr is a tty) a :class:`Progress` is a tqdm bar, redrawn in place. Otherwise (stderr goes to a log
file or a pipe) it logs plain lines, with no carriage returns: one each time another :data:`LOG_EVERY_FRACTION` of
the work is done or :data:`LOG_EVERY_SECONDS` have passed since the last line, whichever comes first, and one at the
end.

A training loop asks :meth:`Progress.due` after each step: it answers True about every :data:`CHECK_SECONDS`, when
the loop reads its loss back from the device (the only host synchronisation) and calls :meth:`Progress.update`.
"""

from __future__ import annotations

import sys
import time

from tissuemap.log import logger

CHECK_SECONDS = 1.0  # how often a loop reports (and reads its loss back from the device)
LOG_EVERY_SECONDS = 30.0  # in a log file, a line at least this often...
LOG_EVERY_FRACTION = 0.1  # ...and each time this share of the work is done


def stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


class Progress:
    """Progress of ``total`` units of work (``unit``: "step", "epoch"...) named ``desc``, from ``initial`` done.

    ``enabled=False`` shows nothing (:meth:`due` still paces the caller's checks). Use as a context manager, or call
    :meth:`close`.
    """

    def __init__(self, total: float, desc: str, unit: str, enabled: bool = True, initial: float = 0):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = initial
        self._started, self._initial = time.monotonic(), initial
        self._next_check = self._started + CHECK_SECONDS
        self._last_line, self._line_n = self._started, initial
        self._postfix = ""
        self._bar = None
        self.enabled = enabled
        if enabled and stderr_is_terminal():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial)

    def due(self) -> bool:
        """True when :data:`CHECK_SECONDS` have passed since it last answered True."""
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + CHECK_SECONDS
        return True

    def update(self, n: float, postfix: str | None = None) -> None:
        """``n`` units are done; ``postfix`` (e.g. the current loss; None: the last one) is shown after the count."""
        self.n = n
        self._postfix = self._postfix if postfix is None else postfix
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix, refresh=False)
            self._bar.update(n - self._bar.n)
        elif self.enabled:
            now = time.monotonic()
            if n > self._line_n and (now - self._last_line >= LOG_EVERY_SECONDS
                                     or n - self._line_n >= LOG_EVERY_FRACTION * self.total or n >= self.total):
                self._log_line(now)

    def _log_line(self, now: float) -> None:
        self._last_line, self._line_n = now, self.n
        elapsed = now - self._started
        done = self.n - self._initial
        line = (f"{self.desc}: {_count(self.n)}/{_count(self.total)} {self.unit}s "
                f"({100 * self.n / self.total:.0f}%), {_duration(elapsed)} elapsed")
        if 0 < done and self.n < self.total:
            line += f", about {_duration(elapsed / done * (self.total - self.n))} left"
        if self._postfix:
            line += f"; {self._postfix}"
        logger.info("%s", line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
