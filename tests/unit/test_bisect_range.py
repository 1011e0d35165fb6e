"""Commit ranges on upstream's real history (the offline copy; skipped without it).

The search itself is tests/unit/test_bisect.py's; here: which commits a range
holds, in which order, and how diverging ends are handled.  The verdicts fed
to the search are a function of ancestry (a stand-in for the gate, which the
integration tests run for real).
"""

from __future__ import annotations

import math
import subprocess

import pytest

from kamleak.harness import knowledge
from kamleak.harness.errors import UsageError
from kamleak.harness.tools import bisection as bs
from tests.unit.test_source_build import source  # noqa: F401  (fixture)

FIX = knowledge.FIXES["t_unref_orphans"].commit       # bd0aaf89b8, master only


def _full(src, ref):
    return src.resolve(ref).commit


def test_range_is_oldest_first_whichever_order_the_ends_come(source):
    m = str(source.mirror)
    a, b = _full(source, "d56c61bf93"), _full(source, "7771964549")
    fwd = bs.commit_range(m, "d56c61bf93", a, "7771964549", b)
    rev = bs.commit_range(m, "7771964549", b, "d56c61bf93", a)
    assert fwd.commits == rev.commits and fwd.commits[0] == a and fwd.commits[-1] == b
    assert len(fwd.commits) == 11 and fwd.merge_base is None
    assert fwd.given == rev.given == ("d56c61bf93", "7771964549")
    for older, newer in zip(fwd.commits, fwd.commits[1:]):
        assert bs.is_ancestor(m, older, newer)
    assert fwd.max_runs == 2 + math.ceil(math.log2(10))


def test_the_913_commits_from_the_61_merge_base_to_master(source):
    m = str(source.mirror)
    base = subprocess.run(["git", "-C", m, "merge-base", "6.1.0", "master"], capture_output=True,
                          text=True, check=True).stdout.strip()
    rng = bs.commit_range(m, "base", base, "master", _full(source, "master"))
    assert len(rng.commits) - 1 == 913 and rng.max_runs == 2 + 10


def test_diverging_ends_search_from_their_merge_base(source):
    """5.8.5 (leaks, a 5.8 branch tag) and master (has the fix): the merge base
    is gated and the search runs on master's side."""
    m = str(source.mirror)
    a, b = _full(source, "5.8.5"), _full(source, "master")
    rng = bs.commit_range(m, "5.8.5", a, "master", b)
    assert rng.merge_base and rng.commits == [rng.merge_base]
    fix = _full(source, FIX)
    verdict = {}

    def check(c):
        verdict[c] = "clean" if bs.is_ancestor(m, fix, c) else "leak"
        return verdict[c], ""
    result, searched = bs.bisect_commits(m, rng, check)
    assert searched.commits[result.first_other] == fix
    assert searched.ends == (rng.merge_base, b)
    assert result.runs_real == len(verdict) <= searched.max_runs


def test_same_commit_and_bad_spec_are_one_line(source):
    m = str(source.mirror)
    c = _full(source, "5.8.5")
    with pytest.raises(UsageError, match="are the same commit"):
        bs.commit_range(m, "5.8.5", c, "5.8.5^0", c)
    for spec in (["a..b..c"], ["a", "b", "c"], ["..master"]):
        with pytest.raises(UsageError):
            bs.split_range(spec)
    assert bs.split_range(["6.1.0..master"]) == ("6.1.0", "master")
    assert bs.split_range(["5.8.5", "master"]) == ("5.8.5", "master")


def test_an_untestable_end_stops_before_the_search(source):
    m = str(source.mirror)
    a, b = _full(source, "d56c61bf93"), _full(source, "7771964549")
    rng = bs.commit_range(m, "d56c61bf93", a, "7771964549", b)
    calls = []

    def check(c):
        calls.append(c)
        return ("skip", "does not build: x") if c == a else ("clean", "")
    with pytest.raises(UsageError, match=r"cannot test the end d56c61bf93 \(d56c61bf93\): does not build"):
        bs.bisect_commits(m, rng, check)
    assert calls == [a], "the other end is not built when one end cannot be tested"
