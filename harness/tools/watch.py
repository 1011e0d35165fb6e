"""`kamleak watch`: find stuck transactions in a running Kamailio.

Every INTERVAL it reads `tm.stats`, `core.shmmem` and one `tm.list` (JSON-RPC
over HTTP or ctl's BINRPC socket: kamleak.harness.probes.transport) and follows each cell
across polls by its identity: tindex:tlabel plus Call-ID, CSeq and method,
so a hash slot reused by a later transaction is a new cell.  A cell is
**stuck** once it has been seen for longer than the longest life tm's
timers allow it (kamleak.harness.judging.oracle.Timers.lifetime_ms: max_*_lifetime + fr +
wt for an INVITE, max_noninv_lifetime + wt otherwise) times the oracle's
margin (x1.25 + 2 s).  Its age counts from the first poll that saw it, a
lower bound (the cell may be up to one interval older), so a healthy cell is
never called stuck early; a stuck one is reported at the first poll after
its bound.  It never calls `tm.clean`.

A cell is **orphaned** much earlier, by the orphan proof's time rule
(kamleak.harness.judging.orphan): a non-INVITE cell with `outgoings 0`,
`ref_count 1`, neither suspended nor in agony, seen so at every poll for
longer than wt_timer x1.25 + 0.5 s, is not on tm's wait timer, and nothing
but `tm.clean` will ever free it.  "Every poll": its idle time counts from
the first poll that saw it idle and restarts at any poll that sees it
otherwise, so with an interval longer than that wait it takes two polls.
The rule was read in upstream tm's source, 5.8.0 .. master, and measured on
Debian's 5.6.3, 6.0.1 and 6.1.5; on another build (a production server's)
it rests on that reading, and on wt_timer being the one the server runs:
each report says where wt_timer came from.  (orphan.py's count proof needs
an otherwise idle server; watch never uses it.)  An orphaned cell is
reported STUCK too, once past its bound.

The issue-4140 signature (shared README, section 1): a cell left by the
stateless error reply keeps `outgoings 0`, `tflags 0`, `ref_count 1`.

When `tm.list` cannot be had (a busy server: Debian's 6.0.1 with ~9,900
cells cannot allocate the HTTP reply in pkg memory and sends nothing; kamcmd
refuses ctl's reply as "reply too big"), or holds more cells than
--max-cells, it falls back to `tm.stats`: the floor of `created - freed` over
the longest bound (an upper bound of the stuck cells, which it cannot name),
says so, and tries `tm.list` again after RETRY_LIST_S.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kamleak.harness import progress
from kamleak.harness.errors import KamleakError, RPCError, UsageError
from kamleak.harness.judging import orphan
from kamleak.harness.judging.oracle import MARGIN_FACTOR, MARGIN_S, Timers, read_timers
from kamleak.harness.probes.rpc import Pairs, TmCell, parse_tm_list
from kamleak.harness.sip.message import parse_name_addr

# --once exits as monitoring plugins do (Nagios, Icinga, Sensu, check_mk); the run
# mode uses the same codes: 0 after --duration or Ctrl-C, 3 for bad input.
EXIT_OK, EXIT_WARNING, EXIT_CRITICAL, EXIT_UNKNOWN = 0, 1, 2, 3
STATUS = {EXIT_OK: "OK", EXIT_WARNING: "WARNING", EXIT_CRITICAL: "CRITICAL", EXIT_UNKNOWN: "UNKNOWN"}
MIN_INTERVAL, MAX_INTERVAL = 0.5, 3600.0
RETRY_LIST_S = 60.0          # after a fallback, tm.list is tried again this often
DEFAULT_MAX_CELLS = 200_000  # cells followed at most (bounded memory: ~200 B each)


def signature_4140(c) -> bool:
    return c.outgoings == 0 and c.tflags == 0 and c.ref_count == 1


def _tag(header_value: str) -> str:
    try:
        return parse_name_addr(header_value)[2].get("tag") or ""
    except Exception:  # noqa: BLE001 - a cell's header as Kamailio stored it; no tag then
        return ""


Key = tuple  # (tindex, tlabel, callid, cseq, method)


def key_of(c: TmCell) -> Key:
    return (c.tindex, c.tlabel, c.callid, c.cseq, c.method)


@dataclass
class Seen:
    """What is kept per followed cell: its first sighting and its latest state."""

    first_mono: float
    first_wall: float
    outgoings: int
    ref_count: int
    tflags: int
    stuck: bool = False
    idle_mono: float | None = None    # first poll of the current idle run (orphan.idle)
    idle_wall: float | None = None
    orphaned: bool = False


@dataclass
class Flagged:
    """A followed cell watch reports: which one, as tm.list shows it."""

    method: str
    callid: str
    cseq: str
    from_tag: str
    to_tag: str
    outgoings: int
    ref_count: int
    tflags: int
    tindex: int
    tlabel: int
    first_seen: float       # epoch

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in vars(self).items()}


@dataclass
class Stuck(Flagged):
    age: float
    bound: float
    signature_4140: bool

    def line(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.first_seen))
        sig = "; issue-4140 signature (outgoings 0, tflags 0, ref_count 1)" \
            if self.signature_4140 else ""
        return (f"STUCK {self.method} Call-ID {self.callid} CSeq {self.cseq} "
                f"from-tag {self.from_tag or '-'} to-tag {self.to_tag or '-'}: "
                f"outgoings {self.outgoings}, ref_count {self.ref_count}, tflags {self.tflags}; "
                f"first seen {when}, age {self.age:.1f} s, past its bound of {self.bound:.1f} s{sig}")


@dataclass
class Orphaned(Flagged):
    idle_since: float       # epoch: the first poll of the idle run
    idle: float             # seconds idle, without a break, at this poll
    wt_timer_ms: int
    wt_timer_source: str
    needed: float           # orphan.time_needed(wt_timer_ms)
    signature_4140: bool

    @property
    def evidence(self) -> str:
        return (f"outgoings {self.outgoings}, ref_count {self.ref_count}, idle {self.idle:.1f} s > "
                f"wt_timer {self.wt_timer_ms} ms x{orphan.TIME_FACTOR:g} + "
                f"{orphan.TIME_MARGIN_S:g} s")

    def as_dict(self) -> dict:
        return {**super().as_dict(), "evidence": self.evidence}

    def line(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.first_seen))
        sig = "; issue-4140 signature (outgoings 0, tflags 0, ref_count 1)" \
            if self.signature_4140 else ""
        return (f"ORPHANED {self.method} Call-ID {self.callid} CSeq {self.cseq} "
                f"from-tag {self.from_tag or '-'} to-tag {self.to_tag or '-'}: "
                f"orphaned: {self.evidence}, so not on tm's wait timer: only tm.clean or a restart "
                f"frees it "
                f"(wt_timer from {self.wt_timer_source}); tflags {self.tflags}, "
                f"first seen {when}{sig}")


class Bounds:
    """Seconds a healthy METHOD transaction may live, margin included."""

    def __init__(self, timers: Timers, max_life: float | None = None):
        self.timers = timers
        self.max_life = max_life

    def __call__(self, method: str) -> float:
        if self.max_life is not None:
            return self.max_life * MARGIN_FACTOR + MARGIN_S
        return self.timers.deadline_for(method)

    def longest(self) -> float:
        return max(self("INVITE"), self("BYE"))

    @property
    def wt_timer(self):
        """wt_timer (kamleak.harness.stack.kamailio.timers.Timer: ms and source), for the orphan proof."""
        return self.timers.values["wt_timer"]

    def describe(self) -> str:
        if self.max_life is not None:
            return (f"--max-life {self.max_life:g} s x{MARGIN_FACTOR:g} + {MARGIN_S:g} s = "
                    f"{self('BYE'):.1f} s for every method")
        t = self.timers
        src = sorted({v.source for v in t.values.values()})
        return (f"INVITE: {t.rule('INVITE')}; others: {t.rule('BYE')} (timers from "
                f"{', '.join(src)})")

    def describe_orphan(self) -> str:
        wt = self.wt_timer
        return (f"orphaned (non-INVITE, outgoings 0, ref_count 1) after idle > wt_timer {wt.ms} ms "
                f"x{orphan.TIME_FACTOR:g} + {orphan.TIME_MARGIN_S:g} s = "
                f"{orphan.time_needed(wt.ms):.2f} s (wt_timer from {wt.source}; the rule as read "
                "in upstream tm 5.8.0..master and measured on Debian's 5.6.3, 6.0.1, 6.1.5)")


@dataclass
class Update:
    """What one tm.list changed in the follower."""

    new_stuck: list
    stuck: list
    gone: list               # keys of stuck or orphaned cells that left tm.list
    oldest: float
    new_orphaned: list
    orphaned: list
    # Cells reported orphaned that a later poll saw busy, or gone: evidence
    # against the orphan rule on this build (unless tm.clean freed them).
    contradicted: list = field(default_factory=list)


class Follower:
    """The cells seen across polls (new -> followed [-> orphaned] -> stuck -> gone)."""

    def __init__(self, bounds: Bounds, max_cells: int = DEFAULT_MAX_CELLS):
        self.bounds = bounds
        self.max_cells = max_cells
        self.cells: dict[Key, Seen] = {}

    def update(self, cells: list[TmCell], now_mono: float, now_wall: float) -> Update:
        present: dict[Key, TmCell] = {key_of(c): c for c in cells}
        gone = [k for k, s in self.cells.items() if k not in present and (s.stuck or s.orphaned)]
        contradicted = [f"{k[4]} Call-ID {k[2]} CSeq {k[3]} left tm.list after it was reported "
                        "orphaned (did tm.clean free it?)" for k in gone if self.cells[k].orphaned]
        self.cells = {k: s for k, s in self.cells.items() if k in present}
        wt = self.bounds.wt_timer
        needed = orphan.time_needed(wt.ms)
        new_stuck, stuck, new_orphaned, orphaned = [], [], [], []
        oldest = 0.0
        for k, c in present.items():
            s = self.cells.get(k)
            if s is None:
                s = self.cells[k] = Seen(now_mono, now_wall, c.outgoings, c.ref_count, c.tflags)
            else:
                s.outgoings, s.ref_count, s.tflags = c.outgoings, c.ref_count, c.tflags
            age = now_mono - s.first_mono
            oldest = max(oldest, age)
            # The time proof: idle at every poll since idle_mono (a poll that saw it
            # otherwise restarts the run; the first idle sighting starts it).
            if not orphan.idle(c):
                if s.orphaned:
                    contradicted.append(f"{c.method} Call-ID {c.callid} CSeq {c.cseq} reported "
                                        f"orphaned is busy again ({orphan.why_not_idle(c)})")
                s.idle_mono = s.idle_wall = None
                s.orphaned = False
            elif s.idle_mono is None:
                s.idle_mono, s.idle_wall = now_mono, now_wall
            idle_for = now_mono - s.idle_mono if s.idle_mono is not None else 0.0
            if s.idle_mono is not None and idle_for > needed:
                r = Orphaned(c.method, c.callid, c.cseq, _tag(c.from_), _tag(c.to), c.outgoings,
                             c.ref_count, c.tflags, c.tindex, c.tlabel, s.first_wall, s.idle_wall,
                             idle_for, wt.ms, wt.source, needed, signature_4140(c))
                orphaned.append(r)
                if not s.orphaned:
                    s.orphaned = True
                    new_orphaned.append(r)
            bound = self.bounds(c.method)
            if age > bound:
                r = Stuck(c.method, c.callid, c.cseq, _tag(c.from_), _tag(c.to), c.outgoings,
                          c.ref_count, c.tflags, c.tindex, c.tlabel, s.first_wall, age, bound,
                          signature_4140(c))
                stuck.append(r)
                if not s.stuck:
                    s.stuck = True
                    new_stuck.append(r)
        return Update(new_stuck, stuck, gone, oldest, new_orphaned, orphaned, contradicted)

    def forget(self) -> None:
        self.cells.clear()


class TooManyCells(RPCError):
    pass


class BadAnswer(RPCError):
    """The RPC answered, but not with what tm.list answers: bad input, not a busy server."""


def cells_from(result) -> list[TmCell]:
    """tm.list's answer (either transport) -> cells, refusing shapes it cannot be."""
    if result in ([], None, ""):
        return []
    # ctl answers one bucket as one struct (a Pairs, itself a list), jsonrpcs as an array.
    buckets = result if isinstance(result, list) and not isinstance(result, Pairs) else [result]
    if not all(isinstance(b, (Pairs, dict)) for b in buckets) or \
            not all(("callid" in [k for k, _ in b]) if isinstance(b, Pairs) else "callid" in b
                    for b in buckets):
        raise BadAnswer(f"tm.list answered something that is not a list of cells: {result!r:.80}",
                        "is this Kamailio's RPC with tm loaded?")
    return parse_tm_list(buckets)


