"""Soak mode: many calls through ONE Kamailio, and how many tm cells / shm bytes each leaves.

`run_soak()` drives CALLS calls over WebSocket at up to RATE new calls/s with
at most CONCURRENCY in flight, from a pool of WebSocket clients (one call at
a time per client; a client whose connection was killed is replaced).  A
fraction MIX of the calls (spread evenly: mix 0.001 is exactly 1 in 1000)
run the issue-4140 ladder, the rest are healthy:

  healthy, client hangs up   INVITE (Session-Expires) / 200 / ACK, [hold], BYE / 200
  healthy, peer hangs up     INVITE / 200 / ACK, [hold], the PBX's BYE reaches the live
                             client through Kamailio, which answers 200
  4140                       INVITE / 200 / ACK, re-INVITE / 200 / ACK, the client's
                             connection is RST, we wait until Kamailio no longer lists
                             it (ws.dump; core.tcp_list once ws.dump truncates at 50),
                             then the PBX hangs up: its BYE cannot be forwarded

The far end is `kamleak.harness.sip.peer.UdpPeer` (built in, hundreds of calls/s) or a
real Asterisk (`kamleak.harness.stack.asterisk.AsteriskPBX`, hung up by `pbx.hangup(ext)`,
a docker exec each, so tens of calls/s at most).

The run is cut into CHECKPOINTS segments.  After each one no new call starts
until every call in flight is over and Kamailio has drained (tm.stats
`waiting` 0 and `current` steady, bounded by fr_timer + wt_timer); then
tm.stats, core.shmmem and, where the build has it, `mod.mem_stats tm shm`
are read.  A least-squares line through these drained checkpoints (cells ~
calls, shm ~ calls) gives the leaked cells per call and shm bytes per call,
with a 95 % confidence interval; a background sampler records the same
counters during the run for the plot.  Cells still there after the last
drain are the leak: they are matched against the 4140 calls whose BYE
Kamailio answered with a 5xx (the calls that really hit the dead-connection
path) and against `tm.list`.

The WebSocket clients are not `kamleak.harness.sip.WebSocketUA` (one reader thread
each, a poll every 0.1 s: hundreds of them cost more CPU than Kamailio) but a
lean multiplexed client here: non-blocking sockets, one selector loop, RFC
6455 frames by hand, the same SIP ladder (z9hG4bK branches, tags, CSeq, the
route set, ACK for 2xx).
"""

from __future__ import annotations

import argparse
import base64
import collections
import errno
import hashlib
import heapq
import json
import math
import os
import queue
import random
import re
import selectors
import shutil
import socket
import ssl
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from kamleak.harness.errors import KamleakError, RPCError, ScenarioError, UsageError
from kamleak.harness.sip.peer import LeanMessage, UdpPeer, encode, header_tag, header_uri, sdp
from kamleak.harness.probes.counters import Counters
from kamleak.harness.probes.sampler import Sampler
from kamleak.harness.probes.ws_connections import WsConnections
from kamleak.harness.sip.message import MAGIC_COOKIE, SipParseError, apply_route_set
from kamleak.harness.judging.wait import Deadline

HOST = "127.0.0.1"
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS"
KINDS = ("client_bye", "peer_bye", "4140")


# ---------------------------------------------------------------------------
# The plan: which call is which


def plan_kinds(calls: int, mix: float, seed: Optional[int] = None,
               peer_bye_share: float = 0.5) -> list[str]:
    """Kinds of CALLS calls: exactly floor(calls*mix) "4140" calls, spread evenly.

    Call i is a 4140 call when floor((i+1)*mix) > floor(i*mix) (error
    diffusion, so 0.001 is 1 in 1000 and 300 x 0.01 is 3); the healthy ones
    are split between client and peer hangups by SEED.
    """
    if not 0.0 <= mix <= 1.0:
        raise UsageError(f"--mix {mix} is not a fraction", "give a value from 0 to 1, e.g. 0.001")
    rng = random.Random(seed)
    kinds = []
    for i in range(calls):
        if math.floor((i + 1) * mix + 1e-9) > math.floor(i * mix + 1e-9):
            kinds.append("4140")
        else:
            kinds.append("peer_bye" if rng.random() < peer_bye_share else "client_bye")
    return kinds


def dead_path_reply(code: int, reason: str) -> bool:
    """Kamailio's own error reply to a BYE it could not forward to the gone client.

    500 "(1/SL)" with a leaking trigger, 478 "Unresolvable destination
    (478/TM)" or 500 "(1/TM)" without one: Kamailio marks the error replies it
    makes with "(<internal error code>/<SL|TM>)" (-ser_error, e.g. 477 =
    E_SEND).  200 or 481 came from a live client (the port was reused by
    another connection: the call missed the path).
    """
    from kamleak.harness.judging.verdict import classify_reason
    return code >= 300 and (classify_reason(reason) is not None or code in (477, 478, 500, 503))


# ---------------------------------------------------------------------------
# Statistics: least squares with a confidence interval

# Two-sided 95 % Student t quantiles by degrees of freedom.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
        16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042,
        40: 2.021, 60: 2.000, 120: 1.980}


def t95(dof: int) -> float:
    if dof <= 0:
        return float("inf")
    for k in sorted(_T95):
        if dof <= k:
            return _T95[k]
    return 1.960


@dataclass
class Fit:
    """y = intercept + slope * x over N points; slope ± half_width is the 95 % interval."""

    slope: float
    intercept: float
    stderr: Optional[float]
    half_width: Optional[float]
    n: int

    @property
    def low(self) -> Optional[float]:
        return None if self.half_width is None else self.slope - self.half_width

    @property
    def high(self) -> Optional[float]:
        return None if self.half_width is None else self.slope + self.half_width

    def excludes_zero(self) -> bool:
        return self.half_width is not None and (self.low > 0 or self.high < 0)

    def describe(self, unit: str = "", digits: int = 4) -> str:
        if self.half_width is None:
            return f"{self.slope:.{digits}g}{unit}"
        return f"{self.slope:.{digits}g} ± {self.half_width:.{digits}g}{unit}"

    def as_dict(self) -> dict:
        return {"slope": self.slope, "intercept": self.intercept, "stderr": self.stderr,
                "ci95": [self.low, self.high] if self.half_width is not None else None, "n": self.n}


def ols(xs: list[float], ys: list[float]) -> Optional[Fit]:
    """Ordinary least squares (numpy's lstsq when installed, else by hand)."""
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        return None
    try:
        import numpy as np
        x = np.asarray(xs, dtype=float)
        y = np.asarray(ys, dtype=float)
        a = np.vstack([x, np.ones(n)]).T
        (slope, intercept), *_ = np.linalg.lstsq(a, y, rcond=None)
        resid = y - (slope * x + intercept)
        sse = float(resid @ resid)
        sxx = float(((x - x.mean()) ** 2).sum())
        slope, intercept = float(slope), float(intercept)
    except ImportError:
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
        intercept = my - slope * mx
        sse = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys))
    if n < 3:
        return Fit(slope, intercept, None, None, n)
    se = math.sqrt(sse / (n - 2) / sxx) if sxx > 0 else 0.0
    return Fit(slope, intercept, se, t95(n - 2) * se, n)


# ---------------------------------------------------------------------------
# Sampling Kamailio


# ---------------------------------------------------------------------------
# The lean multiplexed WebSocket client


class _Ids:
    """Branches, tags, Call-IDs and frame masks from a PRNG seeded by os.urandom.

    They must be unique, not secret: `secrets`/os.urandom cost ~12 us a call,
    which was a tenth of the soak loop.
    """

    def __init__(self):
        self._bits = random.Random(os.urandom(16)).getrandbits

    def branch(self) -> str:
        return f"{MAGIC_COOKIE}{self._bits(64):016x}"

    def tag(self) -> str:
        return f"{self._bits(40):010x}"

    def call_id(self) -> str:
        return f"{self._bits(96):024x}"

    def mask(self) -> bytes:
        return self._bits(32).to_bytes(4, "little")


