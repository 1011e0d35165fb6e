"""Kamailio's WebSocket connections, by client source port: listed, and waited out.

`ws.dump` lists at most 50 connections (then says `truncated`); past that the
TCP layer's `core.tcp_list` (WS/WSS rows) names them all.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from kamleak.harness.errors import RPCError
from kamleak.harness.probes.rpc import _plain
from kamleak.harness.wait import poll

# "ws:127.0.0.1:40000 -> ws:127.0.0.1:8080 ..." in a ws.dump connection line: proto, source port
_SOURCE = re.compile(r"(wss?):[\d.]+:(\d+) ->")


class WsConnections:
    """Reads which (proto, source port) WebSocket connections Kamailio still has."""

    def __init__(self, rpc):
        self.rpc = rpc
        self.truncated_seen = False          # ws.dump hit its 50 and core.tcp_list was asked
        self.tcp_list_ok: bool | None = None

    def listed(self) -> set[tuple[str, int]]:
        dump = self.rpc.ws_dump()
        found = set()
        for c in dump.get("connections") or []:
            m = _SOURCE.search(str(c))
            if m:
                found.add((m.group(1), int(m.group(2))))
        info = dump.get("info") or {}
        if str(info.get("truncated", "no")).lower() != "no":
            self.truncated_seen = True
            if self.tcp_list_ok is not False:
                try:
                    conns = tcp_list(self.rpc)
                    self.tcp_list_ok = True
                except RPCError:
                    self.tcp_list_ok = False
                    return found
                found |= {(proto, port) for proto, port in conns if proto in ("ws", "wss")}
        return found

    def ports(self) -> set[int]:
        """Source ports of the WebSocket connections Kamailio still has."""
        return {port for _, port in self.listed()}


def tcp_list(rpc) -> set[tuple[str, int]]:
    """(type, client source port) of every connection Kamailio's TCP layer has
    (`core.tcp_list`: tcp, tls, ws, wss), lower-case types."""
    found = set()
    for c in _plain(rpc.call("core.tcp_list")) or []:
        if isinstance(c, dict):
            try:
                found.add((str(c.get("type", "")).lower(), int(c.get("src_port"))))
            except (TypeError, ValueError):
                pass
    return found


def wait_gone(rpc, port: int, *, proto: str | None = None, timeout: float = 10.0,
              abort: Callable[[], str | None] | None = None) -> float:
    """Poll until Kamailio no longer lists the WebSocket connection from client PORT
    (only its PROTO one, "ws" or "wss", when two share the port; PROTO "tcp": the
    plain SIP-over-TCP one, which only core.tcp_list names); return the seconds
    waited.  ABORT (e.g. `kamailio.death`) stops the wait with its reason;
    raises wait.WaitTimeout after TIMEOUT seconds."""
    t0 = time.monotonic()
    conns = WsConnections(rpc)

    def gone() -> bool:
        listed = tcp_list(rpc) if proto == "tcp" else conns.listed()
        return (proto, port) not in listed if proto else all(p != port for _, p in listed)

    # Kamailio drops a connection a few ms after the RST: poll briskly.
    poll(gone, timeout=timeout, what=f"Kamailio dropping the {(proto or 'WebSocket').upper()} "
                                     f"connection from port {port}",
         abort=abort, interval=0.01, max_interval=0.05)
    return time.monotonic() - t0