@dataclass
class Poll:
    t: float                     # epoch
    mode: str                    # "tm.list" or "tm.stats"
    cells: int | None
    stuck: list
    new_stuck: list
    gone: list
    oldest_age: float | None
    stats: dict
    shm_used: int | None
    drift: int                   # created - freed now
    drift_floor: int | None   # its minimum over the longest bound (stats mode)
    list_seconds: float | None
    fallback_reason: str | None = None
    fallback_started: bool = False
    orphaned: list = field(default_factory=list)
    new_orphaned: list = field(default_factory=list)
    contradicted: list = field(default_factory=list)

    @property
    def stuck_count(self) -> int | None:
        return len(self.stuck) if self.mode == "tm.list" else None

    @property
    def orphaned_count(self) -> int | None:
        return len(self.orphaned) if self.mode == "tm.list" else None

    @property
    def leaked_count(self) -> int | None:
        """Cells stuck or orphaned (an orphaned cell becomes stuck later: counted once)."""
        if self.mode != "tm.list":
            return None
        return len({(r.tindex, r.tlabel, r.callid, r.cseq, r.method)
                    for r in (*self.stuck, *self.orphaned)})

    def as_dict(self) -> dict:
        return {"event": "poll", "t": round(self.t, 3), "mode": self.mode, "cells": self.cells,
                "stuck": self.stuck_count,
                "stuck_4140": sum(s.signature_4140 for s in self.stuck)
                if self.mode == "tm.list" else None,
                "orphaned": self.orphaned_count,
                "oldest_age": None if self.oldest_age is None else round(self.oldest_age, 3),
                "current": self.stats.get("current"), "waiting": self.stats.get("waiting"),
                "created_minus_freed": self.drift, "drift_floor": self.drift_floor,
                "shm_used": self.shm_used,
                "tm_list_seconds": None if self.list_seconds is None else round(self.list_seconds, 4),
                "fallback_reason": self.fallback_reason, "fallback_started": self.fallback_started}


