"""Our containers: labelled, host-networked, loopback-only, always removed.

Every container kamleak creates carries labels naming the run and the process
that made it, so `reap_leftovers()` can find what a killed run (SIGKILL) left
behind and remove it, and nothing else on the user's engine is ever touched.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import uuid
from dataclasses import dataclass

import docker
import docker.errors

LABEL_RUN = "org.kamleak.run"
LABEL_PID = "org.kamleak.pid"
LABEL_HOST = "org.kamleak.host"
LABEL_ROLE = "org.kamleak.role"

RUN_ID = os.environ.get("KAMLEAK_RUN_ID") or uuid.uuid4().hex[:12]
# By name, registered *before* the create call: an interrupt that lands after
# the engine made the container but before docker-py returned its handle
# (create is a POST, then an inspect) must not leave it behind.
_live: dict[str, tuple] = {}     # name -> (client, container or None)
_lock = threading.Lock()


def labels(role: str) -> dict[str, str]:
    return {LABEL_RUN: RUN_ID, LABEL_PID: str(os.getpid()),
            LABEL_HOST: socket.gethostname(), LABEL_ROLE: role}


_net_files: dict[str, str] | None = None


def loopback_name_files() -> dict[str, str]:
    """hosts + resolv.conf that keep name lookups on the box.

    With host networking a container gets the host's hosts file; servers that
    look up their own hostname at boot (Asterisk does) would then ask an
    outside DNS server.  We map the hostname to loopback and point the
    resolver at 127.0.0.1, where nothing of ours answers: lookups fail fast
    and locally.
    """
    global _net_files
    if _net_files is None:
        # One directory per user, shared by every kamleak process (the content
        # is the same for all): nothing piles up, not even after a SIGKILL.
        d = os.path.join(tempfile.gettempdir(), f"kamleak-net-{os.getuid()}")
        os.makedirs(d, mode=0o755, exist_ok=True)
        name = socket.gethostname()
        files = {"hosts": f"127.0.0.1\tlocalhost {name}\n::1\tlocalhost ip6-localhost {name}\n",
                 "resolv.conf": "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"}
        for fname, text in files.items():
            path = os.path.join(d, fname)
            try:
                with open(path) as f:
                    if f.read() == text:
                        continue
            except OSError:
                pass
            tmp = f"{path}.{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)      # atomic: a container never mounts half a file
        _net_files = {fname: os.path.join(d, fname) for fname in files}
    return _net_files


def run(client: docker.DockerClient, image: str, *, role: str, name_hint: str,
        command=None, entrypoint=None, mounts: dict[str, str] | None = None,
        environment=None) -> docker.models.containers.Container:
    """Start a detached, host-networked container; `mounts` are read-only."""
    files = loopback_name_files()
    volumes = {files["hosts"]: {"bind": "/etc/hosts", "mode": "ro"},
               files["resolv.conf"]: {"bind": "/etc/resolv.conf", "mode": "ro"}}
    for host_path, target in (mounts or {}).items():
        volumes[host_path] = {"bind": target, "mode": "ro"}
    name = f"kamleak-{role}-{name_hint}-{uuid.uuid4().hex[:6]}"
    with _lock:
        _live[name] = (client, None)
    container = client.containers.create(
        image, command=command, entrypoint=entrypoint, name=name,
        labels=labels(role), network_mode="host", volumes=volumes,
        environment=environment, detach=True, init=True,
        # No privileges beyond Docker's defaults; nothing to keep: the logs
        # are collected before removal.
        privileged=False)
    with _lock:
        _live[name] = (client, container)
    try:
        container.start()
    except Exception:
        remove(container)
        raise
    return container


def create(client: docker.DockerClient, image: str, *, role: str, name_hint: str, **kwargs):
    """Create (not start) a container with our labels and any other settings
    (e.g. a builder with network_mode="none"), registered for cleanup first."""
    name = f"kamleak-{role}-{name_hint}-{uuid.uuid4().hex[:6]}"
    with _lock:
        _live[name] = (client, None)
    try:
        container = client.containers.create(image, name=name, labels=labels(role), **kwargs)
    except BaseException:
        with _lock:
            _live.pop(name, None)
        try:
            client.api.remove_container(name, force=True, v=True)
        except docker.errors.DockerException:
            pass
        raise
    with _lock:
        _live[name] = (client, container)
    return container


def is_running(container) -> bool:
    try:
        container.reload()
    except docker.errors.NotFound:
        return False
    return container.status == "running"


def exit_code(container) -> int | None:
    try:
        container.reload()
    except docker.errors.NotFound:
        return None
    return container.attrs.get("State", {}).get("ExitCode")


def logs(container, since: float | None = None) -> str:
    try:
        kwargs = {"since": int(since)} if since else {}
        return container.logs(stdout=True, stderr=True, timestamps=False, **kwargs).decode(
            "utf-8", "replace")
    except docker.errors.APIError:
        return ""


def remove(container) -> None:
    with _lock:
        _live.pop(container.name, None)
    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:  # removal already in progress
        if "already in progress" not in str(exc):
            raise


def remove_all_live() -> int:
    """Remove every container this process started and has not removed."""
    with _lock:
        victims = list(_live.items())
    for name, (client, c) in victims:
        try:
            if c is not None:
                remove(c)
                continue
            with _lock:
                _live.pop(name, None)
            client.api.remove_container(name, force=True, v=True)   # no handle yet
        except docker.errors.DockerException:
            pass
    return len(victims)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Listed:
    """One row of the engine's container list: enough to name, filter and remove it."""
    id: str
    name: str
    labels: dict


