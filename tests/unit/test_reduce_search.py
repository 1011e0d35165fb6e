"""kamleak reduce's search on seeded fake ORACLES (not a fake Kamailio): what it
removes, what it never runs, and that a noisy or flaky oracle never makes it end
on a config that does not leak."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kamleak.harness.tools.reduce.search import Outcome, Search

# A config of 20 top-level units (routes, modules) and 80 statements, four in each;
# a statement is gone with its route.
TOP = list(range(20))
CHILDREN = {t: list(range(20 + 4 * t, 24 + 4 * t)) for t in TOP}
PARENT = {c: t for t, cs in CHILDREN.items() for c in cs}
NEEDED = {3, 7, 11, 20 + 4 * 3 + 1, 20 + 4 * 7 + 2, 20 + 4 * 11 + 0, 20 + 4 * 11 + 3}


def present(removed) -> set:
    return {u for u in TOP if u not in removed} | \
        {c for c, p in PARENT.items() if p not in removed and c not in removed}


def tiers(removed):
    here = present(removed)
    return [[u for u in TOP if u in here], [u for u in PARENT if u in here]]


def keeps(removed, needed=NEEDED) -> bool:
    return needed <= present(removed)


def exact_oracle(calls: list):
    def oracle(states):
        calls.extend(states)
        return [Outcome.KEEPS if keeps(s) else Outcome.CLEAN for s in states]
    return oracle


def test_a_deterministic_oracle_is_reduced_to_exactly_what_the_leak_needs_and_the_cause_names_it():
    calls: list = []
    r = Search(exact_oracle(calls), tiers, jobs=3).run()
    assert present(r.removed) == NEEDED
    assert r.verified and not r.flaky and r.stopped == "done"
    # Every unit left is needed: removing it alone makes the leak go (the cause).
    assert set(r.cause) == NEEDED and set(r.cause.values()) == {Outcome.CLEAN}
    assert r.runs == len(calls)
    # The cache: a state runs again only to confirm (2 runs) or re-verify (1 + 3).
    assert max(Counter(calls).values()) <= 4


def test_a_refused_candidate_is_never_run():
    """Unit 5 stands for a module the statements of route 3 need: Kamailio refuses
    any config without 5 while unit 32 (a statement of route 3) is there."""
    needed = NEEDED | {32}

    def loadable(states):
        return ["unknown command" if 5 in s and 32 in present(s) else None for s in states]

    def oracle(states):
        for s in states:
            assert loadable([s]) == [None], "a refused config was run"
        return [Outcome.KEEPS if keeps(s, needed) else Outcome.CLEAN for s in states]

    r = Search(oracle, tiers, loadable=loadable, jobs=2).run()
    assert present(r.removed) == needed | {5}
    assert r.refused > 0


def test_a_unit_freed_by_a_later_tier_goes_when_the_cause_is_asked():
    """Unit 5 stands for a module only statement 34 calls (34: in route 3, which the leak
    needs; 34 itself it does not): 5 cannot go in tier 0, 34 goes in tier 1, and then 5
    alone keeps the leak: the cause step takes it and asks again, so the cause is exactly
    what the leak needs."""
    def loadable(states):
        return ["unknown command" if 5 in s and 34 in present(s) else None for s in states]

    r = Search(exact_oracle([]), tiers, loadable=loadable, jobs=3).run()
    assert present(r.removed) == NEEDED and {5, 34} <= r.removed
    assert set(r.cause) == NEEDED and set(r.cause.values()) == {Outcome.CLEAN}


def test_equal_keys_share_a_verdict():
    """Units 0 and 1 stand for two comments: removing either reads the same to Kamailio."""
    calls: list = []

    def key(state):
        return frozenset(state - {0, 1}) | ({"comment"} if state & {0, 1} else set())

    Search(exact_oracle(calls), tiers, key=key).run()
    assert max(Counter(key(s) for s in calls).values()) <= 4


def flaky_oracle(seed: int, *, flaky_p: float = 0.3, false_p: float = 0.1):
    """The leak is sure with NEEDED and FLAKY present; without a FLAKY unit it leaks in
    FLAKY_P of runs (the silent-vanish kind); without a NEEDED one it still shows in
    FALSE_P of runs (noise the other way)."""
    rng = random.Random(seed)
    flaky = {15, 20 + 4 * 15 + 1}

    def p(removed) -> float:
        if not keeps(removed):
            return false_p
        return 1.0 if flaky <= present(removed) else flaky_p

    def oracle(states):
        return [Outcome.KEEPS if rng.random() < p(s) else Outcome.CLEAN for s in states]
    return oracle, flaky


SEEDS = range(30)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_flaky_oracle_is_never_reduced_to_a_config_that_does_not_leak(seed):
    oracle, flaky = flaky_oracle(seed)
    r = Search(oracle, tiers, jobs=2).run()
    assert not r.flaky and r.verified
    assert NEEDED <= present(r.removed), r.removed


def test_without_the_re_verification_the_same_oracles_do_end_on_configs_that_do_not_leak():
    """The seeds above are hard enough: trusting one run per state is wrong on most."""
    wrong = 0
    for seed in SEEDS:
        oracle, _ = flaky_oracle(seed)
        s = Search(oracle, tiers, jobs=2, confirm=1)
        s.settle = lambda: True           # no re-verification, no backing up
        wrong += not NEEDED <= present(s.run().removed)
    assert wrong > len(SEEDS) // 2


def test_a_flipping_state_is_unknown_rerun_and_never_kept():
    seen: dict = {}

    def oracle(states):
        out = []
        for s in states:
            seen[s] = seen.get(s, 0) + 1
            # Removing unit 0 flips: it keeps the leak on its first run only.
            if 0 in s and keeps(s):
                out.append(Outcome.KEEPS if seen[s] == 1 else Outcome.CLEAN)
            else:
                out.append(Outcome.KEEPS if keeps(s) else Outcome.CLEAN)
        return out

    search = Search(oracle, tiers, verify=2, reruns=3)
    r = search.run()
    assert 0 in present(r.removed) and r.verified
    assert r.unknown, "the flip was not recorded"
    for state, kept, runs in r.unknown:
        assert 0 in state and runs >= 1 + 2 + 3 - 1 and 0 < kept < runs
        assert search.verdict(state) is Outcome.OTHER      # neither pass nor fail: never kept


def rare_oracle(seed: int):
    rng = random.Random(seed)
    return lambda states: [Outcome.KEEPS if rng.random() < 0.1 else Outcome.CLEAN for _ in states]


def test_a_leak_that_does_not_keep_even_in_the_original_is_flaky():
    """One run in ten leaks, whatever is removed: nothing can be stood by."""
    results = []
    for seed in range(10):
        r = Search(rare_oracle(seed), tiers).run()
        results.append(r)
    assert all(r.flaky and not r.verified for r in results)


def test_out_of_budget_it_ends_on_a_verified_state():
    clock = [0.0]

    def oracle(states):
        clock[0] += 10.0                      # every batch costs 10 s
        return [Outcome.KEEPS if keeps(s) else Outcome.CLEAN for s in states]

    r = Search(oracle, tiers, budget_s=200, clock=lambda: clock[0]).run()
    assert r.stopped == "budget" and r.verified and keeps(r.removed)
    assert present(r.removed) != NEEDED          # it had no time to finish


def test_last_units_are_tried_only_once_the_tiers_are_swept_and_join_the_cause():
    """LAST stands for tm's timers: removing them slows every later run, so the tiers
    go first with the timers in place; a timer the leak does not need still goes."""
    timer, needed_timer = 100, 101
    calls: list = []

    def oracle(states):
        calls.extend(states)
        return [Outcome.KEEPS if keeps(s) and needed_timer not in s else Outcome.CLEAN for s in states]

    def last(removed):
        return [u for u in (timer, needed_timer) if u not in removed]

    r = Search(oracle, tiers, last=last, jobs=2).run()
    assert present(r.removed) == NEEDED and timer in r.removed and needed_timer not in r.removed
    first_with_a_timer_gone = next(k for k, s in enumerate(calls) if s & {timer, needed_timer})
    # Every tier unit the leak does not need was gone before any timer was tried.
    assert present(calls[first_with_a_timer_gone]) == NEEDED
    assert r.cause[needed_timer] is Outcome.CLEAN


class Gauge:
    """An oracle that runs as gates do, one state per call from the search's threads, each
    taking a while: how many ran at once, and whether any was still running at the end."""

    def __init__(self, seconds: float = 0.01):
        import threading
        self.lock, self.seconds = threading.Lock(), seconds
        self.now = self.most = self.calls = 0

    def __call__(self, states):
        import time
        with self.lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
        time.sleep(self.seconds)
        with self.lock:
            self.now -= 1
        return [Outcome.KEEPS if keeps(s) else Outcome.CLEAN for s in states]


def test_runs_go_jobs_at_once_and_none_is_left_running():
    gauge = Gauge()
    r = Search(gauge, tiers, jobs=4).run()
    assert present(r.removed) == NEEDED and r.runs == gauge.calls
    assert gauge.most == 4, "the slots were never all busy"
    assert gauge.now == 0, "a run was still going when the search returned"


def test_each_unit_is_tried_alone_before_any_removal_is_accepted():
    """The units of a tier go alone first (one run each, all at once), and only those
    that keep the leak so are removed together: no chain of one removal after another."""
    calls: list = []
    Search(exact_oracle(calls), tiers, jobs=4).run()
    first_tier = [s for s in calls if s][:len(TOP)]     # after the original's re-verification
    assert sorted(len(s) for s in first_tier) == [1] * len(TOP)
    assert {next(iter(s)) for s in first_tier} == set(TOP)


def test_an_oracle_that_fails_fails_the_search():
    def oracle(states):
        raise RuntimeError("the probe broke")

    with pytest.raises(RuntimeError, match="the probe broke"):
        Search(oracle, tiers, jobs=2).run()


def test_a_flaky_oracle_never_runs_more_than_jobs_at_once():
    """Runs for the record (a key that flipped) wait for a free slot like any other."""
    import random as rnd

    class FlakyGauge(Gauge):
        def __init__(self):
            super().__init__(0.002)
            self.rng = rnd.Random(5)

        def __call__(self, states):
            out = super().__call__(states)
            with self.lock:
                flip = self.rng.random() < 0.2
            return [Outcome.CLEAN if flip else o for o in out]

    gauge = FlakyGauge()
    r = Search(gauge, tiers, jobs=3).run()
    assert r.unknown, "nothing flipped: the test shows nothing"
    assert gauge.most <= 3 and gauge.now == 0