class Watcher:
    """One `poll()` per interval against RPC (anything satisfying kamleak.harness.probes.transport.RPCTransport)."""

    def __init__(self, rpc, bounds: Bounds, interval: float, max_cells: int = DEFAULT_MAX_CELLS,
                 clock: Callable[[], float] = time.monotonic):
        self.rpc = rpc
        self.bounds = bounds
        self.interval = interval
        self.follower = Follower(bounds, max_cells)
        self.clock = clock
        self.mode = "tm.list"
        self.fallback_reason: str | None = None
        self._retry_at = 0.0
        self._polled = False
        n = max(2, math.ceil(bounds.longest() / interval) + 1)
        self._drift = collections.deque(maxlen=n)   # bounded: one value per poll

    def poll(self) -> Poll:
        stats = self.rpc.tm_stats()
        if "current" not in stats or "created" not in stats:
            raise RPCError(f"tm.stats answered without current/created: {stats!r:.80}",
                           "is this Kamailio's RPC with tm loaded?")
        try:
            shm = self.rpc.shmmem().get("real_used")
        except RPCError:
            shm = None
        now, wall = self.clock(), time.time()
        drift = stats["created"] - stats["freed"] if "freed" in stats else stats["current"]
        self._drift.append(drift)
        started = False
        cells = None
        took = None
        if self.mode == "tm.list" or now >= self._retry_at:
            t0 = time.monotonic()
            try:
                cells = cells_from(self.rpc.call("tm.list"))
                took = time.monotonic() - t0
                if len(cells) > self.follower.max_cells:
                    raise TooManyCells(f"tm.list holds {len(cells)} cells, more than --max-cells "
                                       f"{self.follower.max_cells}")
            except RPCError as exc:
                # tm.stats answered: a tm.list that does not is too large for the server
                # (or for us), except a wrong answer to the very first one (bad input).
                if isinstance(exc, BadAnswer) and not self._polled:
                    raise
                cells = None
                started = self.mode == "tm.list"
                self.mode, self.fallback_reason = "tm.stats", exc.cause
                self._retry_at = now + RETRY_LIST_S
                self.follower.forget()
        self._polled = True
        if cells is not None:
            self.mode, self.fallback_reason = "tm.list", None
            u = self.follower.update(cells, now, wall)
            return Poll(wall, "tm.list", len(cells), u.stuck, u.new_stuck, u.gone, u.oldest, stats,
                        shm, drift, None, took, orphaned=u.orphaned, new_orphaned=u.new_orphaned,
                        contradicted=u.contradicted)
        floor = min(self._drift) if len(self._drift) == self._drift.maxlen else None
        return Poll(wall, "tm.stats", None, [], [], [], None, stats, shm, drift, floor, None,
                    fallback_reason=self.fallback_reason, fallback_started=started)


