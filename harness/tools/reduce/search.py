"""The search of `kamleak reduce`: delta debugging (ddmin) over removable units,
tolerant of an oracle that is slow and noisy.  Pure: no Kamailio here; the
oracle, the loadability check and the cache key come from the caller.

A state is the set of units removed so far.  Per tier (top-level units, then
statements, then the statements nested in those...) each unit present is first
removed alone, all of them at once (a gate takes seconds, and a chain of one
removal after another is what makes a reducer slow); those that keep the leak
alone are then removed together by ddmin (chunks halved until single units are
left), a removal accepted when the oracle says the leak KEEPS.  One sweep of the
tiers; then each unit left, removed alone, is the cause or goes in another round.
Around that:

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
- parallel: up to `jobs` runs at once, each started the moment a slot is free
  (no batch waits for its slowest run).  ddmin's chunks are decided in order and
  the first that keeps the leak wins, as in picire's parallel ddmin; the slots
  the chunk in question leaves free run the next ones ahead, and their verdicts
  wait in the cache.

Why not picire (PyPI, 21.8) as the library, measured on the seeded oracles of
tests/unit/test_reduce_search.py (docs/reduce.md): its DD needed 152 tests where
this search with its tiers needed 75 (87 confirming each step; 51 since the units
are tried alone first); on the flaky
oracles it stopped on its own assertion (each reduced config must still fail)
in 30 of 30 seeds, as its cache holds PASS/FAIL and nothing for a verdict that
flips; its parallel mode forks a process per test and kills the rest of a
batch's process groups once one test is interesting, which would leave a
probe's Kamailio container and ports behind; and a test is one config at a
time, so `kamailio -c` could not check a round's candidates in one container.
"""

from __future__ import annotations

