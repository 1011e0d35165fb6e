"""The Docker engine: find it, or start a private one where we may.

Users have an engine and we only ever create and remove our own labelled
containers and images on it.  On CI and fresh machines (root, nothing
answering) we start `dockerd` ourselves: overlay2 without a bridge or iptables
(host networking only), vfs as the fallback, logging to a file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import docker
import docker.errors

from kamleak.harness.errors import DockerUnavailable
from kamleak.harness.wait import WaitTimeout, poll

STATE_DIR = os.environ.get("KAMLEAK_STATE_DIR", "/var/lib/kamleak" if os.geteuid() == 0 else
                           os.path.expanduser("~/.cache/kamleak"))
DOCKERD_LOG = os.path.join(STATE_DIR, "dockerd.log")

HOW_TO_START = ("start Docker (e.g. `sudo systemctl start docker`), or run `make setup` "
                "as root to start a private engine")


def _connect() -> docker.DockerClient | None:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except (docker.errors.DockerException, OSError):
        return None


def may_start_engine() -> bool:
    """Starting an engine is for CI and fresh boxes, never a user's desktop."""
    wanted = os.environ.get("KAMLEAK_START_DOCKER", "auto").lower()
    if wanted in ("0", "no", "never"):
        return False
    if wanted in ("1", "yes", "always"):
        return True
    if os.geteuid() != 0:
        return False
    # CI, or a box without systemd (a container, a fresh VM image): nobody
    # else manages an engine here.  On a systemd desktop we explain instead.
    return os.environ.get("CI", "").lower() in ("true", "1", "yes") or \
        not os.path.isdir("/run/systemd/system")


def start_dockerd(log=print) -> None:
    dockerd = shutil.which("dockerd")
    if not dockerd:
        raise DockerUnavailable("no Docker engine answers and `dockerd` is not installed",
                                "install Debian's docker.io (`make setup` does) or " + HOW_TO_START)
    if os.environ.get("DOCKER_HOST"):
        raise DockerUnavailable(f"no Docker engine answers at DOCKER_HOST={os.environ['DOCKER_HOST']}",
                                "start that engine or unset DOCKER_HOST")
    os.makedirs(STATE_DIR, exist_ok=True)
    for driver in ("overlay2", "vfs"):
        log(f"kamleak: starting a private Docker engine (storage {driver}, log {DOCKERD_LOG})")
        with open(DOCKERD_LOG, "ab") as out:
            proc = subprocess.Popen(
                [dockerd, f"--storage-driver={driver}", "--bridge=none", "--iptables=false"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)  # outlives us: the image cache is the point

        def exited(proc=proc):
            return f"dockerd exited with {proc.returncode}" if proc.poll() is not None else None

        try:
            poll(_connect, timeout=60, what="the Docker engine to answer", abort=exited)
            return
        except Exception:  # noqa: BLE001 - try the next storage driver
            if proc.poll() is None:
                proc.terminate()
                proc.wait(20)
    raise DockerUnavailable(f"a private dockerd would not start (see {DOCKERD_LOG})",
                            HOW_TO_START)


_client: docker.DockerClient | None = None


def client(*, start: bool | None = None, log=None) -> docker.DockerClient:
    """A connected Docker client, starting an engine if allowed."""
    global _client
    if _client is not None:
        return _client
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    found = _connect()
    if found is None:
        if not (may_start_engine() if start is None else start):
            raise DockerUnavailable("no Docker engine answers", HOW_TO_START)
        start_dockerd(log)
        found = _connect()
        if found is None:  # pragma: no cover - poll above already proved it
            raise DockerUnavailable("the Docker engine stopped answering", HOW_TO_START)
    _client = found
    return _client


def engine_summary(c: docker.DockerClient) -> str:
    info = c.info()
    return f"Docker {info.get('ServerVersion')} ({info.get('Driver')})"


__all__ = ["client", "start_dockerd", "may_start_engine", "WaitTimeout", "STATE_DIR"]
