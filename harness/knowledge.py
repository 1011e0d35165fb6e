"""What kamleak knows about Kamailio versions: one table, keyed by upstream history.

Every feature or fix that changes a verdict or a piece of advice is listed
once, with its upstream commit and the first upstream tag that contains it
(checked against upstream's history; see VERIFIED).
Whether a given build has it is answered:

* for a build from upstream source: from git - the fix's commit (or a known
  backport of it) is an ancestor of the build's commit, or a commit with the
  same patch is (`git cherry`); never from the version number;
* for Debian's packages kamleak builds: from what was observed on them
  (`DEBIAN`; Debian patches its packages, so a version number says little);
* for any other image or binary: unknown - kamleak says so and points to
  `kamleak check`, which runs the real thing.

Scenarios and lint read this module; it imports nothing above harness/.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess

UNKNOWN_HINT = "run `kamleak check` on it: the gate's verdict is measured, not looked up"
# Said wherever advice names a build: a package's version number is not upstream's.
BACKPORTS_NOTE = ("distributions backport fixes (Debian's 6.1.5 carries bd0aaf89b8's t_unref() "
                  "change, which no upstream release has), so a version number alone does not "
                  "tell what a package contains")


@dataclasses.dataclass(frozen=True)
class Fix:
    key: str
    what: str                      # one line, as advice can quote it
    commit: str                    # upstream commit (master unless it only exists on a branch)
    first_tag: str | None          # first upstream release tag containing it; None: none yet
    backports: tuple[tuple[str, str], ...] = ()   # (commit on a stable branch, its first tag)
    # (path, text) in the tree iff the feature is there: the fallback when the
    # commit is older than a shallow history (the offline copy starts 2024-01-01).
    marker: tuple[str, str] | None = None
    effect: str = ""

    def first_tags(self) -> list[str]:
        return [t for t in [self.first_tag, *(t for _, t in self.backports)] if t]

    def describe(self) -> str:
        tags = ", ".join(self.first_tags()) or "no release yet (master only)"
        commits = "/".join([self.commit, *(c for c, _ in self.backports)])
        return f"{self.what} (commit {commits}; first in {tags})"


FIXES: dict[str, Fix] = {f.key: f for f in (
    Fix("send_reply_error", "send_reply_error() in the sl module", "130dc00c17", "5.8.0",
        marker=("src/modules/sl/sl.c", '"send_reply_error"'),
        effect="a config may reply to a failed t_relay() with send_reply_error(): tm's error "
               "reply, statefully - mitigates issue 4140"),
    Fix("t_reply_error", "t_reply_error() in the tm module", "ae0b671c30", "5.8.0",
        marker=("src/modules/tm/tm.c", '"t_reply_error"'),
        effect="a config may reply to a failed t_relay() with t_reply_error() - mitigates 4140"),
    Fix("delayed_reply", 'modparam("tm", "delayed_reply", 0)', "a705e601d9", "6.1.0",
        marker=("src/modules/tm/tm.c", '"delayed_reply"'),
        effect="tm replies to a failed t_relay() at once, statefully - mitigates 4140"),
    Fix("t_unref_orphans", "tm t_unref(): `kr & REQ_ERR_DELAYED` instead of `==`, and orphaned "
        "transactions without branches are dropped (issue 4503, PR 4644)", "bd0aaf89b8", None,
        marker=("src/modules/tm/t_lookup.c", "dropping orphaned transaction without branches"),
        effect="the 4140/4503 pattern (a local request in the same worker + a stateless error "
               "reply) no longer leaks the transaction"),
    Fix("pr3403", "PR 3403: `drop` in event_route[tm:local-request] frees the request buffer",
        "ee06666c43", "6.0.0", backports=(("fc54fdcd67", "5.8.2"),),
        effect="dropping a local request no longer leaks its buffer"),
)}

# Error replies a config may give a failed t_relay() instead of sl_reply_error(),
# which a build may lack (FIXES keys) -> the module that has them.
ERROR_REPLY_FUNCTIONS = {"send_reply_error": "sl", "t_reply_error": "tm"}


def lacking(keys, build) -> str | None:
    """Why BUILD cannot run a config that needs the FIXES KEYS, or None (it has
    them, or kamleak cannot know: then the run says)."""
    for key in keys:
        if has(key, build).value is False:
            fix = FIXES[key]
            return (f"{fix.what} is not in {provenance(build).label} "
                    f"(upstream since {', '.join(fix.first_tags())}, commit {fix.commit})")
    return None


# How each entry above was checked (tests/unit/test_knowledge.py re-checks it
# against the offline history when it is there).
VERIFIED = ("2026-12-01, git tag (contains filter) in upstream's history as of 38711a3e78 (shallow since "
            "2024-01-01): a705e601d9 -> 6.1.0 first; bd0aaf89b8 -> no tag (master only); "
            "ee06666c43 -> 6.0.0 first; fc54fdcd67 -> 5.8.2 first (5.8 branch). 130dc00c17 and "
            "ae0b671c30 predate that history: their markers are in 5.8.0, the oldest tag it has.")


@dataclasses.dataclass(frozen=True)
class Observed:
    has: bool
    evidence: str


# Debian's packages kamleak builds (`kamleak/kamailio-debian:<version>`): what
# was observed on each, by the suite's gate tests.  Not upstream properties.
_GATE = "tests/gate/test_verdict_matrix.py"
DEBIAN: dict[str, dict[str, Observed]] = {
    "5.6.3": {
        "send_reply_error": Observed(False, f"Kamailio refuses the config ({_GATE}: n/a)"),
        "t_reply_error": Observed(False, f"Kamailio refuses the config ({_GATE}: n/a)"),
        "delayed_reply": Observed(False, f"Kamailio refuses the modparam ({_GATE}: n/a)"),
        "t_unref_orphans": Observed(False, f"uac_req_send leaks, cell outgoings 0 ref_count 1 ({_GATE})"),
        "pr3403": Observed(False, "drop in tm:local-request leaks "
                                  "(tests/gate/test_pr3403_local_request_drop.py)"),
    },
    "6.0.1": {
        "send_reply_error": Observed(True, f"accepted, and the BYE cell is freed ({_GATE})"),
        "t_reply_error": Observed(True, f"accepted, and the BYE cell is freed ({_GATE})"),
        "delayed_reply": Observed(False, f"Kamailio refuses the modparam ({_GATE}: n/a)"),
        "t_unref_orphans": Observed(False, f"uac_req_send leaks, cell outgoings 0 ref_count 1 ({_GATE})"),
        "pr3403": Observed(True, "drop in tm:local-request is clean "
                                 "(tests/gate/test_pr3403_local_request_drop.py)"),
    },
    "6.1.5": {
        "send_reply_error": Observed(True, f"accepted, and the BYE cell is freed ({_GATE})"),
        "t_reply_error": Observed(True, f"accepted, and the BYE cell is freed ({_GATE})"),
        "delayed_reply": Observed(True, f"accepted, and the BYE cell is freed ({_GATE})"),
        # Upstream 6.1.5's t_unref() has bd0aaf89b8's behaviour only as Debian's
        # backport: its tm logs "dropping orphaned transaction without branches".
        "t_unref_orphans": Observed(True, "Debian backport: uac_req_send is clean and tm logs "
                                          f"'dropping orphaned transaction without branches' ({_GATE})"),
        "pr3403": Observed(True, "drop in tm:local-request is clean "
                                 "(tests/gate/test_pr3403_local_request_drop.py)"),
    },
}


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where a Kamailio build comes from: enough to ask whether it has a fix."""

    kind: str                     # "upstream" | "release" | "debian" | "unknown"
    version: str | None = None    # what it calls itself (`kamailio -v`), if known
    commit: str | None = None     # upstream builds: the commit built
    repo: str | None = None       # upstream builds: a git repository holding that commit
    label: str = ""               # how to name it in a sentence

    @classmethod
    def debian(cls, version: str) -> Provenance:
        return cls("debian", version, label=f"Debian's Kamailio {version}")

    @classmethod
    def upstream(cls, commit: str, repo: str, version: str | None = None,
                 name: str | None = None) -> Provenance:
        return cls("upstream", version, commit, str(repo),
                   label=f"upstream Kamailio {name or version or commit[:10]}")

    @classmethod
    def release(cls, version: str) -> Provenance:
        """An upstream release by its number alone, with no git history at hand:
        answered from the first tags recorded above (has_release)."""
        return cls("release", version, label=f"upstream Kamailio {version}")

    @classmethod
    def unknown(cls, what: str, version: str | None = None) -> Provenance:
        return cls("unknown", version, label=what)


