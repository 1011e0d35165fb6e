"""run_soak: the checkpoints, the drains between them, and the analysis of what stayed behind."""

from __future__ import annotations

import collections
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kamleak.harness.errors import RPCError, ScenarioError, UsageError
from kamleak.harness.judging import orphan
from kamleak.harness.probes import pbx_trace
from kamleak.harness.probes.counters import Counters
from kamleak.harness.probes.rpc import TmCell
from kamleak.harness.probes.sampler import Sampler
from kamleak.harness.sip.peer import UdpPeer
from kamleak.harness.tools.soak.driver import _Call, _Driver
from kamleak.harness.tools.soak.plan import check_plan, dead_path_reply, plan_kinds
from kamleak.harness.tools.soak.plot import render_plot
from kamleak.harness.tools.soak.stats import ols, rises
from kamleak.harness.wait import WaitTimeout, poll


@dataclass
class SoakResult:
    kamailio: str
    variant: str
    transport: str
    far_end: str
    calls: int
    concurrency: int
    rate: float
    mix: float
    hold: float
    seed: int | None
    kinds: dict
    outcomes: dict
    completed: int
    failed: int
    calls_4140: int
    hits: int                       # 4140 calls whose BYE Kamailio answered 5xx (dead-connection path)
    missed: int
    bye_replies: dict               # "500 I'm terribly sorry... (1/SL)": count
    baseline: dict
    final: dict
    leaked_cells: int               # tm.stats current after the last drain - baseline
    created_minus_freed: int
    leaked_in_tm_list: list         # BYE cells of 4140 calls still in tm.list
    cells_per_call: dict | None  # fit over the drained checkpoints
    shm_per_call: dict | None
    tm_shm_per_call: dict | None
    cells_per_hit: float | None
    shm_growth: int
    shm_measure: str                # "shm_other" (real_used less websocket buffers) or "shm_real_used"
    shm_growth_by_module: dict      # mod.mem_stats all shm: final - baseline, non-zero only
    tm_shm_growth: int | None
    settled: bool
    flags: list
    checkpoints: list
    samples: list
    timers: dict
    wall_s: float
    calls_phase_s: float
    calls_per_s: float
    setup_ms_median: float | None
    setup_ms_p95: float | None
    harness_cpu_s: float
    harness_cpu_share: float        # of one core, during the call phases
    kamailio_cpu_s: float | None
    ws_dump_truncated: bool
    counters: dict
    errors: list
    json_path: str | None = None
    png_path: str | None = None
    # Per call of leaked_in_tm_list: when its BYE cell was proven orphaned (the orphan
    # proof's time rule), or why not; and the rule as applied (or why it was off).
    orphaned: list = field(default_factory=list)
    orphan_rule: str = ""

    @property
    def leaked(self) -> bool:
        return self.leaked_cells > 0

    def summary_line(self) -> str:
        fit = self.cells_per_call
        cells = (f"{fit['slope']:.4g} cells/call" + (f" [{fit['ci95'][0]:.3g}, {fit['ci95'][1]:.3g}]"
                                                     if fit.get("ci95") else "")) if fit else "n/a"
        shm = self.shm_per_call
        shm_s = (f"{shm['slope']:.4g} B/call" + (f" [{shm['ci95'][0]:.3g}, {shm['ci95'][1]:.3g}]"
                                                 if shm.get("ci95") else "")) if shm else "n/a"
        verdict = "LEAK" if self.leaked else "CLEAN"
        return (f"soak {verdict}: {self.kamailio} {self.variant} {self.transport.upper()}, "
                f"{self.completed}/{self.calls} calls ({self.failed} failed) at {self.calls_per_s:.0f}/s, "
                f"4140 {self.calls_4140} ({self.hits} hit the dead connection); "
                f"{self.leaked_cells} cell(s) left after the drain{self._proven()}; fit {cells}, "
                f"{shm_s}; "
                f"harness CPU {self.harness_cpu_share * 100:.0f}% of a core")

    def _proven(self) -> str:
        if not self.orphaned:
            return ""
        n = sum(1 for o in self.orphaned if o.get("proven_at") is not None)
        return f" ({n} of {len(self.orphaned)} 4140 BYE(s) proven orphaned)"

    def to_json(self) -> dict:
        return asdict(self)

    def write(self, out_dir) -> tuple[Path, Path | None]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        jp = out / "soak.json"
        self.json_path = str(jp)
        try:
            png = render_plot(self, out / "soak.png")
            self.png_path = str(png)
        except Exception as exc:  # noqa: BLE001 - the plot is evidence, the JSON is the record
            self.errors.append(f"plot: {type(exc).__name__}: {exc}")
            png = None
        jp.write_text(json.dumps(self.to_json(), indent=1, default=str))
        return jp, png


