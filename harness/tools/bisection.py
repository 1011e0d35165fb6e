"""Bisection over an ordered list of Kamailio builds: where does the verdict flip?

Like `git bisect`: the two ends are checked first (they must disagree), then
the interval between the last point with the first end's verdict and the
first point with the other verdict is halved until they are neighbours.  A
point that cannot be tested (Kamailio refuses the config, the scenario
cannot reach a verdict) is skipped like `git bisect skip`: the search tries
the nearest untested point instead.

The points are builds named on the command line, or the commits of a git
range (`commit_range`): the same search over both.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from kamleak.harness.errors import UsageError

SKIP = "skip"


def counted(n: int, noun: str) -> str:
    """'1 build', '3 builds' (every noun bisect counts takes an s)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def need_two(items: list[str]) -> None:
    if len(items) < 2:
        raise UsageError(f"bisect needs at least two Kamailio builds, got {len(items)}",
                         "list them oldest first, e.g. 5.6.3 6.0.1 6.1.5")


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
    runs_real: int | None = None       # gate runs made (bisect_commits: ends gated once)

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
    need_two(items)
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
    skipped: dict[int, str] = {}           # index -> why, commit ids blanked
    while hi - lo > 1:
        pick = next_probe(lo, hi, untested, skipped)
        if pick is None:
            break                           # everything left between is (presumed) untestable
        untested.discard(pick)
        verdict = run(pick)
        if verdict == SKIP:
            skipped[pick] = re.sub(r"\b[0-9a-f]{7,40}\b", "<commit>", result.steps[-1].note)
            continue
        if verdict == first:
            lo = pick
        else:
            hi = pick
    result.last_same, result.first_other = lo, hi
    return result


def next_probe(lo: int, hi: int, untested: set[int], skipped: dict[int, str]) -> int | None:
    """The point to gate next: the middle of (lo, hi), or, once points in it
    were skipped, the middle of the widest stretch between two probed points
    that touches a tested one.  A stretch between two points skipped for the
    same reason is presumed untestable and not tried: a build break or a
    module that will not load lasts many commits (upstream's tls.so on
    OpenSSL 3.0 for 114), and stepping to a skipped point's neighbours would
    cost a build per commit of it.  Two different reasons are two breaks,
    with testable commits between them maybe: that stretch is searched."""
    marks = [lo] + sorted(i for i in skipped if lo < i < hi) + [hi]
    best: tuple[int, int] | None = None
    for left, right in zip(marks, marks[1:]):
        if left in skipped and right in skipped and skipped[left] == skipped[right]:
            continue
        cands = [i for i in range(left + 1, right) if i in untested]
        if not cands:
            continue
        mid = (left + right) // 2
        pick = min(cands, key=lambda i: (abs(i - mid), i))
        if best is None or right - left > best[0]:
            best = (right - left, pick)
    return best[1] if best else None


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


def known_between(old, new) -> tuple[list[str], list[str]]:
    """What kamleak.harness.knowledge records as in one build and not the other
    (Targets or Provenances): a line per fix, and a sentence per fix that a
    distribution's build carries while upstream's release of the same number
    lacks it (its backport: the verdict's flip may be the distribution's patch)."""
    from kamleak.harness import knowledge

    builds = (knowledge.provenance(old), knowledge.provenance(new))
    fixes, backports = [], []
    for fix in knowledge.FIXES.values():
        has = [knowledge.has(fix, b).value for b in builds]
        if None in has or has[0] == has[1]:
            continue
        which, lacks = builds[has.index(True)], builds[has.index(False)]
        upstream = (f"first in {', '.join(fix.first_tags())}" if fix.first_tags()
                    else "no release tag contains it, master only")
        fixes.append(f"{fix.commit} {fix.what}: in {which.label}, not in {lacks.label} "
                     f"(upstream: {upstream})")
        if which.kind == "debian" and which.version:
            release = knowledge.has_release(fix, which.version)
            if release.value is False:
                backports.append(
                    f"{which.label} carries {fix.commit} as Debian's backport: upstream's "
                    f"{which.version} lacks it ({upstream}). The flip may be Debian's patch, "
                    f"not upstream's: `kamleak check --kamailio-ref {which.version}` runs "
                    "upstream's")
    return fixes, backports


# --------------------------------------------------------------------------
# Commits of a git range


@dataclass
class CommitRange:
    """The commits to search, oldest first, each an ancestor of the next.

    `commits[0]` and `commits[-1]` are the ends to gate first.  When the two
    refs given are on diverging lines, `side` holds the other end and the
    search starts from their merge base (see `commit_range`)."""

    commits: list[str]
    given: tuple[str, str]           # the refs as the user wrote them, oldest first when known
    ends: tuple[str, str]            # their commits
    merge_base: str | None = None    # set when neither end contains the other
    merges: int = 0                  # merge commits on the path (their side branches are one step)

    @property
    def max_runs(self) -> int:
        """git bisect's bound: the two ends, then one halving per run (skips extra)."""
        n = max(1, len(self.commits) - 1)          # commits after the older end
        return 2 + math.ceil(math.log2(n)) + (1 if self.merge_base else 0)


