"""A Kamailio the harness runs: in a container (any image) or a local binary.

Both bring the harness's own config (rendered into a run directory), listen
on loopback ports allocated for this run, and are ready when JSON-RPC answers
`core.version`.  If Kamailio exits while we wait, its own error line is what
the user sees.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from kamleak.harness.errors import RPCError, ServerError
from kamleak.harness.probes.rpc import KamailioRPC
from kamleak.harness.probes.transport import connect
from kamleak.harness.stack import containers
from kamleak.harness.stack.kamailio.config import HOST, KamailioConfig
from kamleak.harness.wait import AbortedWait, WaitTimeout, poll, stop_process

CONTAINER_DIR = "/etc/kamleak"

_ERROR_HINTS = ("Address already in use", "parse error", "not found in module", "unknown command",
                "could not find module", "bad config", "cannot", "failed to", "error in config", "bind(")


def refusal_line(log: str) -> str | None:
    """Kamailio's own reason for not starting, from its log (or None)."""
    errors = [ln for ln in log.splitlines() if re.search(r"\b(ERROR|CRITICAL|ALERT|BUG)\b", ln)]
    if not errors:
        return None
    for hint in _ERROR_HINTS:
        for ln in errors:
            if hint in ln:
                return _clean(ln)
    return _clean(errors[0])


def _clean(line: str) -> str:
    m = re.search(r"\b(ERROR|CRITICAL|ALERT|BUG):.*", line)
    return (m.group(0) if m else line).strip()


# Log lines after which Kamailio runs but will never answer our JSON-RPC probe
# (jsonrpcs_mod.c: jsonrpcs loaded without HTTP in its `transport`).
_RPC_FATAL = ("jsonrpc over http not initialized", "cannot bind to XHTTP API")


def rpc_reason(log: str, limit: int = 2) -> str | None:
    """Kamailio's own ERROR/CRITICAL lines (fatal-for-RPC ones first), joined."""
    seen: list[str] = []
    for ln in log.splitlines():
        if re.search(r"\b(ERROR|CRITICAL|ALERT|BUG)\b", ln):
            line = _clean(ln)
            if line not in seen:
                seen.append(line)
    seen.sort(key=lambda ln: not any(f in ln for f in _RPC_FATAL))
    return " | ".join(seen[:limit]) or None


def rpc_fatal(log: str) -> str | None:
    return next((_clean(ln) for ln in log.splitlines() if any(f in ln for f in _RPC_FATAL)), None)


def provided(kamailios) -> list[str]:
    """What kamleak added to a user's config for these Kamailios (the report), each once."""
    return list(dict.fromkeys(p for k in kamailios for p in k.provided))


def is_bind_error(line: str | None) -> bool:
    return bool(line) and ("Address already in use" in line or "bind(" in line)


