"""The leak oracle: does a transaction outlive every timer that should end it?

Pre/post conditions in the Asterisk testsuite's manner: snapshot `tm.stats`
before the call, watch the request's cell in `tm.list` from the moment the
request is sent until it is gone or the deadline passes, then check the
stats: `current` back to its baseline plus the cells left, and
`created - freed` moved by exactly that many.  Never `tm.clean`: it frees a
leaked cell (after 90 s) and would hide the very thing we look for.

The deadline comes from the tm timers of the config Kamailio runs (read from
the rendered config, kamleak.harness.stack.kamailio.timers: each number with its source)
and tm's lifetime rules (`Timers.lifetime_ms`), plus a margin.  A LEAK needs
both witnesses: the cell in tm.list and the counters in tm.stats; when they
disagree the run is an error (`post_condition`), never a verdict.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kamleak.harness.errors import RPCError, ScenarioError
from kamleak.harness.judging import orphan
from kamleak.harness.probes.rpc import KamailioRPC, TmCell
from kamleak.harness.stack.kamailio.timers import DEFAULTS, NAMES, Timer, default_source, from_config
from kamleak.harness.wait import WaitTimeout, poll

# The margin over a transaction's longest life: tm's timers run in ticks of
# 1/16 s on a timer process that may lag under load, the wait timer on the
# slower list, and our side adds polling, RPC latency and the PBX's hangup.
MARGIN_FACTOR = 1.25
MARGIN_S = 2.0


@dataclass
class Policy:
    """How transaction verdicts end: at the orphan proof (early), or also past
    the lifetime bound (confirm: both must agree, or the run is an error)."""

    early: bool = True
    confirm: bool = False


POLICY = Policy()


def configure(*, early: bool | None = None, confirm: bool | None = None) -> Policy:
    """Set the policy for this process (the CLI's --confirm/--no-early, the
    plugin's --kamleak-confirm/--kamleak-no-early); returns it."""
    if early is not None:
        POLICY.early = early
    if confirm is not None:
        POLICY.confirm = confirm
    return POLICY


@dataclass
class Timers:
    """tm timers (ms) as Kamailio runs them, each with where it came from."""

    values: dict[str, Timer]

    def ms(self, name: str) -> int:
        return self.values[name].ms

    fr_timer = property(lambda self: self.ms("fr_timer"))
    fr_inv_timer = property(lambda self: self.ms("fr_inv_timer"))
    wt_timer = property(lambda self: self.ms("wt_timer"))
    max_inv_lifetime = property(lambda self: self.ms("max_inv_lifetime"))
    max_noninv_lifetime = property(lambda self: self.ms("max_noninv_lifetime"))

    def lifetime_ms(self, method: str) -> tuple[int, tuple[str, ...]]:
        """The longest life (ms) of a healthy METHOD transaction, and the timers it sums.

        tm's rules (upstream src/modules/tm, 5.8.0..master):
        - at creation a cell gets end_of_life = now + max_inv_lifetime or
          max_noninv_lifetime (t_lookup.c, init_new_t(); uac.c for local requests);
        - every branch's FR timer (fr_timer, fr_inv_timer after a provisional
          reply, restarted on each one by default: t_reply.c) is clipped to
          end_of_life (timer.h: _set_fr_retr(), restart_rb_fr(), change_fr()),
          so serial forks and DNS failover end by then too: the request phase
          lasts at most max_*_lifetime (not just fr_timer);
        - at its expiry a fake 408 makes the final reply (timer.c,
          final_response_handler());
        - a negative final reply to an INVITE is retransmitted until the ACK,
          for at most fr_timer, not clipped to end_of_life (t_reply.c,
          start_final_repl_retr(); timer.c: "FR for replies");
        - then the cell waits wt_timer and leaves the hash table (t_funcs.c,
          put_on_wait(); timer.c, wait_handler()).
        """
        if method == "INVITE":
            parts = ("max_inv_lifetime", "fr_timer", "wt_timer")
        else:
            parts = ("max_noninv_lifetime", "wt_timer")
        return sum(self.ms(p) for p in parts), parts

    def deadline_for(self, method: str) -> float:
        """Seconds a healthy transaction of METHOD may live after its request."""
        life, _ = self.lifetime_ms(method)
        return life / 1000.0 * MARGIN_FACTOR + MARGIN_S

    def settle_timeout(self) -> float:
        """How long tm.stats may take to settle after the watch: the call's other
        transactions still alive then are non-INVITEs (a trigger's PUBLISH or
        MESSAGE sent while the watched request was handled)."""
        return self.deadline_for("MESSAGE")

    def rule(self, method: str) -> str:
        life, parts = self.lifetime_ms(method)
        return (f"{' + '.join(parts)} = {life} ms, x{MARGIN_FACTOR:g} + {MARGIN_S:g} s margin "
                f"= {self.deadline_for(method):.1f} s")

    def as_dict(self, method: str | None = None) -> dict:
        """{"wt_timer": {"ms": 8000, "source": "my.cfg:42 modparam"}, ...} (+ the rule)."""
        d: dict = {name: t.as_dict() for name, t in self.values.items()}
        if method:
            d["deadline_rule"] = self.rule(method)
        return d


def read_timers(rpc: KamailioRPC, configured, version: str | None = None) -> Timers:
    """tm timers as Kamailio runs them.

    `cfg.get tm <name>` is tried first for builds that answer it (every
    Debian build kamleak makes refuses: "not readable via RPC interface",
    tm keeps them as ticks).  Then CONFIGURED: a `KamailioConfig`, whose
    rendered config is read (kamleak.harness.stack.kamailio.timers); or, for callers that
    only hold the harness's `TmTimers`, those values, said so in the source.
    """
    if hasattr(configured, "render"):
        values = dict(from_config(configured, version))
    else:
        given = configured if isinstance(configured, dict) else vars(configured)
        values = {}
        for name in NAMES:
            if given.get(name) is not None:
                values[name] = Timer(int(given[name]),
                                     f"KAMLEAK_{name.upper()} (kamleak's TmTimers, config not read)")
            else:
                values[name] = Timer(DEFAULTS[name], default_source(version))
    for name in NAMES if rpc is not None else ():
        try:
            values[name] = Timer(int(rpc.cfg_get("tm", name)), "cfg.get tm " + name)
        except (RPCError, TypeError, ValueError):
            pass
    return Timers(values)


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
    orphan: orphan.Proof | None = None     # when the cell was proven orphaned
    early: str = ""                        # how the verdict was reached (or why not early)
    confirmed: bool = False                # the bound was also waited out, and agreed


def prover_for(kamailio, timers: Timers, baseline: dict, policy: Policy | None = None):
    """The orphan prover for a watch on KAMAILIO (None when the policy or the
    build allows no early verdict), and the sentence saying which."""
    policy = policy or POLICY
    if not policy.early:
        return None, "early verdict off (--no-early): waited out the bound"
    from kamleak.harness import knowledge
    target = getattr(kamailio, "target", None)
    prov = knowledge.provenance(target) if target is not None else knowledge.Provenance.unknown(
        "a Kamailio kamleak did not start")
    route, sets_lifetime = _config_facts(kamailio)
    applicable = orphan.applicability(prov, local_request_route=route, sets_lifetime=sets_lifetime,
                                      baseline=baseline)
    if not applicable.decisive:
        return None, applicable.fallback or ""
    return (orphan.Prover(kamailio.rpc, wt_ms=timers.wt_timer, baseline=baseline,
                          applicable=applicable, log=getattr(kamailio, "log", None),
                          max_noninv_ms=timers.max_noninv_lifetime),
            "" if applicable.count is None else f"count proof off: {applicable.count}")


def _config_facts(kamailio) -> tuple[bool, bool]:
    """Whether the config Kamailio runs has an active event_route[tm:local-request],
    and whether it calls t_set_max_lifetime() (read with the one config reader;
    a config it cannot read counts as having both)."""
    from kamleak.harness.stack.kamailio import cfg
    user = kamailio.config.user_config
    try:
        parsed, _ = cfg.parse(kamailio.config.render(),
                              path=str(user.path) if user is not None else "kamailio.cfg")
    except Exception:  # noqa: BLE001 - unreadable: no count proof, not a crash
        return True, True
    route = any(kind == "event" and name == "tm:local-request" for kind, name in parsed.routes)
    lifetime = any(c.name == "t_set_max_lifetime" for r in parsed.routes.values() for c in r.calls())
    return route, lifetime


def watch_transaction(rpc: KamailioRPC, call_id: str, method: str, *, deadline: float,
                      started: float, interval: float = 0.05, alive=None,
                      appear_within: float | None = None, tick=None,
                      prover: orphan.Prover | None = None, confirm: bool | None = None,
                      early_note: str = "", until: float | None = None) -> Watch:
    """Poll tm.list for CALL_ID/METHOD until the cell is gone, proven orphaned
    (PROVER) or DEADLINE passes.

    `started` is the monotonic time the request was sent (the clock of the
    verdict); `alive()` returns a reason if Kamailio died, which ends the
    watch as an error, never as "clean".  A cell that never shows up within
    `appear_within` seconds ends the watch early (the caller decides whether
    the request reached Kamailio at all).  With CONFIRM (default: the
    policy's) a proven orphan is still watched until the deadline: if it
    leaves, the two verdicts disagree and the watch is an error.  UNTIL
    (seconds after `started`, before the deadline) ends the watch sooner:
    the caller then has no verdict unless the cell left or was proven.
    """
    confirm = POLICY.confirm if confirm is None else confirm
    seen, first_seen, gone_after = False, None, None
    current: list[TmCell] = []
    samples: list[dict] = []
    proof: orphan.Proof | None = None

    def over() -> bool:
        """One look at tm.list: True once the cell is gone (or never came)."""
        nonlocal current, seen, first_seen, gone_after, proof
        if alive is not None:
            reason = alive()
            if reason:
                raise ScenarioError(f"Kamailio died while the {method} was watched: {reason}",
                                    "see the Kamailio log")
        now = time.monotonic() - started
        listed = rpc.tm_list()
        current = cells_for(listed, call_id, method)
        samples.append({"t": round(now, 3), "cells": len(current)})
        if current:
            if not seen:
                seen, first_seen = True, now
            if prover is not None and proof is None:
                proof = prover.observe(now, listed, current)
                if proof is not None and not confirm:
                    return True
        elif seen:
            gone_after = now
            if proof is not None:
                raise ScenarioError(
                    f"the early verdict and the bound disagree: the {method} cell was proven "
                    f"orphaned {proof.at:.1f} s after the {method} ({proof.rule}: {proof.evidence}) "
                    f"but left tm.list {now:.1f} s after it",
                    "this is a bug in kamleak's orphan rule (harness/judging/orphan.py): report it "
                    "with the artifacts; --no-early waits out the bound meanwhile")
            return True
        elif appear_within is not None and now > appear_within:
            return True
        if tick is not None:
            tick(now)
        return False

    try:
        end = deadline if until is None else min(deadline, until)
        poll(over, timeout=max(0.0, end - (time.monotonic() - started)),
             what=f"the {method} cell leaving tm.list", interval=interval, max_interval=interval)
    except WaitTimeout:
        pass                        # the deadline: the cells still listed are the verdict's
    if tick is not None:
        tick(None)
    watched_for = time.monotonic() - started
    confirmed = proof is not None and confirm and bool(current)
    if proof is not None:
        early = (f"orphaned {proof.at:.1f} s after the {method}: {proof.evidence}; the bound "
                 f"({deadline:.1f} s) " + ("was waited out too and agrees" if confirmed
                                         else "was not waited out"))
    elif current and seen and prover is None:
        early = early_note or "no early verdict: waited out the bound"
    elif current and seen:
        why = [n for n in (early_note, prover.last_reason if prover is not None else "") if n]
        early = "not proven orphaned before the bound" + (f" ({'; '.join(why)})" if why else "") \
            + (f"; {'; '.join(prover.notes)}" if prover is not None and prover.notes else "")
    else:
        early = early_note
    return Watch(cells=current, seen=seen, first_seen=first_seen, gone_after=gone_after,
                 watched_for=watched_for, samples=samples, orphan=proof, early=early,
                 confirmed=confirmed)


def watch_cell(kamailio, timers: Timers, baseline: dict, call_id: str, method: str, *,
               deadline: float, started: float, tick=None, until: float | None = None) -> Watch:
    """`watch_transaction` on a running KAMAILIO, with the orphan proof its
    build and config allow (or the bound, said in `Watch.early`)."""
    prover, note = prover_for(kamailio, timers, baseline)
    return watch_transaction(kamailio.rpc, call_id, method, deadline=deadline, started=started,
                             alive=kamailio.death, appear_within=deadline, tick=tick,
                             prover=prover, early_note=note, until=until)


def early_fields(watch: Watch) -> dict:
    """The verdict fields a watch fills about its early verdict."""
    return {"orphan": watch.orphan.as_dict() if watch.orphan else None, "early": watch.early,
            "confirmed": watch.confirmed}


def stats_moved(baseline: dict, after: dict) -> tuple[int, int]:
    """How far tm.stats moved: `current`, and `created - freed` (cells alive)."""
    cur = after.get("current", 0) - baseline.get("current", 0)
    live = (after.get("created", 0) - after.get("freed", 0)) - \
        (baseline.get("created", 0) - baseline.get("freed", 0))
    return cur, live


def stats_settled(rpc: KamailioRPC, baseline: dict, leaked: int, timeout: float) -> tuple[dict, bool, str]:
    """Wait for tm.stats to show exactly LEAKED cells more than the baseline.

    Other transactions of the call (the INVITEs, the triggers' local
    requests) drain within their own lifetime; we poll until `current` is
    back to baseline + leaked or the timeout passes, then report what we saw.
    """
    after: dict = {}

    def settled() -> bool:
        nonlocal after
        after = rpc.tm_stats()
        return stats_moved(baseline, after) == (leaked, leaked)

    try:
        poll(settled, timeout=timeout, what="tm.stats settling", interval=0.1, max_interval=0.1)
        consistent = True
    except WaitTimeout:
        consistent = False
    cur, live = stats_moved(baseline, after)
    if consistent:
        return after, True, (f"current {baseline.get('current', 0)} -> {after.get('current', 0)}, "
                             f"created-freed moved by {live}: matches {leaked} cell(s) left")
    return after, False, (f"current {baseline.get('current', 0)} -> {after.get('current', 0)} "
                          f"and created-freed moved by {live}, expected {leaked}")


def check_post_condition(method: str, cells: list[TmCell], baseline: dict, after: dict,
                         *, deadline: float | None = None, rule: str = "") -> str:
    """The verdict's post-condition: tm.list's cells left and tm.stats must agree.

    Returns the note for the verdict; raises ScenarioError when the two
    witnesses disagree (a cell listed but not counted, or counted but not
    listed): a verdict, LEAK or CLEAN, needs both.
    """
    left = len(cells)
    cur, live = stats_moved(baseline, after)
    counts = (f"current {baseline.get('current', 0)} -> {after.get('current', 0)} "
              f"({cur:+d}), created-freed {live:+d}")
    if cur == left and live == left:
        return f"{counts}: matches the {left} {method} cell(s) tm.list left"
    within = f" {deadline:.1f} s after the {method}" if deadline is not None else ""
    if left > max(cur, live, 0):
        fix = ("the cell was freed after the deadline: the transaction lived longer than the "
               f"timers say ({rule or 'see the verdict timers and their sources'}); does the config "
               "change them at run time (t_set_fr(), t_set_max_lifetime(), cfg.set)?")
    else:
        fix = ("a transaction not in tm.list is still counted (another request, or one the "
               "watch did not match): see tm.list and the tm.stats samples in the artifacts")
    raise ScenarioError(f"tm.list and tm.stats disagree, no verdict: tm.list holds {left} {method} "
                        f"cell(s){within} but tm.stats {counts}", fix)


def post_condition(rpc: KamailioRPC, baseline: dict, cells: list[TmCell], method: str,
                   timers: Timers, deadline: float | None = None,
                   within: float | None = None) -> tuple[dict, str]:
    """Let tm.stats settle (its timeout from the timers), then `check_post_condition`.

    Every transaction verdict goes through here: (tm.stats after, note).  WITHIN (seconds)
    gives up sooner, as a caller cut short does (a reduce probe): then no verdict.
    """
    after, settled, note = stats_settled(rpc, baseline, len(cells), timeout=timers.settle_timeout()
                                         if within is None else within)
    if within is not None and not settled:
        raise ScenarioError(f"no verdict within {within:.1f} s more: tm.stats had not settled ({note}: "
                            f"another transaction of the call still runs)",
                            "a reduce probe gives up there; kamleak gate waits for it")
    return after, check_post_condition(method, cells, baseline, after, deadline=deadline,
                                       rule=timers.rule(method))


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
    from kamleak.harness.probes import memstats

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
