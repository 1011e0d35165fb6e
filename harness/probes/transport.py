"""What the watcher and the gate need from an RPC transport, and how a user names one.

Two transports satisfy `RPCTransport`: JSON-RPC over HTTP
(`kamleak.harness.probes.rpc.KamailioRPC`, `http://HOST:PORT/RPC`) and ctl's BINRPC
socket (`kamleak.harness.probes.binrpc.BinRPC`, `tcp:HOST:PORT` or `unixs:/path`).
The gate reads a user's config over ctl where it serves no JSON-RPC over HTTP
(kamleak.harness.stack.kamailio.config: KamailioConfig.ctl_socket).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

from kamleak.harness.errors import UsageError


@runtime_checkable
class RPCTransport(Protocol):
    url: str

    def call(self, method: str, *params: Any) -> Any: ...

    def core_version(self) -> str: ...

    def tm_list(self) -> list: ...

    def tm_stats(self) -> dict[str, int]: ...

    def shmmem(self) -> dict[str, int]: ...

    def cfg_get(self, group: str, name: str) -> Any: ...

    def ws_dump(self) -> dict: ...


def connect(address: str, timeout: float = 5.0) -> RPCTransport:
    """http(s)://… -> JSON-RPC; tcp:…, unix(s):…, /path -> ctl's BINRPC."""
    from kamleak.harness.probes.binrpc import BinRPC
    from kamleak.harness.probes.rpc import RPC_SOURCE_IP, KamailioRPC

    if address.startswith(("http://", "https://")):
        host = urlparse(address).hostname or ""
        try:
            loop = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loop = host == "localhost"
        # kamleak's own RPC comes from 127.0.0.2 (kamleak.harness.probes.rpc); elsewhere the kernel picks.
        return KamailioRPC(address, timeout=timeout, source_ip=RPC_SOURCE_IP if loop else "")
    if address.startswith(("tcp:", "unix:", "unixs:", "/")):
        return BinRPC(address, timeout=timeout)
    raise UsageError(f"RPC address {address!r} is neither http://HOST:PORT/RPC (jsonrpcs) nor "
                     "tcp:HOST:PORT / unixs:/path (ctl, what kamcmd uses)",
                     "pass --kamailio-rpc with one of those")
