"""Per campaign: what one Kamailio keeps across the batches it runs.

A campaign reuses one Kamailio for several batches (Campaign.REUSE).  A
`Series` takes a baseline when it starts and a sample after each batch's drain:

* **tm** (at each sample): `tm.stats` current back to the baseline plus the
  cells of flows the per-flow judge reported (or could not drive).  A cell of
  no judged flow (a local request's own Call-ID, say) is a leak only once it
  has been listed, without a break, longer than its lifetime bound (the
  oracle's `deadline_for`, the per-flow judge's bound).
* **held objects** (at each sample): the dialogs, connections and contacts the
  per-flow judge saw held are read again; one still listed past its bound
  (kamleak.harness.judging.lifetimes) is a leak.
* **memory** (over the series, `memory()`): each shm allocation site (`mod.stats
  all shm`) and each process's private memory (`pkg.stats` used) must not keep
  rising: the trend test soak uses (kamleak.harness.judging.trend), asked of the
  samples after the first batch (one-time growth lands there), never down
  between two, over a floor.  It judges only samples in which everything that
  rightly holds memory is as it was (tm cells, dialogs, WebSocket connections,
  contacts: `live`), and only modules that keep nothing between calls
  (`JUDGED_MODULES`; a cache or a registrar grows by design, until its expiry).
  A rising site or process is reported unconfirmed until `replay` runs the same
  batches on a fresh Kamailio and sees the same one rise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kamleak.harness.errors import RPCError, ScenarioError
from kamleak.harness.judging import oracle, trend
from kamleak.harness.probes import memstats, state, ws_connections
from kamleak.harness.probes.rpc import RPCCallError
from kamleak.harness.tools.explore.judge import Judgement, recheck
from kamleak.harness.wait import WaitTimeout, poll

# Modules whose shm holds nothing once a call's transactions, dialog and
# connection are gone (kamleak's config and the stock WebRTC one).  Not here,
# so never judged: state with an expiry of its own (usrloc, registrar, pua,
# presence, htable, the dispatcher...), tls (OpenSSL's session cache), db_text
# (a table cache), and any module kamleak has not read.
JUDGED_MODULES = frozenset({
    "core", "tm", "tmx", "sl", "rr", "pv", "maxfwd", "textops", "siputils", "xlog", "sanity",
    "nathelper", "xhttp", "jsonrpcs", "cfg_rpc", "ctl", "kex", "corex", "websocket", "dialog",
    "uac", "counters"})

# Every how many batches the memory sample waits for closed connections'
# records to go (the websocket and TCP connection sites and the TCP receivers'
# pkg are judged on those samples only).
SETTLE_EVERY = 2

# A site must rise by at least this much per batch on average (Kamailio's
# allocator hands out 16-byte multiples; one leaked small block per batch is 16).
SITE_FLOOR_PER_BATCH = 16
# A process's private memory: pkg is reused in place, fragments come and go by
# hundreds of bytes; a leak of a kilobyte a batch stands out of that.
PKG_FLOOR_PER_BATCH = 1024

@dataclass
class Sample:
    batch: int                         # 0: the baseline at Kamailio's start
    tm: dict
    live: dict                         # what rightly holds memory: tm cells, dialogs, ...
    sites: dict | None = None          # mod.stats all shm; None: not read (see note)
    pkg: dict | None = None            # pkg.stats used per process
    note: str = ""                     # why the memory of this sample is not comparable
    ws_settled: bool = True            # the websocket module's shm at the baseline's (no record in removal)
    took_s: float = 0.0                # reading it (the settle not counted)


@dataclass
class TrendFinding:
    """What kept growing (or stayed) across a Kamailio's batches."""

    kind: str                          # "tm", "shm", "pkg", or a held object's kind
    key: str                           # "tm.stats current", a site, a process, a flow's object
    evidence: list[str]
    values: list[int] = field(default_factory=list)
    status: str = "unconfirmed"        # "sure" | "unconfirmed" | "not reproduced"
    replay: list[int] | None = None    # the same key's values on the replay

    @property
    def sure(self) -> bool:
        return self.status == "sure"

    def signature(self) -> str:
        return f"{self.kind}: {self.key}"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "key": self.key, "signature": self.signature(),
                "status": self.status, "sure": self.sure, "evidence": self.evidence,
                "values": self.values, "replay": self.replay}