_ids = _Ids()
new_branch, new_tag, new_call_id = _ids.branch, _ids.tag, _ids.call_id


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame (RFC 6455 5.2/5.3); the mask key from a PRNG (a test client)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0xFF, n)
    mask = _ids.mask()
    if not n:
        return head + mask
    key = (mask * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
    return head + mask + body


def ws_parse(buf: bytearray) -> tuple[list[tuple[int, bool, bytes]], int]:
    """Complete frames at the start of BUF: [(opcode, fin, payload)], bytes consumed."""
    frames, pos, size = [], 0, len(buf)
    while size - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        n, p = b1 & 0x7F, pos + 2
        if n == 126:
            if size - p < 2:
                break
            n = struct.unpack_from("!H", buf, p)[0]
            p += 2
        elif n == 127:
            if size - p < 8:
                break
            n = struct.unpack_from("!Q", buf, p)[0]
            p += 8
        mask = None
        if b1 & 0x80:
            if size - p < 4:
                break
            mask = bytes(buf[p:p + 4])
            p += 4
        if size - p < n:
            break
        payload = bytes(buf[p:p + n])
        if mask:
            key = (mask * (n // 4 + 1))[:n]
            payload = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
        frames.append((b0 & 0x0F, bool(b0 & 0x80), payload))
        pos = p + n
    return frames, pos


class _Conn:
    __slots__ = ("n", "sock", "state", "rbuf", "wbuf", "key", "user", "via_host", "contact",
                 "local_port", "call", "frag", "frag_op", "opened_at", "events", "calls", "queued")

    def __init__(self, n: int):
        self.n = n
        self.sock: Optional[socket.socket] = None
        self.state = "connecting"
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.user = f"soak{n}"
        self.via_host = f"{os.urandom(6).hex()}.invalid"
        self.contact = ""
        self.local_port = 0
        self.call: Optional[_Call] = None
        self.frag = bytearray()
        self.frag_op = 0
        self.opened_at = time.monotonic()
        self.events = 0
        self.calls = 0
        self.queued = False


@dataclass(eq=False)
class _Call:
    idx: int
    kind: str
    ext: str
    call_id: str
    from_tag: str
    conn: Optional[_Conn] = None
    state: str = "new"
    cseq: int = 1
    branch: str = ""
    invite_branch: str = ""
    invite_uri: str = ""
    to_value: str = ""
    route_lines: list = field(default_factory=list)
    ruri: str = ""
    last_ack: bytes = b""
    deadline: float = 0.0
    t_start: float = 0.0
    t_established: Optional[float] = None
    t_done: Optional[float] = None
    outcome: Optional[str] = None      # "ok" | "failed: ..." | for 4140 "hit" / "missed: ..."
    client_answered: bool = False
    peer_result: Optional[tuple[int, str]] = None
    bye_reply: Optional[tuple[int, str]] = None   # 4140: Kamailio's final reply to the PBX's BYE
    bye_after: Optional[float] = None
    local_port: int = 0
    gone_after: Optional[float] = None


class _GoneWatcher:
    """Polls ws.dump (and core.tcp_list when ws.dump is truncated) for connections to vanish."""

    def __init__(self, rpc, post: Callable[[tuple], None], interval: float = 0.05):
        self.rpc = rpc
        self.post = post
        self.interval = interval
        self.pending: set[int] = set()
        self.conns = WsConnections(rpc)
        self.polls = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="kamleak-soak-ws-gone", daemon=True)
        self._thread.start()

    def add(self, port: int) -> None:
        with self._cond:
            self.pending.add(port)
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self.pending and not self._stop:
                    self._cond.wait(1.0)
                if self._stop:
                    return
                wanted = set(self.pending)
            try:
                present = self.conns.ports()
                self.polls += 1
            except RPCError:
                time.sleep(self.interval)
                continue
            gone = wanted - present
            if gone:
                with self._cond:
                    self.pending -= gone
                for p in gone:
                    self.post(("gone", p))
            time.sleep(self.interval)


class _Driver:
    """One selector loop: the client connections and every call's state machine."""

    def __init__(self, kamailio, far_end, *, kinds: list[str], concurrency: int, rate: float,
                 transport: str, hold: float, call_timeout: float, reinvite_all: bool,
                 progress=None, seed: Optional[int] = None):
        self.kamailio = kamailio
        self.far_end = far_end
        self.builtin = isinstance(far_end, UdpPeer)
        self.kinds = kinds
        self.concurrency = max(1, int(concurrency))
        self.rate = float(rate) if rate and rate > 0 else float("inf")
        self.transport = transport
        self.hold = max(0.0, float(hold))
        self.call_timeout = call_timeout
        self.reinvite_all = reinvite_all
        self.progress = progress
        host, port = HOST, (kamailio.config.wss_port if transport == "wss" else kamailio.config.ws_port)
        self.addr = (host, port)
        self.via_proto = "WSS" if transport == "wss" else "WS"
        self.ssl_ctx = None
        if transport == "wss":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE      # the harness's self-signed certificate
            self.ssl_ctx = ctx
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        self.events: "queue.SimpleQueue[tuple]" = queue.SimpleQueue()
        self.conns: set[_Conn] = set()
        self.idle: collections.deque[_Conn] = collections.deque()
        self.connecting = 0
        self.dirty: list[_Conn] = []
        self.connect_failures = 0
        self.conn_seq = 0
        self.calls: list[_Call] = []
        self.by_call_id: dict[str, _Call] = {}
        self.by_branch: dict[str, _Call] = {}
        self.by_port: dict[int, _Call] = {}
        self.inflight: set[_Call] = set()
        self.holds: list[tuple[float, int, _Call]] = []
        self.started = 0
        self.warmed = 0
        self.warming = False
        self.done = 0
        self.failed = 0
        self.next_start = 0.0
        self.last_sweep = 0.0
        self.counters: collections.Counter = collections.Counter()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.ext_base = random.Random(seed).randrange(10_000_000, 80_000_000)
        self.executor = None
        if not self.builtin:
            from concurrent.futures import ThreadPoolExecutor
            self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kamleak-soak-hangup")
        else:
            far_end.on_bye_result = self._peer_result
            # The peer runs in this loop (one Python thread: no GIL ping-pong per syscall).
            far_end.pause()
            self.sel.register(far_end.fileno(), selectors.EVENT_READ, "peer")
        self.loop_thread = threading.get_ident()
        self.watcher = _GoneWatcher(kamailio.rpc, self._post)
        self.sdp_body = sdp(random.randrange(10**6, 10**9), 1, 30000)
        self.sdp_body2 = sdp(random.randrange(10**6, 10**9), 2, 30000)

    # -- cross-thread events --------------------------------------------------
    def _post(self, ev: tuple) -> None:
        self.events.put(ev)
        if threading.get_ident() == self.loop_thread:
            return
        try:
            self.wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    def _peer_result(self, call_id: str, code: int, reason: str) -> None:
        self._post(("peer_result", call_id, code, reason))

    # -- connections ------------------------------------------------------------
    def _open_conn(self) -> None:
        self.conn_seq += 1
        c = _Conn(self.conn_seq)
        c.contact = f"<sip:{c.user}@{c.via_host};transport=ws;ob>"
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rc = s.connect_ex(self.addr)
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            raise ScenarioError(f"cannot connect to Kamailio's {self.transport.upper()} port "
                                f"{self.addr[1]}: {os.strerror(rc)}", "see the Kamailio log")
        c.sock = s
        self.conns.add(c)
        self.connecting += 1
        self.counters["connections opened"] += 1
        self.sel.register(s, selectors.EVENT_WRITE, c)

    def _after_connect(self, c: _Conn) -> None:
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._conn_lost(c, f"connect: {os.strerror(err)}")
            return
        c.local_port = c.sock.getsockname()[1]
        if self.ssl_ctx is not None:
            raw = c.sock
            self.sel.unregister(raw)
            c.sock = self.ssl_ctx.wrap_socket(raw, do_handshake_on_connect=False)
            self.sel.register(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
            c.state = "tls"
            self._tls_step(c)
        else:
            self._send_upgrade(c)

    def _tls_step(self, c: _Conn) -> None:
        try:
            c.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.sel.modify(c.sock, selectors.EVENT_READ, c)
            return
        except ssl.SSLWantWriteError:
            self.sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
            return
        except (ssl.SSLError, OSError) as exc:
            self._conn_lost(c, f"TLS handshake: {exc}")
            return
        self._send_upgrade(c)

    def _send_upgrade(self, c: _Conn) -> None:
        c.state = "upgrade"
        req = (f"GET / HTTP/1.1\r\nHost: {self.addr[0]}:{self.addr[1]}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {c.key}\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Protocol: sip\r\nOrigin: http://{self.addr[0]}\r\n\r\n").encode()
        self.sel.modify(c.sock, selectors.EVENT_READ, c)
        self._write_now(c, req)

    def _check_upgrade(self, c: _Conn) -> None:
        end = c.rbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(c.rbuf) > 16384:
                self._conn_lost(c, "WebSocket handshake: no end of the HTTP response")
            return
        head = bytes(c.rbuf[:end]).decode("latin-1")
        del c.rbuf[:end + 4]
        lines = head.split("\r\n")
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        accept = base64.b64encode(hashlib.sha1((c.key + GUID).encode()).digest()).decode()
        if " 101 " not in lines[0] + " " or headers.get("sec-websocket-accept") != accept \
                or headers.get("sec-websocket-protocol", "").lower() != "sip":
            self._conn_lost(c, f"WebSocket handshake refused: {lines[0]!r}")
            self.counters["handshakes refused"] += 1
            return
        c.state = "open"
        c.opened_at = time.monotonic()
        self.connecting -= 1
        self.connect_failures = 0
        self.idle.append(c)
        if c.rbuf:
            self._read_frames(c)

    def _write(self, c: _Conn, data: bytes) -> None:
        """Queue DATA; `_flush_dirty()` sends each connection's queue in one send()."""
        if c.sock is None:
            return
        c.wbuf += data
        if not c.queued and len(c.wbuf) == len(data):
            c.queued = True
            self.dirty.append(c)

    def _flush_dirty(self) -> None:
        dirty, self.dirty = self.dirty, []
        for c in dirty:
            c.queued = False
            if c.sock is not None and c.wbuf:
                data = bytes(c.wbuf)
                c.wbuf.clear()
                self._write_now(c, data)

    def _write_now(self, c: _Conn, data: bytes) -> None:
        if c.sock is None:
            return
        if c.wbuf:
            c.wbuf += data
            return
        try:
            n = c.sock.send(data)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            n = 0
        except OSError as exc:
            self._conn_lost(c, f"send: {exc}")
            return
        if n < len(data):
            c.wbuf += data[n:]
            self.sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)

    def _flush(self, c: _Conn) -> None:
        while c.wbuf:
            try:
                n = c.sock.send(bytes(c.wbuf[:65536]))
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return
            except OSError as exc:
                self._conn_lost(c, f"send: {exc}")
                return
            del c.wbuf[:n]
        self.sel.modify(c.sock, selectors.EVENT_READ, c)

    def send_sip(self, c: _Conn, data: bytes) -> None:
        self.counters["sip out"] += 1
        self._write(c, ws_frame(data))

    def _on_io(self, c: _Conn, mask: int) -> None:
        if c.sock is None:
            return
        if c.state == "connecting":
            self._after_connect(c)
            return
        if c.state == "tls":
            self._tls_step(c)
            return
        if mask & selectors.EVENT_WRITE and c.wbuf:
            self._flush(c)
            if c.sock is None:
                return
        if not mask & selectors.EVENT_READ:
            return
        while True:
            try:
                data = c.sock.recv(262144)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError as exc:
                self._conn_lost(c, f"recv: {exc}")
                return
            if not data:
                self._conn_lost(c, "Kamailio closed the connection")
                return
            c.rbuf += data
            if len(data) < 262144 and not (self.ssl_ctx and c.sock.pending()):
                break
        if c.state == "upgrade":
            self._check_upgrade(c)
        elif c.state == "open":
            self._read_frames(c)

    def _read_frames(self, c: _Conn) -> None:
        frames, used = ws_parse(c.rbuf)
        if used:
            del c.rbuf[:used]
        for op, fin, payload in frames:
            if op == 0x0:                        # continuation
                c.frag += payload
                if not fin:
                    continue
                op, payload = c.frag_op, bytes(c.frag)
                c.frag = bytearray()
            elif op in (0x1, 0x2) and not fin:
                c.frag_op, c.frag = op, bytearray(payload)
                continue
            if op in (0x1, 0x2):
                self._on_sip(c, payload)
            elif op == 0x8:
                self._conn_lost(c, "Kamailio sent a WebSocket close")
                return
            elif op == 0x9:
                self._write(c, ws_frame(payload, 0xA))
            if c.sock is None:
                return

    def _conn_lost(self, c: _Conn, reason: str) -> None:
        if c.state == "dead":
            return
        if c.state in ("connecting", "tls", "upgrade"):
            self.connecting -= 1
            self.connect_failures += 1
            if self.connect_failures > 20:
                raise ScenarioError(f"Kamailio refused 20 WebSocket connections in a row (last: {reason})",
                                    "see the Kamailio log")
        c.state = "dead"
        self._close_sock(c, rst=False)
        self.conns.discard(c)
        try:
            self.idle.remove(c)
        except ValueError:
            pass
        self.counters["connections lost"] += 1
        if len(self.errors) < 200:
            self.errors.append(f"connection {c.user} (port {c.local_port}): {reason}")
        if c.call is not None and c.call.state not in ("rst", "await_gone", "hangup", "await_result"):
            self._finish(c.call, f"failed: connection lost ({reason}) in state {c.call.state}")

    def _close_sock(self, c: _Conn, rst: bool) -> None:
        s = c.sock
        if s is None:
            return
        c.sock = None
        try:
            self.sel.unregister(s)
        except (KeyError, ValueError):
            pass
        try:
            if rst:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        except OSError:
            pass

    def rst(self, c: _Conn) -> None:
        """TCP RST at once (SO_LINGER {1, 0}; on TLS no close_notify either)."""
        if c.queued and c.wbuf and c.sock is not None:
            c.queued = False
            data = bytes(c.wbuf)                 # what the call sent last (the ACK) goes first
            c.wbuf.clear()
            self._write_now(c, data)
        c.state = "dead"
        self._close_sock(c, rst=True)
        self.conns.discard(c)
        self.counters["connections reset"] += 1

    def ensure_pool(self) -> None:
        want = self.concurrency
        while len(self.conns) < want:
            self._open_conn()

    # -- SIP ---------------------------------------------------------------------
    def _via(self, c: _Conn, branch: str) -> str:
        return f"SIP/2.0/{self.via_proto} {c.via_host};branch={branch};rport"

    def _start_call(self, now: float) -> bool:
        while self.idle:
            c = self.idle.popleft()
            if c.state == "open" and c.call is None:
                break
        else:
            return False
        i = self.started
        kind = "client_bye" if self.warming else self.kinds[i - self.warmed]
        call = _Call(idx=i, kind=kind, ext=str(self.ext_base + i), call_id=new_call_id(),
                     from_tag=new_tag(), conn=c, t_start=now, local_port=c.local_port)
        c.call = call
        c.calls += 1
        self.started += 1
        self.calls.append(call)
        self.by_call_id[call.call_id] = call
        self.inflight.add(call)
        call.invite_uri = f"sip:{call.ext}@{HOST}"
        call.branch = call.invite_branch = new_branch()
        self.by_branch[call.branch] = call
        call.state = "inviting"
        call.deadline = now + self.call_timeout
        hdrs = [("Via", self._via(c, call.branch)), ("Max-Forwards", "70"),
                ("From", f"<sip:{c.user}@{HOST}>;tag={call.from_tag}"),
                ("To", f"<{call.invite_uri}>"), ("Call-ID", call.call_id), ("CSeq", "1 INVITE"),
                ("Contact", c.contact), ("Allow", ALLOW), ("Supported", "timer"),
                ("Session-Expires", "1800;refresher=uac"), ("Min-SE", "90"),
                ("User-Agent", "kamleak-soak"), ("Content-Type", "application/sdp")]
        self.send_sip(c, encode(f"INVITE {call.invite_uri} SIP/2.0", hdrs, self.sdp_body))
        return True

    def _in_dialog(self, call: _Call, method: str, cseq: int, branch: str, extra=(),
                   body: bytes = b"") -> bytes:
        c = call.conn
        hdrs = [("Via", self._via(c, branch))] + call.route_lines + [
            ("Max-Forwards", "70"), ("From", f"<sip:{c.user}@{HOST}>;tag={call.from_tag}"),
            ("To", call.to_value), ("Call-ID", call.call_id), ("CSeq", f"{cseq} {method}")]
        hdrs += list(extra)
        if body:
            hdrs.append(("Content-Type", "application/sdp"))
        return encode(f"{method} {call.ruri} SIP/2.0", hdrs, body)

    def _new_request(self, call: _Call, method: str, extra=(), body: bytes = b"") -> None:
        call.cseq += 1
        old = call.branch
        self.by_branch.pop(old, None)
        call.branch = new_branch()
        self.by_branch[call.branch] = call
        self.send_sip(call.conn, self._in_dialog(call, method, call.cseq, call.branch, extra, body))

    def _on_sip(self, c: _Conn, payload: bytes) -> None:
        self.counters["sip in"] += 1
        if not payload.strip(b"\r\n "):
            return
        try:
            msg = LeanMessage.parse(payload)
            if msg.method is None:
                self._on_response(c, msg)
            else:
                self._on_request(c, msg)
        except SipParseError as exc:
            self.counters["malformed"] += 1
            if len(self.errors) < 200:
                self.errors.append(f"malformed SIP from Kamailio: {exc}")

    def _on_response(self, c: _Conn, msg: LeanMessage) -> None:
        call = self.by_branch.get(msg.branch)
        num, method = msg.cseq
        if call is None:
            if method == "INVITE" and 200 <= msg.status < 300:
                stale = self.by_call_id.get(msg.call_id)
                if stale is not None and stale.last_ack:     # retransmitted 2xx: ACK again
                    self.send_sip(c, stale.last_ack)
            self.counters["stray responses"] += 1
            return
        if msg.status < 200:
            return
        if method == "INVITE":
            if msg.status >= 300:
                # Hop-by-hop ACK for a non-2xx (17.1.1.3): same branch, R-URI, To of the response.
                hdrs = [("Via", self._via(c, call.branch)), ("Max-Forwards", "70"),
                        ("From", f"<sip:{c.user}@{HOST}>;tag={call.from_tag}"),
                        ("To", msg.one("to")), ("Call-ID", call.call_id), ("CSeq", f"{num} ACK")]
                uri = call.invite_uri if call.state == "inviting" else call.ruri
                if call.state != "inviting":
                    hdrs[1:1] = call.route_lines
                self.send_sip(c, encode(f"ACK {uri} SIP/2.0", hdrs))
                self._finish(call, f"failed: {'INVITE' if call.state == 'inviting' else 're-INVITE'} "
                                   f"answered {msg.status} {msg.reason}")
                return
            if call.state == "inviting":
                call.to_value = msg.one("to")
                contact = msg.values("contact")
                target = header_uri(contact[0]) if contact else call.invite_uri
                route_set = list(reversed(msg.values("record-route")))
                if route_set and ";lr" in route_set[0]:
                    call.ruri, routes = target, route_set     # loose routing (12.2.1.1)
                else:
                    call.ruri, routes = apply_route_set(target, route_set)
                call.route_lines = [("Route", r) for r in routes]
                call.t_established = time.monotonic()
                self.latencies.append(call.t_established - call.t_start)
            elif call.state != "reinviting":
                if call.last_ack:
                    self.send_sip(c, call.last_ack)
                return
            call.last_ack = self._in_dialog(call, "ACK", num, new_branch())
            self.send_sip(c, call.last_ack)
            if call.state == "inviting":
                self._established(call)
            else:
                self._refreshed(call)
            return
        if method == "BYE" and call.state == "bye_sent":
            self._finish(call, "ok" if msg.status == 200 else f"failed: BYE answered {msg.status} {msg.reason}")

    def _respond(self, c: _Conn, req: LeanMessage, status: int, reason: str, extra=(),
                 body: bytes = b"") -> None:
        hdrs = req.raw_lines("via") + [("From", req.one("from")), ("To", req.one("to")),
                                       ("Call-ID", req.call_id), ("CSeq", req.one("cseq"))]
        hdrs += list(extra)
        if body:
            hdrs.append(("Content-Type", "application/sdp"))
        self.send_sip(c, encode(f"SIP/2.0 {status} {reason}", hdrs, body))

    def _on_request(self, c: _Conn, req: LeanMessage) -> None:
        method = req.method
        self.counters[f"rx {method}"] += 1
        if method == "ACK":
            return
        call = self.by_call_id.get(req.call_id)
        mine = call is not None and call.conn is c and header_tag(req.one("to")) == call.from_tag
        if method == "BYE":
            if not mine:
                self._respond(c, req, 481, "Call/Transaction Does Not Exist")
                return
            self._respond(c, req, 200, "OK")
            call.client_answered = True
            if call.state == "peer_bye" and (not self.builtin or call.peer_result):
                self._peer_bye_done(call)
            return
        if method == "INVITE" and mine:
            self._respond(c, req, 200, "OK", extra=[("Contact", c.contact), ("Allow", ALLOW),
                                                    ("Supported", "timer")], body=self.sdp_body2)
            return
        if method == "OPTIONS":
            self._respond(c, req, 200, "OK", extra=[("Allow", ALLOW)])
            return
        self._respond(c, req, 481 if req.to_tag else 501,
                      "Call/Transaction Does Not Exist" if req.to_tag else "Not Implemented")

    # -- the ladders ---------------------------------------------------------------
    def _established(self, call: _Call) -> None:
        if call.kind == "4140" or self.reinvite_all:
            call.state = "reinviting"                 # the session refresh (RFC 4028 7.4)
            self._new_request(call, "INVITE", extra=[
                ("Contact", call.conn.contact), ("Allow", ALLOW), ("Supported", "timer"),
                ("Session-Expires", "1800;refresher=uac"), ("Min-SE", "90")], body=self.sdp_body2)
            return
        self._refreshed(call)

    def _refreshed(self, call: _Call) -> None:
        if call.kind == "4140":
            self._disconnect(call)
        elif self.hold > 0:
            call.state = "holding"
            heapq.heappush(self.holds, (time.monotonic() + self.hold, call.idx, call))
        else:
            self._hang_up_healthy(call)

    def _hang_up_healthy(self, call: _Call) -> None:
        call.deadline = time.monotonic() + self.call_timeout
        if call.kind == "client_bye":
            call.state = "bye_sent"
            self._new_request(call, "BYE")
            return
        call.state = "peer_bye"
        self._far_end_hangup(call)

    def _peer_bye_done(self, call: _Call) -> None:
        if self.builtin and call.peer_result and call.peer_result[0] != 200:
            self._finish(call, f"failed: the PBX's BYE was answered {call.peer_result[0]} "
                               f"{call.peer_result[1]}")
        else:
            self._finish(call, "ok")

    def _disconnect(self, call: _Call) -> None:
        """4140: the re-INVITE is done; kill the connection and wait for Kamailio to notice."""
        c = call.conn
        call.state = "await_gone"
        call.deadline = time.monotonic() + self.call_timeout
        call.gone_after = time.monotonic()
        self.by_port[c.local_port] = call
        self.rst(c)
        self.watcher.add(c.local_port)

    def _on_gone(self, port: int) -> None:
        call = self.by_port.pop(port, None)
        if call is None or call.state != "await_gone":
            return
        call.gone_after = time.monotonic() - call.gone_after
        call.state = "await_result"
        call.deadline = time.monotonic() + self.call_timeout
        self._far_end_hangup(call)

    def _far_end_hangup(self, call: _Call) -> None:
        """The PBX side ends the call: the built-in peer at once, Asterisk via its CLI."""
        if self.builtin:
            try:
                self.far_end.hangup_call(call.call_id)
            except (KeyError, ValueError) as exc:
                self._finish(call, f"failed: the peer could not hang up: {exc}")
        else:
            self._pbx_hangup(call)

    def _pbx_hangup(self, call: _Call) -> None:
        fut = self.executor.submit(self.far_end.hangup, call.ext)
        fut.add_done_callback(lambda f, cid=call.call_id: self._post(
            ("pbx_hungup", cid, None if f.exception() is None else str(f.exception()))))

    def _on_event(self, ev: tuple) -> None:
        kind = ev[0]
        if kind == "gone":
            self._on_gone(ev[1])
            return
        call = self.by_call_id.get(ev[1])
        if call is None or call.t_done is not None:
            return
        if kind == "peer_result":
            code, reason = ev[2], ev[3]
            if call.kind == "4140":
                res = self.far_end.bye_result(call.call_id)
                call.bye_reply = (code, reason)
                call.bye_after = res.after if res else None
                if dead_path_reply(code, reason):
                    self._finish(call, "hit")
                else:
                    self._finish(call, f"missed: the PBX's BYE was answered {code} {reason}")
            else:
                call.peer_result = (code, reason)
                if call.client_answered or code != 200:
                    self._peer_bye_done(call)
        elif kind == "pbx_hungup":
            if ev[2]:
                self._finish(call, f"failed: Asterisk hangup: {ev[2]}")
            elif call.kind == "4140":
                self._finish(call, "sent")   # Kamailio's reply is read from Asterisk's log later
            elif call.client_answered:
                self._finish(call, "ok")

    def _finish(self, call: _Call, outcome: str) -> None:
        if call.t_done is not None:
            return
        call.t_done = time.monotonic()
        call.outcome = outcome
        self.inflight.discard(call)
        self.by_branch.pop(call.branch, None)
        self.done += 1
        if outcome.startswith("failed"):
            self.failed += 1
            if len(self.errors) < 200:
                self.errors.append(f"call {call.idx} ({call.kind}, {call.call_id}, client port "
                                   f"{call.local_port}): {outcome}")
        c = call.conn
        if c is not None and c.call is call:
            c.call = None
            if c.state == "open":
                if outcome.startswith("failed"):
                    self.rst(c)                 # unknown state: never reuse it
                else:
                    self.idle.append(c)

    def _sweep(self, now: float) -> None:
        for call in [x for x in self.inflight if x.deadline and now > x.deadline]:
            if call.state == "await_gone":
                self.by_port.pop(call.local_port, None)
                self._finish(call, "failed: Kamailio kept listing the reset connection")
            elif call.kind == "4140" and call.state == "await_result":
                self._finish(call, "missed: no reply to the PBX's BYE")
            else:
                self._finish(call, f"failed: timeout in state {call.state}")

    # -- the loop --------------------------------------------------------------------
    def run_until(self, target_started: int, *, abort: Callable[[], Optional[str]],
                  progress_every: float = 1.0) -> None:
        """Start calls up to TARGET_STARTED (rate/concurrency bound), return when all are over."""
        last_progress = time.monotonic()
        last_death_check = time.monotonic()
        interval = 1.0 / self.rate if self.rate != float("inf") else 0.0
        if self.next_start == 0.0:
            self.next_start = time.monotonic()
        while True:
            now = time.monotonic()
            self.ensure_pool()
            # Start what the rate and the concurrency allow.
            while self.started < target_started and len(self.inflight) < self.concurrency \
                    and now >= self.next_start:
                if not self._start_call(now):
                    break
                self.next_start = max(self.next_start + interval, now - 0.1) if interval else now
            if self.started >= target_started and not self.inflight and not self.connecting:
                return
            while self.holds and self.holds[0][0] <= now:
                _, _, call = heapq.heappop(self.holds)
                if call.state == "holding":
                    self._hang_up_healthy(call)
            if now - self.last_sweep > 0.25:
                self.last_sweep = now
                self._sweep(now)
            if now - last_death_check > 1.0:
                last_death_check = now
                reason = abort()
                if reason:
                    raise ScenarioError(f"Kamailio died during the soak: {reason}", "see the Kamailio log")
            if self.progress and now - last_progress >= progress_every:
                last_progress = now
                self.progress(self.snapshot())
            timeout = 0.25
            if self.started < target_started and len(self.inflight) < self.concurrency and self.idle:
                timeout = max(0.0, min(timeout, self.next_start - now))
            if self.holds:
                timeout = max(0.0, min(timeout, self.holds[0][0] - now))
            for key, mask in self.sel.select(timeout):
                if key.data is None:
                    try:
                        while self.wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                    continue
                if key.data == "peer":
                    self.far_end.pump()
                    continue
                self._on_io(key.data, mask)
            while True:
                try:
                    ev = self.events.get_nowait()
                except queue.Empty:
                    break
                self._on_event(ev)
            if self.dirty:
                self._flush_dirty()

    def wait_pool(self, timeout: float = 30.0) -> None:
        """Open CONCURRENCY connections before the baseline."""
        deadline = Deadline(timeout)
        self.ensure_pool()
        while len(self.idle) < self.concurrency:
            if deadline.expired():
                raise ScenarioError(f"only {len(self.idle)} of {self.concurrency} WebSocket connections "
                                    f"opened within {timeout:.0f} s", "see the Kamailio log")
            for key, mask in self.sel.select(0.1):
                if key.data == "peer":
                    self.far_end.pump()
                elif key.data is not None:
                    self._on_io(key.data, mask)
            self.ensure_pool()

    def warm_up(self, abort) -> None:
        """One healthy call per pool connection, not counted: Kamailio's first burst
        over fresh connections is slow (~5 ms a call for the first 50 at once) and
        its pkg/shm pools grow once; the baseline is taken after this."""
        n = self.started + self.concurrency
        self.warming = True
        try:
            self.run_until(n, abort=abort)
        finally:
            self.warming = False
        self.warmed = n
        self.calls.clear()
        self.latencies.clear()
        self.done = self.failed = 0

    def snapshot(self) -> dict:
        hits = sum(1 for c in self.calls if c.outcome == "hit")
        return {"started": self.started, "done": self.done, "failed": self.failed,
                "inflight": len(self.inflight), "hits": hits, "connections": len(self.conns)}

    def close(self) -> None:
        self.watcher.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        if self.builtin:
            self.far_end.on_bye_result = None
            try:
                self.sel.unregister(self.far_end.fileno())
            except (KeyError, ValueError, OSError):
                pass
            self.far_end.resume()
        for c in list(self.conns):
            self._close_sock(c, rst=False)
        self.conns.clear()
        self.sel.close()
        for s in (self.wake_r, self.wake_w):
            s.close()


# ---------------------------------------------------------------------------
# The run


@dataclass
class SoakResult:
    kamailio: str
    variant: str
    transport: str
    far_end: str
    calls: int
    concurrency: int
    rate: float
    mix: float
    hold: float
    seed: Optional[int]
    kinds: dict
    outcomes: dict
    completed: int
    failed: int
    calls_4140: int
    hits: int                       # 4140 calls whose BYE Kamailio answered 5xx (dead-connection path)
    missed: int
    bye_replies: dict               # "500 I'm terribly sorry... (1/SL)": count
    baseline: dict
    final: dict
    leaked_cells: int               # tm.stats current after the last drain - baseline
    created_minus_freed: int
    leaked_in_tm_list: list         # BYE cells of 4140 calls still in tm.list
    cells_per_call: Optional[dict]  # fit over the drained checkpoints
    shm_per_call: Optional[dict]
    tm_shm_per_call: Optional[dict]
    cells_per_hit: Optional[float]
    shm_growth: int
    shm_measure: str                # "shm_other" (real_used less websocket buffers) or "shm_real_used"
    shm_growth_by_module: dict      # mod.mem_stats all shm: final - baseline, non-zero only
    tm_shm_growth: Optional[int]
    settled: bool
    flags: list
    checkpoints: list
    samples: list
    timers: dict
    wall_s: float
    calls_phase_s: float
    calls_per_s: float
    setup_ms_median: Optional[float]
    setup_ms_p95: Optional[float]
    harness_cpu_s: float
    harness_cpu_share: float        # of one core, during the call phases
    kamailio_cpu_s: Optional[float]
    ws_dump_truncated: bool
    counters: dict
    errors: list
    json_path: Optional[str] = None
    png_path: Optional[str] = None

    @property
    def leaked(self) -> bool:
        return self.leaked_cells > 0

    def summary_line(self) -> str:
        fit = self.cells_per_call
        cells = (f"{fit['slope']:.4g} cells/call" + (f" [{fit['ci95'][0]:.3g}, {fit['ci95'][1]:.3g}]"
                                                     if fit.get("ci95") else "")) if fit else "n/a"
        shm = self.shm_per_call
        shm_s = (f"{shm['slope']:.4g} B/call" + (f" [{shm['ci95'][0]:.3g}, {shm['ci95'][1]:.3g}]"
                                                 if shm.get("ci95") else "")) if shm else "n/a"
        verdict = "LEAK" if self.leaked else "CLEAN"
        return (f"soak {verdict}: {self.kamailio} {self.variant} {self.transport.upper()}, "
                f"{self.completed}/{self.calls} calls ({self.failed} failed) at {self.calls_per_s:.0f}/s, "
                f"4140 {self.calls_4140} ({self.hits} hit the dead connection); "
                f"{self.leaked_cells} cell(s) left after the drain; fit {cells}, {shm_s}; "
                f"harness CPU {self.harness_cpu_share * 100:.0f}% of a core")

    def to_json(self) -> dict:
        return asdict(self)

    def write(self, out_dir) -> tuple[Path, Optional[Path]]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        jp = out / "soak.json"
        self.json_path = str(jp)
        try:
            png = render_plot(self, out / "soak.png")
            self.png_path = str(png)
        except Exception as exc:  # noqa: BLE001 - the plot is evidence, the JSON is the record
            self.errors.append(f"plot: {type(exc).__name__}: {exc}")
            png = None
        jp.write_text(json.dumps(self.to_json(), indent=1, default=str))
        return jp, png


def _drain(counters: Counters, deadline_s: float, *, ws_base: Optional[int] = None,
           ws_deadline_s: float = 15.0, interval: float = 0.1) -> tuple[dict, bool]:
    """Poll until tm has no cell waiting and `current` holds still (or the deadline).

    With WS_BASE, then also until the websocket module's shm is back to it:
    Kamailio frees a closed connection (and its 64 KiB buffer) only after
    the module's rm_delay_interval.
    """
    limit = Deadline(deadline_s)
    prev = None
    stable_since = None
    settled = False
    while True:
        s = counters.rpc.tm_stats()
        cur, waiting = s.get("current", 0), s.get("waiting", 0)
        now = time.monotonic()
        if waiting == 0:
            if prev == cur:
                if stable_since is not None and now - stable_since >= 0.3:
                    settled = True
                    break
            else:
                stable_since = now
        else:
            stable_since = None
        prev = cur
        if limit.expired():
            break
        time.sleep(interval)
    if ws_base is not None and counters.mod_ok.get("websocket"):
        ws_limit = Deadline(ws_deadline_s)
        while True:
            ws = counters.mod_shm("websocket")
            # back to the pool's level, give or take less than one connection's 64 KiB buffer
            if ws is None or ws < ws_base + 32768:
                break
            if ws_limit.expired():
                settled = False
                break
            time.sleep(0.25)
    return s, settled


def _container_cpu(kamailio) -> Optional[float]:
    """CPU seconds Kamailio's container used so far (cgroup v1 or v2), or None."""
    running = getattr(kamailio, "running", None)
    cont = getattr(running, "container", None)
    if cont is None:
        return None
    cid = cont.id
    for path, scale in ((f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage", 1e-9),
                        (f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat", 1e-6),
                        (f"/sys/fs/cgroup/docker/{cid}/cpu.stat", 1e-6)):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith("cpu.stat"):
            m = re.search(r"usage_usec (\d+)", text)
            if m:
                return int(m.group(1)) * scale
            continue
        return int(text.strip()) * scale
    return None



def run_soak(kamailio, peer_or_pbx, *, calls: int, concurrency: int, rate: float, mix: float,
             transport: str = "ws", seed: Optional[int] = None, progress=None, hold: float = 0.0,
             checkpoints: int = 5, call_timeout: float = 15.0, reinvite_all: bool = False,
             variant: str = "", sample_interval: float = 0.5, warmup: bool = True,
             on_checkpoint: Optional[Callable[[dict], None]] = None) -> SoakResult:
    """Drive CALLS calls through KAMAILIO to PEER_OR_PBX and measure what stays behind."""
    if calls < 1:
        raise UsageError(f"--calls {calls}: nothing to do", "give 1 or more")
    if transport not in ("ws", "wss"):
        raise UsageError(f"unknown transport '{transport}'", "use ws or wss")
    from kamleak.harness.judging import oracle
    kinds = plan_kinds(calls, mix, seed)
    rpc = kamailio.rpc
    counters = Counters(rpc)
    timers = oracle.read_timers(rpc, kamailio.config, kamailio.version)
    drain_limit = timers.deadline_for("BYE")
    builtin = isinstance(peer_or_pbx, UdpPeer)
    pbx_log_start = 0 if builtin else len(peer_or_pbx.log())
    t_wall0 = time.monotonic()
    driver = _Driver(kamailio, peer_or_pbx, kinds=kinds, concurrency=concurrency, rate=rate,
                     transport=transport, hold=hold, call_timeout=call_timeout,
                     reinvite_all=reinvite_all, progress=progress, seed=seed)
    sampler = None
    checkpoint_rows: list[dict] = []
    phase_wall = 0.0
    phase_cpu = 0.0
    kam_cpu0 = _container_cpu(kamailio)
    kam_cpu_phase = 0.0 if kam_cpu0 is not None else None
    settled_all = True
    try:
        driver.wait_pool()
        if warmup:
            driver.warm_up(kamailio.death)
        base, ok = _drain(counters, drain_limit)
        baseline = counters.read(modules=True)
        ws_base = baseline.get("ws_shm")
        baseline.update(calls=0, t=0.0, settled=ok, hits=0)
        checkpoint_rows.append(baseline)
        t0 = time.monotonic()
        sampler = Sampler(lambda: {**counters.read(), "calls": driver.done}, t0, sample_interval,
                          keep_going=True, name="kamleak-soak-sampler")
        sampler.tags["phase"] = "run"
        sampler.start()
        k = max(1, min(int(checkpoints), calls))
        bounds = sorted({round(calls * (j + 1) / k) for j in range(k)})
        for bound in bounds:
            sampler.tags["phase"] = "run"
            w0, c0, kc0 = time.monotonic(), time.process_time(), _container_cpu(kamailio)
            driver.run_until(driver.warmed + bound, abort=kamailio.death)
            phase_wall += time.monotonic() - w0
            phase_cpu += time.process_time() - c0
            kc1 = _container_cpu(kamailio)
            if kam_cpu_phase is not None and kc0 is not None and kc1 is not None:
                kam_cpu_phase += kc1 - kc0
            sampler.tags["phase"] = "drain"
            _, ok = _drain(counters, drain_limit,
                           ws_base=ws_base if bound == bounds[-1] else None)
            settled_all &= ok
            row = counters.read(modules=True)
            snap = driver.snapshot()
            row.update(calls=driver.done, t=round(time.monotonic() - t0, 3), settled=ok,
                       hits=snap["hits"])
            checkpoint_rows.append(row)
            if on_checkpoint:
                on_checkpoint(row)
        samples = sampler.stop()
        sampler = None
        cells_left = rpc.tm_list()
    except ScenarioError as exc:
        raise _shm_exhausted(rpc, rate, timers) or exc
    finally:
        if sampler is not None:
            sampler.stop()
        driver.close()

    # 4140 replies via Asterisk: read them from its log.
    if not builtin:
        _replies_from_asterisk(peer_or_pbx, pbx_log_start, driver.calls)

    for row in checkpoint_rows[1:]:             # Asterisk's replies are known only now
        row["hits"] = sum(1 for c in driver.calls if c.outcome == "hit" and c.t_done is not None
                          and c.t_done - t0 <= row["t"])
    final = checkpoint_rows[-1]
    ids_4140 = {c.call_id for c in driver.calls if c.kind == "4140"}
    leaked_ids = sorted({cell.callid for cell in cells_left
                         if cell.method == "BYE" and cell.callid in ids_4140})
    outcomes = collections.Counter(c.outcome.split(":")[0] if c.outcome else "unfinished"
                                   for c in driver.calls)
    replies = collections.Counter(f"{c.bye_reply[0]} {c.bye_reply[1]}" for c in driver.calls
                                  if c.bye_reply)
    hits = sum(1 for c in driver.calls if c.outcome == "hit")
    missed = sum(1 for c in driver.calls if c.kind == "4140" and c.outcome != "hit")
    xs = [r["calls"] for r in checkpoint_rows]
    fit_cells = ols(xs, [r["current"] for r in checkpoint_rows])
    # WebSocket buffers of connections closed < rm_delay_interval ago are not a leak:
    # fit shm without them where the build can tell (mod.mem_stats websocket).
    shm_key = "shm_other" if all("shm_other" in r for r in checkpoint_rows) else "shm_real_used"
    fit_shm = ols(xs, [r[shm_key] for r in checkpoint_rows])
    fit_tm = ols(xs, [r["tm_shm"] for r in checkpoint_rows]) \
        if all("tm_shm" in r for r in checkpoint_rows) else None
    leaked = final["current"] - baseline["current"]
    cmf = (final["created"] - final["freed"]) - (baseline["created"] - baseline["freed"])
    shm_growth = final[shm_key] - baseline[shm_key]
    tm_growth = (final["tm_shm"] - baseline["tm_shm"]) if fit_tm else None
    flags = []
    if leaked > 0:
        flags.append(f"{leaked} tm cell(s) did not return after the drain "
                     f"({leaked / calls:.4g} per call; {hits} call(s) hit the dead-connection path)")
    if fit_tm is not None and tm_growth and tm_growth > 0 and fit_tm.excludes_zero():
        flags.append(f"tm's shm grew by {tm_growth} B and did not return "
                     f"({fit_tm.describe(' B/call')})")
    by_module = {}
    if "module_shm" in baseline and "module_shm" in final:
        for m in sorted(set(baseline["module_shm"]) | set(final["module_shm"])):
            d = final["module_shm"].get(m, 0) - baseline["module_shm"].get(m, 0)
            if d:
                by_module[m] = d
    if fit_shm is not None and fit_shm.excludes_zero() and fit_shm.slope > 0 and shm_growth > 16384:
        top = sorted(((d, m) for m, d in by_module.items() if d > 0 and m != "websocket"), reverse=True)[:3]
        where = ("; by module: " + ", ".join(f"{m} +{d} B" for d, m in top)) if top else ""
        flags.append(f"shm grew by {shm_growth} B and did not return ({fit_shm.describe(' B/call')})"
                     + where)
    if not settled_all:
        flags.append("a drain did not settle within fr_timer + wt_timer (cells still waiting)")
    lat = sorted(driver.latencies)
    cpu_total = phase_cpu
    kam_cpu = kam_cpu_phase
    kinds_count = collections.Counter(kinds)
    return SoakResult(
        kamailio=kamailio.version or "", variant=variant, transport=transport,
        far_end="builtin peer" if builtin else "asterisk", calls=calls, concurrency=concurrency,
        rate=rate, mix=mix, hold=hold, seed=seed, kinds=dict(kinds_count), outcomes=dict(outcomes),
        completed=sum(1 for c in driver.calls if c.outcome and not c.outcome.startswith("failed")),
        failed=driver.failed, calls_4140=kinds_count.get("4140", 0), hits=hits, missed=missed,
        bye_replies=dict(replies), baseline=baseline, final=final, leaked_cells=leaked,
        created_minus_freed=cmf, leaked_in_tm_list=leaked_ids,
        cells_per_call=fit_cells.as_dict() if fit_cells else None,
        shm_per_call=fit_shm.as_dict() if fit_shm else None,
        tm_shm_per_call=fit_tm.as_dict() if fit_tm else None,
        cells_per_hit=(leaked / hits) if hits else None, shm_growth=shm_growth, shm_measure=shm_key,
        shm_growth_by_module=by_module,
        tm_shm_growth=tm_growth, settled=settled_all, flags=flags, checkpoints=checkpoint_rows,
        samples=samples, timers=timers.as_dict(), wall_s=round(time.monotonic() - t_wall0, 3),
        calls_phase_s=round(phase_wall, 3),
        calls_per_s=round(driver.done / phase_wall, 2) if phase_wall else 0.0,
        setup_ms_median=round(lat[len(lat) // 2] * 1000, 2) if lat else None,
        setup_ms_p95=round(lat[int(len(lat) * 0.95)] * 1000, 2) if lat else None,
        harness_cpu_s=round(cpu_total, 3),
        harness_cpu_share=round(cpu_total / phase_wall, 3) if phase_wall else 0.0,
        kamailio_cpu_s=round(kam_cpu, 3) if kam_cpu is not None else None,
        ws_dump_truncated=driver.watcher.conns.truncated_seen,
        counters={**dict(driver.counters),
                  **({f"peer {k}": v for k, v in peer_or_pbx.counters.items()} if builtin else {})},
        errors=driver.errors[:50] + (peer_or_pbx.errors[:20] if builtin else []))


def _shm_exhausted(rpc, rate: float, timers) -> Optional[ScenarioError]:
    """A clearer error when the run failed because Kamailio's shm is full.

    Every call leaves ~2 cells waiting out wt_timer, ~20 KB each in a memdbg
    build: at ~1400 calls/s that fills the default 64 MB, and Kamailio then
    answers 500 (1/SL) and refuses new TCP connections (tcpconn_new fails).
    """
    try:
        shm, tm = rpc.shmmem(), rpc.tm_stats()
    except RPCError:
        return None
    total, free = shm.get("total", 0), shm.get("free", 0)
    if not total or free > total * 0.05:
        return None
    return ScenarioError(
        f"Kamailio ran out of shared memory (free {free} of {total} B, tm current "
        f"{tm.get('current')}, waiting {tm.get('waiting')}): the cells waiting out wt_timer "
        f"({timers.wt_timer} ms) at this rate ({rate:g} calls/s) fill its shm",
        "lower --rate (each call keeps ~2 cells for wt_timer)")


def _replies_from_asterisk(pbx, log_start: int, calls: list[_Call]) -> None:
    from kamleak.harness.probes.pbx_trace import parse_pjsip_log, responses_to
    msgs = parse_pjsip_log(pbx.log()[log_start:])
    for c in calls:
        if c.kind != "4140" or c.outcome != "sent":
            continue
        finals = [m for m in responses_to(msgs, c.call_id, "BYE")
                  if m.message is not None and (m.message.status or 0) >= 200]
        if not finals:
            c.outcome = "missed: no reply to Asterisk's BYE in its log"
            continue
        code, reason = finals[0].message.status, finals[0].message.reason
        c.bye_reply = (code, reason)
        c.outcome = "hit" if dead_path_reply(code, reason) else \
            f"missed: the PBX's BYE was answered {code} {reason}"


# ---------------------------------------------------------------------------
# The plot


def render_plot(result: SoakResult, path) -> Path:
    """Calls on x; top: tm cells left after each drain (+ fit; cells in flight on the right
    axis), bottom: shm and tm's shm growth since the baseline after each drain (+ fit)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), dpi=100, sharex=True)
    s, cp = result.samples, result.checkpoints
    base = cp[0]
    colour = "#c0392b" if result.leaked else "#1e8449"
    xs = [x["calls"] for x in cp]
    xmax = max(xs + [1])
    inflight = ax1.twinx()
    inflight.plot([x["calls"] for x in s], [x["current"] for x in s], ".", ms=3, color="#bbbbbb")
    inflight.set_ylabel("tm cells during the run", color="#999999", fontsize=8)
    inflight.tick_params(axis="y", labelcolor="#999999", labelsize=8)
    ax1.set_zorder(inflight.get_zorder() + 1)
    ax1.patch.set_visible(False)
    ax1.plot(xs, [x["current"] - base["current"] for x in cp], "o", color=colour,
             label="tm cells left after each drain")
    fit = result.cells_per_call
    if fit:
        ax1.plot([0, xmax], [fit["intercept"] - base["current"],
                             fit["intercept"] - base["current"] + fit["slope"] * xmax], "-",
                 color=colour, lw=1, label=f"fit: {fit['slope']:.3g} cells/call")
    ax1.plot(xs, [x.get("hits", 0) for x in cp], "x", color="#555555",
             label="4140 calls that hit the dead connection")
    ax1.set_ylabel("tm cells left")
    ax1.set_ylim(bottom=-0.5, top=max([x["current"] - base["current"] for x in cp] +
                                      [x.get("hits", 0) for x in cp] + [1]) * 1.3 + 0.5)
    ax1.legend(loc="upper left", fontsize=8)
    ax1.grid(alpha=0.3)
    kib = 1024.0
    key = result.shm_measure
    what = "shm real_used less WebSocket buffers" if key == "shm_other" else "shm real_used"
    ax2.plot(xs, [(x[key] - base[key]) / kib for x in cp], "o", color="#2e86c1", label=what)
    fs = result.shm_per_call
    if fs:
        y0 = (fs["intercept"] - base[key]) / kib
        ax2.plot([0, xmax], [y0, y0 + fs["slope"] * xmax / kib], "-", color="#2e86c1", lw=1,
                 label=f"fit: {fs['slope']:.3g} B/call")
    if all("tm_shm" in x for x in cp):
        ax2.plot(xs, [(x["tm_shm"] - base["tm_shm"]) / kib for x in cp], "s", color="#8e44ad",
                 ms=5, label="tm's shm (mod.mem_stats tm shm)")
        ft = result.tm_shm_per_call
        if ft:
            y0 = (ft["intercept"] - base["tm_shm"]) / kib
            ax2.plot([0, xmax], [y0, y0 + ft["slope"] * xmax / kib], "--", color="#8e44ad", lw=1,
                     label=f"fit: {ft['slope']:.3g} B/call")
    ax2.axhline(0, color="#888888", lw=0.5)
    ax2.set_ylabel("shm growth after drain (KiB)")
    ax2.set_xlabel("calls completed")
    ax2.legend(loc="upper left", fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle(f"kamleak soak: {result.kamailio} {result.variant} {result.transport.upper()}, "
                 f"{result.calls} calls, mix {result.mix:g}: {result.leaked_cells} cell(s) left, "
                 f"{result.hits}/{result.calls_4140} 4140 calls hit", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------
# `kamleak soak`


def _arguments(p: argparse.ArgumentParser) -> None:
    from kamleak.harness.stack.targets import add_option

    g = p.add_mutually_exclusive_group()
    add_option(g, ("--kamailio-version", "--version"), dest="version", default=None, metavar="V",
               help="a Kamailio version kamleak builds (default 6.0.1)")
    add_option(g, ("--kamailio-image", "--image"), dest="image", default=None, metavar="IMAGE",
               help="any image with a kamailio binary (never pulled)")
    g.add_argument("--kamailio-ref", default=None, metavar="REF",
                   help="Kamailio built from source at a tag, branch or commit (e.g. 5.8.5)")
    p.add_argument("--kamailio-source", default=None, metavar="URL|PATH",
                   help="git URL, clone or .tar.gz for --kamailio-ref (default: "
                        "$KAMLEAK_KAMAILIO_SOURCE, else github.com/kamailio/kamailio)")
    p.add_argument("--variant", default=None, help="config variant (default: the gate's, pua_dialoginfo)")
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=50, help="calls in flight at most (and clients)")
    p.add_argument("--rate", type=float, default=100.0, help="new calls per second at most (0: no limit)")
    p.add_argument("--mix", type=float, default=0.001, help="fraction of issue-4140 calls (0.001: 1 in 1000)")
    p.add_argument("--hold", type=float, default=0.0, help="seconds a healthy call stays up")
    p.add_argument("--transport", choices=("ws", "wss"), default="ws")
    p.add_argument("--pbx", choices=("builtin", "asterisk"), default="builtin")
    p.add_argument("--checkpoints", type=int, default=5, help="drained checkpoints for the fit")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default=None, help="directory for soak.json and soak.png "
                                               "(default: artifacts/soak-<time>)")


DESCRIPTION = ("Drive many calls through one Kamailio (a fraction of them the issue-4140 ladder) and "
               "measure the tm cells and shm each leaves: exit 0 clean, 1 leak, 2 could not run.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kamleak soak", description=DESCRIPTION)
    _arguments(p)
    return p


def add_subparser(sub) -> argparse.ArgumentParser:
    """Add `soak` to an argparse subparsers object (for harness/tools/cli.py)."""
    p = sub.add_parser("soak", help="many calls through one Kamailio: leaked cells and shm per call",
                       description=DESCRIPTION)
    _arguments(p)
    p.set_defaults(func=_main)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except KeyboardInterrupt:
        print("kamleak soak: interrupted; everything removed", file=sys.stderr)
        return 130
    except KamleakError as exc:
        print(f"kamleak soak: {exc.line()}", file=sys.stderr)
        return exc.exit_code


def _main(args) -> int:
    from kamleak.harness.stack import containers, engine, images
    from kamleak.harness.stack.asterisk import AsteriskPBX
    from kamleak.harness.stack.runner import launch_kamailio
    from kamleak.harness.stack.targets import Target
    from kamleak.harness.stack.kamailio import TmTimers
    from kamleak.scenarios.gh4140_bye_to_closed_ws import (DEFAULT_VARIANT, NotApplicable, Variant,
        applicable, start_kamailio)

    target = Target("image", args.image) if args.image else \
        Target("source", args.kamailio_ref, source=args.kamailio_source) if args.kamailio_ref else \
        Target("version", images.canonical_version(args.version or "6.0.1"))
    variant = Variant.parse(args.variant or DEFAULT_VARIANT)
    if target.kind in ("version", "source"):
        why = applicable(target, variant)
        if why:
            raise UsageError(f"variant {variant.name} cannot run on {target.ref}: {why}")
    out = Path(args.out or Path("artifacts") / time.strftime("soak-%Y%m%d-%H%M%S"))
    workdir = containers.workdir()
    far = kam = None
    say = lambda m: print(f"kamleak soak: {m}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        client = engine.client()
        containers.reap_leftovers(client, log=say)
        specs = [images.kamailio_spec(target.ref)] if target.kind == "version" else []
        if args.pbx == "asterisk":
            specs.append(images.asterisk_spec())
        if specs:
            images.build_all(client, specs)
        target.prepare(client)
        if args.pbx == "asterisk":
            far = AsteriskPBX(client, Path(workdir) / "asterisk").start()
        else:
            far = UdpPeer().start()

        def factory(defines=(), timers=None):
            return launch_kamailio(target, client, far.sip_port, workdir, defines, timers or TmTimers())

        try:
            kam = start_kamailio(factory, variant)
        except NotApplicable as exc:
            raise UsageError(str(exc)) from None
        say(f"{kam.describe()}, variant {variant.name}, {args.transport.upper()}, "
            f"{'built-in peer' if args.pbx == 'builtin' else 'Asterisk'} at {far.address}: "
            f"{args.calls} calls, concurrency {args.concurrency}, rate {args.rate:g}/s, mix {args.mix:g}")

        def progress(s):
            print(f"  {s['done']:>7}/{args.calls} done  {s['inflight']:>4} in flight  "
                  f"{s['failed']} failed  {s['hits']} hit", file=sys.stderr, flush=True)

        res = run_soak(kam, far, calls=args.calls, concurrency=args.concurrency, rate=args.rate,
                       mix=args.mix, transport=args.transport, seed=args.seed, progress=progress,
                       hold=args.hold, checkpoints=args.checkpoints, variant=variant.name)
        jp, png = res.write(out)
        print(res.summary_line())
        for f in res.flags:
            print(f"  flag: {f}")
        print(f"  record: {jp}" + (f"  plot: {png}" if png else ""))
        if res.leaked:
            return 1
        if res.failed:
            for e in res.errors[:5]:
                print(f"  error: {e}", file=sys.stderr)
            raise ScenarioError(f"{res.failed} of {res.calls} calls failed: no cell was left, "
                                "but the soak cannot vouch for calls that did not run",
                                f"see {jp}")
        return 0
    finally:
        if kam is not None:
            kam.stop()
        if far is not None:
            far.stop()
        containers.remove_all_live()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
