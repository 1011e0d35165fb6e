"""The leak oracle: does a transaction outlive every timer that should end it?

Pre/post conditions in the Asterisk testsuite's manner: snapshot `tm.stats`
before the call, watch the request's cell in `tm.list` from the moment the
request is sent until it is gone or the deadline passes, then check the
stats: `current` back to its baseline plus the cells left, and
`created - freed` moved by exactly that many.  Never `tm.clean`: it frees a
leaked cell (after 90 s) and would hide the very thing we look for.

The deadline comes from the running config's tm timers: a non-INVITE
transaction lives at most fr_timer (no final reply) + wt_timer (wait state),
plus a margin for timer granularity and our polling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import RPCError, ScenarioError
from .rpc import KamailioRPC, TmCell
from .wait import Deadline

# Kamailio's own defaults (ms) when the config does not set them.
TM_DEFAULTS = {"fr_timer": 30000, "fr_inv_timer": 120000, "wt_timer": 5000}


@dataclass
class Timers:
    fr_timer: int
    fr_inv_timer: int
    wt_timer: int
    source: str

    def deadline_for(self, method: str, margin: float = 2.0) -> float:
        """Seconds a healthy transaction of METHOD may live after its request."""
        fr = self.fr_inv_timer if method == "INVITE" else self.fr_timer
        return (fr + self.wt_timer) / 1000.0 * 1.25 + margin

    def as_dict(self) -> dict:
        return {"fr_timer": self.fr_timer, "fr_inv_timer": self.fr_inv_timer,
                "wt_timer": self.wt_timer, "source": self.source}


def read_timers(rpc: KamailioRPC, configured) -> Timers:
    """tm timers as Kamailio runs them.

    CONFIGURED is the config's TmTimers (or a dict of the same names).
    `cfg.get tm fr_timer` is refused by every Kamailio we build ("not
    readable via RPC interface": the values are kept as ticks), so it is
    tried first for builds that allow it, then the values of the config we
    rendered, then Kamailio's defaults.
    """
    values, sources = {}, set()
    configured = configured if isinstance(configured, dict) else vars(configured)
    for name, default in TM_DEFAULTS.items():
        try:
            values[name] = int(rpc.cfg_get("tm", name))
            sources.add("cfg.get")
            continue
        except (RPCError, TypeError, ValueError):
            pass
        if configured.get(name) is not None:
            values[name] = int(configured[name])
            sources.add("config")
        else:
            values[name] = default
            sources.add("defaults")
    return Timers(values["fr_timer"], values["fr_inv_timer"], values["wt_timer"],
                  "+".join(sorted(sources)))


def cells_for(cells: list[TmCell], call_id: str, method: str) -> list[TmCell]:
    return [c for c in cells if c.callid == call_id and c.method == method]


@dataclass
class Watch:
    """What watching one transaction produced."""

    cells: list[TmCell]
    seen: bool
    first_seen: float | None
    gone_after: float | None
    watched_for: float
    samples: list[dict]


def watch_transaction(rpc: KamailioRPC, call_id: str, method: str, *, deadline: float,
                      started: float, interval: float = 0.05, alive=None,
                      appear_within: float | None = None, tick=None) -> Watch:
    """Poll tm.list for CALL_ID/METHOD until the cell is gone or DEADLINE passes.

    `started` is the monotonic time the request was sent (the clock of the
    verdict); `alive()` returns a reason if Kamailio died, which ends the
    watch as an error, never as "clean".  A cell that never shows up within
    `appear_within` seconds ends the watch early (the caller decides whether
    the request reached Kamailio at all).
    """
    limit = Deadline(max(0.0, deadline - (time.monotonic() - started)))
    seen, first_seen, gone_after = False, None, None
    current: list[TmCell] = []
    samples: list[dict] = []
    while True:
        if alive is not None:
            reason = alive()
            if reason:
                raise ScenarioError(f"Kamailio died while the {method} was watched: {reason}",
                                    "see the Kamailio log")
        now = time.monotonic() - started
        current = cells_for(rpc.tm_list(), call_id, method)
        samples.append({"t": round(now, 3), "cells": len(current)})
        if current:
            if not seen:
                seen, first_seen = True, now
        elif seen:
            gone_after = now
            break
        elif appear_within is not None and now > appear_within:
            break
        if limit.expired():
            break
        if tick is not None:
            tick(now)
        time.sleep(interval)
    if tick is not None:
        tick(None)
    return Watch(cells=current, seen=seen, first_seen=first_seen, gone_after=gone_after,
                 watched_for=time.monotonic() - started, samples=samples)


def stats_settled(rpc: KamailioRPC, baseline: dict, leaked: int, timeout: float) -> tuple[dict, bool, str]:
    """Wait for tm.stats to show exactly LEAKED cells more than the baseline.

    Other transactions of the call (the INVITEs, the triggers' local
    requests) drain within wt_timer; we poll until `current` is back to
    baseline + leaked or the timeout passes, then report what we saw.
    """
    deadline = Deadline(timeout)
    after = rpc.tm_stats()
    while True:
        cur = after.get("current", 0) - baseline.get("current", 0)
        live = (after.get("created", 0) - after.get("freed", 0)) - \
            (baseline.get("created", 0) - baseline.get("freed", 0))
        if cur == leaked and live == leaked:
            return after, True, (f"current {baseline.get('current', 0)} -> {after.get('current', 0)}, "
                                 f"created-freed moved by {live}: matches {leaked} cell(s) left")
        if deadline.expired():
            return after, False, (f"current {baseline.get('current', 0)} -> {after.get('current', 0)} "
                                  f"and created-freed moved by {live}, expected {leaked}")
        time.sleep(0.1)
        after = rpc.tm_stats()


# ---------------------------------------------------------------------------
# Leaks without a cell: shm allocation sites across batches of requests.

# A site must keep at least this many bytes per request, in every batch, to
# count as leaking: one-time growth (a first-use cache) grows in the first
# batch only, and per-request transients are freed before the snapshot.
MIN_BYTES_PER_REQUEST = 8


def shm_batches(rpc: KamailioRPC, send_batch, *, requests: int, batches: int = 3,
                settle_timeout: float = 5.0) -> dict:
    """Run `send_batch(requests)` BATCHES times; which shm sites kept growing?

    Before the first batch and after each one, tm must settle (`current`
    back to its baseline, `created - freed` unchanged), then `mod.stats all
    shm` is snapshot.  Returns the evidence a memory verdict carries.
    """
    from . import memstats

    baseline = rpc.tm_stats()
    snaps = [memstats.snapshot(rpc)]
    points = [_point(baseline, snaps[0])]     # for the timeline plot
    notes = []
    for _ in range(batches):
        send_batch(requests)
        after, consistent, note = stats_settled(rpc, baseline, 0, timeout=settle_timeout)
        notes.append(note)
        if not consistent:
            raise ScenarioError(f"tm did not settle after a batch of {requests}: {note}",
                                "see the Kamailio log")
        snaps.append(memstats.snapshot(rpc))
        points.append(_point(after, snaps[-1]))
    per_batch = [memstats.growth(a, b) for a, b in zip(snaps, snaps[1:])]
    sites = sorted({s for g in per_batch for s in g})
    grown = {s: [g.get(s, 0) for g in per_batch] for s in sites}
    floor = MIN_BYTES_PER_REQUEST * requests
    leaked = [s for s, bs in grown.items() if all(b >= floor for b in bs)]
    return {"requests": requests, "batches": batches, "sites": grown, "leaked_sites": leaked,
            "min_bytes_per_request": MIN_BYTES_PER_REQUEST, "tm_stats_notes": notes,
            "before": snaps[0], "after": snaps[-1], "points": points}


def _point(stats: dict, sites: dict) -> dict:
    """tm counters and shm bytes per module at one snapshot (monotonic time)."""
    modules: dict[str, int] = {}
    for site, b in sites.items():
        module = site.split(":", 1)[0]
        modules[module] = modules.get(module, 0) + b
    return {"at": time.monotonic(), **{k: stats.get(k, 0) for k in
                                      ("current", "waiting", "created", "freed")},
            "modules": modules}
