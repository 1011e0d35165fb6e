"""Run flows: many at once through one Kamailio (a thread each, driven by
`drive`), then each judged by its own Call-IDs (`judge`)."""

from __future__ import annotations

import threading

from kamleak.harness.judging import oracle
from kamleak.harness.tools.explore.drive import FlowRun, drive
from kamleak.harness.tools.explore.flow import Flow
from kamleak.harness.tools.explore.judge import Judgement, judge


def run_batch(kamailio, pbx, flows: list[Flow], timers: oracle.Timers,
              confirm: bool = False, trace: bool = False) -> list[Judgement]:
    """All FLOWS at once through KAMAILIO, then each judged by its Call-IDs (TRACE: each
    run keeps its client's SIP messages)."""
    runs: list[FlowRun | None] = [None] * len(flows)

    def one(i: int, f: Flow) -> None:
        runs[i] = drive(kamailio, pbx, f, trace=trace)

    threads = [threading.Thread(target=one, args=(i, f), daemon=True) for i, f in enumerate(flows)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    done = [r if r is not None else FlowRun(f, "", error="did not finish in 120 s")
            for r, f in zip(runs, flows)]
    return judge(kamailio, done, timers, confirm=confirm)


def replay(kamailio, pbx, flow: Flow, confirm: bool = False, trace: bool = False) -> Judgement:
    """One flow alone on KAMAILIO, judged: what an emitted regression test runs
    (CONFIRM: the bound waited out too; TRACE: the client's SIP messages kept)."""
    timers = oracle.read_timers(kamailio.rpc, kamailio.config, kamailio.version)
    return run_batch(kamailio, pbx, [flow], timers, confirm=confirm, trace=trace)[0]