@dataclasses.dataclass(frozen=True)
class Answer:
    value: bool | None            # None: kamleak cannot know
    why: str

    def __bool__(self) -> bool:   # an Answer is not a bool: use .value
        raise TypeError("use Answer.value (True, False or None)")


def provenance(build) -> Provenance:
    """A Provenance from what callers hold: a Provenance, a Target (its
    `provenance`), or a version string naming one of Debian's builds."""
    if isinstance(build, Provenance):
        return build
    prov = getattr(build, "provenance", None)
    if isinstance(prov, Provenance):
        return prov
    if isinstance(build, str):
        v = build.strip()
        if v.startswith("debian-"):
            v = v[len("debian-"):]
        if v in DEBIAN:
            return Provenance.debian(v)
        return Provenance.unknown(f"Kamailio {v}", v)
    return Provenance.unknown(str(build))


def _git(repo: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, timeout=120)


def _has_object(repo: str, commit: str) -> str | None:
    p = _git(repo, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    return p.stdout.strip() if p.returncode == 0 else None


def has_commit(fix: Fix | str, commit: str, repo: str) -> Answer:
    """Does COMMIT (in REPO) contain FIX?  From git, not from a version number."""
    fix = FIXES[fix] if isinstance(fix, str) else fix
    peeled = _has_object(repo, commit) if os.path.isdir(repo) else None
    if not peeled:
        return Answer(None, f"commit {commit[:10]} is not in {repo}")
    commit, short = peeled, peeled[:10]
    candidates = [(fix.commit, fix.first_tag), *fix.backports]
    present = [(c, t) for c, t in candidates if _has_object(repo, c)]
    for c, _ in present:
        if _git(repo, "merge-base", "--is-ancestor", c, commit).returncode == 0:
            return Answer(True, f"{short} descends from {c} ({fix.what})")
    for c, _ in present:
        # "-" lines: commits of C..C^ whose patch is already in COMMIT's history.
        out = _git(repo, "cherry", commit, c, f"{c}^").stdout.split()
        if out[:1] == ["-"]:
            return Answer(True, f"{short} carries the patch of {c} cherry-picked ({fix.what})")
    if present:
        return Answer(False, f"{short} contains neither {' nor '.join(c for c, _ in present)} "
                             f"nor the same patch ({fix.what})")
    if fix.marker:
        path, text = fix.marker
        hit = _git(repo, "grep", "-q", "-F", text, commit, "--", path).returncode == 0
        return Answer(hit, f"{fix.commit} predates this history; {path} at {short} "
                           f"{'contains' if hit else 'lacks'} {text!r}")
    return Answer(None, f"{fix.commit} is not in {repo} (a shallow history?)")


def has(fix: Fix | str, build) -> Answer:
    """Does BUILD contain FIX?  True, False, or None (with why) where kamleak cannot know."""
    fix = FIXES[fix] if isinstance(fix, str) else fix
    prov = provenance(build)
    if prov.kind == "upstream" and prov.commit and prov.repo:
        return has_commit(fix, prov.commit, prov.repo)
    if prov.kind == "release" and prov.version:
        return has_release(fix, prov.version)
    if prov.kind == "debian":
        obs = DEBIAN.get(prov.version or "", {}).get(fix.key)
        if obs is not None:
            return Answer(obs.has, f"{prov.label}: {obs.evidence}")
        return Answer(None, f"nothing observed on {prov.label} about {fix.what}; {UNKNOWN_HINT}")
    return Answer(None, f"kamleak cannot tell whether {prov.label or 'this Kamailio'} has "
                        f"{fix.describe()}: its source is unknown; {UNKNOWN_HINT}")


def _vtuple(v: str) -> tuple[int, int, int] | None:
    import re
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", v.strip())
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def has_release(fix: Fix | str, version: str) -> Answer:
    """Does the upstream release VERSION contain FIX, by the first tags recorded
    above (not from git): for when no source repository is at hand.  A release
    has it if its series has a recorded first tag at or below it, or if its
    series is newer than the first tag's (branched from master after it)."""
    fix = FIXES[fix] if isinstance(fix, str) else fix
    v = _vtuple(version)
    how = "(by the first upstream tags kamleak records, not from git)"
    if v is None:
        return Answer(None, f"'{version}' is no upstream release number; {how}")
    for tag in fix.first_tags():
        t = _vtuple(tag)
        if t[:2] == v[:2]:
            return Answer(v >= t, f"{version} {'is at or after' if v >= t else 'is before'} {tag} {how}")
    main = _vtuple(fix.first_tag) if fix.first_tag else None
    if main and v[:2] > main[:2]:
        return Answer(True, f"the {v[0]}.{v[1]} series branched after {fix.first_tag} {how}")
    return Answer(False, f"no recorded tag of the {v[0]}.{v[1]} series has it {how}")