class Series:
    """One Kamailio's baseline and per-batch samples (see the module doc)."""

    def __init__(self, kamailio, timers: oracle.Timers, *, say=None):
        self.kamailio, self.rpc, self.timers = kamailio, kamailio.rpc, timers
        self.say = say or (lambda m: None)
        self.batches: list[list] = []                 # the flows each batch ran, for a replay
        self.allowed: set[str] = set()                # Call-IDs of flows reported or not driven
        self.held: list = []                          # (Judgement, Held) still within their bound
        self.findings: list[TrendFinding] = []        # tm and held objects, as they come
        self.notes: list[str] = []
        self.samples = [self._sample(0)]

    # ---- after each batch -------------------------------------------------

    def after_batch(self, flows, judged: list[Judgement]) -> list[TrendFinding]:
        """The batch's drain: tm back to the baseline (its findings returned), held
        objects rechecked, then the memory sample."""
        self.batches.append(list(flows))
        for j in judged:
            if j.leaked or j.run.error:
                self.allowed |= j.run.call_ids
        found = self._tm_check()
        leaks, self.held = recheck(self.kamailio, self.held)
        for j, h in leaks:
            found.append(TrendFinding(h.kind, f"{j.run.flow.text()}: {h.shape}",
                                      [h.evidence(j.run.ended_at)]))
        self.held += [(j, h) for j in judged for h in j.held if not h.leaked and h.bound_at is not None]
        self._wait_ws_records(judged)
        self.samples.append(self._sample(len(self.batches)))
        self.findings += found
        return found

    def _tm_check(self) -> list[TrendFinding]:
        base = self.samples[0].tm
        bound = {m: self.timers.deadline_for(m) for m in ("INVITE", "BYE")}
        first: dict[tuple, float] = {}
        last: dict = {}

        def settled() -> bool:
            stats, listed = self.rpc.tm_stats(), self.rpc.tm_list()
            now = time.monotonic()
            mine = [c for c in listed if c.callid in self.allowed]
            others = [c for c in listed if c.callid not in self.allowed]
            ids = {(c.cell, c.tlabel) for c in others}
            for k in list(first):
                if k not in ids:
                    del first[k]                   # left, or a break: its clock starts again
            for c in others:
                first.setdefault((c.cell, c.tlabel), now)
            last.update(stats=stats, mine=mine, others=others, now=now)
            if stats.get("current", 0) - base.get("current", 0) == len(mine) and not others:
                return True
            return bool(others) and all(now - first[(c.cell, c.tlabel)] >
                                        bound.get(c.method, bound["BYE"]) for c in others)

        try:
            poll(settled, timeout=max(bound.values()) + 2, what="tm.stats back to its baseline",
                 interval=0.1, max_interval=0.25, abort=self.kamailio.death)
        except WaitTimeout:
            pass
        stats, others, now = last.get("stats", {}), last.get("others", []), last.get("now", 0.0)
        past = [c for c in others if now - first[(c.cell, c.tlabel)] > bound.get(c.method, bound["BYE"])]
        moved = stats.get("current", 0) - base.get("current", 0)
        counts = (f"tm.stats current {base.get('current', 0)} -> {stats.get('current', 0)}, waiting "
                  f"{base.get('waiting', 0)} -> {stats.get('waiting', 0)}; {len(last.get('mine', []))} "
                  "cell(s) of flows the judge reported or could not drive")
        if past:
            return [TrendFinding("tm", "cells of no flow", [counts] + [
                f"{c.describe()} listed {now - first[(c.cell, c.tlabel)]:.1f} s without a break, "
                f"past its bound {bound.get(c.method, bound['BYE']):.1f} s" for c in past[:10]],
                values=[moved])]
        if moved != len(last.get("mine", [])):
            self.notes.append(f"after batch {len(self.batches)}: {counts}, {len(others)} other cell(s) "
                              "listed, none past its bound: no verdict")
        return []

    def _ws_settled(self, sites: dict | None) -> bool:
        """Whether no connection record is in removal: the websocket module's shm
        back at the baseline's (a closed connection's record and shm stay
        rm_delay_interval after ws.dump drops it, ws_conn.c ws_timer())."""
        first = getattr(self, "samples", None)
        if not first:
            return True                          # the baseline itself
        base = self._ws_shm(first[0].sites)
        return base is None or self._ws_shm(sites) == base

    def _wait_ws_records(self, judged: list[Judgement]) -> None:
        """Every SETTLE_EVERY-th batch the sample waits for the batch's connection
        records to go: at most rm_delay_interval + the 1 s ws timer x1.25 + 1 s after
        its last flow ended (the client's close).  Waiting every batch cost 5 s each."""
        if len(self.batches) % SETTLE_EVERY or self._ws_shm(self.samples[0].sites) is None:
            return
        ended = max((j.run.ended_at for j in judged if j.run.ended_at), default=time.monotonic())
        from kamleak.harness.judging.lifetimes import read_bounds
        rm = read_bounds(self.kamailio).get("websocket", "rm_delay_interval")

        def settled() -> bool:
            return self._ws_settled(memstats.parse_mod_stats(self.rpc.call("mod.stats", "all", "shm")))

        try:
            poll(settled, timeout=max(0.0, ended + rm + 1.25 + 1.0 - time.monotonic()),
                 what="the websocket module's shm back to its baseline", interval=0.25,
                 max_interval=0.25, abort=self.kamailio.death)
        except WaitTimeout:
            pass                                 # the sample says it is not settled

    @staticmethod
    def _ws_shm(sites: dict | None) -> int | None:
        if not sites:
            return None
        mine = [v for k, v in sites.items() if k.startswith("websocket:")]
        return sum(mine) if mine else None

    def _live(self) -> dict:
        live = {"tm cells": self.rpc.tm_stats().get("current", 0)}
        dialogs = state.dialogs(self.rpc)
        if dialogs is not None:
            live["dialogs"] = len(dialogs)
        try:
            live["ws connections"] = len(ws_connections.WsConnections(self.rpc).listed())
        except RPCCallError:
            pass
        contacts = state.contacts(self.rpc)
        if contacts is not None:
            live["contacts"] = len(contacts)
        return live

    def _sample(self, batch: int) -> Sample:
        t0 = time.monotonic()
        s = Sample(batch, self.rpc.tm_stats(), self._live())
        try:
            s.sites = memstats.parse_mod_stats(self.rpc.call("mod.stats", "all", "shm")) or None
            if s.sites is None:
                s.note = "no shm accounting per allocation site (mod.stats all shm lists nothing)"
            s.pkg = memstats.parse_pkg_stats(self.rpc.call("pkg.stats")) or None
            s.ws_settled = self._ws_settled(s.sites)
        except RPCError as exc:
            s.note = f"memory not read: {exc}"
        s.took_s = round(time.monotonic() - t0, 3)
        return s

    # ---- over the series --------------------------------------------------

    def memory(self) -> list[TrendFinding]:
        """Sites and processes that kept rising over the samples after the first batch."""
        return memory_trend(self.samples, self.notes)

    def close(self) -> list[str]:
        """What was left undecided when the Kamailio is retired."""
        if self.held:
            kinds = sorted({h.kind for _, h in self.held})
            self.notes.append(f"{len(self.held)} held object(s) ({', '.join(kinds)}) still within their "
                              "bound when this Kamailio was retired: not judged")
        return self.notes


