"""A campaign: Hypothesis generates batches of flows, each batch runs on a fresh
Kamailio, a leak fails the example, Hypothesis shrinks it, kamleak confirms it.

Hypothesis is the engine, as its stateful testing is for programs: an
example is a batch of flows run at once through one Kamailio (throughput:
flows are independent and judged by their own Call-IDs); a batch in which a
flow leaks raises `LeakFound`; Hypothesis then shrinks the batch (toward one
flow) and the flow (toward fewer, plainer steps) on its recorded choices,
replaying each candidate on a fresh Kamailio.  Its example database keeps
the failing choices, so a rerun with the same database starts from the
finding.  The minimal flow is then replayed alone N times: a finding that
leaks k < N times is reported as flaky with its rate, never as a sure one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kamleak.harness.judging import oracle
from kamleak.harness.tools.explore import record, trend
from kamleak.harness.tools.explore.flow import Flow
from kamleak.harness.tools.explore.judge import Judgement
from kamleak.harness.tools.explore.mutate import NONE, Mutation
from kamleak.harness.tools.explore.run import run_batch


def _slot_key(flow):
    """A batch's uniqueness key: the flow, or for an empty slot a key equal to no other."""
    return flow if flow is not None else object()


class BudgetSpent(BaseException):
    """The budget ran out: ends Hypothesis's run at once (a BaseException, like
    KeyboardInterrupt, is not a failing example: nothing is shrunk on it)."""


class LeakFound(Exception):
    """A batch left a flow's cells behind (raised inside Hypothesis's test body)."""

    def __init__(self, judgement: Judgement, mutation: Mutation = NONE):
        super().__init__(judgement.signature())
        self.judgement, self.mutation = judgement, mutation


@dataclass
class Finding:
    flow: Flow
    signature: str
    evidence: list[str]
    steps: list[str]                  # what each step got, in the minimal run
    confirmed: int = 0                # replays that leaked the same way
    replays: int = 0
    found_after_flows: int = 0
    found_after_s: float = 0.0
    shrink_runs: int = 0
    mutation: Mutation = NONE         # the config mutation it leaked with (--mutate-config)
    files: dict = field(default_factory=dict, repr=False)   # record.Recording's, of replay files_replay
    files_replay: int = 0

    def replay_files(self) -> dict:
        """record.describe() of the files: why there are none when no replay leaked the same way."""
        why = ("never replayed" if not self.replays else
               "no replay leaked the same way" if not self.confirmed else "not recorded")
        return record.describe(self.files, self.files_replay, why)

    def files_line(self) -> str:
        return record.line(self.replay_files(), f"replay {self.files_replay} of {self.replays} (a fresh Kamailio)")

    @property
    def sure(self) -> bool:
        return self.replays > 0 and self.confirmed == self.replays

    def as_dict(self) -> dict:
        return {"flow": self.flow.to_json(), "signature": self.signature, "evidence": self.evidence,
                "steps": self.steps, "confirmed": self.confirmed, "replays": self.replays,
                "sure": self.sure, "found_after_flows": self.found_after_flows,
                "found_after_s": round(self.found_after_s, 1), "shrink_runs": self.shrink_runs,
                "config_mutation": self.mutation.text(), "replay_files": self.replay_files()}

    def text(self) -> str:
        """What leaked: the flow, and the config mutation when there is one."""
        return (f"config mutation {self.mutation.text()} + flow " if self.mutation else "") + self.flow.text()


@dataclass
class Result:
    flows: int = 0
    batches: int = 0
    harness_errors: int = 0
    elapsed: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    stopped: str = ""                 # why it ended: budget, max flows, a finding, Ctrl-C
    refused: dict = field(default_factory=dict)   # config mutation text -> the build's kamailio -c error
    trend: list = field(default_factory=list)     # trend.TrendFinding: tm, held objects, memory per Kamailio
    trend_notes: list = field(default_factory=list)   # what the per-campaign checks could not decide


