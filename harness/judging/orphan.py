"""The orphan proof: a transaction that no timer and no process will ever release.

The lifetime bound (oracle.Timers.deadline_for) waits until a healthy cell
must have gone.  Kamailio's own state says much earlier when a cell is
orphaned.  The rules below were read in tm's source at upstream 5.8.0 ..
master (line numbers at 5.8.5 / master; the functions they cite are
unchanged across that range but for cosmetic commits: SPDX headers,
flags made int, a NULL check in the FR handler) and measured on Debian's
5.6.3, 6.0.1 and 6.1.5 and upstream 5.8.5 and master (docs/early-verdict.md: `make
agreement`; every gate test holds it too, tests/gate/matrix.assert_early).

An *idle* cell: a non-INVITE cell with `outgoings 0`, `ref_count 1`, neither
suspended nor in agony (tm.list: t_stats.c:290/292 prints nr_of_outgoings,
ref_count and flags).

* ref_count 1 is the hash table's own reference: every process handling a
  cell holds another (h_table.h:356/361, REF() on every lookup).  Timers
  hold none.
* outgoings 0: no branch, so no retransmission or final-response timer
  (they live in the branches, uac[i].request).  A suspended transaction
  has a blind branch (t_suspend.c:99/101), so it is never idle.
* not an INVITE: a negative final reply to an INVITE is retransmitted
  until the ACK by a timer of the cell's own (t_reply.c start_final_repl_retr()).

An idle cell is either on the wait timer (then it leaves the hash table at
the first expiry, wt_timer later: t_funcs.c:152/137 timer_add(wait_timer),
timer.c:614/622 wait_handler() removes a cell nobody else references) or
orphaned: nothing will ever touch it but `tm.clean`.  Two proofs that it is
not on the wait timer:

* **count** (at once): tm.stats `current - waiting` counts cells never put on
  the wait timer (t_stats.c:125-126/127-128: current = transactions - deleted,
  waiting = waiting - deleted; t_stats.h:110/112: waiting++ once per cell,
  t_funcs.c:152/137).  From an idle baseline (tm.list empty), if that count
  moved by exactly the number of cells tm.list holds, in a tm.stats read
  between two equal tm.list reads whose size matches `current`, no listed
  cell is on the wait timer.  It rests on every deletion having gone
  through the wait timer.  The exceptions are a local request dropped in
  event_route[tm:local-request] or failing to build (uac.c:639/700, E_DROP at
  uac.c:561/617), a CANCEL that failed to send (t_cancel.c:590/609) and
  tm.clean (h_table.c:152/154): a config with that event route, or a tm
  error from uac.c/t_cancel.c in Kamailio's log, disables the count.
* **time** (one wait_timer later): the same cell seen idle without a break
  for longer than wt_timer x 1.25 + 0.5 s was not on the wait timer when it
  became idle, and an idle cell cannot be put on it later (no process and no
  timer holds it).

A cell whose branch failed to send keeps `outgoings 1` (t_fwd.c
t_send_branch(): the branch is disabled with last_received 408 and no timer
started; the report's 477 path, `advertise` sockets), and tm.list cannot
tell that branch from a live one.  One more proof covers it:

* **life** (at the cell's end of life): every branch's FR timer is clipped to
  the cell's end_of_life, creation + max_noninv_lifetime (timer.h:196-200
  at 5.8.5, _set_fr_retr(); its expiry makes the 408 and puts the cell on
  the wait timer, timer.c final_response_handler()).  A non-INVITE cell
  with ref_count 1 watched for longer than max_noninv_lifetime x 1.25 +
  0.5 s and still not on the wait timer by the count has no timer left.
  A config that moves end_of_life at run time (t_set_max_lifetime())
  disables it.

Where neither rests on knowledge (an image or a binary kamleak did not
build), the oracle falls back to the bound and says so.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from kamleak.harness.probes.rpc import TmCell

T_IN_AGONY = 1 << 5
T_ADMIN_REPLY = 1 << 14
T_ASYNC_SUSPENDED = 1 << 15

# The time proof's margin over wt_timer: tm's timer ticks 1/16 s on a timer
# process that may lag, the wait list is the fast one (timer.h F_TIMER_FAST).
TIME_FACTOR = 1.25
TIME_MARGIN_S = 0.5

# tm's errors on the paths that delete a cell without the wait timer.
_UNWAITED_DELETE = re.compile(r"(ERROR|CRITICAL|BUG)\b.*\btm \[(uac|t_cancel)\.c:")


def time_needed(wt_ms: int) -> float:
    """Seconds a cell must stay idle, without a break, to be proven off the wait timer."""
    return wt_ms / 1000.0 * TIME_FACTOR + TIME_MARGIN_S


def held_by_branches(cell: TmCell) -> bool:
    """Non-INVITE, ref_count 1, branches only (their FR timers end at end_of_life)."""
    return (cell.method != "INVITE" and cell.outgoings > 0 and cell.ref_count == 1
            and not cell.tflags & (T_IN_AGONY | T_ASYNC_SUSPENDED))


def idle(cell: TmCell) -> bool:
    """No process, no branch and no reply timer holds this cell (see the module doc)."""
    return (cell.method != "INVITE" and cell.outgoings == 0 and cell.ref_count == 1
            and not cell.tflags & (T_IN_AGONY | T_ASYNC_SUSPENDED))


def why_not_idle(cell: TmCell) -> str:
    if cell.method == "INVITE":
        return "an INVITE (its reply timer may still run)"
    if cell.outgoings:
        return f"outgoings {cell.outgoings} (a branch, with its timers)"
    if cell.ref_count != 1:
        return f"ref_count {cell.ref_count} (a process holds it)"
    return f"tflags {cell.tflags} (suspended or in agony)"


class IdleRuns:
    """The time proof's clock: per cell, since when it has been seen idle without a
    break.  `see()` is given every cell a watch follows at one read; a cell seen
    busy, or no longer given, starts again."""

    def __init__(self, wt_ms: int):
        self.wt_ms = wt_ms
        self.since: dict[str, float] = {}

    def see(self, now: float, cells: list[TmCell]) -> None:
        idle_now = {c.cell for c in cells if idle(c)}
        for key in list(self.since):
            if key not in idle_now:
                del self.since[key]
        for key in idle_now:
            self.since.setdefault(key, now)

    def idle_for(self, cell: TmCell, now: float) -> float:
        return now - self.since[cell.cell] if cell.cell in self.since else 0.0

    def proven(self, cell: TmCell, now: float) -> bool:
        return cell.cell in self.since and self.idle_for(cell, now) >= time_needed(self.wt_ms)

    def evidence(self, cell: TmCell, now: float) -> str:
        return (f"outgoings 0, ref_count 1, idle for {self.idle_for(cell, now):.1f} s: longer than "
                f"wt_timer {self.wt_ms} ms x{TIME_FACTOR:g} + {TIME_MARGIN_S:g} s, so not on the "
                "wait timer")


@dataclass
class Proof:
    """When and how a cell was proven orphaned (seconds on the watch's clock)."""

    at: float
    rule: str                 # "count" | "time"
    evidence: str             # what was read, as the report quotes it
    cell: str                 # tm.list's cell pointer

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Applicability:
    """Which proofs hold for a Kamailio and config; a reason where one does not."""

    time: str | None = None     # None: the time proof holds
    count: str | None = None    # None: the count proof holds
    life: str | None = None     # None: the life proof holds (it needs the count too)

    @property
    def decisive(self) -> bool:
        return self.time is None or self.count is None

    @property
    def fallback(self) -> str | None:
        """Why the oracle waits out the bound, or None."""
        return None if self.decisive else (self.time or self.count)


def applicability(provenance, *, local_request_route: bool = False, sets_lifetime: bool = False,
                  baseline: dict | None = None) -> Applicability:
    """What PROVENANCE (knowledge.Provenance), the config (whether it has an
    active event_route[tm:local-request]) and the tm.stats BASELINE allow."""
    kind = getattr(provenance, "kind", "unknown")
    if kind == "unknown":
        label = getattr(provenance, "label", "") or "this build"
        why = (f"no early verdict for {label}: kamleak read tm's rules in upstream's source and "
               "measured them on the builds it makes, not on this one; waiting out the bound")
        return Applicability(time=why, count=why, life=why)
    count = None
    if local_request_route:
        count = ("the config has event_route[tm:local-request]: a request dropped there leaves tm "
                 "without passing the wait timer (uac.c), so tm.stats waiting cannot prove it")
    elif baseline is not None and baseline.get("current", 0) != 0:
        count = f"tm.list was not empty before the call (current {baseline.get('current')})"
    life = count
    if life is None and sets_lifetime:
        life = "the config calls t_set_max_lifetime(): a cell's end of life is not the timers'"
    return Applicability(time=None, count=count, life=life)


class Prover:
    """Fed each tm.list read of a watch; returns a Proof once the cell is orphaned.

    `wt_ms` is the wait timer as Kamailio runs it; `baseline` tm.stats before
    the call; `log()` Kamailio's log (read once, when the count would decide).
    """

    def __init__(self, rpc, *, wt_ms: int, baseline: dict, applicable: Applicability, log=None,
                 max_noninv_ms: int | None = None):
        self.rpc, self.wt_ms, self.baseline = rpc, wt_ms, baseline
        self.max_noninv_ms = max_noninv_ms
        self.first_seen: dict[str, float] = {}      # cell -> first time listed
        self.applicable, self.log = applicable, log
        self.idle = IdleRuns(wt_ms)
        self.notes: list[str] = []                 # why the count did not decide, once each
        self.last_reason = ""                      # why the last read proved nothing

    @property
    def time_needed(self) -> float:
        return time_needed(self.wt_ms)

    def observe(self, now: float, listed: list[TmCell], watched: list[TmCell]) -> Proof | None:
        if not self.applicable.decisive:
            return None
        for c in watched:
            self.first_seen.setdefault(c.cell, now)
        life = self._life(now, listed, watched)
        if life is not None:
            return life
        self.idle.see(now, watched)
        cells = [c for c in watched if idle(c)]
        if not cells or len(cells) != len(watched):
            busy = next((c for c in watched if not idle(c)), None)
            self.last_reason = why_not_idle(busy) if busy is not None else ""
            return None
        self.last_reason = "idle, not yet proven off the wait timer"
        cell = cells[0]
        if self.applicable.count is None:
            proof = self._count(now, listed, cell)
            if proof:
                return proof
        if self.applicable.time is None and self.idle.proven(cell, now):
            return Proof(at=round(now, 3), rule="time", cell=cell.cell,
                         evidence=self.idle.evidence(cell, now))
        return None

    def life_needed(self) -> float | None:
        if self.max_noninv_ms is None:
            return None
        return self.max_noninv_ms / 1000.0 * TIME_FACTOR + TIME_MARGIN_S

    def _life(self, now: float, listed: list[TmCell], watched: list[TmCell]) -> Proof | None:
        """Past its end of life, a branch-held cell off the wait timer has no timer left."""
        need = self.life_needed()
        if need is None or self.applicable.life is not None or self.applicable.count is not None:
            return None
        cell = watched[0]
        if len(watched) != 1 or not held_by_branches(cell):
            return None
        age = now - self.first_seen[cell.cell]
        if age < need:
            return None
        count = self._count(now, listed, cell)
        if count is None:
            return None
        return Proof(at=round(now, 3), rule="life", cell=cell.cell, evidence=(
            f"outgoings {cell.outgoings} (a branch whose send failed keeps no timer), ref_count 1, "
            f"watched {age:.1f} s: past its end of life (max_noninv_lifetime {self.max_noninv_ms} ms "
            f"x{TIME_FACTOR:g} + {TIME_MARGIN_S:g} s, where every branch's FR timer ends) and "
            f"still not on the wait timer ({count.evidence.split(': ', 1)[-1]})"))

    def _count(self, now: float, listed: list[TmCell], cell: TmCell) -> Proof | None:
        stats = self.rpc.tm_stats()
        again = self.rpc.tm_list()
        ids = sorted((c.cell, c.tlabel) for c in listed)
        if ids != sorted((c.cell, c.tlabel) for c in again):
            return None                 # tm.list moved under the read: try the next one
        base = self.baseline
        current = stats.get("current", 0) - base.get("current", 0)
        unwaited = (stats.get("current", 0) - stats.get("waiting", 0)) - \
            (base.get("current", 0) - base.get("waiting", 0))
        if current != len(listed) or unwaited != len(listed):
            return None
        if self.log is not None:
            hit = next((ln for ln in self.log().splitlines() if _UNWAITED_DELETE.search(ln)), None)
            if hit:
                note = f"count disabled: tm deleted a cell without the wait timer ({hit.strip()[:90]})"
                if note not in self.notes:
                    self.notes.append(note)
                self.applicable = Applicability(time=self.applicable.time, count=note)
                return None
        return Proof(at=round(now, 3), rule="count", cell=cell.cell, evidence=(
            f"outgoings 0, ref_count 1, not on the wait timer: tm.stats current-waiting "
            f"{unwaited:+d} since the call began = the {len(listed)} cell(s) tm.list holds"))
