"""The search of `kamleak reduce`: delta debugging (ddmin) over removable units,
tolerant of an oracle that is slow and noisy.  Pure: no Kamailio here; the
oracle, the loadability check and the cache key come from the caller.

A state is the set of units removed so far.  Per tier (top-level units, then
statements, then the statements nested in those...) ddmin removes chunks of
the units present, halving them until single units are left, and accepts a
removal when the oracle says the leak KEEPS; the tiers are swept again until
a sweep removes nothing.  Around that:

- a verdict cache keyed by what Kamailio would read (`key`), so the same
  config reached by other removals is not run twice;
- `loadable` first: a candidate Kamailio would refuse (`kamailio -c`, the
  gate's contract) is never run; a unit whose removal alone is refused is not
  tried in that sweep;
- noise: each key keeps every verdict observed.  A removal is accepted on
  `confirm` runs that all keep the leak.  A key whose verdicts differ is
  UNKNOWN: it is re-run `reruns` times for the record and never taken as a pass
  or a fail again (to the search it does not keep the leak, so nothing is
  removed on its word).  The original is re-verified first (`verify` more runs,
  all must keep the leak: else the result is `flaky`, nothing to stand by), and
  so is the state each tier ends on; when that fails, the search goes back to
  the last verified state and doubts the steps since.  A flaky leak is never
  reduced to a config that does not leak.
- parallel: candidates go to the oracle in batches of `jobs` (ddmin's chunks in
  order; the first that keeps the leak wins, as in picire's parallel ddmin).

Why not picire (PyPI, 21.8) as the library, measured on the seeded oracles of
tests/unit/test_reduce_search.py (docs/reduce.md): its DD needed 152 tests where
this search with its tiers needs 75 (87 confirming each step); on the flaky
oracles it stopped on its own assertion (each reduced config must still fail)
in 30 of 30 seeds, as its cache holds PASS/FAIL and nothing for a verdict that
flips; its parallel mode forks a process per test and kills the rest of a
batch's process groups once one test is interesting, which would leave a
probe's Kamailio container and ports behind; and a test is one config at a
time, so `kamailio -c` could not check a round's candidates in one container.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field


class Outcome(enum.Enum):
    KEEPS = "keeps"        # the leak, with the kept signature
    CLEAN = "clean"        # no leak: the gate's CLEAN
    OTHER = "other"        # another leak, or no verdict (the call could not be set up...)


class Stopped(Exception):
    """The budget ran out or the user interrupted: the search ends with what it has."""


State = frozenset


@dataclass
class Step:
    state: State
    verified: bool = False


@dataclass
class Result:
    removed: State                  # the smallest state the search stands by
    verified: bool                  # re-run `verify` times, every run kept the leak
    flaky: bool = False             # not even the original kept its leak when re-run
    stopped: str = "done"           # "done" | "budget" | "interrupted"
    runs: int = 0                   # oracle runs
    refused: int = 0                # configs `loadable` refused (never run)
    cached: int = 0                 # candidates answered from the cache
    unknown: list[tuple[State, int, int]] = field(default_factory=list)   # (state, kept, runs)
    cause: dict = field(default_factory=dict)     # unit -> Outcome of removing it from `removed`


class Search:
    """ORACLE(states) -> [Outcome]: runs the states (at most JOBS, at once).
    LOADABLE(states) -> [None | why]: would Kamailio take them (cheap, batched).
    KEY(state) -> hashable: what Kamailio reads; equal keys share verdicts.
    TIERS(state) -> [[unit]]: the removable units present in STATE, tier by tier.
    LAST(state) -> [unit]: units tried once the tiers are swept (what slows every run down
    once removed, as tm's timers do: a shorter search on fast runs, a few slow ones last)."""

    def __init__(self, oracle: Callable[[list[State]], list[Outcome]], tiers: Callable[[State], list[list]],
                 *, last: Callable[[State], list] | None = None,
                 loadable: Callable[[list[State]], list[str | None]] | None = None,
                 key: Callable[[State], Hashable] | None = None, jobs: int = 1, confirm: int = 2,
                 verify: int = 3,
                 reruns: int = 3, budget_s: float | None = None, clock=time.monotonic,
                 on_step: Callable[[Search], None] | None = None):
        self.oracle, self.tiers = oracle, tiers
        self.last = last or (lambda state: [])
        self.loadable = loadable or (lambda states: [None] * len(states))
        self.key = key or (lambda s: s)
        self.jobs, self.verify_runs, self.reruns = max(1, jobs), max(1, verify), reruns
        self.confirm = max(1, confirm)
        self.clock = clock
        self.deadline = clock() + budget_s if budget_s else None
        self.on_step = on_step
        self.seen: dict[Hashable, list[Outcome]] = {}      # key -> every outcome observed
        self.refusal: dict[Hashable, str | None] = {}
        self.doubt: set[Hashable] = set()                   # keys whose one run is not enough
        self.flipped: set[Hashable] = set()                 # keys re-run once they flipped
        self.history: list[Step] = [Step(State())]
        self.result = Result(State(), verified=False)

    # -- the verdict of one state ------------------------------------------------

    @property
    def best(self) -> State:
        return self.history[-1].state

    def verdict(self, state: State) -> Outcome | None:
        """What the cache says: an Outcome, OTHER for an unknown (flipping) key, None if never run."""
        key = self.key(state)
        seen = self.seen.get(key)
        if not seen or (key in self.doubt and len(seen) < 2):
            return None
        return seen[0] if all(o is seen[0] for o in seen) else Outcome.OTHER

    def unknown(self, state: State) -> bool:
        seen = self.seen.get(self.key(state), [])
        return len(set(seen)) > 1

    def _refusals(self, states: list[State]) -> list[str | None]:
        keys = [self.key(s) for s in states]
        todo = {k: s for k, s in zip(keys, states) if k not in self.refusal}
        if todo:
            for k, why in zip(todo, self.loadable(list(todo.values()))):
                self.refusal[k] = why
                self.result.refused += why is not None
        return [self.refusal[k] for k in keys]

    def _run(self, states: list[State]) -> list[Outcome]:
        """Run STATES (repeats allowed) through the oracle, JOBS at a time; record every verdict."""
        out: list[Outcome] = []
        for i in range(0, len(states), self.jobs):
            self._check_budget()
            batch = states[i:i + self.jobs]
            outcomes = self.oracle(batch)
            self.result.runs += len(batch)
            flipped = {}
            for s, o in zip(batch, outcomes):
                seen = self.seen.setdefault(self.key(s), [])
                seen.append(o)
                if len(set(seen)) > 1 and self.key(s) not in self.flipped:
                    flipped[self.key(s)] = s
            out += outcomes
            for key, s in flipped.items():
                # Unknown from now on: re-run for the record, never a pass or a fail again.
                self.flipped.add(key)
                self._run([s] * self.reruns)
                seen = self.seen[key]
                self.result.unknown.append((s, sum(o is Outcome.KEEPS for o in seen), len(seen)))
        return out

    def _check_budget(self) -> None:
        if self.deadline is not None and self.clock() >= self.deadline:
            raise Stopped("budget")

    def observe(self, state: State, outcome: Outcome) -> None:
        """A verdict got elsewhere (the first run of the original) counts as a run of STATE."""
        self.seen.setdefault(self.key(state), []).append(outcome)

    def decided(self, state: State) -> Outcome | None:
        """The cache's verdict once it may be acted on: a KEEPS needs CONFIRM runs."""
        v = self.verdict(state)
        if v is Outcome.KEEPS and len(self.seen[self.key(state)]) < self.confirm:
            return None
        return v

    def _wanted(self, state: State) -> int:
        """Runs STATE still needs before it is decided: 1 if never run, else its confirmations."""
        v = self.verdict(state)      # None: never run, or doubted and not run again yet
        if v is None:
            return 1
        return max(0, self.confirm - len(self.seen[self.key(state)])) if v is Outcome.KEEPS else 0

    def first_keeping(self, states: list[State]) -> int | None:
        """The index of the first of STATES that keeps the leak (CONFIRM runs, all keeping),
        or None: refused ones are skipped, cached ones read, the rest run JOBS at a time in
        order (the earlier wins).  Slots a batch leaves free confirm its candidates ahead."""
        refusals = self._refusals(states)
        order = [i for i, why in enumerate(refusals) if why is None]
        for k, i in enumerate(order):
            if self.decided(states[i]) is None:
                while self.decided(states[i]) is None:
                    batch: list[State] = []
                    pending = list(dict.fromkeys(self.key(states[j]) for j in order[k:]
                                                 if self.decided(states[j]) is None))
                    by_key = {self.key(states[j]): states[j] for j in order[k:]}
                    for key in pending:
                        batch += [by_key[key]] * min(self._wanted(by_key[key]), self.jobs - len(batch))
                    for key in pending:     # speculative confirmations in the free slots
                        if len(batch) >= self.jobs:
                            break
                        if not self.seen.get(key):
                            batch += [by_key[key]] * min(self.confirm - 1, self.jobs - len(batch))
                    self._run(batch[: self.jobs])
            else:
                self.result.cached += 1
            if self.decided(states[i]) is Outcome.KEEPS:
                return i
        return None

    # -- ddmin over one tier ----------------------------------------------------------

    def ddmin(self, units: list) -> bool:
        """Remove what can go of UNITS (all present in self.best); True if anything went.
        Slots a round of chunks leaves free try the next round's halves ahead (their
        verdicts are cached for it): the coarser chunk still wins when both keep the leak."""
        changed = False
        # A unit whose removal alone Kamailio refuses is not tried in this sweep.
        alone = self._refusals([self.best | {u} for u in units])
        units = [u for u, why in zip(units, alone) if why is None]
        chunks = [units] if units else []
        while chunks:
            cands = list(chunks)
            if len(cands) < self.jobs:
                cands += [h for c in chunks if len(c) > 1 for h in _halves(c)][: self.jobs - len(cands)]
            i = self.first_keeping([self.best | set(c) for c in cands])
            if i is not None:
                gone = set(cands[i])
                self._accept(self.best | gone)
                changed = True
                chunks = [k for k in ([u for u in c if u not in gone] for c in chunks) if k]
                if len(chunks) == 1 and len(chunks[0]) > 1:
                    chunks = _halves(chunks[0])
                continue
            if all(len(c) == 1 for c in chunks):
                break
            chunks = [h for c in chunks for h in _halves(c)]
        return changed

    def _accept(self, state: State) -> None:
        self.history.append(Step(state))
        if self.on_step:
            self.on_step(self)

    # -- verification and backing up --------------------------------------------------

    def verify(self, state: State) -> bool:
        """Re-run STATE until it has VERIFY runs of its own; every run must keep the leak.
        A state whose runs differ is unknown: re-run RERUNS times for the record."""
        have = len(self.seen.get(self.key(state), []))
        if have < self.verify_runs + 1 and not self.unknown(state):
            self._run([state] * (self.verify_runs + 1 - have))
        return self.verdict(state) is Outcome.KEEPS and not self.unknown(state)

    def settle(self) -> bool:
        """The newest state must verify.  When it does not, one of the steps since the last
        verified state took a chance run for the leak: back to that state, and each dropped
        step's runs are doubted (run again before they count; a verdict that differs makes
        it unknown).  Walking back one step at a time instead gives every dropped state a
        chance of its own to pass.  False if not even the original verifies."""
        step = self.history[-1]
        if step.verified or self.verify(step.state):
            step.verified = True
            return True
        while not self.history[-1].verified and len(self.history) > 1:
            self.doubt.add(self.key(self.history.pop().state))
        if self.on_step:
            self.on_step(self)
        step = self.history[-1]
        if step.verified or self.verify(step.state):
            step.verified = True
            return True
        return False

    # -- the whole search -----------------------------------------------------------------

    def run(self) -> Result:
        """One sweep of the tiers, each tier's end re-verified; then the cause: every unit
        left, removed alone.  A unit whose removal alone still keeps the leak (a module
        whose callers went in a later tier...) is not needed after all: those go by ddmin
        and the cause is asked again, which is the sweep a second pass of the tiers would
        make, at one run a unit.  Out of budget: the newest state that verifies (Ctrl-C:
        interrupt())."""
        try:
            # The original first: a leak that does not keep there cannot be reduced.
            if not self.settle():
                return self._end(flaky=True)
            depth = 0
            while depth < len(tiers := self.tiers(self.best)):
                if tiers[depth] and self.ddmin(list(tiers[depth])) and not self.settle():
                    return self._end(flaky=True)
                depth += 1
            if (last := self.last(self.best)) and self.ddmin(list(last)) and not self.settle():
                return self._end(flaky=True)
            while True:
                self.cause()
                spare = [u for u, o in self.result.cause.items() if o is Outcome.KEEPS]
                if not spare or not self.ddmin(spare):
                    break
                if not self.settle():
                    return self._end(flaky=True)
            if not self.settle():
                return self._end(flaky=True)
        except Stopped as stop:
            # Out of budget: what was found is still re-verified (a few runs past the budget).
            self.result.stopped = str(stop)
            self.result.cause = {}
            self.deadline = None
            if not self.settle():
                return self._end(flaky=True)
        return self._end()

    def cause(self) -> None:
        """Each unit left in the final state, removed alone: does the leak go?"""
        units = [u for tier in self.tiers(self.best) for u in tier] + list(self.last(self.best))
        states = [self.best | {u} for u in units]
        refusals = self._refusals(states)
        runnable = [(u, s) for u, s, why in zip(units, states, refusals) if why is None]
        todo = [s for _, s in runnable if self.verdict(s) is None]
        self._run(todo)
        self.result.cause = {u: self.verdict(s) for u, s in runnable}

    def _end(self, flaky: bool = False) -> Result:
        r = self.result
        r.flaky = flaky
        step = self.history[-1]
        r.removed, r.verified = step.state, step.verified
        return r

    def interrupt(self) -> Result:
        """After Ctrl-C: the smallest state found so far, as it stands (maybe not re-verified)."""
        self.result.stopped = "interrupted"
        return self._end()


def _halves(chunk: list) -> list[list]:
    if len(chunk) <= 1:
        return [chunk]
    mid = len(chunk) // 2
    return [chunk[:mid], chunk[mid:]]
