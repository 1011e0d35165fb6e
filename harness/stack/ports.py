"""Loopback port allocation.

Every service kamleak starts binds 127.0.0.1 on a port chosen here, so two
runs (or two xdist workers) never collide.  A port is handed out only if it
is free for both TCP and UDP right now, and never twice in one process: the
kernel may hand the same ephemeral port back after we close the probe socket.
"""

from __future__ import annotations

import os
import random
import socket
import threading

HOST = "127.0.0.1"

# Stay below the Linux ephemeral range (32768-60999) so a port we picked is
# not taken meanwhile by some outgoing connection; spread workers apart.
_RANGE = (20000, 32000)
_lock = threading.Lock()
_given: set[int] = set()


def is_free(port: int, host: str = HOST) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def allocate(count: int = 1) -> list[int]:
    """Return `count` distinct ports free on 127.0.0.1 for TCP and UDP."""
    rng = random.Random(os.getpid() ^ random.getrandbits(32))
    ports: list[int] = []
    with _lock:
        for _ in range(count * 200):
            if len(ports) == count:
                break
            port = rng.randrange(*_RANGE)
            if port in _given or port in ports:
                continue
            if is_free(port):
                ports.append(port)
        if len(ports) < count:
            raise OSError(f"could not find {count} free ports on {HOST} in {_RANGE}")
        _given.update(ports)
    return ports


def release(*ports: int) -> None:
    with _lock:
        _given.difference_update(ports)
