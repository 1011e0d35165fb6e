"""The bisection state machine (verdicts given; real runs are in tests/gate)."""
from __future__ import annotations

import math

import pytest

from kamleak.harness.errors import UsageError
from kamleak.harness.stack.targets import Target
from kamleak.harness.tools.bisection import bisect, counted, known_between


def oracle(verdicts: dict):
    calls = []

    def check(item):
        calls.append(item)
        return verdicts[item], ""
    return check, calls


@pytest.mark.parametrize("n, flip", [(3, 2), (8, 5), (9, 1), (9, 8), (16, 7), (33, 20)])
def test_finds_the_flip_in_log2_runs(n, flip):
    items = [f"v{i}" for i in range(n)]
    check, calls = oracle({f"v{i}": ("leak" if i < flip else "clean") for i in range(n)})
    result = bisect(items, check)
    assert result.items[result.first_other] == f"v{flip}"
    assert result.last_same == flip - 1
    assert result.runs == len(calls) == len(set(calls))
    assert result.search_runs <= math.ceil(math.log2(n - 1))


def test_skipped_points_are_stepped_around():
    verdicts = {"a": "leak", "b": "leak", "c": "skip", "d": "clean", "e": "clean"}
    check, calls = oracle(verdicts)
    result = bisect(list(verdicts), check)
    assert result.items[result.first_other] == "d"
    assert "c" in calls


def test_all_skipped_between_gives_the_smallest_interval():
    verdicts = {"a": "leak", "b": "skip", "c": "skip", "d": "clean"}
    result = bisect(list(verdicts), oracle(verdicts)[0])
    assert (result.last_same, result.first_other) == (0, 3)


@pytest.mark.parametrize("items, verdicts, message", [
    ([], {}, "at least two"),
    (["a"], {"a": "leak"}, "at least two"),
    (["a", "b"], {"a": "leak", "b": "leak"}, "same verdict (leak)"),
    (["a", "b"], {"a": "skip", "b": "leak"}, "cannot test the end a"),
])
def test_bad_lists(items, verdicts, message):
    with pytest.raises(UsageError) as exc:
        bisect(items, oracle(verdicts)[0])
    assert message in str(exc.value)


def test_a_long_untestable_stretch_costs_a_few_skips_not_one_per_commit():
    """Upstream's tls.so does not load on OpenSSL 3.0 for 114 commits
    (84d09d56..3dbcdc95); a flip inside such a stretch is named as a range
    found in a logarithmic number of probes."""
    n, broken, flip = 913, range(420, 534), 470
    items = [f"c{i}" for i in range(n)]
    verdicts = {f"c{i}": ("skip" if i in broken else "leak" if i < flip else "clean") for i in range(n)}
    check, calls = oracle(verdicts)
    result = bisect(items, check)
    assert result.last_same == 419 and result.first_other == 534
    assert len(calls) <= 2 * math.ceil(math.log2(n)) + 2, len(calls)


@pytest.mark.parametrize("flip", [100, 419, 534, 800])
def test_a_flip_outside_an_untestable_stretch_is_still_one_commit(flip):
    n, broken = 913, range(420, 534)
    items = [f"c{i}" for i in range(n)]
    verdicts = {f"c{i}": ("skip" if i in broken else "leak" if i < flip else "clean") for i in range(n)}
    check, calls = oracle(verdicts)
    result = bisect(items, check)
    if flip == 534:
        assert (result.last_same, result.first_other) == (419, 534)   # the stretch hides it
    else:
        assert result.first_other == flip and result.last_same == flip - 1
    assert len(calls) <= 2 * math.ceil(math.log2(n)) + 2, len(calls)


def test_two_different_breaks_leave_the_stretch_between_them_searched():
    """A short build break at 228 and the tls.so stretch 412..525: the flip at
    413 is inside the second; the commits between the two breaks still count."""
    n = 913

    def verdict(i):
        if i in range(226, 230):
            return "skip", f"does not build: building Kamailio c{i:07x}abc failed in 'configure'"
        if i in range(412, 526):
            return "skip", "cannot test: failed to load module tls.so"
        return ("leak" if i < 413 else "clean"), ""
    calls = []

    def check(item):
        calls.append(item)
        return verdict(int(item[1:]))
    result = bisect([f"c{i}" for i in range(n)], check)
    assert (result.last_same, result.first_other) == (411, 526)
    assert len(calls) <= 2 * math.ceil(math.log2(n)) + 6, len(calls)


def test_counts_read_right():
    assert [counted(n, "build") for n in (0, 1, 2)] == ["0 builds", "1 build", "2 builds"]


def test_debians_backport_is_named_where_the_builds_differ():
    """Debian's 6.1.5 carries bd0aaf89b8 (no upstream tag contains it): a flip
    between 6.0.1 and it may be Debian's patch; 5.6.3 -> 6.0.1 (PR 3403, in
    upstream 6.0.0) is no backport."""
    fixes, backports = known_between(Target("version", "6.0.1"), Target("version", "6.1.5"))
    assert [f.split()[0] for f in fixes] == ["a705e601d9", "bd0aaf89b8"]
    assert fixes[1].endswith("in Debian's Kamailio 6.1.5, not in Debian's Kamailio 6.0.1 "
                             "(upstream: no release tag contains it, master only)")
    (line,) = backports
    assert line.startswith("Debian's Kamailio 6.1.5 carries bd0aaf89b8 as Debian's backport: "
                           "upstream's 6.1.5 lacks it")
    assert "`kamleak check --kamailio-ref 6.1.5`" in line
    # Either order: the build that has it is named.
    assert known_between(Target("version", "6.1.5"), Target("version", "6.0.1"))[1] == backports
    fixes, backports = known_between(Target("version", "5.6.3"), Target("version", "6.0.1"))
    assert "ee06666c43" in [f.split()[0] for f in fixes] and backports == []
    # Builds kamleak cannot look into: nothing recorded, nothing claimed.
    assert known_between(Target("image", "example/kamailio:6.1.5"),
                         Target("version", "6.1.5")) == ([], [])
