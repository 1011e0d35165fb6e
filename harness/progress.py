"""Progress for long steps: live on a terminal, quiet in CI logs.

On a terminal (stderr is a TTY and CI is not set) long steps update one
line in place; elsewhere only their start and end are printed, so CI logs
stay short and readable.  A line printed through `say()` while a live line
is drawn clears it first; the next tick draws it again below.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time

_lock = threading.Lock()
_live = ""          # the live line on the terminal now ("": none), guarded by _lock
_inner = 0.0        # when a countdown last drew: an enclosing Ticker leaves it the line


def interactive() -> bool:
    if os.environ.get("KAMLEAK_PROGRESS") in ("0", "no"):
        return False
    if os.environ.get("KAMLEAK_PROGRESS") in ("1", "yes"):
        return True
    ci = os.environ.get("CI", "").lower() in ("true", "1", "yes")
    return sys.stderr.isatty() and not ci


def say(text: str, who: str = "kamleak") -> None:
    with _lock:
        _clear()
        print(f"{who}: {text}", file=sys.stderr, flush=True)


def clip(text: str, width: int) -> str:
    """TEXT in WIDTH characters at most, a cut one ending with "…" so it reads as cut."""
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


def _draw(text: str) -> None:
    """TEXT as the live line (under _lock), cut to the terminal's width: a wrapped line
    cannot be redrawn in place."""
    global _live
    _live = clip(text, shutil.get_terminal_size((100, 24)).columns - 1)
    sys.stderr.write(f"\r{_live}\x1b[K")
    sys.stderr.flush()


def _clear() -> None:
    global _live
    if _live:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()
        _live = ""


class Ticker:
    """`with Ticker("seeding debian:sid-slim"):` -> a live elapsed-time line on a TTY;
    STATUS (a callable giving the line's text) shows a long run's own counts instead."""

    def __init__(self, what: str, total: float | None = None, status=None):
        self.what, self.total, self.status = what, total, status
        self._stop = threading.Event()
        self._thread = None
        self.t0 = time.monotonic()

    def __enter__(self) -> Ticker:
        if interactive():
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def text(self) -> str:
        if self.status is not None:
            return self.status()
        of = f" / {self.total:.0f} s" if self.total else " s"
        return f"kamleak: {self.what} … {time.monotonic() - self.t0:.0f}{of}"

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            text = self.text()
            with _lock:
                if time.monotonic() - _inner > 1.0:     # no countdown inside it is drawing
                    _draw(text)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(1)
            with _lock:
                _clear()


def countdown(what: str, deadline: float):
    """A callback for pollers: `tick(elapsed)` redraws `what elapsed/deadline, until HH:MM:SS`
    on a TTY (over the line of a Ticker around it)."""
    if not interactive():
        return None
    until = time.strftime("%H:%M:%S", time.localtime(time.time() + deadline))

    def tick(elapsed: float | None) -> None:
        """`tick(None)` clears the line when the wait is over."""
        global _inner
        with _lock:
            if elapsed is None:
                _inner = 0.0
                _clear()
            else:
                _inner = time.monotonic()
                _draw(f"kamleak: {what} {elapsed:4.1f} / {deadline:.1f} s, until {until}")
    return tick
