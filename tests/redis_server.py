"""A real Redis server for the tests: Debian's redis-server on a free loopback
port, nothing saved to disk, killed at teardown (as test_watch's Prometheus)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from kamleak.harness.stack import ports
from kamleak.harness.wait import poll, stop_process


class RedisServer:
    def __init__(self, tmp: Path):
        exe = shutil.which("redis-server")
        if not exe:
            pytest.skip("Debian's redis-server package is not installed (make host-packages)")
        (self.port,) = ports.allocate(1)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = open(tmp / "redis.log", "w")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        poll(self._pong, timeout=10, what=f"redis-server on 127.0.0.1:{self.port} answering PING",
             retry_on=(OSError,), abort=self._died)

    def _pong(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def _died(self) -> str | None:
        return None if self.proc.poll() is None else f"redis-server exited {self.proc.returncode}"

    def client(self):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port)

    def stop(self) -> None:
        stop_process(self.proc, group=True)
        self.log.close()
        ports.release(self.port)


@pytest.fixture
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
