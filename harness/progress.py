"""Progress for long steps: live on a terminal, quiet in CI logs.

On a terminal (stderr is a TTY and CI is not set) long steps update one
line in place; elsewhere only their start and end are printed, so CI logs
stay short and readable.
"""

from __future__ import annotations

import os
import sys
import threading
import time

_lock = threading.Lock()


def interactive() -> bool:
    if os.environ.get("KAMLEAK_PROGRESS") in ("0", "no"):
        return False
    if os.environ.get("KAMLEAK_PROGRESS") in ("1", "yes"):
        return True
    ci = os.environ.get("CI", "").lower() in ("true", "1", "yes")
    return sys.stderr.isatty() and not ci


def say(text: str) -> None:
    with _lock:
        print(f"kamleak: {text}", file=sys.stderr, flush=True)


class Ticker:
    """`with Ticker("seeding debian:sid-slim"):` -> a live elapsed-time line on a TTY."""

    def __init__(self, what: str, total: float | None = None):
        self.what, self.total = what, total
        self._stop = threading.Event()
        self._thread = None
        self.t0 = time.monotonic()

    def __enter__(self) -> Ticker:
        if interactive():
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            el = time.monotonic() - self.t0
            of = f" / {self.total:.0f} s" if self.total else " s"
            with _lock:
                sys.stderr.write(f"\rkamleak: {self.what} … {el:.0f}{of}   ")
                sys.stderr.flush()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(1)
            with _lock:
                sys.stderr.write("\r" + " " * (len(self.what) + 30) + "\r")
                sys.stderr.flush()


def countdown(what: str, deadline: float):
    """A callback for pollers: `tick(elapsed)` redraws `what elapsed/deadline` on a TTY."""
    if not interactive():
        return None

    def tick(elapsed: float | None) -> None:
        """`tick(None)` clears the line when the wait is over."""
        with _lock:
            if elapsed is None:
                sys.stderr.write("\r" + " " * (len(what) + 40) + "\r")
            else:
                sys.stderr.write(f"\rkamleak: {what} {elapsed:4.1f} / {deadline:.1f} s   ")
            sys.stderr.flush()
    return tick
