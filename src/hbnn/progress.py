"""Progress of long work: a tqdm bar on a terminal, plain log lines off one.

:func:`make_progress` is the one helper every long loop uses (training epochs, evaluation,
``hbnn infer``, ``hbnn export``). What it shows depends on where stderr goes:

* a terminal (``stream.isatty()``): a tqdm bar (removed when done);
* anything else (a file, a pipe, ``nohup``, a batch scheduler): one line every
  ``every_n`` updates or every ``every_s`` seconds, whichever comes first, e.g.
  ``train epoch 2/15: 200/468 batches (43%), 152 batch/s, ETA 0:01:45``, and a closing
  line ``train epoch 2/15: done, 468/468 batches in 0:00:03 (152 batch/s)``;
* disabled (``--quiet``, ``run.progress: false``, a DDP rank other than 0): nothing.

The defaults come from the environment: ``HBNN_PROGRESS_EVERY_S`` (seconds, default
30) and ``HBNN_PROGRESS_EVERY_N`` (updates, default 0 = time only). Rate is
``(n - initial) / elapsed`` (the work done in this call, so a resumed epoch is not
credited with its earlier batches); ETA is ``(total - n) / rate``.

Progress only reads a clock and writes text: it never touches a random generator or a
tensor, so results are the same with it on or off.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, Mapping, TextIO

from hbnn.errors import ConfigError

__all__ = [
    "EVERY_S_ENV",
    "EVERY_N_ENV",
    "DEFAULT_EVERY_S",
    "Progress",
    "make_progress",
    "progress_settings",
    "format_duration",
    "format_rate",
    "eta_seconds",
]

EVERY_S_ENV = "HBNN_PROGRESS_EVERY_S"
EVERY_N_ENV = "HBNN_PROGRESS_EVERY_N"
DEFAULT_EVERY_S = 30.0

#: In terminal mode a lazy postfix is computed once per this many updates (it may sync a device).
_POSTFIX_EVERY = 10


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` of a non-negative duration (rounded down to the second); ``?`` if unknown.

    Example:
        >>> format_duration(105.9), format_duration(3 * 3600 + 7), format_duration(float("inf"))
        ('0:01:45', '3:00:07', '?')
    """
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def format_rate(count: float, seconds: float, unit: str) -> str:
    """``count / seconds`` as ``152 batch/s`` (3 significant digits), ``s/<unit>`` when below 1/s.

    Example:
        >>> format_rate(304, 2.0, "batch"), format_rate(1, 4.0, "run"), format_rate(3, 0.0, "batch")
        ('152 batch/s', '4.00 s/run', '? batch/s')
    """
    if seconds <= 0 or count <= 0:
        return f"? {unit}/s"
    rate = count / seconds
    if rate >= 1:
        return f"{rate:.3g} {unit}/s" if rate < 1000 else f"{rate:.0f} {unit}/s"
    return f"{1 / rate:.3g} s/{unit}" if 1 / rate >= 100 else f"{1 / rate:.2f} s/{unit}"


def eta_seconds(done: float, total: float | None, seconds: float) -> float:
    """Seconds left at the mean rate so far: ``(total - done) * seconds / done`` (inf if unknown)."""
    if total is None or done <= 0 or seconds <= 0:
        return math.inf
    return max(0.0, (total - done) * seconds / done)


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")


def _env_number(name: str, default: float, minimum: float, kind: type) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < minimum:
        what = "an integer >= 0" if kind is int else f"a number >= {minimum:g}"
        raise ConfigError(f"{name}: {text!r} is invalid; expected {what}")
    return value


def progress_settings() -> tuple[int, float]:
    """``(every_n, every_s)`` from ``HBNN_PROGRESS_EVERY_N`` / ``HBNN_PROGRESS_EVERY_S`` (validated).

    Raises:
        ConfigError: a value that is not a number in range (one line naming the variable).
    """
    return (int(_env_number(EVERY_N_ENV, 0, 0, int)),
            float(_env_number(EVERY_S_ENV, DEFAULT_EVERY_S, 0.001, float)))