# ---------------------------------------------------------------------------
# Outputs


class HumanOut:
    def __init__(self, stream=sys.stdout, verbose: bool = False):
        self.stream, self.verbose = stream, verbose

    def _say(self, line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", file=self.stream, flush=True)

    def start(self, describe: str) -> None:
        self._say(describe)

    def poll(self, p: Poll) -> None:
        for why in p.contradicted:
            self._say(f"WARNING: {why}: the orphan rule does not hold here; please report it "
                      "with this build's `kamailio -v`")
        for o in p.new_orphaned:
            self._say(o.line())
        for s in p.new_stuck:
            self._say(s.line())
        for k in p.gone:
            self._say(f"GONE {k[4]} Call-ID {k[2]} CSeq {k[3]} left tm.list")
        if p.fallback_started:
            self._say(f"FALLBACK to tm.stats drift: {p.fallback_reason}; stuck cells cannot be "
                      f"named until tm.list answers again (tried every {RETRY_LIST_S:g} s)")
        if self.verbose or (p.mode == "tm.stats" and p.drift_floor):
            self._say(summary(p))

    def error(self, message: str) -> None:
        self._say(f"ERROR {message}")


def summary(p: Poll) -> str:
    if p.mode == "tm.list":
        sig = sum(s.signature_4140 for s in p.stuck)
        return (f"{p.cells} cell(s), {len(p.orphaned)} orphaned, {len(p.stuck)} stuck ({sig} with "
                f"the issue-4140 signature), "
                f"oldest {p.oldest_age or 0:.1f} s; tm.stats current {p.stats.get('current')} "
                f"waiting {p.stats.get('waiting')}, created-freed {p.drift}")
    floor = "n/a yet" if p.drift_floor is None else p.drift_floor
    return (f"tm.list unavailable ({p.fallback_reason}): tm.stats current {p.stats.get('current')} "
            f"waiting {p.stats.get('waiting')}, created-freed {p.drift}, its floor over the "
            f"longest bound {floor}")


class JsonOut:
    def __init__(self, stream=sys.stdout):
        self.stream = stream

    def _emit(self, d: dict) -> None:
        print(json.dumps(d, separators=(",", ":")), file=self.stream, flush=True)

    def start(self, describe: str) -> None:
        self._emit({"event": "start", "t": round(time.time(), 3), "bounds": describe})

    def poll(self, p: Poll) -> None:
        for why in p.contradicted:
            self._emit({"event": "contradicted", "t": round(p.t, 3), "why": why})
        for o in p.new_orphaned:
            self._emit({"event": "orphaned", "t": round(p.t, 3), **o.as_dict()})
        for s in p.new_stuck:
            self._emit({"event": "stuck", "t": round(p.t, 3), **s.as_dict()})
        for k in p.gone:
            self._emit({"event": "gone", "t": round(p.t, 3), "method": k[4], "callid": k[2],
                        "cseq": k[3]})
        self._emit(p.as_dict())

    def error(self, message: str) -> None:
        self._emit({"event": "error", "t": round(time.time(), 3), "message": message})


class PromOut:
    """Gauges on ADDRESS (HOST:PORT) through prometheus-client, in a registry of their own."""

    def __init__(self, address: str):
        try:
            from prometheus_client import CollectorRegistry, Gauge, start_http_server
        except ImportError:
            raise UsageError("--prometheus needs the prometheus-client package",
                             "pip install prometheus-client") from None
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--prometheus {address!r} is not HOST:PORT",
                             "give e.g. 127.0.0.1:9470")
        self.registry = r = CollectorRegistry()

        def g(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, registry=r)

        self.stuck = g("kamleak_stuck_cells", "tm cells seen longer than their timers allow "
                       "(NaN while tm.list is unavailable)")
        self.stuck_4140 = g("kamleak_stuck_cells_4140_signature",
                            "stuck cells with outgoings 0, tflags 0, ref_count 1 (issue 4140)")
        self.orphaned = g("kamleak_orphaned_cells", "non-INVITE cells with outgoings 0, ref_count 1 "
                          "seen idle longer than wt_timer x1.25 + 0.5 s: off tm's wait timer, "
                          "never freed (NaN while tm.list is unavailable)")
        self.oldest = g("kamleak_oldest_cell_age_seconds", "age of the oldest cell in tm.list "
                        "(from the first poll that saw it)")
        self.cells = g("kamleak_tm_list_cells", "cells in the last tm.list")
        self.current = g("kamleak_tm_current", "tm.stats current")
        self.waiting = g("kamleak_tm_waiting", "tm.stats waiting")
        self.drift = g("kamleak_tm_created_minus_freed", "tm.stats created - freed")
        self.floor = g("kamleak_tm_drift_floor", "minimum of created - freed over the longest "
                       "bound (fallback mode: an upper bound of stuck cells)")
        self.shm = g("kamleak_shm_used_bytes", "core.shmmem real_used")
        self.fallback = g("kamleak_fallback", "1 while tm.list is unavailable and only "
                          "tm.stats drift is watched")
        self.up = g("kamleak_up", "1 if the last poll reached Kamailio's RPC")
        self.list_s = g("kamleak_tm_list_seconds", "time the last tm.list took")
        self.bound = g("kamleak_stuck_bound_seconds", "a non-INVITE cell older than this is stuck")
        try:
            self.server = start_http_server(int(port), addr=host, registry=r)
        except OSError as exc:
            raise UsageError(f"cannot serve metrics on {address}: {exc.strerror}",
                             "pick a free HOST:PORT") from None

    def start(self, describe: str) -> None:
        pass

    def set_bound(self, seconds: float) -> None:
        self.bound.set(seconds)

    def poll(self, p: Poll) -> None:
        nan = float("nan")
        self.up.set(1)
        listed = p.mode == "tm.list"
        self.stuck.set(len(p.stuck) if listed else nan)
        self.stuck_4140.set(sum(s.signature_4140 for s in p.stuck) if listed else nan)
        self.orphaned.set(len(p.orphaned) if listed else nan)
        self.oldest.set(p.oldest_age if p.oldest_age is not None else nan)
        self.cells.set(p.cells if p.cells is not None else nan)
        self.current.set(p.stats.get("current", nan))
        self.waiting.set(p.stats.get("waiting", nan))
        self.drift.set(p.drift)
        self.floor.set(p.drift_floor if p.drift_floor is not None else nan)
        if p.shm_used is not None:
            self.shm.set(p.shm_used)
        self.fallback.set(0 if listed else 1)
        self.list_s.set(p.list_seconds if p.list_seconds is not None else nan)

    def error(self, message: str) -> None:
        self.up.set(0)

    def close(self) -> None:
        server = self.server[0] if isinstance(self.server, tuple) else None
        if server is not None:
            server.shutdown()


