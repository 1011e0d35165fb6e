"""Sampling Kamailio's counters in the background, for the timeline plots.

A thread calls `read()` every `interval` seconds until stopped and keeps
what it returns, stamped with `t` (seconds since `t0`) and the current
`tags` (the soak's phase, say).  The samples are evidence (the shape of a
drain, a flat line above zero), never the verdict: that is the oracle's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from kamleak.harness.errors import RPCError
from kamleak.harness.probes.counters import tm_and_shm


class Sampler:
    def __init__(self, read: Callable[[], dict], t0: float, interval: float = 0.1, *,
                 keep_going: bool = False, name: str = "kamleak-sampler"):
        self.read = read
        self.t0 = t0                # monotonic time of the timeline's 0
        self.interval = interval
        self.keep_going = keep_going  # on an RPC error: retry (soak) or stop sampling
        self.tags: dict = {}        # merged into every sample
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sample = self.read()
            except RPCError:
                # Kamailio gone or busy: the oracle reports that.
                if not self.keep_going or self._stop.wait(self.interval):
                    break
                continue
            sample.update(t=round(time.monotonic() - self.t0, 3), **self.tags)
            self.samples.append(sample)
            self._stop.wait(self.interval)

    def stop(self) -> list[dict]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.samples


def StatsSampler(rpc, t0: float, interval: float = 0.1) -> Sampler:  # noqa: N802 - reads as a class
    """The scenarios' sampler: tm.stats and core.shmmem every INTERVAL seconds."""
    return Sampler(lambda: tm_and_shm(rpc), t0, interval)
