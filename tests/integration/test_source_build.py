"""Kamailio built from upstream source, for real: the report's 5.8.5 leaks and
send_reply_error() fixes it, as kamleak.harness.knowledge predicts from git history.

The source is the offline copy of upstream's history beside the checkout
(or $KAMLEAK_KAMAILIO_SOURCE); without one these tests skip.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from kamleak.harness import knowledge
from kamleak.harness.stack import source_build
from kamleak.harness.stack.targets import Target
from kamleak.scenarios import gh4140_bye_to_closed_ws as gh4140
from tests.gate.matrix import start_unless_refused
from tests.unit.test_source_build import ROOT, offline_source

SOURCE = offline_source()
pytestmark = [pytest.mark.kamailio, pytest.mark.serial,
              pytest.mark.skipif(SOURCE is None, reason="no offline Kamailio history "
                                 "(../shared/kamailio-src or KAMLEAK_KAMAILIO_SOURCE)")]
UPSTREAM_585 = Target("source", "5.8.5", source=SOURCE)
VARIANTS = [gh4140.Variant.parse("uac_req_send"), gh4140.Variant.parse("uac_req_send+send_reply_error")]


@pytest.mark.parametrize("transport", ["ws"], indirect=True)
@pytest.mark.parametrize("kamailio_target", [UPSTREAM_585], ids=[UPSTREAM_585.id], indirect=True)
@pytest.mark.parametrize("gate_variant", VARIANTS, ids=[v.name for v in VARIANTS], indirect=True)
def test_upstream_585_verdict_is_what_its_history_says(kamailio_factory, pbx, ua_factory, transport,
                                                       kamailio_target, gate_variant, record_verdict):
    expect = gh4140.expected(kamailio_target, gate_variant)
    # 5.8.5 has send_reply_error() (130dc00c17, 5.8.0) and not bd0aaf89b8 (master only).
    assert expect in ("leak", "clean"), knowledge.has("t_unref_orphans", kamailio_target).why
    kamailio = start_unless_refused(gh4140, kamailio_factory, kamailio_target, gate_variant)
    assert kamailio is not None
    assert "kamailio 5.8.5 " in (kamailio.version or ""), kamailio.version
    verdict = gh4140.run(kamailio=kamailio, pbx=pbx, ua_factory=ua_factory, transport=transport,
                         variant=gate_variant, target=kamailio_target.id)
    record_verdict(verdict)
    assert verdict.outcome == expect, verdict.report()
    if verdict.leaked:
        cell = verdict.cells[0]
        assert (cell.outgoings, cell.ref_count) == (0, 1), cell.describe()


def test_second_build_of_a_ref_reuses_its_image(docker_client):
    first = source_build.build(docker_client, "5.8.5", source=SOURCE)
    before = {c.id for c in docker_client.containers.list(all=True)}
    t0 = time.monotonic()
    again = source_build.build(docker_client, "5.8.5", source=SOURCE)
    assert again.reused and again.tag == first.tag and time.monotonic() - t0 < 10
    assert {c.id for c in docker_client.containers.list(all=True)} <= before   # no builder ran
    img = docker_client.images.get(again.tag)
    assert img.labels[source_build.LABEL_COMMIT] == again.commit
    assert img.labels[source_build.LABEL_VERSION] == "5.8.5"
    assert "tm" in img.labels[source_build.LABEL_MODULES].split(",")


def _kamleak(*args, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "kamleak.harness.tools.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _builders_of(client, commit: str) -> list:
    """The builder containers of COMMIT (named after it): other runs may be building others."""
    return client.containers.list(all=True, filters={"label": "org.kamleak.role=builder",
                                                     "name": f"builder-{commit[:10]}"})


def test_failed_build_is_one_line_and_cannot_test(docker_client, tmp_path):
    """A commit whose tree does not compile: `check` exits 125 with one line and
    the log's tail; no builder left behind, the compiler cache kept."""
    mirror = source_build.Source(SOURCE).mirror
    clone = tmp_path / "broken"
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(mirror), str(clone)], check=True)
    g = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(g + ["checkout", "-q", "-b", "broken", "5.8.5"], check=True)
    with open(clone / "src" / "main.c", "a") as f:
        f.write("\n#error kamleak: deliberately broken\n")
    subprocess.run(g + ["commit", "-q", "-am", "broken"], check=True)
    head = subprocess.run(g + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    proc = _kamleak("check", "--kamailio-ref", "broken", "--kamailio-source", str(clone),
                    "--variant", "none")
    assert proc.returncode == 125, proc.stderr[-2000:]
    said = [x for x in (proc.stdout + proc.stderr).splitlines() if "failed in 'compile'" in x]
    assert said and "deliberately broken" in said[0], proc.stdout + proc.stderr[-2000:]
    assert _builders_of(docker_client, head) == []
    docker_client.volumes.get(source_build.CCACHE_VOLUME)


def test_a_module_that_does_not_load_is_one_line_naming_its_symbol(docker_client, tmp_path):
    """A tls.so that builds but wants a symbol its runtime lacks (as 84d09d568e's
    SSL_get0_group_name() on OpenSSL 3.0): the build's load check refuses the
    image, `check` exits 125 with one line naming the module and the symbol."""
    mirror = source_build.Source(SOURCE).mirror
    clone = tmp_path / "noload"
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(mirror), str(clone)], check=True)
    g = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(g + ["checkout", "-q", "-b", "noload", "5.8.5"], check=True)
    with open(clone / "src" / "modules" / "tls" / "tls_mod.c", "a") as f:
        f.write("\nextern int kamleak_no_such_symbol(void);\n"
                "int kamleak_calls_it(void) { return kamleak_no_such_symbol(); }\n")
    subprocess.run(g + ["commit", "-q", "-am", "tls: call a symbol no library has"], check=True)
    head = subprocess.run(g + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    proc = _kamleak("check", "--kamailio-ref", "noload", "--kamailio-source", str(clone),
                    "--variant", "none")
    assert proc.returncode == 125, proc.stdout + proc.stderr[-2000:]
    said = [x for x in (proc.stdout + proc.stderr).splitlines() if "does not load" in x]
    assert said and "tls.so does not load: undefined symbol: kamleak_no_such_symbol on Debian " \
        "bookworm's runtime" in said[-1], proc.stdout + proc.stderr[-2000:]
    assert _builders_of(docker_client, head) == []
    assert not [i for i in docker_client.images.list(source_build.REPO)
                if (i.labels or {}).get(source_build.LABEL_COMMIT) == head], "no image of it kept"


def test_each_build_runs_on_the_suite_upstreams_ci_used(docker_client):
    """5.8.5 on bookworm (OpenSSL 3.0), master on trixie (OpenSSL 3.5, since
    e6812e83): builder and runtime alike, and master's tls.so loads there."""
    for ref, suite in (("5.8.5", "bookworm"), ("master", "trixie")):
        built = source_build.build(docker_client, ref, source=SOURCE)
        labels = docker_client.images.get(built.tag).labels
        # Images made before builds carried their suite were all bookworm's.
        assert labels.get(source_build.LABEL_SUITE, source_build.CI_SUITE) == suite
        assert "tls" in built.modules
        osrel = docker_client.containers.run(built.tag, entrypoint=["cat"], command=["/etc/os-release"],
                                             network_mode="none", remove=True).decode()
        assert f"VERSION_CODENAME={suite}" in osrel, osrel


@pytest.mark.parametrize("args, needle", [
    (["--kamailio-ref", "9.9.9"], "unknown Kamailio ref '9.9.9'"),
    (["--kamailio-ref", "0123456789abcdef"], "unknown Kamailio ref '0123456789abcdef'"),
    (["--kamailio-ref", "5.8.5", "--kamailio-source", "/"], "is not a git repository"),
])
def test_bad_source_input_is_one_line(args, needle):
    proc = _kamleak("check", *args, env={source_build.SOURCE_ENV: SOURCE}, timeout=120)
    assert proc.returncode == 128, proc.stderr    # aborts `git bisect run`: bad input
    lines = proc.stderr.strip().splitlines()
    assert needle in lines[-1] and len([x for x in lines if "unknown" in x or "not a" in x]) == 1


def test_no_network_to_the_default_source(tmp_path):
    try:
        socket.getaddrinfo("github.com", 443)
        pytest.skip("github.com resolves here: the default source may be reachable")
    except OSError:
        pass
    env = {k: v for k, v in os.environ.items() if k != source_build.SOURCE_ENV}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "kamleak.harness.tools.cli", "check", "--kamailio-ref", "5.8.5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 128
    last = proc.stderr.strip().splitlines()[-1]
    assert "cannot reach the Kamailio source https://github.com/kamailio/kamailio.git" in last
    assert "--kamailio-source PATH" in last