def memory_trend(samples: list[Sample], notes: list[str]) -> list[TrendFinding]:
    """Sites and processes that kept rising over SAMPLES after the first batch (the
    baseline first); why something was not judged goes to NOTES."""
    base = samples[0].live
    # Only samples in which what rightly holds memory is as at the start.
    points = [s for s in samples[1:] if s.sites is not None and not s.note and s.live == base]
    unlike = [s for s in samples[1:] if s.live != base]
    if unlike:
        notes.append(f"{len(unlike)} sample(s) left out of the memory trend: what rightly holds "
                     f"memory was not as at the start ({base}): " + "; ".join(
                         f"after batch {s.batch} {s.live}" for s in unlike[:3]))
    if len(points) < trend.MIN_POINTS:
        notes.append(f"memory trend not judged: {len(points)} comparable sample(s) after the "
                     f"first batch, it needs {trend.MIN_POINTS}")
        return []
    found = []
    skipped = set()
    settled = [s for s in points if s.ws_settled]
    if len(settled) < trend.MIN_POINTS:
        notes.append(f"websocket and TCP connection sites, TCP receivers' pkg not judged: "
                     f"{len(settled)} sample(s) with no connection record in removal "
                     f"(rm_delay_interval), it needs {trend.MIN_POINTS}")
    for site in sorted(set().union(*(s.sites for s in points))):
        module = site.split(":", 1)[0]
        if module not in JUDGED_MODULES:
            skipped.add(module)
            continue
        mine = settled if module == "websocket" or site.startswith("core: tcpconn") else points
        if len(mine) < trend.MIN_POINTS:
            continue
        found += _rising("shm", site, f"shm site {site}", mine, [s.sites.get(site, 0) for s in mine],
                         SITE_FLOOR_PER_BATCH)
    if skipped:
        notes.append("shm sites of " + ", ".join(sorted(skipped)) + " not judged: state with "
                          "an expiry of its own, or a module kamleak has not read")
    if all(s.pkg for s in points):
        for proc in sorted(set().union(*(s.pkg for s in points))):
            mine = settled if "tcp receiver" in proc or "tcp main" in proc else points
            if len(mine) < trend.MIN_POINTS:
                continue
            found += _rising("pkg", proc, f"pkg of process {proc}", mine, [s.pkg.get(proc, 0) for s in mine],
                             PKG_FLOOR_PER_BATCH)
    return found