def _git(mirror: str, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", "-C", mirror, *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise UsageError(f"git {' '.join(args[:2])} failed in {mirror}: "
                         f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return proc.stdout.strip()


def is_ancestor(mirror: str, a: str, b: str) -> bool:
    return subprocess.run(["git", "-C", mirror, "merge-base", "--is-ancestor", a, b],
                          capture_output=True).returncode == 0


def path_commits(mirror: str, old: str, new: str) -> tuple[list[str], int]:
    """old, then each commit up to new along new's first-parent line that
    descends from old (oldest first), and how many of them are merges.

    `--first-parent --ancestry-path` keeps every commit an ancestor of the
    next, so the verdict can flip once along the list as on a straight line;
    a change that came in through a merge is named by its merge commit."""
    out = _git(mirror, "rev-list", "--reverse", "--first-parent", "--ancestry-path", f"{old}..{new}")
    commits = [old] + out.split()
    merges = len(_git(mirror, "rev-list", "--merges", "--first-parent", "--ancestry-path",
                      f"{old}..{new}").split())
    return commits, merges


def split_range(spec: list[str]) -> tuple[str, str]:
    """["A..B"] or ["A", "B"] -> (A, B)."""
    if len(spec) == 1 and spec[0].count("..") == 1 and "..." not in spec[0]:
        a, b = spec[0].split("..", 1)
    elif len(spec) == 2 and not any(".." in x for x in spec):
        a, b = spec
    else:
        raise UsageError(f"a commit range is A..B or two refs, got {' '.join(spec) or 'nothing'}",
                         "e.g. kamleak bisect --kamailio-source SRC 6.1.0..master")
    if not a or not b:
        raise UsageError(f"'{spec[0]}' lacks an end", "give both: A..B (tags, branches or commits)")
    return a, b


def commit_range(mirror: str, a: str, a_commit: str, b: str, b_commit: str) -> CommitRange:
    """The commits between two resolved refs, in either order.

    Neither end containing the other (e.g. 5.8.5 and master): the search runs
    from their merge base, as `git bisect` does when a good commit is not an
    ancestor of the bad one; which side it takes is decided by the merge
    base's own verdict (`bisect_commits`)."""
    if a_commit == b_commit:
        raise UsageError(f"{a} and {b} are the same commit ({a_commit[:10]})",
                         "give two different commits")
    if is_ancestor(mirror, b_commit, a_commit):
        a, a_commit, b, b_commit = b, b_commit, a, a_commit
    if is_ancestor(mirror, a_commit, b_commit):
        commits, merges = path_commits(mirror, a_commit, b_commit)
        return CommitRange(commits, (a, b), (a_commit, b_commit), None, merges)
    base = _git(mirror, "merge-base", a_commit, b_commit, check=False)
    if not base:
        raise UsageError(f"{a} and {b} share no history in {mirror}",
                         "give two commits of one repository's history")
    # Ordered by commit date for display; the side is chosen after gating.
    return CommitRange([base], (a, b), (a_commit, b_commit), base, 0)


def bisect_commits(mirror: str, rng: CommitRange, check: Callable[[str], tuple[str, str]],
                   say: Callable[[str], None] = lambda _: None) -> tuple[BisectResult, CommitRange]:
    """Gate both ends, then search the commits between with `bisect`.

    CHECK is memoised per commit: an end is gated once even when it is also
    an end of the search.  Diverging ends: the merge base is gated too and
    the search runs on the side whose end disagrees with it."""
    seen: dict[str, tuple[str, str]] = {}

    def once(commit: str) -> tuple[str, str]:
        if commit not in seen:
            seen[commit] = check(commit)
        return seen[commit]

    a, b = rng.ends
    verdicts = []
    for ref, c in ((rng.given[0], a), (rng.given[1], b)):
        verdicts.append(once(c)[0])
        if verdicts[-1] == SKIP:       # said at once: the other end need not be built
            raise UsageError(f"cannot test the end {ref} ({c[:10]}): {seen[c][1]}",
                             "bisect needs ends that build and run; pick another commit")
    va, vb = verdicts
    if va == vb:
        raise UsageError(f"both ends give the same verdict ({va}): {rng.given[0]} and {rng.given[1]}",
                         "choose ends that disagree, or the verdict does not flip in this range")
    if rng.merge_base:
        base = rng.merge_base
        say(f"{rng.given[0]} and {rng.given[1]} are on diverging lines: gating their merge base "
            f"{base[:10]} to choose the side where the verdict flips")
        vm = once(base)[0]
        if vm == SKIP:
            raise UsageError(f"cannot test the merge base {base[:10]} of {rng.given[0]} and "
                             f"{rng.given[1]}: {seen[base][1]}",
                             "give ends on one line of history")
        end, ref = (b, rng.given[1]) if vm == va else (a, rng.given[0])
        commits, merges = path_commits(mirror, base, end)
        say(f"merge base {base[:10]}: {vm}; searching {base[:10]}..{ref} ({len(commits) - 1} commits)")
        rng = CommitRange(commits, (base[:10], ref), (base, end), base, merges)
    result = bisect(rng.commits, once)
    result.runs_real = len(seen)
    return result, rng


def commit_info(mirror: str, commit: str) -> dict:
    """hash, subject, author, date and the files a commit changed."""
    fmt = "%H%x00%s%x00%an <%ae>%x00%ad"
    h, subject, author, date = _git(mirror, "show", "-s", f"--format={fmt}", "--date=iso",
                                    commit).split("\x00")
    files = _git(mirror, "show", "--format=", "--stat=100", commit).splitlines()
    return {"commit": h, "subject": subject, "author": author, "date": date,
            "files": [f.rstrip() for f in files]}
