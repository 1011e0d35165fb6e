"""Kamailio's JSON-RPC (jsonrpcs over xhttp, `POST /RPC`), with typed helpers.

`tm.list` needs care: jsonrpcs writes one object per non-empty hash bucket and
adds every cell of that bucket to the same object, so keys repeat.  A plain
`json.loads` keeps only the last cell of each bucket; we parse the pairs.
"""

from __future__ import annotations

import itertools
import json
import socket
from dataclasses import dataclass, field
from typing import Any

import requests
import requests.adapters
import urllib3.connection

from kamleak.harness.errors import RPCError

_ids = itertools.count(1)


class RPCCallError(RPCError):
    """Kamailio answered with a JSON-RPC error object."""

    def __init__(self, method: str, code, message: str):
        self.method, self.code, self.message = method, code, message
        super().__init__(f"Kamailio JSON-RPC {method} failed: {code} {message}".rstrip())


def _pairs(pairs: list[tuple[str, Any]]) -> Pairs:
    return Pairs(pairs)


class Pairs(list):
    """A JSON object kept as its (key, value) pairs, repeated keys included."""

    def get(self, key, default=None):
        for k, v in self:
            if k == key:
                return v
        return default

    def as_dict(self) -> dict:
        return {k: _plain(v) for k, v in self}


def _plain(value):
    if isinstance(value, Pairs):
        return value.as_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _header_value(line: str) -> str:
    """'Call-ID: abc\\r\\n' -> 'abc' (tm.list gives whole header lines)."""
    line = line.strip()
    name, sep, value = line.partition(":")
    return value.strip() if sep and " " not in name.strip() else line


@dataclass(frozen=True)
class TmCell:
    """One transaction as `tm.list` shows it."""

    cell: str
    tindex: int
    tlabel: int
    method: str
    from_: str
    to: str
    callid: str
    cseq: str
    uas_request: str
    tflags: int
    outgoings: int
    ref_count: int
    lifetime: int
    raw: dict = field(compare=False, repr=False)

    @classmethod
    def from_fields(cls, f: dict) -> TmCell:
        def num(key):
            try:
                return int(f.get(key, 0))
            except (TypeError, ValueError):
                return 0
        return cls(cell=str(f.get("cell", "")), tindex=num("tindex"), tlabel=num("tlabel"),
                   method=str(f.get("method", "")), from_=_header_value(str(f.get("from", ""))),
                   to=_header_value(str(f.get("to", ""))),
                   callid=_header_value(str(f.get("callid", ""))),
                   cseq=_header_value(str(f.get("cseq", ""))),
                   uas_request=str(f.get("uas_request", "")), tflags=num("tflags"),
                   outgoings=num("outgoings"), ref_count=num("ref_count"),
                   lifetime=num("lifetime"), raw=dict(f))

    def describe(self) -> str:
        return (f"{self.method} Call-ID {self.callid} CSeq {self.cseq} "
                f"(cell {self.cell}, outgoings {self.outgoings}, ref_count {self.ref_count}, "
                f"tflags {self.tflags})")


def parse_tm_list(result: Any) -> list[TmCell]:
    """Cells from a `tm.list` result parsed with `object_pairs_hook=Pairs`.

    Each bucket object holds one or more cells; a new cell starts whenever a
    key that the current cell already has appears again.
    """
    cells: list[TmCell] = []
    buckets = result if isinstance(result, list) else [result]
    for bucket in buckets:
        if not bucket:
            continue
        pairs = bucket if isinstance(bucket, Pairs) else Pairs(bucket.items())
        current: dict = {}
        for key, value in pairs:
            if key in current:
                cells.append(TmCell.from_fields(current))
                current = {}
            current[key] = value
        if current:
            cells.append(TmCell.from_fields(current))
    return cells


def loads(text: str):
    return json.loads(text, object_pairs_hook=_pairs)


def _one(result):
    """Some RPCs answer a struct wrapped in a one-element array."""
    if isinstance(result, list) and len(result) == 1:
        result = result[0]
    return result


# Where the harness's RPC connections come from. Kamailio indexes TCP connections
# by the peer's ip:port only, and a new connection *replaces* the aliases of an
# older one from the same ip:port (new_conn_alias_flags=2, the default). Had an
# RPC connection to the RPC port drawn, from the kernel's ephemeral ports, the
# port of a live WebSocket client's connection to the WS port, Kamailio (5.6,
# 6.0) could no longer find that client: its next request to it failed in
# via_builder (the takeover is a catalogue scenario, scenarios/ws_alias_takeover.py).
# So the RPC client binds 127.0.0.1 on a port above the ephemeral range, where
# no client's connection ever comes from, and below nothing ports.py hands out.
# Coming from 127.0.0.1, it passes a stock config's `src_ip!=127.0.0.1` check.
RPC_SOURCE_IP = "127.0.0.1"
_FALLBACK_SOURCE_IP = "127.0.0.2"   # when the ephemeral range leaves no room above it


def _source_ports() -> range:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            high = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        high = 60999                 # Linux's default range is 32768-60999
    return range(high + 1, 65536)