# ---------------------------------------------------------------------------
# Bounds from what the user gives


def bounds_from(args, rpc, version: str | None) -> Bounds:
    """--max-life wins; else the timers of --kamailio-config; else tm's defaults (and cfg.get)."""
    timers = read_timers(rpc, {}, version)
    if getattr(args, "config", None):
        from kamleak.harness.stack.kamailio.cfg import read_config
        from kamleak.harness.stack.kamailio.timers import extract
        # The config the server runs, read as it is (no harness contract here).
        from_cfg = extract(read_config(args.config), path=str(Path(args.config).resolve()),
                           version=version)
        for name, t in from_cfg.items():
            if not timers.values[name].source.startswith("cfg.get"):
                timers.values[name] = t
    return Bounds(timers, args.max_life)


def _interval(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--interval {text!r} is not a number of seconds") from None
    if not MIN_INTERVAL <= v <= MAX_INTERVAL or math.isnan(v):
        raise argparse.ArgumentTypeError(
            f"--interval {text} is outside {MIN_INTERVAL:g}..{MAX_INTERVAL:g} s (one tm.list per "
            "interval: below that it loads the server, above it detection waits too long)")
    return v


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text} must be above 0")
    return v


NAME = "watch"
HELP = "follow tm.list of a running Kamailio and report orphaned and stuck transactions"
DESCRIPTION = ("Poll a running Kamailio's tm.list (JSON-RPC over HTTP or ctl's BINRPC socket) and "
               "report every transaction seen for longer than its tm timers allow (STUCK), and, "
               "earlier, every non-INVITE one seen idle (outgoings 0, ref_count 1) at every poll "
               "for longer than wt_timer x1.25 + 0.5 s: off tm's wait timer, nothing will free it "
               "(ORPHANED). That rule was read in upstream tm's source, 5.8.0..master, and "
               "measured on Debian's 5.6.3, 6.0.1 and 6.1.5; on other builds it rests on that "
               "reading and on the wt_timer given (each report names its source). Never calls "
               "tm.clean. Exit codes, as monitoring plugins use them: 0 OK, 1 warning, "
               "2 critical, 3 unknown (bad input, RPC unreachable); --once prints one status "
               "line on stdout in every case.")
