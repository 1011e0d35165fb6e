"""Judge flows by what they left: each flow's cells in tm.list, by its own
Call-IDs.  Clean once they are gone; a LEAK once every cell it left is proven
orphaned (the orphan proof's time rule, which holds under concurrent traffic:
kamleak.harness.judging.orphan) or has outlived its lifetime bound.

Then what else the flow may have left (kamleak.harness.judging.lifetimes has
each bound and the source it rests on): its dialog in `dlg.list` (by Call-ID,
where the config loads the dialog module), its client's WebSocket connection
in `ws.dump` (by the client's port; the client ended it at the flow's end or in
a disconnect step) and its registrar contacts in `ul.dump` (by its AoR, where
the config loads usrloc).  One still listed is *held*, with the time past which
it is a leak; before then it is evidence, never a finding.  Those bounds are
minutes (a deleted dialog: end_timeout + the clean timer; a connection: the
keepalive's), so a campaign rechecks held objects at its later drains
(`recheck`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kamleak.harness.errors import RPCError, ScenarioError
from kamleak.harness.judging import lifetimes, oracle, orphan
from kamleak.harness.probes import state, ws_connections
from kamleak.harness.probes.rpc import RPCCallError, TmCell
from kamleak.harness.tools.explore.drive import FlowRun
from kamleak.harness.tools.explore.flow import DISCONNECTS
from kamleak.harness.wait import WaitTimeout, poll

TM, DIALOG, WS, CONTACT = "tm cell", "dialog", "ws connection", "contact"


@dataclass
class Held:
    """Something a flow left in Kamailio after its end: what, and until when that is allowed."""

    kind: str                    # DIALOG | WS | CONTACT
    key: str                     # dialog h_entry:h_id, "ws:PORT", contact address
    what: str                    # as Kamailio lists it
    shape: str                   # what a leak of it is deduplicated by (state, not ids)
    bound_at: float | None       # monotonic time past which it is a leak; None: nothing bounds it
    why: str                     # the bound and the source it rests on, or why there is none
    seen_at: float = 0.0         # monotonic, the last read that listed it
    leaked: bool = False

    def evidence(self, ended_at: float) -> str:
        after = f"{self.seen_at - ended_at:.1f} s after the flow ended"
        if self.leaked:
            return f"{self.kind} still listed {after}, past its bound: {self.what}; {self.why}"
        bound = "no verdict" if self.bound_at is None else \
            f"its bound is {self.bound_at - ended_at:.0f} s after the flow ended: not waited, no verdict"
        return f"{self.kind} still listed {after} ({self.what}); {self.why}; {bound}"


@dataclass
class Judgement:
    """One flow's verdict: its cells gone, or what it left and why that is a leak."""

    run: FlowRun
    leaked: bool
    cells: list[TmCell]
    proofs: list[str]
    gone_after: float | None
    held: list[Held] = field(default_factory=list)    # listed at the judgement's end
    notes: list[str] = field(default_factory=list)    # checks that could not decide, and why

    @property
    def kind(self) -> str:
        """Which object leaked: a tm cell, or (its cells gone) a held object past its bound."""
        if not self.leaked:
            return ""
        past = [h for h in self.held if h.leaked]
        return past[0].kind if past and not self.cells and self.gone_after is not None else TM

    def signature(self) -> str:
        """What a leak is deduplicated by: the object kind, then the stuck method and
        state (a tm cell) or the object's shape."""
        if not self.leaked:
            return ""
        if self.kind == TM:
            cells = ",".join(sorted({f"{c.method}/out{c.outgoings}/ref{c.ref_count}/t{c.tflags}"
                                     for c in self.cells}))
            return f"{TM}: {cells}"
        return f"{self.kind}: " + ",".join(sorted({h.shape for h in self.held if h.leaked}))

    def evidence(self) -> list[str]:
        """The proofs, then what else the flow left (held objects) and the checks that could not decide."""
        return self.proofs + [h.evidence(self.run.ended_at) for h in self.held if not h.leaked] + self.notes


