"""Sampling Kamailio's counters during a scenario, for the timeline plot.

A background thread reads `tm.stats` and `core.shmmem` every `interval`
seconds until stopped.  The samples are evidence (the shape of a drain, a
flat line above zero), never the verdict: that is the oracle's, from
`tm.list`.
"""

from __future__ import annotations

import threading
import time

from .errors import RPCError


class StatsSampler:
    def __init__(self, rpc, t0: float, interval: float = 0.1):
        self.rpc = rpc
        self.t0 = t0                # monotonic time of the timeline's 0
        self.interval = interval
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kamleak-sampler", daemon=True)

    def start(self) -> "StatsSampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                tm = self.rpc.tm_stats()
                shm = self.rpc.shmmem()
            except RPCError:
                # Kamailio gone or busy: the oracle reports that; samples just stop.
                break
            self.samples.append({
                "t": round(time.monotonic() - self.t0, 3), "current": tm.get("current", 0),
                "waiting": tm.get("waiting", 0), "created": tm.get("created", 0),
                "freed": tm.get("freed", 0), "shm_used": shm.get("real_used", shm.get("used", 0))})
            self._stop.wait(self.interval)

    def stop(self) -> list[dict]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.samples
