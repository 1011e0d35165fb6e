"""`kamleak explore --shard I/N --db redis://` on real Kamailio 6.0.1 (uac_req_send:
the 4140 leak) and a real Redis server (Debian's redis-server on loopback):
shard 1/2 finds the leak and stores its example and finding in Redis; shard 2/2,
another seed, starts from the stored example (Hypothesis's reuse phase) and
finds it with its first flow; an unreachable --db is one line, exit 128,
and starts nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kamleak.harness.stack import containers, ports
from kamleak.harness.tools.explore import db
from tests.redis_server import redis_server  # noqa: F401 - the fixture

pytestmark = [pytest.mark.kamailio]

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGN = ["--kamailio-version", "6.0.1", "--variant", "uac_req_send", "--steps", "invite,bye,pbx_bye,rst,fin,pause",
            "--answers", "answer", "--max-steps", "4", "--budget", "2m", "--jobs", "20", "--replays", "1",
            "--seed", "1"]


def explore(*args, timeout=600) -> tuple[subprocess.CompletedProcess, int]:
    """The CLI's run and its pid: the label on every container it started."""
    proc = subprocess.Popen([sys.executable, "-m", "kamleak.harness.tools.cli", "explore", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def left_by(client, pid: int) -> list[str]:
    """Containers (any state: `docker ps -a`) that run PID started and left behind."""
    return [c.name for c in containers.started_by(client, pid)]


def test_shard_2_starts_from_the_example_shard_1_stored_in_redis(kamleak_images, docker_client, redis_server,
                                                                 tmp_path):
    first, pid = explore(*CAMPAIGN, "--shard", "1/2", "--db", redis_server.url, "--out", str(tmp_path / "s1"))
    assert first.returncode == 1, first.stdout + first.stderr[-3000:]
    assert "shard 1/2: base seed 1 (repeat it with --seed 1 --shard 1/2)" in first.stderr
    (found,) = json.loads((tmp_path / "s1" / "summary.json").read_text())["findings"]
    assert found["sure"] and "BYE" in found["signature"], found
    (published,) = db.findings(redis_server.url)
    assert (published["signature"], published["flow"], published["shard"]) == \
        (found["signature"], found["flow"], "1/2")
    assert published["campaign"]["kamailio"] == "debian-6.0.1" and published["campaign"]["jobs"] == 20
    ns = published["namespace"]
    keys = set(redis_server.client().keys("*"))
    examples = {k for k in keys if k.startswith(f"kamleak-explore:{ns}:".encode())} - \
        {f"kamleak-explore:{ns}:findings".encode()}
    assert examples and keys == examples | {f"kamleak-explore:{ns}:findings".encode()}, keys
    assert left_by(docker_client, pid) == []

    second, pid = explore(*CAMPAIGN, "--shard", "2/2", "--db", redis_server.url, "--out", str(tmp_path / "s2"))
    assert second.returncode == 1, second.stdout + second.stderr[-3000:]
    summary = json.loads((tmp_path / "s2" / "summary.json").read_text())
    (again,) = summary["findings"]
    assert (summary["seed"], summary["shard"]) == (1, "2/2")
    assert again["flow"] == found["flow"] and again["signature"] == found["signature"], again
    # Its first batch is the stored one: the shrunk batch of one flow, judged first.
    assert again["found_after_flows"] == 1 < found["found_after_flows"], (again, found)
    assert sorted(f["shard"] for f in db.findings(redis_server.url, ns)) == ["1/2", "2/2"]
    assert left_by(docker_client, pid) == []


@pytest.mark.parametrize("args, message", [
    (["--db", "redis://127.0.0.1:{free}"], "cannot reach --db redis://127.0.0.1:{free}: Connection refused; "
                                           "start the Redis server or pass a directory"),
    (["--shard", "0/2"], "not a shard: '0/2'"),
    (["--shard", "3/2"], "not a shard: '3/2'"),
    (["--shard", "x"], "not a shard: 'x'"),
])
def test_an_unreachable_db_or_a_bad_shard_is_one_line_and_starts_nothing(args, message, docker_client, tmp_path):
    (free,) = ports.allocate(1)         # nothing listens there
    try:
        proc, pid = explore(*CAMPAIGN, *(a.format(free=free) for a in args), "--out", str(tmp_path / "ex"),
                            timeout=60)
    finally:
        ports.release(free)
    assert proc.returncode == 128, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message.format(free=free) in lines[0], proc.stderr
    assert left_by(docker_client, pid) == [] and os.listdir(tmp_path) == []    # not even --out