def judge(kamailio, runs: list[FlowRun], timers: oracle.Timers, *, interval: float = 0.1,
          confirm: bool = False, hold_for: float | None = None) -> list[Judgement]:
    """Watch every run's Call-IDs in tm.list until each is gone or proven orphaned.

    With CONFIRM a proven flow is watched on until its lifetime bound: if its
    cells leave before, the proof was wrong and the judgement is an error.
    Then each flow's held objects are read and watched for HOLD_FOR seconds
    (default: the time proof's wt_timer x1.25 + 0.5 s, in which a dialog follows
    its last cell out); with a HOLD_FOR past their bounds they are waited out."""
    idle = orphan.IdleRuns(timers.wt_timer)
    proofs: dict[int, list[str]] = {}
    done: dict[int, Judgement] = {}

    def look() -> bool:
        now = time.monotonic()
        listed = kamailio.rpc.tm_list()
        cells = {i: [c for c in listed if c.callid in run.call_ids]
                 for i, run in enumerate(runs) if i not in done}
        idle.see(now, [c for mine in cells.values() for c in mine])
        for i, mine in cells.items():
            run = runs[i]
            if not mine:
                if i in proofs:
                    raise ScenarioError(f"explore's orphan proof and the bound disagree: the cells of "
                                        f"{run.flow.text()} left tm.list after {'; '.join(proofs[i])}",
                                        "a bug in kamleak's orphan rule: report it with the flow")
                done[i] = Judgement(run, False, [], [], round(now - run.ended_at, 3))
                continue
            bound = max(timers.deadline_for(c.method) for c in mine)
            if confirm and i in proofs:
                if now - run.ended_at > bound:
                    done[i] = Judgement(run, True, mine, proofs[i] + [
                        f"still there past the lifetime bound {bound:.1f} s: the bound agrees"], None)
            elif all(idle.proven(c, now) for c in mine):
                proofs[i] = [f"{c.method} cell {c.cell}: {idle.evidence(c, now)}" for c in mine]
                if not confirm:
                    done[i] = Judgement(run, True, mine, proofs[i], None)
            elif now - run.ended_at > bound:
                done[i] = Judgement(run, True, mine, [f"{c.method} cell {c.cell} outlived its bound "
                                                      f"{bound:.1f} s" for c in mine], None)
        return len(done) == len(runs)

    longest = max((timers.deadline_for("INVITE"), timers.deadline_for("BYE")))
    try:
        poll(look, timeout=longest + 5, what="the flows' cells leaving tm.list",
             interval=interval, max_interval=interval, abort=kamailio.death)
    except WaitTimeout:
        pass
    judged = [done.get(i) or Judgement(run, True, [], ["not judged before the deadline"], None)
              for i, run in enumerate(runs)]
    objects = Objects(kamailio)
    objects.watch(judged, orphan.time_needed(timers.wt_timer) if hold_for is None else hold_for,
                  interval=interval)
    return judged


