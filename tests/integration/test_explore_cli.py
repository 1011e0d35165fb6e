"""`kamleak explore` as a user meets it, on real Kamailio and Asterisk: Ctrl-C ends a
campaign with its report written and its containers gone (exit 130); `--merge` makes
one report of real shards' --out directories and starts no container; bad input is
one line, exit 128, and leaves nothing behind (no container, no --out)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from junitparser import JUnitXml

from kamleak.harness.stack import containers
from tests.terminal import interrupt_when, interruptible

pytestmark = [pytest.mark.kamailio]

ROOT = Path(__file__).resolve().parents[2]
# The 4140 leak on 6.0.1, found in a few batches (tests/integration/test_explore_shard.py).
LEAKING = ["--kamailio-version", "6.0.1", "--variant", "uac_req_send", "--steps", "invite,bye,pbx_bye,rst,fin,pause",
           "--answers", "answer", "--max-steps", "4", "--budget", "2m", "--jobs", "20", "--replays", "1",
           "--seed", "1"]


def command(*args) -> list[str]:
    return [sys.executable, "-m", "kamleak.harness.tools.cli", "explore", *args]


def explore(*args, env=None, timeout=600) -> tuple[subprocess.CompletedProcess, int]:
    """The CLI's run and its pid: the label on every container it started."""
    # Bytes, decoded here: text mode would turn the live line's \r into \n.
    proc = subprocess.Popen(command(*args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode()), proc.pid


def left_by(client, pid: int) -> list[str]:
    """Containers (any state) that run PID started and left behind."""
    return [c.name for c in containers.started_by(client, pid)]


def created_by(client, pid: int, since: float) -> list[str]:
    """Containers run PID created at all since SINCE (the engine's events, not what is left)."""
    events = client.events(since=int(since) - 1, until=int(time.time()) + 1, decode=True,
                           filters={"type": "container", "event": "create",
                                    "label": f"{containers.LABEL_PID}={pid}"})
    return [e.get("Actor", {}).get("Attributes", {}).get("name") for e in events]


def test_ctrl_c_writes_what_the_campaign_found_so_far_and_removes_its_containers(kamleak_images, docker_client,
                                                                               tmp_path):
    out = tmp_path / "ex"
    env = {k: v for k, v in os.environ.items() if k != "KAMLEAK_PROGRESS"}
    proc = subprocess.Popen(command("--kamailio-version", "6.1.5", "--budget", "5m", "--jobs", "10", "--seed", "3",
                                    "--out", str(out)),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=env, preexec_fn=interruptible)
    # The first batch's line: a Kamailio and Asterisk are up and flows ran.
    _, err = interrupt_when(proc, lambda err: b"[explore] " in err and b" leaked in this batch" in err)
    assert proc.returncode == 130, err.decode()[-3000:]
    assert b"interrupted after" in err and b"our containers were removed" in err, err.decode()[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "Ctrl-C" and summary["flows"] >= 1 and summary["elapsed_s"] > 0, summary
    assert (out / "index.html").is_file()
    (suite,) = JUnitXml.fromfile(str(out / "junit.xml"))
    assert [c.name for c in suite] == [f"no leak in {summary['flows'] - summary['harness_errors']} flows judged"]
    assert left_by(docker_client, proc.pid) == []


def test_merge_of_two_real_shards_is_one_report_and_starts_no_container(kamleak_images, docker_client, tmp_path):
    # Shard 1 on a "terminal" (KAMLEAK_PROGRESS=1): its batches show on the live line, not as lines.
    first, pid1 = explore(*LEAKING, "--shard", "1/2", "--db", str(tmp_path / "db"), "--out", str(tmp_path / "s1"),
                          env={"KAMLEAK_PROGRESS": "1"})
    assert first.returncode == 1, first.stdout + first.stderr[-3000:]
    assert "\rexplore: " in first.stderr and " judged, " in first.stderr and " left\x1b[K" in \
        first.stderr, first.stderr[-2000:]
    assert " leaked in this batch" not in first.stderr
    second, pid2 = explore(*LEAKING, "--shard", "2/2", "--db", str(tmp_path / "db"), "--out", str(tmp_path / "s2"),
                           env={"KAMLEAK_PROGRESS": "0"})
    assert second.returncode == 1, second.stdout + second.stderr[-3000:]
    assert " leaked in this batch" in second.stderr                  # a log keeps its line a batch
    assert left_by(docker_client, pid1) == left_by(docker_client, pid2) == []
    shards = [json.loads((tmp_path / s / "summary.json").read_text()) for s in ("s1", "s2")]
    assert shards[0]["findings"][0]["signature"] == shards[1]["findings"][0]["signature"]

    t0 = time.time()
    merged, pid = explore("--merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "m"),
                          timeout=60)
    assert merged.returncode == 1, merged.stdout + merged.stderr
    assert created_by(docker_client, pid, t0) == []
    (c,) = json.loads((tmp_path / "m" / "summary.json").read_text())["campaigns"]
    (f,) = c["findings"]
    assert f["shards"] == ["1/2", "2/2"] and f["sure"], f
    assert c["flows"] == shards[0]["flows"] + shards[1]["flows"]
    assert (tmp_path / "m" / "finding-1" / "flow.json").is_file()
    (suite,) = JUnitXml.fromfile(str(tmp_path / "m" / "junit.xml"))
    assert (suite.tests, suite.failures) == (1, 1)
    assert f"LEAK: {f['flow']['transport']}: " in merged.stdout and "found by 1/2, 2/2" in merged.stdout


def test_merge_of_a_directory_without_summary_is_one_line(docker_client, tmp_path):
    (tmp_path / "empty").mkdir()
    t0 = time.time()
    proc, pid = explore("--merge", str(tmp_path / "empty"), "--out", str(tmp_path / "m"), timeout=60)
    assert proc.returncode == 128, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"kamleak: {tmp_path / 'empty'} has no summary.json; pass the --out directory of a `kamleak explore` run"]
    assert not (tmp_path / "m").exists() and created_by(docker_client, pid, t0) == []


BROKEN = """
route[KAMLEAK_BROKEN] {
    xlog("L_INFO", "never closed"
}
"""


@pytest.mark.parametrize("args, first_line", [
    (["--transport", "ws,sctp"], "kamleak: unknown transport 'sctp'; use ws, wss, tcp, udp or a comma list of them"),
    # No WebSocket: the contract, every missing item on a line of its own (a route: its lines to paste).
    (["--kamailio-config", "tests/configs/stock/kamailio.orig.cfg"],
     "kamleak: tests/configs/stock/kamailio.orig.cfg: 4 things to change before kamleak can run it"),
    # The contract holds, Kamailio's own parser does not: its line, and the user's line it is about.
    (["--kamailio-config", "{broken}"], "kamleak: {broken} cannot run on debian-6.1.5: kamailio -c: "),
])
def test_bad_input_is_one_line_exit_128_and_leaves_nothing(args, first_line, kamleak_images, docker_client,
                                                          tmp_path):
    broken = tmp_path / "cfg" / "broken.cfg"
    broken.parent.mkdir()
    broken.write_text((ROOT / "tests/configs/stock/kamailio-default-websocket.cfg").read_text() + BROKEN)
    args = [a.format(broken=broken) for a in args]
    proc, pid = explore("--kamailio-version", "6.1.5", *args, "--budget", "1m", "--out", str(tmp_path / "ex"),
                        timeout=120)
    assert proc.returncode == 128, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith(first_line.format(broken=broken)), proc.stderr
    if "4 things" in first_line:
        assert len(lines) == 8 and sum("; add" in ln for ln in lines[1:]) == 4, lines
        assert any('loadmodule "websocket.so"' in ln for ln in lines[1:]) and \
            lines[-3:] == ["      | event_route[xhttp:request] {", "      | \tif (ws_handle_handshake()) exit;",
                           "      | }"], lines
    else:
        assert len(lines) == 1, lines
    if "{broken}" in first_line:
        n = len(broken.read_text().splitlines())          # the `}` Kamailio's parser stops at
        assert "syntax error" in lines[0] and f"(your line {n}: }}); fix your config there" in lines[0], lines
    assert not (tmp_path / "ex").exists() and left_by(docker_client, pid) == []
