"""Bisection over an ordered list of Kamailio builds: where does the verdict flip?

Like `git bisect`: the two ends are checked first (they must disagree), then
the interval between the last point with the first end's verdict and the
first point with the other verdict is halved until they are neighbours.  A
point that cannot be tested (Kamailio refuses the config, the scenario
cannot reach a verdict) is skipped like `git bisect skip`: the search tries
the nearest untested point instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .errors import UsageError

SKIP = "skip"


@dataclass
class Step:
    index: int
    item: str
    verdict: str          # "leak" | "clean" | "skip"
    note: str = ""


@dataclass
class BisectResult:
    items: list[str]
    steps: list[Step] = field(default_factory=list)
    first_other: int | None = None     # index of the first item with the other verdict
    last_same: int | None = None       # index of the last item with the first end's verdict

    @property
    def runs(self) -> int:
        return len(self.steps)

    @property
    def search_runs(self) -> int:
        return len([s for s in self.steps if s.index not in (0, len(self.items) - 1)])

    def verdict_of(self, index: int) -> str | None:
        for s in self.steps:
            if s.index == index:
                return s.verdict
        return None


def bisect(items: list[str], check: Callable[[str], tuple[str, str]]) -> BisectResult:
    """Find the first item whose verdict differs from items[0]'s.

    `check(item)` returns (verdict, note) with verdict "leak", "clean" or
    "skip".  Raises UsageError when the ends cannot be used.
    """
    if len(items) < 2:
        raise UsageError(f"bisect needs at least two Kamailio builds, got {len(items)}",
                         "list them oldest first, e.g. 5.6.3 6.0.1 6.1.5")
    result = BisectResult(items=list(items))

    def run(i: int) -> str:
        verdict, note = check(items[i])
        result.steps.append(Step(i, items[i], verdict, note))
        return verdict

    first, last = run(0), run(len(items) - 1)
    if SKIP in (first, last):
        end = items[0] if first == SKIP else items[-1]
        raise UsageError(f"cannot test the end {end} of the list", "bisect needs testable ends")
    if first == last:
        raise UsageError(f"both ends give the same verdict ({first}): {items[0]} and {items[-1]}",
                         "choose ends that disagree, or the verdict does not flip in this range")
    lo, hi = 0, len(items) - 1             # lo has `first`, hi has the other verdict
    untested = set(range(1, len(items) - 1))
    while hi - lo > 1:
        candidates = [i for i in range(lo + 1, hi) if i in untested]
        if not candidates:
            break                           # everything between was skipped
        mid = (lo + hi) // 2
        pick = min(candidates, key=lambda i: (abs(i - mid), i))
        untested.discard(pick)
        verdict = run(pick)
        if verdict == SKIP:
            continue
        if verdict == first:
            lo = pick
        else:
            hi = pick
    result.last_same, result.first_other = lo, hi
    return result


def table(result: BisectResult) -> list[str]:
    """Every build with the verdict taken (or why not), in list order."""
    lines = [f"  {'#':>2}  {'kamailio':40} verdict"]
    for i, item in enumerate(result.items):
        v = result.verdict_of(i)
        note = next((s.note for s in result.steps if s.index == i), "")
        mark = "  <- first with the other verdict" if i == result.first_other else ""
        shown = v or "not run"
        lines.append(f"  {i:>2}  {item[:40]:40} {shown}{(' (' + note + ')') if note else ''}{mark}")
    return lines
