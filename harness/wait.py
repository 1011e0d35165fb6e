"""Polling with deadlines (testcontainers-style wait strategies).

Nothing in kamleak sleeps and hopes: it polls an observable condition until
it holds or a deadline passes, then says what it waited for.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

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
        except retry_on as exc:  # noqa: PERF203 - expected while booting
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