USAGE_EXIT = EXIT_UNKNOWN


def status_line(code: int, text: str, perf: str = "") -> str:
    """A monitoring plugin's one line: `KAMLEAK STATE - text | perfdata`.  '|' starts the
    perfdata, so none may appear in the text; nor may a newline (only line one is read)."""
    text = " ".join(text.replace("|", "/").split())
    return f"KAMLEAK {STATUS[code]} - {text}" + (f" | {perf}" if perf else "")


def usage_status(given: list[str], message: str) -> str | None:
    """The status line of a command line argparse refuses, when it asked for --once."""
    return status_line(EXIT_UNKNOWN, message) if "--once" in given else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from kamleak.harness.stack.targets import add_option
    p.add_argument("--kamailio-rpc", required=True, metavar="ADDRESS",
                   help="http://HOST:PORT/RPC (jsonrpcs) or tcp:HOST:PORT / unixs:/path "
                        "(ctl's binrpc socket, what kamcmd uses)")
    add_option(p, ("--kamailio-config", "--config"), dest="config", default=None,
               metavar="KAMAILIO_CFG", help="the kamailio.cfg it runs: tm timers are read from it "
                                            "(default: tm's compiled-in defaults)")
    p.add_argument("--max-life", type=_positive, default=None, metavar="SECONDS",
                   help="the longest life of a healthy transaction, overriding the timers "
                        "(e.g. a script using t_set_max_lifetime())")
    p.add_argument("--interval", type=_interval, default=5.0, metavar="SECONDS",
                   help=f"seconds between polls, one tm.list each ({MIN_INTERVAL:g}..{MAX_INTERVAL:g}, "
                        "default 5)")
    p.add_argument("--timeout", type=_positive, default=10.0, metavar="SECONDS",
                   help="per RPC call (default 10)")
    p.add_argument("--max-cells", type=int, default=DEFAULT_MAX_CELLS, metavar="N",
                   help="follow at most N cells; above, fall back to tm.stats drift")
    p.add_argument("--json", action="store_true", help="JSON lines instead of human lines")
    p.add_argument("--verbose", action="store_true", help="human mode: a summary line every poll")
    p.add_argument("--prometheus", default=None, metavar="HOST:PORT",
                   help="serve Prometheus metrics there (kamleak_stuck_cells, ...)")
    p.add_argument("--once", action="store_true",
                   help="monitoring-plugin mode: watch for the longest bound plus one interval "
                        "(or, with --state, poll once), print one line, exit 0/1/2/3")
    p.add_argument("--state", default=None, metavar="FILE",
                   help="--once: keep first sightings (and idle runs) in FILE between runs "
                        "(cron, Nagios)")
    p.add_argument("--warning", type=int, default=1, metavar="N",
                   help="--once: stuck or orphaned cells for WARNING (default 1)")
    p.add_argument("--critical", type=int, default=10, metavar="N",
                   help="--once: stuck or orphaned cells for CRITICAL (default 10; any such cell "
                        "with the issue-4140 signature counts as CRITICAL too)")
    p.add_argument("--duration", type=_positive, default=None, metavar="SECONDS",
                   help="stop after SECONDS (default: run until interrupted)")



