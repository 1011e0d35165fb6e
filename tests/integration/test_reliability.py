"""Boringly reliable: interrupted runs leave nothing, listeners stay on loopback.

Interrupts hit a real `kamleak check` at several points (while the servers
start, while the oracle waits out its deadline) with SIGINT and SIGTERM; a
SIGKILLed run's containers are found and removed by the next run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kamleak.harness.stack import containers
from kamleak.harness.wait import poll
from tests.terminal import interruptible

# These tests look at every container and builder on the engine: not beside xdist workers.
pytestmark = pytest.mark.serial

ROOT = Path(__file__).resolve().parents[2]


class Run:
    """`kamleak check` in the background, its stderr collected as it comes."""

    def __init__(self, *args):
        env = {**os.environ, "KAMLEAK_PROGRESS": "1"}  # the countdown shows where it is
        self.proc = subprocess.Popen([sys.executable, "-m", "kamleak.harness.tools.cli", "check", *args],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     preexec_fn=interruptible)
        self.err = b""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while chunk := os.read(self.proc.stderr.fileno(), 4096):
            self.err += chunk

    def wait_for(self, text: str, timeout: float = 120):
        poll(lambda: text.encode() in self.err, timeout=timeout, what=f"'{text}' from kamleak",
             abort=lambda: f"exited {self.proc.returncode}" if self.proc.poll() is not None else None)


def ours(client, pid: int) -> list:
    return containers.started_by(client, pid)


@pytest.mark.parametrize("sig, when", [
    (signal.SIGINT, "watching the BYE cell"),   # during the deadline wait
    (signal.SIGTERM, "watching the BYE cell"),
    (signal.SIGINT, None),                      # while engine, PBX and Kamailio start
])
def test_interrupted_check_removes_its_containers(docker_client, kamleak_images, sig, when):
    run = Run("--kamailio-version", "6.0.1", "--variant", "uac_req_send")
    if when:
        run.wait_for(when)
    else:
        poll(lambda: ours(docker_client, run.proc.pid), timeout=60,
             what="the run's first container")
    run.proc.send_signal(sig)
    assert run.proc.wait(60) == 130
    assert b"interrupted; our containers were removed" in run.err
    assert ours(docker_client, run.proc.pid) == []


def test_a_killed_run_is_cleaned_up_by_the_next(docker_client, kamleak_images):
    run = Run("--kamailio-version", "6.0.1", "--variant", "uac_req_send")
    run.wait_for("watching the BYE cell")
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait(30)
    left = ours(docker_client, run.proc.pid)
    assert len(left) == 2, "a SIGKILLed run leaves its Kamailio and Asterisk behind"
    import tempfile
    scratch = [d for d in os.listdir(tempfile.gettempdir())
               if d.startswith(f"{containers.WORKDIR_PREFIX}{run.proc.pid}-")]
    assert len(scratch) == 1, "... and its scratch directory"
    proc = subprocess.run([sys.executable, "-m", "kamleak.harness.tools.cli", "cleanup"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "removed 2 container(s) left behind by an earlier, killed run" in proc.stderr
    assert ours(docker_client, run.proc.pid) == []
    # ... and its scratch directory (configs, certificates) goes with them.
    assert not os.path.exists(os.path.join(tempfile.gettempdir(), scratch[0]))


def pids_of(container) -> set[int]:
    """Host PIDs of a container's processes (`docker top`)."""
    top = container.top()
    col = top["Titles"].index("PID")
    return {int(row[col]) for row in top["Processes"]}


def listening(pids: set[int]) -> list[tuple[str, str]]:
    """(proto, local address) of every socket those processes listen on (host network)."""
    import re
    out = subprocess.run(["ss", "-H", "-lntup"], capture_output=True, text=True).stdout
    socks = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            parts = line.split()
            socks.append((parts[0], parts[4]))
    return socks


@pytest.mark.single_target
def test_every_listener_of_ours_is_on_loopback(kamailio, pbx):
    kam = listening(pids_of(kamailio.running.container))
    assert kam, "Kamailio's sockets are visible on the host (host networking)"
    assert all(addr.startswith("127.0.0.1:") for _, addr in kam), kam
    ports = {int(addr.rsplit(":", 1)[1]) for _, addr in kam}
    cfg = kamailio.config
    assert {cfg.udp_port, cfg.ws_port, cfg.wss_port, cfg.rpc_port} <= ports

    ast = listening(pids_of(pbx.running.container))
    assert ("udp", f"127.0.0.1:{pbx.sip_port}") in ast
    assert not [s for s in ast if s[0] == "tcp"], "Asterisk listens on no TCP port"
    # pjsip opens two idle UDP sockets on wildcard addresses that no config
    # setting binds to loopback (README, "what we cannot close"): at most those.
    wildcard = [s for s in ast if not s[1].startswith(("127.0.0.1:", "[::1]:"))]
    assert len(wildcard) <= 2 and all(p == "udp" for p, _ in wildcard), wildcard


