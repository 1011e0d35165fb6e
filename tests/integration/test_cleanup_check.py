"""`kamleak cleanup --check` on an engine shared with a live run: only the
containers of runs that are gone count (containers.left_behind)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import docker.errors
import pytest

from kamleak.harness.stack import containers, images

ROOT = Path(__file__).resolve().parents[2]


def _cleanup_check() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kamleak.harness.tools.cli", "cleanup", "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def _exists(client, cid: str) -> bool:
    try:
        client.api.inspect_container(cid)
    except docker.errors.NotFound:
        return False
    return True


def _dead_runs_container(client, image: str) -> tuple[str, str]:
    """A container labelled as a kamleak run on this host whose process has exited."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    name = f"kamleak-check-dead-{gone.pid}"
    cid = client.api.create_container(
        image, name=name, host_config=client.api.create_host_config(network_mode="none"),
        labels={**containers.labels("check"), containers.LABEL_PID: str(gone.pid),
                containers.LABEL_HOST: socket.gethostname()})["Id"]
    return cid, name


# The other kamleak runs of the suite must not reap the dead run's container first.
@pytest.mark.serial
def test_a_live_runs_containers_pass_the_check_a_dead_runs_fail_it(docker_client, kamleak_images):
    image = images.asterisk_spec().tag
    # This pytest process is a live kamleak run: its container carries its pid.
    live = containers.create(docker_client, image, role="check", name_hint="live",
                             network_mode="none")
    dead = None
    try:
        for _ in range(3):
            dead, name = _dead_runs_container(docker_client, image)
            assert dead in {c.id for c in containers.left_behind(docker_client)}
            assert live.id not in {c.id for c in containers.left_behind(docker_client)}
            first = _cleanup_check()
            if name in first.stderr:
                break
            # Any kamleak run on this engine reaps a dead run's containers when it
            # starts: one that started in between took this one first.
            assert not _exists(docker_client, dead), first.stderr
        else:
            pytest.skip("another kamleak run on this engine reaped the dead run's container "
                        "before the check, three times")
        assert first.returncode == 1, first.stderr
        assert "left behind by runs that are gone" in first.stderr
        assert not _exists(docker_client, dead), "--check removes what it found left behind"
        assert _exists(docker_client, live.id), "a live run's container is never touched"
        second = _cleanup_check()
        assert second.returncode == 0, second.stderr
        assert "no kamleak containers left behind (" in second.stderr
        assert _exists(docker_client, live.id)
    finally:
        containers.remove(live)
        if dead and _exists(docker_client, dead):
            docker_client.api.remove_container(dead, force=True)