PROOF_MAX_CELLS = 2000      # more cells left: the drain goes by tm.stats alone


class ByeProofs:
    """The orphan proof's time rule (kamleak.harness.judging.orphan) on the BYE cells
    of the 4140 calls, followed across the drains' tm.list reads.

    A drain may end once every cell tm.list holds beyond the baseline is such a
    BYE proven orphaned (idle at every read for longer than wt_timer x1.25 +
    0.5 s): nothing will free them, so waiting longer shows nothing more.
    The count proof (tm.stats current - waiting) is not used: it needs an
    idle Kamailio from the baseline on, and a soak's calls overlap.
    """

    def __init__(self, wt_ms: int, t0: float):
        self.wt_ms, self.t0 = wt_ms, t0
        self.needed = orphan.time_needed(wt_ms)
        self.baseline: set = set()                 # cells listed before the first call
        self.idle_since: dict[tuple, float] = {}   # cell -> first read of its idle run
        self.proven: dict[str, dict] = {}          # Call-ID -> the proof
        self.last: dict[str, TmCell] = {}          # Call-ID -> its BYE cell, last read
        self.pending = False                       # an idle watched BYE not proven yet
        self.extra = 0                             # cells beyond the baseline, last read

    @staticmethod
    def key(c: TmCell) -> tuple:
        return (c.cell, c.tindex, c.tlabel, c.callid, c.cseq, c.method)

    def observe(self, now: float, cells: list[TmCell], watched: dict[str, float | None]) -> bool:
        """Feed one tm.list read; WATCHED maps the 4140 calls' Call-IDs to when their
        BYE was answered (monotonic).  True when every listed cell beyond the
        baseline is a watched BYE proven orphaned."""
        extra = [c for c in cells if self.key(c) not in self.baseline]
        self.extra = len(extra)
        mine = [c for c in extra if c.method == "BYE" and c.callid in watched]
        for k in set(self.idle_since) - {self.key(c) for c in mine if orphan.idle(c)}:
            del self.idle_since[k]                 # gone, or a read saw it busy: a break
        self.pending = False
        for c in mine:
            self.last[c.callid] = c
            if not orphan.idle(c):
                self.proven.pop(c.callid, None)
                continue
            since = self.idle_since.setdefault(self.key(c), now)
            if c.callid in self.proven:
                continue
            if now - since > self.needed:
                answered = watched.get(c.callid)
                self.proven[c.callid] = {
                    "call_id": c.callid, "cell": c.cell, "tindex": c.tindex, "tlabel": c.tlabel,
                    "idle_since": round(since - self.t0, 3), "proven_at": round(now - self.t0, 3),
                    "after_bye": None if answered is None else round(now - answered, 3),
                    "evidence": (f"outgoings {c.outgoings}, ref_count {c.ref_count}, idle "
                                 f"{now - since:.1f} s > wt_timer {self.wt_ms} ms "
                                 f"x{orphan.TIME_FACTOR:g} + {orphan.TIME_MARGIN_S:g} s")}
            else:
                self.pending = True
        return bool(extra) and len(mine) == len(extra) and all(
            c.callid in self.proven for c in mine)

    def record(self, leaked_ids: list[str]) -> list[dict]:
        """One row per leaked call: its proof, or why its BYE cell was not proven."""
        rows = []
        for cid in leaked_ids:
            if cid in self.proven:
                rows.append(self.proven[cid])
                continue
            c = self.last.get(cid)
            why = ("not seen idle for long enough before the drain ended" if c is None
                   or orphan.idle(c) else f"not idle: {orphan.why_not_idle(c)}")
            rows.append({"call_id": cid, "proven_at": None, "why_not": why})
        return rows