def run(args) -> int:
    if not args.once:
        return _run(args)
    # A monitoring plugin says UNKNOWN on stdout however it fails (stderr keeps the one line).
    try:
        return _run(args)
    except KamleakError as exc:
        print(status_line(EXIT_UNKNOWN, exc.line()), flush=True)
        raise
    except KeyboardInterrupt:        # Ctrl-C, or SIGTERM (a scheduler's timeout): no verdict
        print(status_line(EXIT_UNKNOWN, "interrupted before a verdict"), flush=True)
        progress.say("watch --once interrupted before a verdict")
        return EXIT_UNKNOWN
    except Exception as exc:
        print(status_line(EXIT_UNKNOWN, f"internal error: {type(exc).__name__}: {exc}"), flush=True)
        raise


def _run(args) -> int:
    from kamleak.harness.probes.transport import connect

    if args.state and not args.once:
        raise UsageError("--state goes with --once", "add --once, or drop --state")
    if args.max_cells < 1:
        raise UsageError(f"--max-cells {args.max_cells} must be 1 or more")
    rpc = connect(args.kamailio_rpc, timeout=args.timeout)
    try:
        version = rpc.core_version()
    except RPCError as exc:
        raise RPCError(exc.cause, exc.fix) from None
    if not version.lower().startswith("kamailio"):
        raise RPCError(f"{args.kamailio_rpc} answered core.version with {version[:60]!r}, "
                       "not a Kamailio version", "point --kamailio-rpc at Kamailio's RPC")
    bounds = bounds_from(args, rpc, version.split()[1] if len(version.split()) > 1 else None)
    watcher = Watcher(rpc, bounds, args.interval, args.max_cells)
    if args.once:
        return _once(args, watcher, version)
    outs = [JsonOut() if args.json else HumanOut(verbose=args.verbose)]
    prom = None
    if args.prometheus:
        prom = PromOut(args.prometheus)
        prom.set_bound(bounds("BYE"))
        outs.append(prom)
    desc = (f"watching {version} at {rpc.url} every {args.interval:g} s; stuck after "
            f"{bounds.describe()}; {bounds.describe_orphan()}" + (f"; metrics on http://{args.prometheus}/metrics"
                                      if args.prometheus else ""))
    for o in outs:
        o.start(desc)
    first = True
    stop_at = None if args.duration is None else time.monotonic() + args.duration
    next_at = time.monotonic()
    try:
        while True:
            try:
                p = watcher.poll()
            except RPCError as exc:
                if first:
                    raise
                for o in outs:
                    o.error(exc.line())
            else:
                for o in outs:
                    o.poll(p)
            first = False
            next_at += args.interval
            now = time.monotonic()
            if next_at < now:          # a slow poll: skip, never two tm.list back to back
                next_at = now + args.interval
            if stop_at is not None and next_at > stop_at:
                return EXIT_OK
            time.sleep(max(0.0, next_at - now))
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if prom is not None:
            prom.close()