def _rising(kind: str, key: str, what: str, samples: list[Sample], ys: list[int],
            floor_per_batch: int) -> list[TrendFinding]:
    """[the TrendFinding] if YS (one value a sample) kept rising by FLOOR_PER_BATCH a batch, else []."""
    fit = trend.keeps_rising(ys, floor=floor_per_batch * (len(samples) - 1))
    if fit is None:
        return []
    return [TrendFinding(kind, key, [f"{what} kept rising over {len(samples)} samples after batches "
                                     f"{[s.batch for s in samples]}: {ys} ({fit.describe(' B/batch')})"], ys)]


def replay(start, pbx, batches: list[list], candidates: list[TrendFinding], *, say=None) -> None:
    """Run BATCHES again on a fresh Kamailio (START()), sampled the same way; a
    CANDIDATE seen again there (the same site or process rising, cells of no flow,
    the same flow's object past its bound) is sure, else 'not reproduced'."""
    from kamleak.harness.tools.explore.run import run_batch

    kamailio = start()
    try:
        series = Series(kamailio, oracle.read_timers(kamailio.rpc, kamailio.config, kamailio.version),
                        say=say)
        for flows in batches:
            judged = run_batch(kamailio, pbx, flows, series.timers)
            _hang_up(pbx)
            series.after_batch(flows, judged)
        again = {(f.kind, f.key): f for f in series.findings + series.memory()}
    except (ScenarioError, RPCError) as exc:
        for c in candidates:
            c.evidence.append(f"the replay on a fresh Kamailio could not run: {exc}")
        return
    finally:
        kamailio.stop()
    for c in candidates:
        hit = again.get((c.kind, c.key))
        if hit is not None:
            c.status, c.replay = "sure", hit.values
            c.evidence.append(f"the same batches on a fresh Kamailio: seen again, {hit.values}")
        elif c.kind in ("shm", "pkg"):
            values = [((s.sites if c.kind == "shm" else s.pkg) or {}).get(c.key, 0)
                      for s in series.samples[1:]]
            c.status, c.replay = "not reproduced", values
            c.evidence.append(f"the same batches on a fresh Kamailio: it did not keep rising, {values}")
        else:
            c.status, c.replay = "not reproduced", []
            c.evidence.append("the same batches on a fresh Kamailio: not seen again")


def _hang_up(pbx) -> None:
    """Calls a flow left up, as the campaign ends them after each batch."""
    try:
        pbx.cli("channel request hangup all")
    except Exception:  # noqa: BLE001 - the next batch starts anyway
        pass