def _drain(counters: Counters, deadline_s: float, *, ws_base: int | None = None,
           ws_deadline_s: float = 15.0, interval: float = 0.1, proofs: ByeProofs | None = None,
           watched: Callable[[], dict] | None = None, base_current: int = 0) -> tuple[dict, bool]:
    """Poll until tm has no cell waiting and `current` holds still for 0.3 s (or the deadline).

    With PROOFS, the BYE cells of WATCHED() 4140 calls left in tm.list are
    followed too: the drain ends at once when all cells beyond BASE_CURRENT
    are such BYEs proven orphaned, and not before an idle one is proven or
    gone (so each leaked call gets its proof).
    With WS_BASE, then also until the websocket module's shm is back to it:
    Kamailio frees a closed connection (and its 64 KiB buffer) only after
    the module's rm_delay_interval.
    """
    last: dict = {}
    track = {"prev": None, "since": None}

    def proven(s: dict, now: float) -> bool:
        if proofs is None:
            return False
        calls = watched()
        extra = s.get("current", 0) - base_current
        # tm.list only once few cells are left: about as many as the 4140 calls may hold
        # (read every interval, it must stay small: ~10,000 cells take seconds over ctl).
        if extra <= 0 or extra > min(len(calls) + 50, PROOF_MAX_CELLS):
            proofs.pending = False
            return False
        if not proofs.observe(now, counters.rpc.tm_list(), calls):
            return False
        # tm.stats agrees with that tm.list, before and after it: no cell came or went meanwhile.
        return extra == proofs.extra == counters.rpc.tm_stats().get("current", 0) - base_current

    def tm_still() -> bool:
        s = last["tm"] = counters.rpc.tm_stats()
        cur, now = s.get("current", 0), time.monotonic()
        if proven(s, now):
            return True
        if proofs is not None and proofs.pending:
            track["since"] = None               # an idle BYE to prove: not drained yet
        elif s.get("waiting", 0):
            track["since"] = None
        elif track["prev"] != cur:
            track["since"] = now
        elif track["since"] is not None and now - track["since"] >= 0.3:
            return True
        track["prev"] = cur
        return False

    settled = True
    try:
        poll(tm_still, timeout=deadline_s, what="tm drained", interval=interval, max_interval=interval)
    except WaitTimeout:
        settled = False
    if ws_base is not None and counters.mod_ok.get("websocket"):
        def ws_back() -> bool:
            ws = counters.mod_shm("websocket")
            # back to the pool's level, give or take less than one connection's 64 KiB buffer
            return ws is None or ws < ws_base + 32768
        try:
            poll(ws_back, timeout=ws_deadline_s, what="websocket shm back", interval=0.25, max_interval=0.25)
        except WaitTimeout:
            settled = False
    return last["tm"], settled


