"""Polling with deadlines (testcontainers-style wait strategies).

Nothing in kamleak sleeps and hopes: it polls an observable condition until
it holds or a deadline passes, then says what it waited for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Deadline:
    """A point in monotonic time; `remaining()` never goes negative."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.monotonic()
        self.end = self.start + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class WaitTimeout(TimeoutError):
    def __init__(self, what: str, seconds: float, last_error: BaseException | None = None):
        self.what = what
        self.seconds = seconds
        self.last_error = last_error
        detail = f" (last: {last_error})" if last_error else ""
        super().__init__(f"{what} not reached within {seconds:.1f} s{detail}")


def poll(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    max_interval: float = 0.5,
    retry_on: tuple[type[BaseException], ...] = (),
    abort: Callable[[], str | None] | None = None,
) -> T:
    """Call `probe` until it returns something truthy; return that value.

    `retry_on` exceptions count as "not yet" (e.g. connection refused while a
    server boots).  `abort` is checked every round: if it returns a reason
    (say, "the container exited"), polling stops with that reason at once
    instead of waiting out the deadline.  The interval backs off gently.
    """
    deadline = Deadline(timeout)
    last_error: BaseException | None = None
    delay = interval
    while True:
        try:
            value = probe()
            if value:
                return value
        except retry_on as exc:
            last_error = exc
        if abort is not None:
            reason = abort()
            if reason:
                raise AbortedWait(what, reason)
        if deadline.expired():
            raise WaitTimeout(what, timeout, last_error)
        time.sleep(min(delay, deadline.remaining() or delay))
        delay = min(delay * 1.5, max_interval)


class AbortedWait(RuntimeError):
    def __init__(self, what: str, reason: str):
        self.what = what
        self.reason = reason
        super().__init__(f"gave up waiting for {what}: {reason}")


def stop_process(proc, sig: int | None = None, *, group: bool = False, grace: float = 10.0) -> None:
    """Signal a child (its whole process group with GROUP), give it GRACE
    seconds to exit, then kill it: the one way kamleak stops what it spawned."""
    import os
    import signal
    import subprocess

    if proc is None or proc.poll() is not None:
        return
    sig = signal.SIGTERM if sig is None else sig
    send = (lambda s: os.killpg(proc.pid, s)) if group else proc.send_signal
    try:
        send(sig)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass                        # gone between poll() and the signal