class Campaign:
    """START(mutation) -> a fresh running Kamailio on kamleak's config with the
    config Mutation (NONE: as it is); PBX: the running Asterisk.

    An example is (mutation, batch), the mutation drawn first so shrinking takes
    it toward none; without MUTATIONS (--mutate-config) it is always NONE.
    REFUSAL(mutation) (the real `kamailio -c`: None or its error line) rejects
    one the build refuses.  BATCH_SAY takes the line each batch ends with (default:
    SAY; on a terminal the live progress line shows the same counts instead)."""

    def __init__(self, start, pbx, strategy, *, batch: int = 10, budget_s: float = 600.0,
                 max_flows: int | None = None, seed: int | None = None, database=None,
                 replays: int = 3, say=print, mutations=None, refusal=None, batch_say=None):
        self.start, self.pbx, self.strategy = start, pbx, strategy
        self.batch, self.budget_s, self.max_flows = batch, budget_s, max_flows
        self.seed, self.database, self.replays, self.say = seed, database, replays, say
        self.batch_say = batch_say or say
        self.mutations, self.refusal = mutations, refusal
        self.result = Result()
        self.t0 = 0.0
        self.first_failure: tuple[int, float] | None = None
        self.failing_runs = 0             # batches that leaked (run or answered from the cache)
        self.shrink_runs = 0              # batches run after the first leak: the shrink's cost
        self.best: Judgement | None = None
        self.best_mutation = NONE
        self._verdicts: dict = {}         # _key(flow) -> its Judgement (errors are not kept)
        self._kamailio = None             # the Kamailio generation reuses, and for how many batches
        self._timers = None
        self._uses = 0
        self._mutation = NONE       # what the reused Kamailio runs with
        self._series = None         # the reused Kamailio's trend.Series

    def over(self) -> str:
        if time.monotonic() - self.t0 > self.budget_s:
            return "budget"
        if self.max_flows is not None and self.result.flows >= self.max_flows:
            return "max flows"
        return ""

    def run_flows(self, flows: list[Flow], confirm: bool = False, fresh: bool = True,
                  mutation: Mutation = NONE, files: dict | None = None) -> list[Judgement]:
        """FLOWS at once, judged, on kamleak's config with MUTATION.  FRESH: on a
        Kamailio of their own (replays); otherwise on the campaign's, restarted
        every REUSE batches and whenever the mutation changes (flows are judged by
        their own Call-IDs, so earlier batches' leftovers do not count).  FILES: filled
        with the run's logs, SIP trace and pcap (record.Recording; a replay's)."""
        if fresh or self._kamailio is None or self._uses >= self.REUSE or self._kamailio.death() \
                or mutation != self._mutation:
            self._retire()
            self._kamailio = self.start(mutation)
            self._mutation = mutation
            self._timers = oracle.read_timers(self._kamailio.rpc, self._kamailio.config,
                                              self._kamailio.version)
            # The per-campaign checks follow the Kamailio that is reused: a baseline now.
            self._series = None if fresh else trend.Series(self._kamailio, self._timers, say=self.say)
        self._uses += 1
        recording = record.Recording(self._kamailio, self.pbx) if files is not None else None
        judged: list[Judgement] = []
        try:
            judged = run_batch(self._kamailio, self.pbx, flows, self._timers, confirm=confirm,
                               trace=recording is not None)
        finally:
            if recording is not None:       # before the Kamailio stops: its log goes with it
                files.update(recording.finish(judged))
            if fresh:
                self._retire()
            try:
                self.pbx.cli("channel request hangup all")    # calls a flow left up
            except Exception:  # noqa: BLE001 - the next batch starts anyway
                pass
        if not fresh and self._series is not None:
            self.result.trend += self._series.after_batch(flows, judged)    # after the drain
        self.result.flows += len(flows)
        self.result.batches += 1
        self.result.harness_errors += sum(1 for j in judged if j.run.error)
        return judged

    REUSE = 10            # batches on one Kamailio while generating

    def _key(self, flow: Flow, mutation: Mutation):
        """What a cached verdict is for: the flow and the config mutation its Kamailio ran with."""
        return mutation, flow

    def _retire(self) -> None:
        if self._kamailio is not None:
            self._kamailio.stop()
        self._kamailio, self._uses = None, 0
        self._close_series()

    def _close_series(self) -> None:
        """The retired Kamailio's memory trend: a site or process that kept rising
        is replayed on a fresh Kamailio (budget left) before it counts as sure."""
        series, self._series = self._series, None
        if series is None:
            return
        memory = series.memory()
        candidates = series.findings + memory          # tm and held objects were reported as seen
        if candidates and not self.over():
            mutation = self._mutation
            self.say(f"[explore] {len(candidates)} per-campaign finding(s) on one Kamailio; replaying its "
                     f"{len(series.batches)} batches on a fresh one")
            trend.replay(lambda: self.start(mutation), self.pbx, series.batches, candidates, say=self.say)
        for c in candidates if self.over() else ():
            if c.replay is None:
                c.evidence.append("not replayed: the budget was spent")
        self.result.trend += memory
        self.result.trend_notes += [n for n in series.close() if n not in self.result.trend_notes]

    def _body(self, mutation: Mutation, batch: list[Flow | None]) -> None:
        batch = [f for f in batch if f is not None]
        if self.over():
            raise BudgetSpent(self.over())
        if mutation and self.refusal is not None:
            why = self.refusal(mutation)
            if why:
                # The build refuses this config: no batch runs, Hypothesis draws another.
                from hypothesis import reject
                if mutation.text() not in self.result.refused:
                    self.result.refused[mutation.text()] = why
                    self.say(f"[explore] kamailio -c refuses config mutation {mutation.text()}: {why}")
                reject()
        if not batch:
            return
        # Flows are independent and judged alone, so a batch's verdict is its
        # flows' verdicts: a flow judged before is not run again.  Shrinking
        # mostly empties slots around the leaking flow: those candidates cost
        # nothing, and the ones that change a flow run just the changed flow, on
        # a fresh Kamailio once a leak was seen (the design: shrink replays are
        # single flows on a fresh Kamailio).
        new = list(dict.fromkeys(f for f in batch if self._key(f, mutation) not in self._verdicts))
        if new:
            self.shrink_runs += self.failing_runs > 0
            for j in self.run_flows(new, fresh=self.failing_runs > 0, mutation=mutation):
                if j.run.error is None:
                    self._verdicts[self._key(j.run.flow, mutation)] = j
        judged = [self._verdicts[self._key(f, mutation)] for f in batch
                  if self._key(f, mutation) in self._verdicts]
        leaks = [j for j in judged if j.leaked]
        if new:
            self.batch_say(f"[explore] {self.result.flows} flows in {time.monotonic() - self.t0:.0f} s, "
                     f"{len(leaks)} leaked in this batch of {len(batch)}"
                     + (f" (config mutation {mutation.text()})" if self.mutations is not None else ""))
        if leaks:
            self.failing_runs += 1
            if self.first_failure is None:
                self.first_failure = (self.result.flows, time.monotonic() - self.t0)
            smallest = min(leaks, key=lambda j: len(j.run.flow.steps))
            # The smallest failing flow so far: what is confirmed if the budget ends the shrink.
            if self.best is None or (len(smallest.run.flow.steps), len(mutation.points)) < \
                    (len(self.best.run.flow.steps), len(self.best_mutation.points)):
                self.best, self.best_mutation = smallest, mutation
            raise LeakFound(leaks[0], mutation)

    def run(self) -> Result:
        from hypothesis import HealthCheck, Phase, Verbosity, given, settings
        from hypothesis import seed as hseed
        from hypothesis import strategies as st
        from hypothesis.errors import Flaky

        self.t0 = time.monotonic()
        examples = 10**6
        # A batch of exactly `batch` slots, each a flow or empty: shrinking
        # empties slots (the first alternative) down to the one flow that leaks.
        # No flow twice in a batch (an empty slot is never equal to another):
        # Hypothesis's generation repeats flows of earlier batches, and a batch
        # of 30 slots then brought 1.1 flows not judged before; unique, 4.4, and
        # the shrink still ends at one flow in as many runs (measured offline on
        # 300 generated batches and 5 seeded shrinks: docs/explore.md).
        slot = st.one_of(st.none(), self.strategy, self.strategy)
        batches = st.lists(slot, min_size=self.batch, max_size=self.batch, unique_by=_slot_key)
        mutations = self.mutations if self.mutations is not None else st.just(NONE)   # draws nothing
        test = given(mutations, batches)(self._body)
        # @seed under @settings: @seed alone sets database=None, and a seeded
        # campaign (every --shard) then neither saved nor reused its examples.
        if self.seed is not None:
            test = hseed(self.seed)(test)
        test = settings(max_examples=examples, deadline=None, database=self.database,
                        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
                        suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                        print_blob=False, verbosity=Verbosity.quiet)(test)
        try:
            test()
            self.result.stopped = self.over() or "examples"
        except LeakFound as exc:
            self.result.findings.append(self._confirm(exc.judgement, exc.mutation))
            self.result.stopped = "a finding"
        except BudgetSpent as exc:
            self.result.stopped = str(exc)
            if self.best is not None:       # the budget ended the shrink: the smallest so far
                self.say("[explore] the budget ended the shrink; confirming the smallest leaking flow")
                self.result.findings.append(self._confirm(self.best, self.best_mutation))
        except Flaky as exc:
            self.say(f"[explore] Hypothesis could not replay the failing batch: {str(exc)[:200]}")
            self.result.stopped = "flaky"
        finally:
            self._retire()
        self.result.elapsed = time.monotonic() - self.t0
        return self.result

    def _confirm(self, judgement: Judgement, mutation: Mutation = NONE) -> Finding:
        flows_at, secs_at = self.first_failure or (self.result.flows, time.monotonic() - self.t0)
        finding = Finding(judgement.run.flow, judgement.signature(), judgement.evidence(),
                          judgement.run.steps, found_after_flows=flows_at, found_after_s=secs_at,
                          shrink_runs=self.shrink_runs, mutation=mutation)
        self.say(f"[explore] shrunk to {finding.text()}; replaying it alone "
                 f"{self.replays} times on a fresh Kamailio")
        for n in range(self.replays):
            # Replays record their files until one leaks the same way: that one's are kept.
            files = {} if not finding.files else None
            # The first replay also waits out the lifetime bound: the proof must agree with it.
            again = self.run_flows([judgement.run.flow], confirm=n == 0, mutation=mutation, files=files)[0]
            finding.replays += 1
            if again.leaked and again.run.error is None and again.signature() == finding.signature:
                finding.confirmed += 1
                if files:
                    finding.files, finding.files_replay = files, n + 1
        return finding