class Kamailio:
    """Common behaviour; subclasses say how the process runs."""

    kind = "kamailio"
    target = None       # the harness.stack.targets.Target it was started from, if any

    def __init__(self, config: KamailioConfig, run_dir: str | os.PathLike):
        self.config = config
        self.run_dir = Path(run_dir)
        # JSON-RPC over HTTP, or ctl's BINRPC where a user's config serves no JSON-RPC
        # (KamailioConfig.ctl_socket): the watcher's one transport interface.
        self.rpc = connect(config.ctl_socket) if config.ctl_socket else \
            KamailioRPC(f"http://{HOST}:{config.rpc_port or config.ws_port}/RPC")
        self.rpc_name = "BINRPC" if config.ctl_socket else "JSON-RPC"
        self.provided: list[str] = []      # what kamleak added to a user's config (the report)
        self.version: str | None = None
        self.started_at: float | None = None
        self.ready_after: float | None = None

    # URLs clients use
    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.config.ws_port}/"

    @property
    def wss_url(self) -> str:
        return f"wss://{HOST}:{self.config.wss_port}/"

    def url(self, transport: str) -> str:
        """The URL a client of TRANSPORT (ws, wss, tcp, udp: harness.sip's UA) connects to.
        Plain SIP over TCP shares the WS port's listener (Kamailio tells HTTP from SIP)."""
        if transport == "tcp":
            return f"tcp://{HOST}:{self.config.ws_port}"
        if transport == "udp":
            return f"udp://{HOST}:{self.config.udp_port}"
        return self.wss_url if transport == "wss" else self.ws_url

    # -- lifecycle -------------------------------------------------------
    def start(self, timeout: float = 30.0) -> Kamailio:
        user = self.config.user_config
        if user is not None:
            self.config.provisions = tuple(p for p in user.provisions if not self.has_file(p.path))
        self.provided = self.config.provided()
        self.config.write(self.run_dir)
        self.started_at = time.monotonic()
        self._launch()
        fatal: list[str] = []
        try:
            self.version = poll(self._startup_probe(fatal), timeout=timeout,
                                what="Kamailio answering core.version", retry_on=(RPCError,),
                                abort=self._rpc_abort(fatal))
        except AbortedWait:
            log = self.log()
            if fatal:
                self.stop()
                if isinstance(fatal[0], RPCError):
                    raise ServerError(f"Kamailio runs but its event_route[xhttp:request] does not "
                                      f"serve JSON-RPC to kamleak: {fatal[0].cause}",
                                      "call jsonrpc_dispatch() for /RPC from 127.0.0.1 "
                                      "(README, 'Your own kamailio.cfg')", log=log) from None
                raise ServerError(f"Kamailio runs but cannot answer JSON-RPC on {self.rpc.url}: "
                                  f"{fatal[0]}", 'serve it over HTTP: modparam("jsonrpcs", '
                                  '"transport", 7) (or any value with bit 1), and jsonrpc_dispatch() '
                                  "for /RPC in event_route[xhttp:request]", log=log) from None
            line = refusal_line(log) or "no error line in its log"
            self.stop()
            if is_bind_error(line):
                raise ServerError(f"Kamailio could not bind {self._bind_target(line)}: "
                                  "the port is already taken", "free it or run again (ports are "
                                  "chosen anew)", log=log) from None
            raise ServerError(f"Kamailio refused to start: {line}{self._config_line(line)}",
                              self._refusal_fix(line), log=log) from None
        except WaitTimeout:
            log = self.log()
            self.stop()
            reason = rpc_reason(log)
            raise ServerError(f"Kamailio did not answer {self.rpc_name} on {self.rpc.url} within "
                              f"{timeout:.0f} s ({'its log: ' + reason if reason else 'no error line in its log'})",
                              "see the Kamailio log", log=log) from None
        self.ready_after = time.monotonic() - self.started_at
        return self

    def _bind_target(self, line: str) -> str:
        """The socket a bind error is about.  tcp_init() names it
        (`on 127.0.0.1:N :` on 5.6.3, `on [127.0.0.1]:N : (98 / ...)` on 6.0.1/6.1.5);
        udp_init() names the address only (`on 127.0.0.1: Address already in use`,
        all three), and the config has one UDP listener: ours."""
        m = re.search(r"on \[?([\d.]+)\]?:(\d+)", line)
        if m:
            return f"{m.group(1)}:{m.group(2)}"
        if "udp_init" in line:
            return f"{HOST}:{self.config.udp_port} (UDP)"
        return f"{HOST} (Kamailio's log names no port: {line})"

    def _startup_probe(self, fatal: list):
        """_probe, but an HTTP answer that is not JSON-RPC (say, 403 from the config's
        xhttp route) is final: the route is up and will answer the same way."""
        def probe() -> str | None:
            try:
                return self._probe()
            except RPCError as exc:
                if "answered HTTP" in exc.cause or "malformed JSON" in exc.cause:
                    fatal.append(exc)
                raise
        return probe

    def _rpc_abort(self, fatal: list):
        """poll()'s abort: Kamailio died, or its log already says RPC will not
        answer (read at most every 0.5 s: a container's log is an API call)."""
        last = [0.0]

        def abort() -> str | None:
            dead = self.death()
            if dead:
                return dead
            if fatal:
                return str(fatal[0])
            now = time.monotonic()
            if now - last[0] >= 0.5:
                last[0] = now
                line = rpc_fatal(self.log())
                if line:
                    fatal.append(line)
                    return line
            return None
        return abort

    def _refusal_fix(self, line: str) -> str:
        """What to do about Kamailio's refusal; a user's own TLS config that exists where
        Kamailio runs is used as it is, and may name certificates that do not."""
        user = self.config.user_config
        if user is not None and user.tls_config and not self.config.tls_provided \
                and re.search(r"\btls\b", line):
            return (f"your {user.tls_config} is there and was used; for kamleak's TLS config "
                    'set modparam("tls", "config", "KAMLEAK_DIR/tls.cfg") under #!ifdef KAMLEAK '
                    "(docs/config.md, 'The lines to paste')")
        return "see the Kamailio log"

    def _config_line(self, error: str) -> str:
        """` (your line 278: t_reply_error();)` when the error names a config line."""
        m = re.search(r"line (\d+)", error)
        return self.config.cite(int(m.group(1))) if m else ""

    def _probe(self) -> str | None:
        return self.rpc.core_version() or None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- to implement -----------------------------------------------------
    def _launch(self) -> None:
        raise NotImplementedError

    def has_file(self, path: str) -> bool:
        """Whether PATH exists where Kamailio runs (a file a user's config names)."""
        raise NotImplementedError

    def death(self) -> str | None:
        """A reason if Kamailio is no longer running, else None."""
        raise NotImplementedError

    def log(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def build_id(self) -> str:
        raise NotImplementedError


# (image, path) -> exists: an image's files do not change under a tag kamleak runs.
_IMAGE_FILES: dict[tuple[str, str], bool] = {}


class ContainerKamailio(Kamailio):
    """Kamailio inside IMAGE, whatever built it: we only need `kamailio`."""

    def __init__(self, client, image: str, config: KamailioConfig, run_dir, name_hint="k"):
        config.target_dir = CONTAINER_DIR
        super().__init__(config, run_dir)
        self.client = client
        self.image = image
        self.name_hint = name_hint
        self.running: containers.Running | None = None

    def _launch(self) -> None:
        import docker.errors
        try:
            self.running = containers.Running(containers.run(
                self.client, self.image, role="kamailio", name_hint=self.name_hint,
                entrypoint=["kamailio"],
                command=["-DD", "-E", "-f", f"{CONTAINER_DIR}/kamailio.cfg"],
                mounts={str(self.run_dir): CONTAINER_DIR}), "Kamailio")
        except docker.errors.ImageNotFound:
            raise ServerError(f"image {self.image} not found",
                              f"build it (`make images`) or pull it (`docker pull {self.image}`)") from None
        except docker.errors.APIError as exc:
            if "executable file not found" in str(exc) or "no such file" in str(exc).lower():
                raise ServerError(f"image {self.image} has no kamailio binary in its PATH",
                                  "pass an image that contains Kamailio") from None
            raise ServerError(f"cannot start a container from {self.image}: "
                              f"{str(exc).splitlines()[-1][:200]}") from None

    def has_file(self, path: str) -> bool:
        # Asked of a created, never started container of the image (no process runs).
        import docker.errors
        key = (self.image, path)
        if key not in _IMAGE_FILES:
            c = containers.create(self.client, self.image, role="kamailio", name_hint="files")
            try:
                c.get_archive(path)
                _IMAGE_FILES[key] = True
            except docker.errors.NotFound:
                _IMAGE_FILES[key] = False
            finally:
                containers.remove(c)
        return _IMAGE_FILES[key]

    def death(self) -> str | None:
        return self.running.death() if self.running else "Kamailio was never started"

    def log(self) -> str:
        return self.running.log() if self.running else ""

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop()

    def describe(self) -> str:
        return f"{self.version or 'kamailio'} in {self.image}"

    def build_id(self) -> str:
        """The image's ID (sha256:…): which build exactly gave the verdict."""
        try:
            return self.client.images.get(self.image).id
        except Exception:  # noqa: BLE001 - evidence, not a reason to fail
            return ""


class LocalKamailio(Kamailio):
    """A kamailio binary on this host (e.g. a source tree under `git bisect run`)."""

    def __init__(self, binary: str, config: KamailioConfig, run_dir, module_dir: str | None = None):
        config.target_dir = str(Path(run_dir).resolve())
        super().__init__(config, run_dir)
        self.binary = binary
        self.module_dir = module_dir
        self.proc: subprocess.Popen | None = None
        self.log_path = self.run_dir / "kamailio.log"

    def _launch(self) -> None:
        (self.run_dir / "run").mkdir(parents=True, exist_ok=True)
        # -Y: our own runtime dir, never the system's /run/kamailio.
        cmd = [self.binary, "-DD", "-E", "-f", str(self.run_dir / "kamailio.cfg"),
               "-Y", str((self.run_dir / "run").resolve())]
        if self.module_dir:
            cmd += ["-L", self.module_dir]
        with open(self.log_path, "wb") as out:
            try:
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:
                raise ServerError(f"cannot run {self.binary}: {exc.strerror}",
                                  "pass the path of a built kamailio binary") from None

    def has_file(self, path: str) -> bool:
        return os.path.exists(path)

    def death(self) -> str | None:
        if self.proc is None:
            return "never started"
        rc = self.proc.poll()
        return None if rc is None else f"kamailio exited with code {rc}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        # Kamailio's main process stops its children on SIGTERM.
        stop_process(self.proc, group=True)
        self.proc = None

    def describe(self) -> str:
        return f"{self.version or 'kamailio'} ({self.binary})"

    def build_id(self) -> str:
        """sha256 of the binary: which build exactly gave the verdict."""
        import hashlib
        try:
            with open(self.binary, "rb") as f:
                return "sha256:" + hashlib.sha256(f.read()).hexdigest()
        except OSError:
            return ""
