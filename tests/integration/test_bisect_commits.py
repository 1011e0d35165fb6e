"""`kamleak bisect` over upstream commits, for real: each probed commit is built
from the offline history and gated; `git bisect run kamleak check
--kamailio-tree .` on a checkout.

The range is ten commits of upstream master around the fix kamleak.harness.knowledge
records for PR 3403 (ee06666c43, 2024-05: `drop` in
event_route[tm:local-request] frees the request's buffer).  Its neighbours
touch ims, sipcapture, pv_headers and presence (not built) and tm/uac, so a
step costs a few recompiled files with the compiler cache; the first build
of the range is cold.

The t_unref() change (bd0aaf89b8, issue 4140's fix on master) lies in the 114
commits 84d09d56..3dbcdc95 whose tls.so calls SSL_get0_group_name(), OpenSSL
3.2's: built and run on bookworm (OpenSSL 3.0) it did not load, and bisect
could only name a range.  Each commit now builds on the Debian suite upstream's
CI used for it (trixie since e6812e83, source_build.ci_suite), so its parent
and it are gated and bisect names it.  Without the offline history these tests
skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from kamleak.harness import knowledge
from kamleak.harness.stack import source_build
from kamleak.harness.wait import poll
from tests.terminal import interruptible
from tests.unit.test_source_build import ROOT, offline_source

SOURCE = offline_source()
pytestmark = [pytest.mark.kamailio, pytest.mark.serial,
              pytest.mark.skipif(SOURCE is None, reason="no offline Kamailio history "
                                 "(../shared/kamailio-src or KAMLEAK_KAMAILIO_SOURCE)")]
FIX = knowledge.FIXES["pr3403"].commit
OLD, NEW = "6f908f05d4", "00aac8d483"       # 5 commits before FIX .. 5 after (git log)
SCENARIO = ["--scenario", "pr3403"]


def kamleak(*args, cwd=ROOT, timeout=1800):
    return subprocess.run([sys.executable, "-m", "kamleak.harness.tools.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env={**os.environ, source_build.SOURCE_ENV: SOURCE,
                               "PYTHONPATH": str(ROOT)})


def _ours(client, role):
    return {c.id for c in client.containers.list(all=True, filters={"label": f"org.kamleak.role={role}"})}


def test_bisect_names_the_commit_that_fixed_the_leak(docker_client):
    before = _ours(docker_client, "builder")
    proc = kamleak("bisect", "--kamailio-source", SOURCE, f"{OLD}..{NEW}", *SCENARIO)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    m = re.search(r"kamleak bisect: ([0-9a-f]{40}) is the first commit with verdict CLEAN \(fix; "
                  r"([0-9a-f]{10}) before it: LEAK\)", out)
    assert m and m.group(1).startswith(FIX), out
    assert "tm: free new buffer on drop for local requests" in out
    assert "src/modules/tm/uac.c" in out
    runs = int(re.search(r"(\d+) commits probed: \1 gated to a verdict, 0 skipped", out).group(1))
    assert runs <= 2 + 4, out                           # ceil(log2 10) + 2
    assert re.search(r"\[1\] 6f908f05d4 .*\n\[1\]   (built|cached) in \d+ s", out)
    assert re.search(r"\[1\]   LEAK ", out) and re.search(r"\[2\]   CLEAN ", out), out
    assert _ours(docker_client, "builder") <= before, "no builder left behind"


def test_bisect_names_the_t_unref_change_on_its_own_ci_suite(docker_client):
    """84d09d568e (its parent) leaks, bd0aaf89b8 does not: both build on trixie,
    where their tls.so loads, so neither is skipped (the default 4140 variant)."""
    orphans = knowledge.FIXES["t_unref_orphans"].commit
    proc = kamleak("bisect", "--kamailio-source", SOURCE, f"{orphans}~1..{orphans}")
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert re.search(rf"kamleak bisect: {orphans}[0-9a-f]* is the first commit with verdict CLEAN "
                     r"\(fix; 84d09d568e before it: LEAK\)", out), out
    assert "2 commits probed: 2 gated to a verdict, 0 skipped" in out
    src = source_build.Source(SOURCE)
    for ref in (f"{orphans}~1", orphans):
        tag = source_build.image_tag(src.resolve(ref), source_build.modules_for())
        assert docker_client.images.get(tag).labels[source_build.LABEL_SUITE] == "trixie", ref


def test_reversed_ends_and_a_rerun_reuse_the_builds(docker_client):
    """Ends given newest first, one commit apart: both gated, both images reused."""
    proc = kamleak("bisect", "--kamailio-source", SOURCE, FIX, f"{FIX}~1", *SCENARIO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "is the first commit with verdict CLEAN (fix;" in proc.stdout
    assert len(re.findall(r"\]   cached in \d+ s", proc.stdout)) == 2, proc.stdout
    assert "2 commits probed: 2 gated to a verdict, 0 skipped" in proc.stdout


def test_ends_that_agree_are_one_line():
    proc = kamleak("bisect", f"{FIX}..{NEW}", *SCENARIO)
    assert proc.returncode == 128
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"kamleak: both ends give the same verdict (clean): {FIX}"), proc.stderr


@pytest.mark.parametrize("spec, needle", [
    ("9.9.9..master", "unknown Kamailio ref '9.9.9'"),
    ("5.8.5..deadbeefdeadbeef", "unknown Kamailio ref 'deadbeefdeadbeef'"),
    ("5.8.5..5.8.5", "are the same commit"),
    ("a..b..c", "a commit range is A..B or two refs"),
])
def test_bad_ranges_are_one_line_and_abort(spec, needle):
    proc = kamleak("bisect", spec, timeout=120)
    assert proc.returncode == 128, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert needle in lines[-1] and "Traceback" not in proc.stderr, proc.stderr


def _clone(tmp_path, commit, name="k"):
    mirror = source_build.Source(SOURCE).mirror
    clone = tmp_path / name
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(mirror), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", commit], check=True)
    return clone


def test_a_range_where_nothing_builds(docker_client, tmp_path):
    clone = _clone(tmp_path, FIX)
    g = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(g + ["checkout", "-q", "-b", "broken"], check=True)
    for i in range(3):
        with open(clone / "src" / "main.c", "a") as f:
            f.write(f"\n#error kamleak: deliberately broken {i}\n")
        subprocess.run(g + ["commit", "-q", "-am", f"broken {i}"], check=True)
    before = _ours(docker_client, "builder")
    proc = kamleak("bisect", "--kamailio-source", str(clone), "broken~2..broken", "--variant", "none")
    assert proc.returncode == 128, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("kamleak: cannot test the end broken~2 (") and "does not build" in last
    assert "deliberately broken 0" in last
    assert _ours(docker_client, "builder") <= before


def test_git_bisect_run_with_check_on_the_working_tree(docker_client, tmp_path):
    """The one-line `git bisect run` path: check builds the checkout itself."""
    clone = _clone(tmp_path, FIX)
    g = ["git", "-C", str(clone)]
    subprocess.run(g + ["bisect", "start", "--term-old=leak", "--term-new=clean", FIX, f"{FIX}~2"],
                   check=True, capture_output=True)
    run = subprocess.run(g + ["bisect", "run", sys.executable, "-m", "kamleak.harness.tools.cli", "check",
                              "--kamailio-tree", ".", *SCENARIO, "--invert"],
                         capture_output=True, text=True, timeout=1800,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert re.search(rf"^{FIX}[0-9a-f]* is the first clean commit", run.stdout, re.M), \
        run.stdout[-3000:] + run.stderr[-3000:]
    assert "cached" in run.stderr     # the image `kamleak bisect` built for that commit


def test_check_on_a_dirty_tree_says_it_builds_the_tree_as_it_is(tmp_path):
    clone = _clone(tmp_path, FIX)
    with open(clone / "src" / "modules" / "tm" / "README", "a") as f:
        f.write("\nlocal note\n")
    proc = kamleak("check", "--kamailio-tree", str(clone), *SCENARIO, cwd=clone)
    said = [x for x in proc.stderr.splitlines() if "uncommitted changes" in x]
    assert len(said) == 1 and "building the working tree as it is, not HEAD" in said[0], proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]      # FIX is in the tree
    assert "kamleak check: CLEAN" in proc.stdout


@pytest.mark.parametrize("args, needle", [
    (["--kamailio-tree", "/"], "is not in a git checkout"),
    (["--kamailio-tree", str(ROOT), "--kamailio-version", "6.0.1"], "--kamailio-tree builds the checkout"),
])
def test_check_tree_usage_errors(args, needle):
    proc = kamleak("check", *args, timeout=60)
    assert proc.returncode == 128 and needle in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_bisect_names_the_commit_that_brought_the_leak_back(docker_client, tmp_path):
    """The other direction, without being told: a branch off the clean end that
    reverts the fix (a real regression, built and gated) between two harmless
    commits; the revert is named as the first LEAK."""
    clone = _clone(tmp_path, NEW)
    g = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(g + ["checkout", "-q", "-b", "regress"], check=True)

    def doc_commit(text):
        with open(clone / "src" / "modules" / "tm" / "README", "a") as f:
            f.write(f"\n{text}\n")
        subprocess.run(g + ["commit", "-q", "-am", f"tm: docs - {text}"], check=True)
    doc_commit("a note")
    subprocess.run(g + ["revert", "--no-edit", FIX], check=True, capture_output=True)
    doc_commit("another note")
    proc = kamleak("bisect", "--kamailio-source", str(clone), f"{NEW}..regress", *SCENARIO)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    revert = subprocess.run(g + ["rev-parse", "regress~1"], capture_output=True, text=True).stdout.strip()
    assert f"kamleak bisect: {revert} is the first commit with verdict LEAK (regression;" in out, out
    assert 'subject: Revert "tm: free new buffer on drop for local requests"' in out


def test_ctrl_c_leaves_no_container_and_keeps_the_builds(docker_client, tmp_path):
    """Interrupted while building a probed commit: exit 130, the builder and
    every Kamailio/Asterisk container of the run gone, earlier images kept."""
    import signal
    import time

    clone = _clone(tmp_path, NEW)
    g = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    with open(clone / "src" / "modules" / "tm" / "README", "a") as f:
        f.write(f"\ninterrupted {time.time()}\n")          # a new commit: its build is not cached
    subprocess.run(g + ["commit", "-q", "-am", "tm: docs - a note"], check=True)
    head = subprocess.run(g + ["rev-parse", "--short=10", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    before = {c.id for c in docker_client.containers.list(all=True)}
    proc = subprocess.Popen([sys.executable, "-m", "kamleak.harness.tools.cli", "bisect", "--kamailio-source",
                             str(clone), f"{NEW}..HEAD", *SCENARIO], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=interruptible)
    # The builder of HEAD appears after NEW's gate run.
    poll(lambda: docker_client.containers.list(filters={"name": f"builder-{head}"}), timeout=600,
         what=f"the builder of {head}",
         abort=lambda: None if proc.poll() is None else f"bisect exited: {proc.communicate()}")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err[-2000:]
    assert re.search(r"\b1 build kept as images", err) and "a rerun reuses them" in err, err[-2000:]
    left = {c.id for c in docker_client.containers.list(all=True)} - before
    mine = [c.name for c in docker_client.containers.list(all=True) if c.id in left
            and (head in c.name or NEW in c.name)]
    assert not mine, mine
    docker_client.images.get(f"{source_build.REPO}:{NEW}-"
                             f"{source_build.modules_hash(source_build.modules_for())}")