class Progress:
    """Counts updates of one piece of work and reports them (see the module docstring).

    Always safe to call: a disabled instance does nothing. Use as a context manager, or
    call :meth:`close` (the closing line is written once).

    Args:
        total: number of updates the work has (None = unknown: no percentage or ETA).
        desc: what is being done, e.g. ``train epoch 2/15``.
        unit: what one update is (``batch``, ``run``, ``step``).
        initial: updates already done before this call (a resumed epoch).
        mode: ``"bar"`` (tqdm), ``"lines"`` or ``"off"``.
        stream: where text goes.
        every_n: in ``lines`` mode, a line at least every this many updates (0 = time only).
        every_s: in ``lines`` mode, a line at least every this many seconds.
        final: in ``lines`` mode, write a closing line.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, total: int | None, desc: str, *, unit: str = "batch", initial: int = 0,
                 mode: str = "off", stream: TextIO | None = None, every_n: int = 0,
                 every_s: float = DEFAULT_EVERY_S, final: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in ("bar", "lines", "off"):
            raise ValueError(f"progress mode {mode!r}; expected bar, lines or off")
        self.total, self.desc, self.unit, self.mode = total, desc, unit, mode
        self.n = self.initial = int(initial)
        self.stream = stream if stream is not None else sys.stderr
        self.every_n, self.every_s, self.final, self.clock = int(every_n), float(every_s), final, clock
        self.postfix: dict[str, Any] = {}
        self._postfix_fn: Callable[[], Mapping[str, Any]] | None = None
        self.t0 = self._last_t = clock() if mode == "lines" else 0.0
        self._last_n = self.n
        self.closed = mode == "off"
        self._bar = None
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False,
                             dynamic_ncols=True, file=self.stream)

    @property
    def enabled(self) -> bool:
        """True unless the mode is ``off``."""
        return self.mode != "off"

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the count (``loss=0.41``); in ``lines`` mode on the next line."""
        if self.mode == "off":
            return
        self.postfix = dict(values)
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def update(self, n: int = 1, postfix: Callable[[], Mapping[str, Any]] | None = None) -> None:
        """Count ``n`` more updates.

        Args:
            n: updates done.
            postfix: a callable returning the postfix values, called only when they are
                shown (a line is written, or every 10th update of a bar): it may be costly.
        """
        if self.mode == "off":
            return
        self.n += n
        if postfix is not None:
            self._postfix_fn = postfix
        if self._bar is not None:
            if postfix is not None and self.n % _POSTFIX_EVERY == 0:
                self.set_postfix(**postfix())
            self._bar.update(n)
            return
        now = self.clock()
        by_count = self.every_n > 0 and self.n - self._last_n >= self.every_n
        if by_count or now - self._last_t >= self.every_s:
            self._last_t, self._last_n = now, self.n
            if self.total is None or self.n < self.total:
                self._write(self._line(now))

    def _fresh_postfix(self) -> str:
        if self._postfix_fn is not None:
            self.postfix = dict(self._postfix_fn())
        return ", ".join(f"{k} {v}" for k, v in self.postfix.items())

    def _line(self, now: float) -> str:
        """``desc: n/total units (p%), rate, ETA h:mm:ss[, postfix]``."""
        elapsed, done = now - self.t0, self.n - self.initial
        if self.total is None:
            count = f"{self.n} {_plural(self.unit)}"
        else:
            pct = 100 * self.n / self.total if self.total else 100.0
            count = f"{self.n}/{self.total} {_plural(self.unit)} ({pct:.0f}%)"
        parts = [count, format_rate(done, elapsed, self.unit)]
        if self.total is not None:
            parts.append(f"ETA {format_duration(eta_seconds(done, self.total - self.initial, elapsed))}")
        extra = self._fresh_postfix()
        return f"{self.desc}: {', '.join(parts)}" + (f", {extra}" if extra else "")

    def _write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """Finish: remove the bar, or write the closing line (``done, n/total units in h:mm:ss (rate)``)."""
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
            return
        if self.final:
            elapsed = self.clock() - self.t0
            count = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
            extra = self._fresh_postfix()
            self._write(f"{self.desc}: done, {count} {_plural(self.unit)} in {format_duration(elapsed)} "
                        f"({format_rate(self.n - self.initial, elapsed, self.unit)})"
                        + (f", {extra}" if extra else ""))

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is not None and self.mode == "lines":
            self.final = False  # an error says why; no "done" line before it
        self.close()


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def make_progress(total: int | None, desc: str, *, enabled: bool = True, unit: str = "batch",
                  initial: int = 0, stream: TextIO | None = None, every_n: int | None = None,
                  every_s: float | None = None, final: bool = True,
                  clock: Callable[[], float] = time.monotonic) -> Progress:
    """A :class:`Progress` in the mode that fits ``stream`` (default ``sys.stderr``).

    Args:
        total: updates the work has (None = unknown).
        desc: what is being done.
        enabled: False for quiet mode or a DDP rank other than 0 (the result does nothing).
        unit: what one update is.
        initial: updates already done.
        stream: where text goes (a terminal gets a bar, anything else lines).
        every_n: lines mode: a line every this many updates (None = ``HBNN_PROGRESS_EVERY_N``, 0 = off).
        every_s: lines mode: a line every this many seconds (None = ``HBNN_PROGRESS_EVERY_S``, 30).
        final: lines mode: write a closing line.
        clock: monotonic seconds.

    Raises:
        ConfigError: a bad ``HBNN_PROGRESS_EVERY_*`` value.
    """
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return Progress(total, desc, unit=unit, initial=initial, mode="off", stream=stream)
    env_n, env_s = progress_settings()
    mode = "bar" if _is_tty(stream) else "lines"
    return Progress(total, desc, unit=unit, initial=initial, mode=mode, stream=stream,
                    every_n=env_n if every_n is None else every_n,
                    every_s=env_s if every_s is None else every_s, final=final, clock=clock)