import enum
import queue
import threading
import time
from collections import Counter
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
    """ORACLE(states) -> [Outcome]: runs the states; the search gives it one at a time, from
    up to JOBS threads at once (it must be thread-safe).
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
        self.flipped: dict[Hashable, State] = {}            # keys re-run once they flipped
        self.flying: Counter = Counter()                    # key -> runs started, not yet recorded
        self.reruns_due: list[State] = []                   # a flipped key's runs for the record
        self.done: queue.Queue = queue.Queue()              # (state, outcome or exception) of ended runs
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

    # -- the runs: JOBS at once, each slot refilled as soon as a run ends ---------------

    def _start(self, state: State) -> None:
        """One run of STATE in a thread of its own (a daemon: after Ctrl-C a run still in a
        gate must not hold the exit; the caller removes its containers)."""
        self._check_budget()
        self.flying[self.key(state)] += 1

        def work() -> None:
            try:
                outcome = self.oracle([state])[0]
            except BaseException as exc:  # noqa: BLE001 - raised again where the search waits
                outcome = exc
            self.done.put((state, outcome))

        threading.Thread(target=work, daemon=True).start()

    def _busy(self) -> int:
        return sum(self.flying.values())

    def _reap(self) -> None:
        """Wait for a run to end; record it and every other that has ended."""
        if not self._busy():
            raise RuntimeError("the search waits for a run it never started")
        got = [self._next_done()]
        while True:
            try:
                got.append(self.done.get_nowait())
            except queue.Empty:
                break
        flips = [f for f in (self._record(state, outcome) for state, outcome in got) if f is not None]
        errors = [o for _, o in got if isinstance(o, BaseException)]
        if errors:
            raise errors[0]
        for state in flips:
            # Unknown from now on: re-run for the record, never a pass or a fail again.
            self.reruns_due += [state] * self.reruns
        self._rerun()

    def _rerun(self) -> None:
        """Start the runs for the record that the free slots take (they go first)."""
        while self.reruns_due and self._busy() < self.jobs:
            self._start(self.reruns_due.pop(0))

    def _next_done(self):
        while True:                     # a timeout, so that Ctrl-C is taken while waiting
            try:
                return self.done.get(timeout=0.5)
            except queue.Empty:
                continue

    def _record(self, state: State, outcome) -> State | None:
        """Count an ended run; STATE if its verdicts just flipped."""
        key = self.key(state)
        self.flying[key] -= 1
        if self.flying[key] <= 0:
            del self.flying[key]
        if isinstance(outcome, BaseException):
            return None
        self.result.runs += 1
        seen = self.seen.setdefault(key, [])
        seen.append(outcome)
        if len(set(seen)) > 1 and key not in self.flipped:
            self.flipped[key] = state
            return state
        return None

    def _run(self, states: list[State]) -> list[Outcome]:
        """Run STATES (repeats allowed), JOBS at a time, and wait until each has a new
        verdict; their outcomes in order.  Runs started ahead (a ddmin round's) go on beside,
        and a run of the same config started elsewhere counts as one of these."""
        keys = [self.key(s) for s in states]
        before = {k: len(self.seen.get(k, [])) for k in keys}
        need = Counter(keys)
        todo = list(states)

        def satisfied() -> bool:
            return not todo and all(len(self.seen.get(k, [])) - before[k] >= n for k, n in need.items())

        while not satisfied():
            self._rerun()
            while todo and self._busy() < self.jobs:
                self._start(todo.pop(0))
            self._reap()
        new = {k: list(self.seen[k][before[k]:]) for k in need}
        return [new[k].pop(0) for k in keys]

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
        or None: refused ones are skipped, cached ones read, the rest decided in order (the
        earlier wins) while the free slots run those after it, then confirm them ahead."""
        refusals = self._refusals(states)
        order = [i for i, why in enumerate(refusals) if why is None]
        for k, i in enumerate(order):
            if self.decided(states[i]) is None:
                while self.decided(states[i]) is None:
                    self._fill([states[j] for j in order[k:]])
                    self._reap()
            else:
                self.result.cached += 1
            if self.decided(states[i]) is Outcome.KEEPS:
                return i
        return None

    def _fill(self, states: list[State]) -> None:
        """Start what STATES (in order) still need, in the slots free: first a run of each
        undecided one, then, for those never run, the confirmations a KEEPS would need."""
        self._rerun()
        pending = list({self.key(s): s for s in reversed(states)
                        if self.decided(s) is None}.items())[::-1]
        for extra in (False, True):
            for key, s in pending:
                want = (self.confirm if not self.seen.get(key) else 0) if extra else self._wanted(s)
                while self.flying[key] < want and self._busy() < self.jobs:
                    self._start(s)
                if self._busy() >= self.jobs:
                    return

    # -- ddmin over one tier ----------------------------------------------------------

    def ddmin(self, units: list) -> bool:
        """Remove what can go of UNITS (all present in self.best); True if anything went.

        Chunks that did not keep the leak are not tried again at their size once another
        removal went, only split (ddmin would start over: a chunk that needed something with
        more of the config present rarely stops needing it with less).  Each unit is so tried
        at most once a size, and what could go only now is found when the cause is asked:
        every unit left removed alone (run()).  Slots a round leaves free try the next
        rounds' halves and quarters ahead (their verdicts are cached for them): the coarser
        chunk still wins when both keep the leak."""
        changed = False
        # A unit whose removal alone Kamailio refuses is not tried in this sweep.
        alone = self._refusals([self.best | {u} for u in units])
        units = [u for u, why in zip(units, alone) if why is None]
        # Each unit removed alone first, all at once: one run each, every slot busy.  Only
        # those that keep the leak so go on to be removed together; a config's units mostly
        # go or stay on their own, so a tier costs its units / JOBS runs' time and a few
        # rounds, not a chain of one removal after another.
        singles = [self.best | {u} for u in units]
        self._run([s for s in singles if self.verdict(s) is None])
        units = [u for u, s in zip(units, singles) if self.verdict(s) is Outcome.KEEPS]
        chunks = [units] if units else []
        tried: set[tuple] = set()           # chunks that did not keep the leak, as they were
        while chunks:
            fresh = [c for c in chunks if tuple(c) not in tried]
            if not fresh:
                if all(len(c) == 1 for c in chunks):
                    break
                chunks = [h for c in chunks for h in _halves(c)]
                continue
            cands, finer = list(fresh), fresh
            while len(cands) < 2 * self.jobs and any(len(c) > 1 for c in finer):
                # The rounds after this one, ahead: a slot is never idle while a round runs.
                finer = [h for c in finer if len(c) > 1 for h in _halves(c)]
                cands += finer[: 2 * self.jobs - len(cands)]
            i = self.first_keeping([self.best | set(c) for c in cands])
            tried.update(tuple(c) for c in fresh[: len(fresh) if i is None else i])
            if i is not None:
                gone = set(cands[i])
                self._accept(self.best | gone)
                changed = True
                chunks = [k for k in ([u for u in c if u not in gone] for c in chunks) if k]
                if len(chunks) == 1 and len(chunks[0]) > 1:
                    chunks = _halves(chunks[0])
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

    def _drain(self) -> None:
        """Wait for every run still going and record it (its Kamailio is then gone)."""
        while self._busy() or self.reruns_due:
            self._rerun()
            self._reap()

    def _end(self, flaky: bool = False, drain: bool = True) -> Result:
        if drain:
            self._drain()
        r = self.result
        r.flaky = flaky
        r.unknown = [(s, sum(o is Outcome.KEEPS for o in self.seen[k]), len(self.seen[k]))
                     for k, s in self.flipped.items()]
        step = self.history[-1]
        r.removed, r.verified = step.state, step.verified
        return r

    def interrupt(self) -> Result:
        """After Ctrl-C: the smallest state found so far, as it stands (maybe not re-verified);
        the runs still going are not waited for."""
        self.result.stopped = "interrupted"
        return self._end(drain=False)


def _halves(chunk: list) -> list[list]:
    if len(chunk) <= 1:
        return [chunk]
    mid = len(chunk) // 2
    return [chunk[:mid], chunk[mid:]]
