"""Judge flows by what they left: each flow's cells in tm.list, by its own
Call-IDs.  Clean once they are gone; a LEAK once every cell it left is proven
orphaned (the orphan proof's time rule, which holds under concurrent traffic:
kamleak.harness.judging.orphan) or has outlived its lifetime bound."""

from __future__ import annotations

import time
from dataclasses import dataclass

from kamleak.harness.errors import ScenarioError
from kamleak.harness.judging import oracle, orphan
from kamleak.harness.probes.rpc import TmCell
from kamleak.harness.tools.explore.drive import FlowRun
from kamleak.harness.wait import WaitTimeout, poll


@dataclass
class Judgement:
    """One flow's verdict: its cells gone, or what it left and why that is a leak."""

    run: FlowRun
    leaked: bool
    cells: list[TmCell]
    proofs: list[str]
    gone_after: float | None

    def signature(self) -> str:
        """What a leak is deduplicated by: the stuck method and state, the steps' answers' shape."""
        if not self.leaked:
            return ""
        cells = ",".join(sorted({f"{c.method}/out{c.outgoings}/ref{c.ref_count}/t{c.tflags}"
                                 for c in self.cells}))
        return cells


def judge(kamailio, runs: list[FlowRun], timers: oracle.Timers, *, interval: float = 0.1,
          confirm: bool = False) -> list[Judgement]:
    """Watch every run's Call-IDs in tm.list until each is gone or proven orphaned.

    With CONFIRM a proven flow is watched on until its lifetime bound: if its
    cells leave before, the proof was wrong and the judgement is an error."""
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
    return [done.get(i) or Judgement(run, True, [], ["not judged before the deadline"], None)
            for i, run in enumerate(runs)]


