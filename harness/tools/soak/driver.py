"""The lean multiplexed WebSocket client: the transport, every call's state machine, the loop.

Not `kamleak.harness.sip.WebSocketUA` (one reader thread each, a poll every
0.1 s: hundreds of them cost more CPU than Kamailio): non-blocking sockets,
one selector loop, the same SIP ladder (z9hG4bK branches, tags, CSeq, the
route set, ACK for 2xx).
"""

from __future__ import annotations

import collections
import errno
import heapq
import os
import queue
import random
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kamleak.harness.errors import RPCError, ScenarioError
from kamleak.harness.probes.ws_connections import WsConnections
from kamleak.harness.sip.message import (
    ALLOW,
    SipMessage,
    SipParseError,
    apply_route_set,
    encode,
    new_branch,
    new_call_id,
    new_tag,
    sdp,
)
from kamleak.harness.sip.peer import UdpPeer
from kamleak.harness.sip.websocket import WebSocket, WebSocketError
from kamleak.harness.tools.soak.plan import dead_path_reply
from kamleak.harness.wait import Deadline

HOST = "127.0.0.1"


class _Conn:
    __slots__ = ("n", "sock", "state", "rbuf", "wbuf", "ws", "user", "via_host", "contact",
                 "local_port", "call", "queued")

    def __init__(self, n: int):
        self.n = n
        self.sock: socket.socket | None = None
        self.state = "connecting"
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.ws = WebSocket(client=True)
        self.user = f"soak{n}"
        self.via_host = f"{os.urandom(6).hex()}.invalid"
        self.contact = ""
        self.local_port = 0
        self.call: _Call | None = None
        self.queued = False


@dataclass(eq=False)
class _Call:
    idx: int
    kind: str
    ext: str
    call_id: str
    from_tag: str
    conn: _Conn | None = None
    state: str = "new"
    cseq: int = 1
    branch: str = ""
    invite_uri: str = ""
    to_value: str = ""
    route_lines: list = field(default_factory=list)
    ruri: str = ""
    last_ack: bytes = b""
    deadline: float = 0.0
    t_start: float = 0.0
    t_established: float | None = None
    t_done: float | None = None
    outcome: str | None = None      # "ok" | "failed: ..." | for 4140 "hit" / "missed: ..."
    client_answered: bool = False
    peer_result: tuple[int, str] | None = None
    bye_reply: tuple[int, str] | None = None   # 4140: Kamailio's final reply to the PBX's BYE
    local_port: int = 0


class _GoneWatcher:
    """Polls ws.dump (and core.tcp_list when ws.dump is truncated) for connections to vanish."""

    def __init__(self, rpc, post: Callable[[tuple], None], interval: float = 0.05):
        self.rpc = rpc
        self.post = post
        self.interval = interval
        self.pending: set[int] = set()
        self.conns = WsConnections(rpc)
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
                 progress=None, seed: int | None = None):
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
        self.events: queue.SimpleQueue[tuple] = queue.SimpleQueue()
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
        self.sel.modify(c.sock, selectors.EVENT_READ, c)
        self._write_now(c, c.ws.connect(f"{self.addr[0]}:{self.addr[1]}"))

    def _opened(self, c: _Conn, subprotocol) -> None:
        if (subprotocol or "").lower() != "sip":
            self.counters["handshakes refused"] += 1
            self._conn_lost(c, f"WebSocket handshake: subprotocol {subprotocol!r}, not sip")
            return
        c.state = "open"
        self.connecting -= 1
        self.connect_failures = 0
        self.idle.append(c)

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
        self._write(c, c.ws.message(data))

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
        try:
            events = c.ws.receive(c.rbuf)
        except WebSocketError as exc:
            self._conn_lost(c, str(exc))
            return
        c.rbuf.clear()
        for ev in events:
            kind = ev[0]
            if kind == "message":
                self._on_sip(c, ev[1])
            elif kind == "open":
                self._opened(c, ev[1])
            elif kind == "refused":
                self.counters["handshakes refused"] += 1
                self._conn_lost(c, f"WebSocket handshake refused: HTTP {ev[1]}")
            elif kind == "close":
                self._conn_lost(c, "Kamailio sent a WebSocket close")
            if c.sock is None:
                return
        out = c.ws.outgoing()
        if out:
            self._write(c, out)

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
        self.started += 1
        self.calls.append(call)
        self.by_call_id[call.call_id] = call
        self.inflight.add(call)
        call.invite_uri = f"sip:{call.ext}@{HOST}"
        call.branch = new_branch()
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
            msg = SipMessage.parse(payload, strict=False, mandatory=True)
            if msg.method is None:
                self._on_response(c, msg)
            else:
                self._on_request(c, msg)
        except SipParseError as exc:
            self.counters["malformed"] += 1
            if len(self.errors) < 200:
                self.errors.append(f"malformed SIP from Kamailio: {exc}")

    def _on_response(self, c: _Conn, msg: SipMessage) -> None:
        call = self.by_branch.get(msg.top_via_branch)
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
                        ("To", msg.header("To", "")), ("Call-ID", call.call_id), ("CSeq", f"{num} ACK")]
                uri = call.invite_uri if call.state == "inviting" else call.ruri
                if call.state != "inviting":
                    hdrs[1:1] = call.route_lines
                self.send_sip(c, encode(f"ACK {uri} SIP/2.0", hdrs))
                self._finish(call, f"failed: {'INVITE' if call.state == 'inviting' else 're-INVITE'} "
                                   f"answered {msg.status} {msg.reason}")
                return
            if call.state == "inviting":
                call.to_value = msg.header("To", "")
                target = msg.contact_uri or call.invite_uri
                route_set = list(reversed(msg.headers("Record-Route")))
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

    def _respond(self, c: _Conn, req: SipMessage, status: int, reason: str, extra=(),
                 body: bytes = b"") -> None:
        hdrs = req.header_lines("Via") + [("From", req.header("From", "")), ("To", req.header("To", "")),
                                          ("Call-ID", req.call_id), ("CSeq", req.header("CSeq", ""))]
        hdrs += list(extra)
        if body:
            hdrs.append(("Content-Type", "application/sdp"))
        self.send_sip(c, encode(f"SIP/2.0 {status} {reason}", hdrs, body))

    def _on_request(self, c: _Conn, req: SipMessage) -> None:
        method = req.method
        self.counters[f"rx {method}"] += 1
        if method == "ACK":
            return
        call = self.by_call_id.get(req.call_id)
        mine = call is not None and call.conn is c and req.to_tag == call.from_tag
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
        self.by_port[c.local_port] = call
        self.rst(c)
        self.watcher.add(c.local_port)

    def _on_gone(self, port: int) -> None:
        call = self.by_port.pop(port, None)
        if call is None or call.state != "await_gone":
            return
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
                call.bye_reply = (code, reason)
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
    def run_until(self, target_started: int, *, abort: Callable[[], str | None],
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