def _once(args, watcher: Watcher, version: str) -> int:
    if args.state:
        p = _once_with_state(args, watcher)
    else:
        limit = time.monotonic() + watcher.bounds.longest() + args.interval
        while True:
            p = watcher.poll()
            if p.mode != "tm.list" or time.monotonic() >= limit:
                break
            time.sleep(args.interval)
    stuck, orphans, leaked = p.stuck_count, p.orphaned_count, p.leaked_count
    # Nagios perfdata: label=value[UOM];warn;crit, U for a value that cannot be had.
    perf = (f"stuck={'U' if stuck is None else stuck};{args.warning};{args.critical} "
            f"orphaned={'U' if orphans is None else orphans};{args.warning};{args.critical} "
            f"current={p.stats.get('current', 'U')} waiting={p.stats.get('waiting', 'U')} "
            f"drift={p.drift}" + (f" oldest={p.oldest_age:.1f}s" if p.oldest_age is not None else ""))
    if leaked is None:
        code = EXIT_WARNING if (p.drift_floor or 0) >= args.warning else EXIT_UNKNOWN
        text = (f"tm.list unavailable ({p.fallback_reason}); tm.stats created-freed floor "
                f"{p.drift_floor if p.drift_floor is not None else 'n/a'}")
    else:
        sig = sum(s.signature_4140 for s in p.stuck) + sum(
            o.signature_4140 for o in p.orphaned if not _stuck_too(o, p.stuck))
        code = EXIT_CRITICAL if leaked >= args.critical or sig else \
            EXIT_WARNING if leaked >= args.warning else EXIT_OK
        text = (f"{stuck} stuck transaction(s) of {p.cells}, {orphans} orphaned ({sig} stuck or "
                f"orphaned with the issue-4140 signature)")
        if p.stuck:
            worst = max(p.stuck, key=lambda s: s.age)
            text += f"; oldest: {worst.method} Call-ID {worst.callid} age {worst.age:.0f} s"
        young = [o for o in p.orphaned if not _stuck_too(o, p.stuck)]
        if young:
            o = max(young, key=lambda o: o.idle)
            text += (f"; orphaned before its bound: {o.method} Call-ID {o.callid} ({o.evidence}; "
                     f"wt_timer from {o.wt_timer_source})")
    print(status_line(code, text, perf), flush=True)
    if args.json:
        for o in p.orphaned:
            print(json.dumps({"event": "orphaned", **o.as_dict()}), flush=True)
        for s in p.stuck:
            print(json.dumps({"event": "stuck", **s.as_dict()}), flush=True)
    return code


def _stuck_too(o: Orphaned, stuck: list) -> bool:
    return any((s.tindex, s.tlabel, s.callid, s.cseq, s.method) ==
               (o.tindex, o.tlabel, o.callid, o.cseq, o.method) for s in stuck)


def _once_with_state(args, watcher: Watcher) -> Poll:
    """One poll; first sightings and the start of idle runs (epoch) live in the state file
    between runs: {key: [first_seen, idle_since or null]} (a bare first_seen: an older file)."""
    path = Path(args.state)
    saved: dict = {}
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            if not isinstance(saved, dict):
                raise ValueError
        except (ValueError, OSError):
            raise UsageError(f"--state {path} is not a kamleak watch state file",
                             "remove it; the next run starts afresh") from None
    now_mono, now_wall = time.monotonic(), time.time()
    for k, value in saved.items():
        try:
            key = tuple(json.loads(k))
            first_wall, idle_wall = value if isinstance(value, list) else (value, None)
            seen = Seen(now_mono - (now_wall - float(first_wall)), float(first_wall), 0, 0, 0)
            if idle_wall is not None:
                seen.idle_wall = float(idle_wall)
                seen.idle_mono = now_mono - (now_wall - seen.idle_wall)
            watcher.follower.cells[key] = seen
        except (ValueError, TypeError):
            continue
    p = watcher.poll()
    if p.mode == "tm.list":
        state = {json.dumps(list(k)): [s.first_wall, s.idle_wall]
                 for k, s in watcher.follower.cells.items()}
        try:
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(json.dumps(state))
            tmp.replace(path)
        except OSError as exc:
            raise UsageError(f"cannot write --state {path}: {exc.strerror}") from None
    return p