class Objects:
    """Reads what flows hold besides cells, and the bounds of each (read once)."""

    def __init__(self, kamailio):
        self.kamailio, self.rpc = kamailio, kamailio.rpc
        self._bounds: lifetimes.Bounds | None = None
        self.notes: list[str] = []

    @property
    def bounds(self) -> lifetimes.Bounds:
        if self._bounds is None:
            self._bounds = lifetimes.read_bounds(self.kamailio)
        return self._bounds

    def read(self) -> tuple[list | None, set | None, list | None]:
        """(dialogs, (proto, port) of WebSocket connections, contacts); None: not served."""
        self.notes = []
        dialogs = state.dialogs(self.rpc)
        if dialogs is None:
            self.notes.append("dialogs not checked: the config loads no dialog module (dlg.list not served)")
        try:
            conns = ws_connections.WsConnections(self.rpc).listed()
        except RPCCallError as exc:
            if not state.not_served(exc):
                raise
            conns = None
            self.notes.append("WebSocket connections not checked: no websocket module (ws.dump not served)")
        contacts = state.contacts(self.rpc)
        if contacts is None:
            self.notes.append("contacts not checked: the config loads no usrloc (ul.dump not served)")
        return dialogs, conns, contacts

    def held(self, run: FlowRun, read, now: float) -> list[Held]:
        """What RUN still holds in READ (at monotonic NOW), each with its bound."""
        dialogs, conns, contacts = read
        out: list[Held] = []
        wall = time.time()
        for d in dialogs or []:
            if d.callid in run.call_ids:
                at, why = self.bounds.dialog(d)
                out.append(Held(DIALOG, d.key, d.describe(), f"{d.state_name}/ref{d.ref}",
                                None if at is None else now + (at - wall), why, now))
        if conns is not None and run.flow.transport in ("ws", "wss"):
            proto = run.flow.transport
            for port in run.ports:
                if (proto, port) in conns:
                    after, why = self.bounds.ws()
                    out.append(Held(WS, f"{proto}:{port}", f"{proto} connection from client port {port}",
                                    proto, None if after is None else run.ended_at + after,
                                    f"the client ended it ({_ended_by(run)}); {why}", now))
        aor = f"u{run.extension}"
        for c in contacts or []:
            if c.aor.split("@", 1)[0] == aor:
                after, why = self.bounds.contact(c)
                unreg = _unregistered(run)
                out.append(Held(CONTACT, c.address, c.describe(),
                                "unregistered" if unreg else "registered",
                                None if after is None else now + after,
                                ("still bound after its unregister got 200; " if unreg else
                                 "registered: it lives until its expiry, even when its connection "
                                 "died; ") + why, now))
        return out

    def watch(self, judged: list[Judgement], hold_for: float, interval: float = 0.1) -> None:
        """Fill each driven flow's held objects, watched up to HOLD_FOR seconds for
        them to leave; one past its bound makes the flow's judgement a leak."""
        mine = [j for j in judged if j.run.error is None and j.run.ended_at]
        if not mine:
            return
        t0 = time.monotonic()

        def gone() -> bool:
            try:
                read = self.read()
            except RPCError:
                return False
            now = time.monotonic()
            for j in mine:
                j.held = self.held(j.run, read, now)
                j.notes = list(self.notes)
                for h in j.held:
                    h.leaked = h.bound_at is not None and now > h.bound_at
            still = [h for j in mine for h in j.held if not h.leaked]
            return not still or now - t0 >= hold_for

        try:
            poll(gone, timeout=max(hold_for, 0.0) + 1.0, what="the flows' dialogs, connections and "
                 "contacts leaving", interval=interval, max_interval=max(interval, 1.0),
                 abort=self.kamailio.death)
        except WaitTimeout:
            pass
        for j in mine:
            past = [h for h in j.held if h.leaked]
            if past and not j.leaked:
                j.leaked = True
                j.proofs = [h.evidence(j.run.ended_at) for h in past]


def recheck(kamailio, held: list[tuple[Judgement, Held]]) -> tuple[list[tuple[Judgement, Held]],
                                                                   list[tuple[Judgement, Held]]]:
    """HELD objects of earlier flows on KAMAILIO, read again: (past their bound and
    still listed: leaks, still held within their bound); the rest are gone."""
    objects = Objects(kamailio)
    read = objects.read()
    now = time.monotonic()
    leaks, still = [], []
    for j, h in held:
        again = next((x for x in objects.held(j.run, read, now) if x.kind == h.kind and x.key == h.key),
                     None)
        if again is None:
            continue
        # The bound was fixed when first seen (a dialog's end_ts does not move).
        again.bound_at = h.bound_at if h.bound_at is not None else again.bound_at
        again.leaked = again.bound_at is not None and now > again.bound_at
        (leaks if again.leaked else still).append((j, again))
    return leaks, still


def _ended_by(run: FlowRun) -> str:
    steps = [s.name for s in run.flow.steps if s.name in DISCONNECTS]
    return f"a {steps[-1]} step" if steps else "closed at the flow's end"


def _unregistered(run: FlowRun) -> bool:
    """The flow's last registrar step was an unregister that got 200."""
    regs = [(s.name, got) for s, got in zip(run.flow.steps, run.steps) if s.name in ("register", "unregister")]
    return bool(regs) and regs[-1] == ("unregister", "200")