@pytest.mark.single_target
def test_containers_are_unprivileged_and_mount_read_only(docker_client, kamailio, pbx):
    mine = docker_client.containers.list(filters={"label": f"{containers.LABEL_PID}={os.getpid()}"})
    assert {c.labels[containers.LABEL_ROLE] for c in mine} >= {"kamailio", "asterisk"}
    for c in mine:
        host = c.attrs["HostConfig"]
        assert host["Privileged"] is False and not host.get("CapAdd")
        assert host["NetworkMode"] == "host"
        assert c.attrs["Mounts"] and all(m["RW"] is False for m in c.attrs["Mounts"]), c.name


def test_repeated_gates_give_identical_verdicts(kamleak_images, tmp_path):
    """A reduced stability check (the full one: 50 repeats each, see the README)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/gate/test_gh4140_bye_to_closed_ws.py",
         "-p", "no:cacheprovider", "--kamailio-version", "6.0.1,6.1.5", "--transport", "ws",
         "--kamleak-repeat", "3", f"--kamleak-artifacts={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:]   # 6.0.1 leaks: the gate fails
    counts = proc.stdout.split("kamleak repeat: verdict counts", 1)[1]
    assert "stable   leak 3/3  tests/gate/test_gh4140_bye_to_closed_ws.py::test_gh4140_bye_to_closed_ws[debian-6.0.1-ws-pua_dialoginfo]" in counts
    assert "stable   clean 3/3  tests/gate/test_gh4140_bye_to_closed_ws.py::test_gh4140_bye_to_closed_ws[debian-6.1.5-ws-pua_dialoginfo]" in counts
    assert "UNSTABLE" not in counts


SLOW_BUILD = """
import sys
from pathlib import Path
from kamleak.harness.stack import engine, images
spec = images.ImageSpec(tag="kamleak-test/slow:1", context=Path(sys.argv[1]),
                        base="debian:bookworm-slim", title="slow")
try:
    images.build(engine.client(), spec)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_interrupt_during_an_image_build_leaves_no_build_container(docker_client, kamleak_images,
                                                                   tmp_path):
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM debian:bookworm-slim\nRUN sleep 120\n")
    before = {c.id for c in containers.listing(docker_client)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_BUILD, str(tmp_path / "ctx")], cwd=ROOT,
                            env={**os.environ, "KAMLEAK_PROGRESS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=interruptible)
    seen = ""
    while "Step 2/" not in seen:        # the RUN step is running in a build container
        line = proc.stdout.readline()
        assert line, seen
        seen += line
    poll(lambda: {c.id for c in containers.listing(docker_client)} - before, timeout=30,
         what="the build container")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130
    poll(lambda: not ({c.id for c in containers.listing(docker_client)} - before),
         timeout=30, what="the engine removing the cancelled build's container")
    assert docker_client.images.list("kamleak-test/slow") == []


def test_the_matrix_under_xdist_gives_the_same_verdicts(kamleak_images, tmp_path):
    """pytest -n 2: per-worker ports, containers and Asterisk; one summary."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/gate/test_verdict_matrix.py", "-n", "2",
         "-p", "no:cacheprovider", "--kamailio-version", "6.0.1", "--transport", "ws",
         "-k", "test_verdict_matches_real_kamailio and (uac_req_send or none)",
         f"--kamleak-artifacts={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    import json
    summary = json.loads(next(tmp_path.glob("latest/summary.json")).read_text())
    outcomes = {(r["variant"], r["outcome"]) for r in summary}
    assert ("uac_req_send", "leak") in outcomes and ("none", "clean") in outcomes
    assert ("uac_req_send+send_reply_error", "clean") in outcomes
    assert len(summary) == 4, "both workers' verdicts are merged (delayed_reply_off: n/a)"


def test_a_container_without_a_handle_yet_is_removed_too(docker_client, kamleak_images, monkeypatch):
    """An interrupt can land after the engine created a container and before
    docker-py handed it back; cleanup finds it by the name registered first."""
    import uuid

    name = f"kamleak-test-nohandle-{uuid.uuid4().hex[:6]}"
    # Only this entry: the session's own PBX and Kamailios must stay up.
    monkeypatch.setattr(containers, "_live", {name: (docker_client, None)})  # as run() registers it
    docker_client.api.create_container(kamleak_images[0].tag, name=name, command="true",
                                       labels=containers.labels("test"))
    assert containers.remove_all_live() == 1
    assert not [c for c in containers.listing(docker_client) if c.name == name]


def test_drop_rules_of_a_killed_run_are_reaped():
    """A SIGKILLed run cannot remove its iptables drop rules; the next run does."""
    from kamleak.harness.stack import netdrop
    if netdrop.available():
        pytest.skip(netdrop.available())
    dead = subprocess.Popen(["true"])
    dead.wait()
    rule = ["-o", "lo", "-p", "tcp", "-s", "127.0.0.1", "--sport", "9", "-d", "127.0.0.1",
            "--dport", "9", "-m", "comment", "--comment", f"kamleak-drop-{dead.pid}", "-j", "DROP"]
    assert subprocess.run(["iptables", "-w", "5", "-I", "OUTPUT", *rule]).returncode == 0
    try:
        assert netdrop.reap_dead(containers._pid_alive) >= 1
        listed = subprocess.run(["iptables", "-S", "OUTPUT"], capture_output=True, text=True).stdout
        assert f"kamleak-drop-{dead.pid}" not in listed
    finally:
        while subprocess.run(["iptables", "-w", "5", "-D", "OUTPUT", *rule],
                             capture_output=True).returncode == 0:
            pass