def listing(client: docker.DockerClient, *label_filters: str) -> list[Listed]:
    """Containers (running or not) matching every label filter, from one list call.

    docker-py's containers.list() inspects each container after listing it, so a
    container removed in between (a build step, a parallel run's cleanup) raises
    NotFound; the raw list has everything we need and no such window.
    """
    rows = client.api.containers(all=True, filters={"label": list(label_filters)} if label_filters else None)
    return [Listed(r["Id"], (r.get("Names") or ["?"])[0].lstrip("/"), r.get("Labels") or {}) for r in rows]


def started_by(client: docker.DockerClient, pid: int) -> list[Listed]:
    """Containers (running or not) that kamleak process PID on this host started:
    what a run must have removed by the time it exits."""
    return listing(client, f"{LABEL_PID}={pid}", f"{LABEL_HOST}={socket.gethostname()}")


def left_behind(client: docker.DockerClient) -> list[Listed]:
    """Containers of kamleak runs on this host whose process is gone (killed runs).
    A live run's containers are not: the engine may be shared with it."""
    out = []
    for c in listing(client, LABEL_RUN, f"{LABEL_HOST}={socket.gethostname()}"):
        pid = int(c.labels.get(LABEL_PID, "0") or 0)
        if pid != os.getpid() and not (pid and _pid_alive(pid)):
            out.append(c)
    return out


def reap_leftovers(client: docker.DockerClient, log=print) -> int:
    """Remove containers of earlier kamleak runs on this host whose process is gone."""
    reaped = 0
    for c in left_behind(client):
        try:
            client.api.remove_container(c.id, force=True, v=True)
            reaped += 1
        except docker.errors.DockerException:
            continue
    if reaped:
        log(f"removed {reaped} container(s) left behind by an earlier, killed run")
    reap_workdirs()
    from kamleak.harness.stack import netdrop
    dropped = netdrop.reap_dead(_pid_alive)
    if dropped:
        log(f"removed {dropped} loopback drop rule(s) left behind by an earlier, killed run")
    return reaped


WORKDIR_PREFIX = "kamleak-run-"


def workdir() -> str:
    """A scratch directory named after this process, so a later run can reap it."""
    return tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-")


def reap_workdirs() -> int:
    """Remove scratch directories of kamleak processes that are gone (killed runs)."""
    import shutil

    base, removed = tempfile.gettempdir(), 0
    for entry in os.listdir(base):
        if not entry.startswith(WORKDIR_PREFIX):
            continue
        pid = entry[len(WORKDIR_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        shutil.rmtree(os.path.join(base, entry), ignore_errors=True)
        removed += 1
    return removed


def exec_run(container, cmd: list[str], timeout: float = 10.0) -> tuple[int, str]:
    """`docker exec`, with a wall-clock bound enforced by the command itself."""
    full = ["timeout", f"{max(1, int(timeout))}"] + cmd
    try:
        rc, out = container.exec_run(full, stdout=True, stderr=True)
    except docker.errors.APIError as exc:
        return 255, str(exc)
    return rc, out.decode("utf-8", "replace")


class Running:
    """A started container of ours: is it alive, what did it log, remove it.

    The log is kept after removal, so a report made later still has it.
    """

    def __init__(self, container, what: str):
        self.container = container
        self.what = what
        self._log = ""

    def death(self) -> str | None:
        if self.container is None:
            return f"the {self.what} container was removed"
        if is_running(self.container):
            return None
        if self.container.status == "paused":     # docker pause: frozen, not dead
            return f"the {self.what} container was paused (docker pause): it answers nothing"
        return f"the {self.what} container exited with code {exit_code(self.container)}"

    def log(self) -> str:
        if self.container is not None:
            text = logs(self.container)
            if text:
                self._log = text
        return self._log

    def exec(self, cmd: list[str], timeout: float = 10.0) -> tuple[int, str]:
        return exec_run(self.container, cmd, timeout=timeout)

    def stop(self) -> None:
        if self.container is not None:
            self.log()
            remove(self.container)
            self.container = None