def _container_cpu(kamailio) -> float | None:
    """CPU seconds Kamailio's container used so far (cgroup v1 or v2), or None."""
    running = getattr(kamailio, "running", None)
    cont = getattr(running, "container", None)
    if cont is None:
        return None
    cid = cont.id
    for path, scale in ((f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage", 1e-9),
                        (f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat", 1e-6),
                        (f"/sys/fs/cgroup/docker/{cid}/cpu.stat", 1e-6)):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith("cpu.stat"):
            m = re.search(r"usage_usec (\d+)", text)
            if m:
                return int(m.group(1)) * scale
            continue
        return int(text.strip()) * scale
    return None



def run_soak(kamailio, peer_or_pbx, *, calls: int, concurrency: int, rate: float, mix: float,
             transport: str = "ws", seed: int | None = None, progress=None, hold: float = 0.0,
             checkpoints: int = 5, call_timeout: float = 15.0, reinvite_all: bool = False,
             variant: str = "", sample_interval: float = 0.5, warmup: bool = True,
             on_checkpoint: Callable[[dict], None] | None = None) -> SoakResult:
    """Drive CALLS calls through KAMAILIO to PEER_OR_PBX and measure what stays behind."""
    check_plan(calls, mix, concurrency, rate)
    if transport not in ("ws", "wss"):
        raise UsageError(f"unknown transport '{transport}'", "use ws or wss")
    from kamleak.harness.judging import oracle
    kinds = plan_kinds(calls, mix, seed)
    rpc = kamailio.rpc
    counters = Counters(rpc)
    timers = oracle.read_timers(rpc, kamailio.config, kamailio.version)
    drain_limit = timers.deadline_for("BYE")
    proofs, orphan_rule = _bye_proofs(kamailio, timers)
    builtin = isinstance(peer_or_pbx, UdpPeer)
    pbx_log_start = 0 if builtin else len(peer_or_pbx.log())
    t_wall0 = time.monotonic()
    driver = _Driver(kamailio, peer_or_pbx, kinds=kinds, concurrency=concurrency, rate=rate,
                     transport=transport, hold=hold, call_timeout=call_timeout,
                     reinvite_all=reinvite_all, progress=progress, seed=seed)
    sampler = None
    checkpoint_rows: list[dict] = []
    phase_wall = 0.0
    phase_cpu = 0.0
    kam_cpu0 = _container_cpu(kamailio)
    kam_cpu_phase = 0.0 if kam_cpu0 is not None else None
    settled_all = True
    try:
        driver.wait_pool()
        if warmup:
            driver.warm_up(kamailio.death)
        base, ok = _drain(counters, drain_limit)
        baseline = counters.read(modules=True)
        ws_base = baseline.get("ws_shm")
        baseline.update(calls=0, t=0.0, settled=ok, hits=0)
        checkpoint_rows.append(baseline)
        t0 = time.monotonic()
        if proofs is not None:
            proofs.t0 = t0
            proofs.baseline = {proofs.key(c) for c in rpc.tm_list()}

        def watched() -> dict:
            return {c.call_id: c.t_done for c in driver.calls
                    if c.kind == "4140" and c.t_done is not None}
        sampler = Sampler(lambda: {**counters.read(), "calls": driver.done}, t0, sample_interval,
                          keep_going=True, name="kamleak-soak-sampler")
        sampler.tags["phase"] = "run"
        sampler.start()
        k = max(1, min(int(checkpoints), calls))
        bounds = sorted({round(calls * (j + 1) / k) for j in range(k)})
        for bound in bounds:
            sampler.tags["phase"] = "run"
            w0, c0, kc0 = time.monotonic(), time.process_time(), _container_cpu(kamailio)
            driver.run_until(driver.warmed + bound, abort=kamailio.death)
            phase_wall += time.monotonic() - w0
            phase_cpu += time.process_time() - c0
            kc1 = _container_cpu(kamailio)
            if kam_cpu_phase is not None and kc0 is not None and kc1 is not None:
                kam_cpu_phase += kc1 - kc0
            sampler.tags["phase"] = "drain"
            _, ok = _drain(counters, drain_limit,
                           ws_base=ws_base if bound == bounds[-1] else None, proofs=proofs,
                           watched=watched, base_current=baseline["current"])
            settled_all &= ok
            row = counters.read(modules=True)
            snap = driver.snapshot()
            row.update(calls=driver.done, t=round(time.monotonic() - t0, 3), settled=ok,
                       hits=snap["hits"])
            checkpoint_rows.append(row)
            if on_checkpoint:
                on_checkpoint(row)
        samples = sampler.stop()
        sampler = None
        cells_left = rpc.tm_list()
    except ScenarioError as exc:
        raise (_shm_exhausted(rpc, rate, timers) or exc) from None
    finally:
        if sampler is not None:
            sampler.stop()
        driver.close()

    # 4140 replies via Asterisk: read them from its log.
    if not builtin:
        _replies_from_asterisk(peer_or_pbx, pbx_log_start, driver.calls)

    for row in checkpoint_rows[1:]:             # Asterisk's replies are known only now
        row["hits"] = sum(1 for c in driver.calls if c.outcome == "hit" and c.t_done is not None
                          and c.t_done - t0 <= row["t"])
    final = checkpoint_rows[-1]
    ids_4140 = {c.call_id for c in driver.calls if c.kind == "4140"}
    leaked_ids = sorted({cell.callid for cell in cells_left
                         if cell.method == "BYE" and cell.callid in ids_4140})
    outcomes = collections.Counter(c.outcome.split(":")[0] if c.outcome else "unfinished"
                                   for c in driver.calls)
    replies = collections.Counter(f"{c.bye_reply[0]} {c.bye_reply[1]}" for c in driver.calls
                                  if c.bye_reply)
    hits = sum(1 for c in driver.calls if c.outcome == "hit")
    missed = sum(1 for c in driver.calls if c.kind == "4140" and c.outcome != "hit")
    xs = [r["calls"] for r in checkpoint_rows]
    fit_cells = ols(xs, [r["current"] for r in checkpoint_rows])
    # WebSocket buffers of connections closed < rm_delay_interval ago are not a leak:
    # fit shm without them where the build can tell (mod.mem_stats websocket).
    shm_key = "shm_other" if all("shm_other" in r for r in checkpoint_rows) else "shm_real_used"
    fit_shm = ols(xs, [r[shm_key] for r in checkpoint_rows])
    fit_tm = ols(xs, [r["tm_shm"] for r in checkpoint_rows]) \
        if all("tm_shm" in r for r in checkpoint_rows) else None
    leaked = final["current"] - baseline["current"]
    cmf = (final["created"] - final["freed"]) - (baseline["created"] - baseline["freed"])
    shm_growth = final[shm_key] - baseline[shm_key]
    tm_growth = (final["tm_shm"] - baseline["tm_shm"]) if fit_tm else None
    flags = []
    if leaked > 0:
        flags.append(f"{leaked} tm cell(s) did not return after the drain "
                     f"({leaked / calls:.4g} per call; {hits} call(s) hit the dead-connection path)")
    if rises(fit_tm, tm_growth or 0):
        flags.append(f"tm's shm grew by {tm_growth} B and did not return "
                     f"({fit_tm.describe(' B/call')})")
    by_module = {}
    if "module_shm" in baseline and "module_shm" in final:
        for m in sorted(set(baseline["module_shm"]) | set(final["module_shm"])):
            d = final["module_shm"].get(m, 0) - baseline["module_shm"].get(m, 0)
            if d:
                by_module[m] = d
    if rises(fit_shm, shm_growth, floor=16384):
        top = sorted(((d, m) for m, d in by_module.items() if d > 0 and m != "websocket"), reverse=True)[:3]
        where = ("; by module: " + ", ".join(f"{m} +{d} B" for d, m in top)) if top else ""
        flags.append(f"shm grew by {shm_growth} B and did not return ({fit_shm.describe(' B/call')})"
                     + where)
    if not settled_all:
        flags.append("a drain did not settle within fr_timer + wt_timer (cells still waiting)")
    lat = sorted(driver.latencies)
    cpu_total = phase_cpu
    kam_cpu = kam_cpu_phase
    kinds_count = collections.Counter(kinds)
    return SoakResult(
        kamailio=kamailio.version or "", variant=variant, transport=transport,
        far_end="builtin peer" if builtin else "asterisk", calls=calls, concurrency=concurrency,
        rate=rate, mix=mix, hold=hold, seed=seed, kinds=dict(kinds_count), outcomes=dict(outcomes),
        completed=sum(1 for c in driver.calls if c.outcome and not c.outcome.startswith("failed")),
        failed=driver.failed, calls_4140=kinds_count.get("4140", 0), hits=hits, missed=missed,
        bye_replies=dict(replies), baseline=baseline, final=final, leaked_cells=leaked,
        created_minus_freed=cmf, leaked_in_tm_list=leaked_ids,
        orphaned=proofs.record(leaked_ids) if proofs is not None else
        [{"call_id": cid, "proven_at": None, "why_not": orphan_rule} for cid in leaked_ids],
        orphan_rule=orphan_rule,
        cells_per_call=fit_cells.as_dict() if fit_cells else None,
        shm_per_call=fit_shm.as_dict() if fit_shm else None,
        tm_shm_per_call=fit_tm.as_dict() if fit_tm else None,
        cells_per_hit=(leaked / hits) if hits else None, shm_growth=shm_growth, shm_measure=shm_key,
        shm_growth_by_module=by_module,
        tm_shm_growth=tm_growth, settled=settled_all, flags=flags, checkpoints=checkpoint_rows,
        samples=samples, timers=timers.as_dict(), wall_s=round(time.monotonic() - t_wall0, 3),
        calls_phase_s=round(phase_wall, 3),
        calls_per_s=round(driver.done / phase_wall, 2) if phase_wall else 0.0,
        setup_ms_median=round(lat[len(lat) // 2] * 1000, 2) if lat else None,
        setup_ms_p95=round(lat[int(len(lat) * 0.95)] * 1000, 2) if lat else None,
        harness_cpu_s=round(cpu_total, 3),
        harness_cpu_share=round(cpu_total / phase_wall, 3) if phase_wall else 0.0,
        kamailio_cpu_s=round(kam_cpu, 3) if kam_cpu is not None else None,
        ws_dump_truncated=driver.watcher.conns.truncated_seen,
        counters={**dict(driver.counters),
                  **({f"peer {k}": v for k, v in peer_or_pbx.counters.items()} if builtin else {})},
        errors=driver.errors[:50] + (peer_or_pbx.errors[:20] if builtin else []))


def _bye_proofs(kamailio, timers) -> tuple[ByeProofs | None, str]:
    """The time proof for this Kamailio (None where kamleak's reading of tm's rules does not
    reach its build, or the policy is --no-early), and the rule as the record states it."""
    from kamleak.harness import knowledge
    from kamleak.harness.judging import oracle
    if not oracle.POLICY.early:
        return None, "early verdict off (--no-early): drains end on tm.stats alone"
    target = getattr(kamailio, "target", None)
    prov = knowledge.provenance(target) if target is not None else knowledge.Provenance.unknown(
        "a Kamailio kamleak did not start")
    why = orphan.applicability(prov).time
    if why:
        return None, why
    wt = timers.values["wt_timer"]
    return ByeProofs(wt.ms, time.monotonic()), (
        f"time proof: a 4140 BYE cell idle (outgoings 0, ref_count 1) at every drain read for "
        f"longer than wt_timer {wt.ms} ms x{orphan.TIME_FACTOR:g} + {orphan.TIME_MARGIN_S:g} s "
        f"= {orphan.time_needed(wt.ms):.2f} s is orphaned (wt_timer from {wt.source})")


def _shm_exhausted(rpc, rate: float, timers) -> ScenarioError | None:
    """A clearer error when the run failed because Kamailio's shm is full.

    Every call leaves ~2 cells waiting out wt_timer, ~20 KB each in a memdbg
    build: at ~1400 calls/s that fills the default 64 MB, and Kamailio then
    answers 500 (1/SL) and refuses new TCP connections (tcpconn_new fails).
    """
    try:
        shm, tm = rpc.shmmem(), rpc.tm_stats()
    except RPCError:
        return None
    total, free = shm.get("total", 0), shm.get("free", 0)
    if not total or free > total * 0.05:
        return None
    return ScenarioError(
        f"Kamailio ran out of shared memory (free {free} of {total} B, tm current "
        f"{tm.get('current')}, waiting {tm.get('waiting')}): the cells waiting out wt_timer "
        f"({timers.wt_timer} ms) at this rate ({rate:g} calls/s) fill its shm",
        "lower --rate (each call keeps ~2 cells for wt_timer)")


def _replies_from_asterisk(pbx, log_start: int, calls: list[_Call]) -> None:
    msgs = pbx_trace.parse_pjsip_log(pbx.log()[log_start:])
    for c in calls:
        if c.kind != "4140" or c.outcome != "sent":
            continue
        finals = pbx_trace.final_replies(msgs, c.call_id, "BYE")
        if not finals:
            c.outcome = "missed: no reply to Asterisk's BYE in its log"
            continue
        code, reason = finals[0].code, finals[0].reason
        c.bye_reply = (code, reason)
        c.outcome = "hit" if dead_path_reply(code, reason) else \
            f"missed: the PBX's BYE was answered {code} {reason}"
