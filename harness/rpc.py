"""Kamailio's JSON-RPC (jsonrpcs over xhttp, `POST /RPC`), with typed helpers.

`tm.list` needs care: jsonrpcs writes one object per non-empty hash bucket and
adds every cell of that bucket to the same object, so keys repeat.  A plain
`json.loads` keeps only the last cell of each bucket; we parse the pairs.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import requests
import requests.adapters

from .errors import RPCError

_ids = itertools.count(1)


class RPCCallError(RPCError):
    """Kamailio answered with a JSON-RPC error object."""

    def __init__(self, method: str, code, message: str):
        self.method, self.code, self.message = method, code, message
        super().__init__(f"Kamailio JSON-RPC {method} failed: {code} {message}".rstrip())


def _pairs(pairs: list[tuple[str, Any]]) -> "Pairs":
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
    def from_fields(cls, f: dict) -> "TmCell":
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
# older one from the same ip:port (new_conn_alias_flags=2, the default). The
# kernel may give an RPC connection to the RPC port the same ephemeral port as a
# live WebSocket client's connection to the WS port, and then Kamailio (5.6, 6.0)
# can no longer find that client: its next request to it fails in via_builder.
# The clients all come from 127.0.0.1, so the RPC client comes from 127.0.0.2
# (still loopback) and can never take over a client's alias. The takeover
# itself is a catalogue scenario (scenarios/ws_alias_takeover.py).
RPC_SOURCE_IP = "127.0.0.2"


class _FromAddress(requests.adapters.HTTPAdapter):
    def __init__(self, source_ip: str):
        self.source_ip = source_ip
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.source_ip, 0)
        super().init_poolmanager(*args, **kwargs)


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
        with requests.Session() as session:
            session.mount("http://", _FromAddress(self.source_ip))
            return session.post(self.url, json=payload, timeout=self.timeout,
                                headers={"Connection": "close"})

    def call(self, method: str, *params: Any) -> Any:
        payload = {"jsonrpc": "2.0", "method": method, "id": next(_ids)}
        if params:
            payload["params"] = list(params)
        try:
            resp = self._post(payload)
        except requests.ConnectionError as exc:
            reason = "refused the connection" if "refused" in str(exc).lower() else "is unreachable"
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

    def sl_stats(self) -> dict[str, int]:
        return _numbers(_plain(_one(self.call("sl.stats"))))

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