class _SourcePorts:
    """A source port drawn at random for each connection: processes that poll
    the same Kamailio never walk over each other's recent four-tuples (a
    TIME_WAIT younger than a second refuses reuse), and a busy port is retried."""

    def __init__(self):
        import random
        self.range = _source_ports()
        self._rng = random.Random()

    def take(self) -> int:
        return self._rng.choice(self.range)


_SOURCE_PORTS = _SourcePorts()
# Too few ports above the ephemeral range to draw from: another address instead.
_USE_FALLBACK = len(_SOURCE_PORTS.range) < 1000


class _FromAddress(requests.adapters.HTTPAdapter):
    def __init__(self, source: tuple[str, int]):
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = self.source
        # Another process may hold the port in TIME_WAIT, or use it towards
        # another Kamailio: SO_REUSEADDR lets it be bound anyway; only the same
        # four-tuple is refused, and then the next port is drawn.
        kwargs["socket_options"] = urllib3.connection.HTTPConnection.default_socket_options + \
            [(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)]
        super().init_poolmanager(*args, **kwargs)


def _source(source_ip: str) -> tuple[str, int]:
    if source_ip == RPC_SOURCE_IP and _USE_FALLBACK:
        return (_FALLBACK_SOURCE_IP, 0)
    if source_ip == RPC_SOURCE_IP:
        return (source_ip, _SOURCE_PORTS.take())
    return (source_ip, 0)


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error, e.g. 'Connection reset by peer'."""
    while exc.__context__ is not None or exc.__cause__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:120]


class KamailioRPC:
    """`requests`-style client: `rpc.call("tm.stats")`, `rpc.tm_list()`..."""

    def __init__(self, url: str, timeout: float = 5.0, source_ip: str = RPC_SOURCE_IP):
        self.url = url
        self.timeout = timeout
        self.source_ip = source_ip

    def _post(self, payload: dict) -> requests.Response:
        # One connection per call, never pooled: Kamailio closes it after the
        # reply (set_reply_close), and a pooled one could be picked up just
        # before its FIN arrives.
        for attempt in range(20):
            with requests.Session() as session:
                session.mount("http://", _FromAddress(_source(self.source_ip)))
                try:
                    return session.post(self.url, json=payload, timeout=self.timeout,
                                        headers={"Connection": "close"})
                except requests.ConnectionError as exc:
                    # That source port is busy after all (a listener, or the same
                    # four-tuple): nothing was sent, take the next.
                    if not any(e in str(exc) for e in ("Address already in use",
                                                         "Cannot assign requested address")) \
                            or attempt == 19:
                        raise

    def call(self, method: str, *params: Any) -> Any:
        payload = {"jsonrpc": "2.0", "method": method, "id": next(_ids)}
        if params:
            payload["params"] = list(params)
        try:
            resp = self._post(payload)
        except requests.ConnectionError as exc:
            reason = "refused the connection" if "refused" in str(exc).lower() else \
                f"is unreachable ({_root_cause(exc)})"
            raise RPCError(f"Kamailio JSON-RPC at {self.url} {reason}",
                           "is Kamailio running with jsonrpcs + xhttp on that port?") from None
        except requests.Timeout:
            raise RPCError(f"Kamailio JSON-RPC at {self.url} did not answer {method} within "
                           f"{self.timeout:.0f} s", "Kamailio may be stuck; see its log") from None
        try:
            body = loads(resp.text)
        except ValueError:
            if resp.status_code != 200:
                raise RPCError(f"Kamailio JSON-RPC {method} answered HTTP {resp.status_code} "
                               f"{resp.reason}",
                               "check the xhttp route serves /RPC with jsonrpc_dispatch()") from None
            snippet = resp.text[:80].replace("\n", " ")
            raise RPCError(f"Kamailio JSON-RPC {method} answered malformed JSON: {snippet!r}",
                           "see Kamailio's log") from None
        if not isinstance(body, Pairs):
            raise RPCError(f"Kamailio JSON-RPC {method} answered a non-object: {resp.text[:80]!r}")
        error = body.get("error")
        if error is not None:
            err = error.as_dict() if isinstance(error, Pairs) else {"message": error}
            raise RPCCallError(method, err.get("code"), str(err.get("message", "")))
        if "result" not in [k for k, _ in body]:
            raise RPCError(f"Kamailio JSON-RPC {method} answered without a result")
        return body.get("result")

    # ---- typed helpers -------------------------------------------------

    def core_version(self) -> str:
        return str(_one(self.call("core.version"))).strip()

    def tm_list(self) -> list[TmCell]:
        return parse_tm_list(self.call("tm.list"))

    def tm_stats(self) -> dict[str, int]:
        return _numbers(_plain(_one(self.call("tm.stats"))))

    def shmmem(self) -> dict[str, int]:
        return _numbers(_plain(_one(self.call("core.shmmem"))))

    def cfg_get(self, group: str, name: str) -> int | str:
        return _plain(_one(self.call("cfg.get", group, name)))

    def ws_dump(self) -> dict:
        return _plain(_one(self.call("ws.dump")))


def _numbers(d: Any) -> dict[str, int]:
    if not isinstance(d, dict):
        raise RPCError(f"expected a struct, got {d!r:.80}")
    out = {}
    for k, v in d.items():
        try:
            out[k] = int(v)
        except (TypeError, ValueError):
            continue
    return out
