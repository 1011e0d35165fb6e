"""A lightweight built-in UDP PBX peer: the far end of a soak, at hundreds of calls/s.

Asterisk is the realistic PBX, but hanging a call up by command costs a
`docker exec` (~0.1 s) and its SIP stack is sized for real calls, not for a
soak of thousands.  `UdpPeer` is a UAS on 127.0.0.1 that Kamailio forwards to
(`KAMLEAK_PBX_HOSTPORT`):

* INVITE -> 100 Trying, then 200 OK with SDP; with `Session-Expires` in the
  request the 200 carries `Require: timer` and `Session-Expires` (RFC 4028
  9: the refresher the UAC asked for, else `uac`); below Min-SE 90 -> 422;
* re-INVITE -> 200 (SDP version + 1, timer echoed), ACK silently, BYE -> 200,
  OPTIONS -> 200, CANCEL -> 200/481, anything else in an unknown dialog -> 481;
* a retransmitted request (same top Via branch) gets the cached response;
* `hangup(extension)` / `hangup_call(call_id)`: a BYE that follows the route
  set (Route = Record-Route as received, RFC 3261 12.1.1; Request-URI = the
  caller's Contact; sent to the first Route hop, 12.2.1.1 / 8.1.2); every
  response to it is recorded per Call-ID and reported to `on_bye_result`.

No retransmissions of our own: the peer only ever talks to Kamailio on
loopback with a large socket buffer, where a datagram is not lost (timer
E/F of RFC 3261 17.1.2 is not run: an unanswered BYE simply stays
unanswered, which a soak reports as "no reply").  One thread, one
non-blocking socket, a selector: a message costs ~10-20 us with
`SipMessage.parse(strict=False, mandatory=True)` (the lean checks: what routing
needs; the UA parses strictly), so a few thousand messages/s fit in a fraction
of one core.
"""

from __future__ import annotations

import collections
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kamleak.harness.sip.message import (
    ALLOW,
    SipMessage,
    SipParseError,
    SipUri,
    apply_route_set,
    encode,
    new_branch,
    new_tag,
    parse_name_addr,
    parse_session_expires,
    reason_phrase,
    sdp,
)
from kamleak.harness.stack import ports
from kamleak.harness.wait import poll

HOST = "127.0.0.1"
MIN_SE = 90

# ---------------------------------------------------------------------------
# The peer


@dataclass
class PeerDialog:
    """A dialog the peer answered (it is the UAS of the initial INVITE)."""

    call_id: str
    extension: str
    local_tag: str
    remote_tag: str
    local_party: str          # To value of the INVITE + our tag (From of our requests)
    remote_party: str         # From value of the INVITE (To of our requests)
    remote_target: str        # the caller's Contact URI
    route_set: list[str]      # Record-Route as received (UAS: not reversed)
    remote_cseq: int
    local_cseq: int
    created: float
    session_expires: int | None = None
    refresher: str | None = None
    sdp_session: int = 0
    sdp_version: int = 1
    acked: bool = False
    state: str = "confirmed"  # confirmed | terminated
    terminated_by: str | None = None
    bye_branch: str | None = None
    bye_sent_at: float | None = None
    bye_responses: list[tuple[int, str]] = field(default_factory=list)
    bye_final_at: float | None = None

    @property
    def bye_final(self) -> tuple[int, str] | None:
        for code, reason in self.bye_responses:
            if code >= 200:
                return code, reason
        return None


@dataclass
class ByeResult:
    call_id: str
    code: int | None       # None: no final response within the wait
    reason: str
    after: float | None    # seconds from our BYE to its final response
    responses: list[tuple[int, str]]


class UdpPeer:
    """`with UdpPeer().start() as peer:` -> peer.sip_port, peer.hangup(ext), peer.bye_result(cid)."""

    def __init__(self, port: int = 0, host: str = HOST, *, send_trying: bool = True,
                 keep_terminated: int = 100_000, rcvbuf: int = 8 << 20):
        if not host.startswith("127."):
            raise ValueError("the peer binds loopback only")
        self.host = host
        self.sip_port: int = port
        self.send_trying = send_trying
        self.keep_terminated = keep_terminated
        self.rcvbuf = rcvbuf
        self.on_bye_result: Callable[[str, int, str], None] | None = None
        self.dialogs: dict[str, PeerDialog] = {}          # every dialog answered, by Call-ID
        self.by_extension: dict[str, str] = {}            # extension -> latest Call-ID
        self.counters: collections.Counter = collections.Counter()
        self.errors: list[str] = []
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._cache: collections.OrderedDict[tuple[str, str], bytes] = collections.OrderedDict()
        self._bye_by_branch: dict[str, str] = {}
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = False
        self._paused = False
        self._own_port = False
        self._rng = random.Random()

    # -- lifecycle -----------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.host}:{self.sip_port}"

    def start(self) -> UdpPeer:
        if not self.sip_port:
            self.sip_port = ports.allocate(1)[0]
            self._own_port = True
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.rcvbuf)
        s.bind((self.host, self.sip_port))
        s.setblocking(False)
        self._sock = s
        self._thread = threading.Thread(target=self._loop, name="kamleak-peer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for s in (self._wake_r, self._wake_w):
            try:
                s.close()
            except OSError:
                pass
        if self._own_port:
            ports.release(self.sip_port)
            self._own_port = False

    def __enter__(self) -> UdpPeer:
        return self if self._sock is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def death(self) -> str | None:
        if self._paused and self._sock is not None:
            return None
        if self._thread is None or not self._thread.is_alive():
            return "the built-in peer is not running"
        return None

    def log(self) -> str:      # AsteriskPBX parity (the scenario reads pbx.log())
        return ""

    # -- the loop ------------------------------------------------------------
    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stop:
                for key, _ in sel.select(1.0):
                    if key.fileobj is self._wake_r:
                        try:
                            self._wake_r.recv(4096)
                        except OSError:
                            pass
                if self._stop:
                    return
                self.pump()
        finally:
            sel.close()

    def pump(self) -> int:
        """Handle every datagram waiting now; returns how many (for a caller's own loop)."""
        sock = self._sock
        n = 0
        while True:
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return n
            except OSError:
                return n
            n += 1
            self._handle(data, addr)

    def fileno(self) -> int:
        return self._sock.fileno()

    def pause(self) -> None:
        """Stop the peer's thread but keep its socket: the caller's loop calls `pump()`.

        A soak driving the clients from one selector loop runs the peer in it
        too: two busy Python threads hand the GIL back and forth on every
        syscall (the switch interval is 5 ms), which halved the call rate.
        """
        if self._thread is None:
            return
        self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        self._thread = None
        self._paused = True

    def resume(self) -> None:
        if self._thread is not None or self._sock is None:
            return
        self._stop = False
        self._paused = False
        self._thread = threading.Thread(target=self._loop, name="kamleak-peer", daemon=True)
        self._thread.start()

    def _send(self, data: bytes, addr) -> None:
        try:
            self._sock.sendto(data, addr)
            self.counters["sent"] += 1
        except BlockingIOError:
            self.counters["send_dropped"] += 1
        except OSError as exc:
            self.counters["send_errors"] += 1
            self.errors.append(f"sendto {addr}: {exc}")

    def _handle(self, data: bytes, addr) -> None:
        if not data.strip(b"\r\n "):
            return                               # keep-alive
        self.counters["received"] += 1
        try:
            msg = SipMessage.parse(data, strict=False, mandatory=True)
        except SipParseError as exc:
            self.counters["malformed"] += 1
            if len(self.errors) < 1000:
                self.errors.append(f"malformed from {addr[0]}:{addr[1]}: {exc}")
            return
        try:
            if msg.method is not None:
                self._on_request(msg, addr)
            else:
                self._on_response(msg)
        except SipParseError as exc:
            self.counters["malformed"] += 1
            if len(self.errors) < 1000:
                self.errors.append(f"cannot handle {msg.summary()}: {exc}")

    # -- requests (UAS) ------------------------------------------------------
    def _cache_put(self, key, data: bytes) -> None:
        self._cache[key] = data
        if len(self._cache) > 20000:
            self._cache.popitem(last=False)

    def _on_request(self, req: SipMessage, addr) -> None:
        method = req.method
        self.counters[f"rx {method}"] += 1
        if method == "ACK":
            with self._lock:
                d = self.dialogs.get(req.call_id)
                if d is not None and req.to_tag == d.local_tag:
                    d.acked = True
            return
        key = (req.top_via_branch, method)
        cached = self._cache.get(key)
        if cached is not None:                   # retransmission: same answer again
            self.counters["retransmissions"] += 1
            self._send(cached, addr)
            return
        to_tag = req.to_tag
        if method == "INVITE" and to_tag is None:
            out = self._initial_invite(req, addr)
        elif method == "CANCEL":
            known = (req.top_via_branch, "INVITE") in self._cache
            out = self._response(req, 200 if known else 481)
        elif method == "OPTIONS" and to_tag is None:
            out = self._response(req, 200, extra=[("Allow", ALLOW), ("Accept", "application/sdp"),
                                                  ("Supported", "timer")])
        elif to_tag is not None:
            out = self._in_dialog(req, to_tag)
        else:
            out = self._response(req, 501)
        self._cache_put(key, out)
        self._send(out, addr)

    def _response(self, req: SipMessage, status: int, reason: str | None = None, *,
                  to_tag: str | None = None, extra=(), body: bytes = b"",
                  record_route: bool = False) -> bytes:
        headers = req.header_lines("Via")
        if record_route:
            headers += req.header_lines("Record-Route")
        to = req.header("To", "")
        if to_tag and status > 100 and req.to_tag is None:
            to = f"{to};tag={to_tag}"
        headers += [("From", req.header("From", "")), ("To", to), ("Call-ID", req.call_id),
                    ("CSeq", req.header("CSeq", ""))]
        headers += list(extra)
        if status > 100:
            headers.append(("Server", "kamleak-peer"))
        if body:
            headers.append(("Content-Type", "application/sdp"))
        return encode(f"SIP/2.0 {status} {reason or reason_phrase(status)}", headers, body)

    def _timer_headers(self, req: SipMessage, d: PeerDialog | None) -> tuple[list, bytes | None]:
        """Session-timer headers for a 2xx (RFC 4028 9), or a 422 to send instead."""
        secs, refresher = parse_session_expires(req.header("Session-Expires"))
        if secs is None:
            return [], None
        if secs < MIN_SE:
            return [], self._response(req, 422, extra=[("Min-SE", str(MIN_SE))])
        refresher = refresher or "uac"
        if d is not None:
            d.session_expires, d.refresher = secs, refresher
        return [("Require", "timer"), ("Session-Expires", f"{secs};refresher={refresher}")], None

    def _initial_invite(self, req: SipMessage, addr) -> bytes:
        call_id = req.call_id
        if self.send_trying:
            self.counters["tx 100"] += 1
            self._send(self._response(req, 100), addr)
        with self._lock:
            old = self.dialogs.get(call_id)
            if old is not None and old.state != "terminated":
                # The same call again on a new branch (a loop or a fork): one dialog per Call-ID here.
                return self._response(req, 482)
        contact = req.contact_uri
        if not contact:
            return self._response(req, 400, "Missing Contact")
        ext = req.ruri_user or "s"
        local_tag = new_tag()
        cseq_num, _ = req.cseq
        d = PeerDialog(call_id=call_id, extension=ext, local_tag=local_tag,
                       remote_tag=req.from_tag or "",
                       local_party=f"{req.header('To', '')};tag={local_tag}",
                       remote_party=req.header("From", ""),
                       remote_target=contact,
                       route_set=req.headers("Record-Route"),
                       remote_cseq=cseq_num, local_cseq=self._rng.randrange(1, 10000),
                       created=time.monotonic(), sdp_session=self._rng.randrange(10**6, 10**9))
        timer_hdrs, refusal = self._timer_headers(req, d)
        if refusal is not None:
            return refusal
        body = sdp(d.sdp_session, d.sdp_version, 40000 + 2 * (len(self.dialogs) % 10000), user="kamleak-peer")
        extra = [("Contact", f"<sip:{ext}@{self.host}:{self.sip_port}>"), ("Allow", ALLOW),
                 ("Supported", "timer")] + timer_hdrs
        with self._cond:
            self.dialogs[call_id] = d
            self.by_extension[ext] = call_id
            self.counters["dialogs"] += 1
            self._cond.notify_all()
        self.counters["tx 200 INVITE"] += 1
        return self._response(req, 200, to_tag=local_tag, extra=extra, body=body, record_route=True)

    def _in_dialog(self, req: SipMessage, to_tag: str) -> bytes:
        method = req.method
        with self._lock:
            d = self.dialogs.get(req.call_id)
        if d is None or d.local_tag != to_tag or d.remote_tag != (req.from_tag or ""):
            self.counters["481"] += 1
            return self._response(req, 481)
        cseq_num, _ = req.cseq
        if cseq_num < d.remote_cseq:
            return self._response(req, 500, "CSeq Out of Order")
        d.remote_cseq = cseq_num
        if d.state == "terminated" and method != "BYE":
            return self._response(req, 481)
        if method == "INVITE":                   # session refresh / re-INVITE
            contact = req.contact_uri
            if contact:
                d.remote_target = contact  # target refresh (12.2.2)
            timer_hdrs, refusal = self._timer_headers(req, d)
            if refusal is not None:
                return refusal
            d.sdp_version += 1
            extra = [("Contact", f"<sip:{d.extension}@{self.host}:{self.sip_port}>"),
                     ("Allow", ALLOW), ("Supported", "timer")] + timer_hdrs
            return self._response(req, 200, extra=extra,
                                  body=sdp(d.sdp_session, d.sdp_version, 40000, user="kamleak-peer"))
        if method == "BYE":
            with self._cond:
                if d.state != "terminated":
                    d.state, d.terminated_by = "terminated", "remote"
                    self._forget_later(d)
                self._cond.notify_all()
            return self._response(req, 200)
        if method in ("OPTIONS", "UPDATE", "INFO"):
            return self._response(req, 200)
        return self._response(req, 501)

    def _forget_later(self, d: PeerDialog) -> None:
        """Keep at most `keep_terminated` finished dialogs (the oldest go)."""
        self.counters["terminated"] += 1
        if len(self.dialogs) > self.keep_terminated:
            for cid in list(self.dialogs)[: len(self.dialogs) - self.keep_terminated]:
                if self.dialogs[cid].state == "terminated":
                    del self.dialogs[cid]

    # -- our BYEs (UAC) --------------------------------------------------------
    def hangup_call(self, call_id: str) -> PeerDialog:
        """Send the BYE of CALL_ID now (no wait); its responses land in `bye_responses`."""
        with self._cond:
            d = self.dialogs.get(call_id)
            if d is None:
                raise KeyError(f"the peer has no dialog with Call-ID {call_id}")
            if d.state == "terminated":
                raise ValueError(f"the call {call_id} is already over ({d.terminated_by})")
            d.local_cseq += 1
            branch = new_branch()
            d.bye_branch = branch
            self._bye_by_branch[branch] = call_id
            ruri, routes = apply_route_set(d.remote_target, d.route_set)
            headers = [("Via", f"SIP/2.0/UDP {self.host}:{self.sip_port};branch={branch};rport")]
            headers += [("Route", r) for r in routes]
            headers += [("Max-Forwards", "70"), ("From", d.local_party), ("To", d.remote_party),
                        ("Call-ID", d.call_id), ("CSeq", f"{d.local_cseq} BYE"),
                        ("User-Agent", "kamleak-peer")]
            data = encode(f"BYE {ruri} SIP/2.0", headers)
            dest = _next_hop(routes[0] if routes else f"<{ruri}>")
            d.state, d.terminated_by = "terminated", "local"
            d.bye_sent_at = time.monotonic()
            self.counters["tx BYE"] += 1
        self._send(data, dest)
        return d

    def hangup(self, extension: str, timeout: float = 10.0) -> str:
        """Hang up the latest call to EXTENSION (waits for it to exist); returns its Call-ID."""
        def live():
            with self._lock:
                cid = self.by_extension.get(extension)
                d = self.dialogs.get(cid) if cid else None
                return cid if d is not None and d.state == "confirmed" else None

        call_id = poll(live, timeout=timeout, what=f"a call to extension {extension} at the peer",
                       interval=0.01, abort=self.death)
        self.hangup_call(call_id)
        return call_id

    def _on_response(self, resp: SipMessage) -> None:
        self.counters[f"rx {resp.status}"] += 1
        branch = resp.top_via_branch
        with self._cond:
            call_id = self._bye_by_branch.get(branch)
            if call_id is None:
                self.counters["stray responses"] += 1
                return
            d = self.dialogs.get(call_id)
            if d is None:
                return
            first_final = resp.status >= 200 and d.bye_final is None
            d.bye_responses.append((resp.status, resp.reason))
            if first_final:
                d.bye_final_at = time.monotonic()
                self._bye_by_branch.pop(branch, None)
            self._cond.notify_all()
        if first_final and self.on_bye_result is not None:
            self.on_bye_result(call_id, resp.status, resp.reason)

    def bye_result(self, call_id: str) -> ByeResult | None:
        with self._lock:
            d = self.dialogs.get(call_id)
            if d is None or d.bye_sent_at is None:
                return None
            final = d.bye_final
            return ByeResult(call_id, final[0] if final else None, final[1] if final else "",
                             (d.bye_final_at - d.bye_sent_at) if d.bye_final_at else None,
                             list(d.bye_responses))

    def wait_bye_result(self, call_id: str, timeout: float = 10.0) -> ByeResult:
        """The final response to our BYE of CALL_ID (code None if none came in TIMEOUT)."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                r = self.bye_result(call_id)
                if r is not None and r.code is not None:
                    return r
                left = end - time.monotonic()
                if left <= 0:
                    return r or ByeResult(call_id, None, "", None, [])
                self._cond.wait(left)



def _next_hop(route_value: str) -> tuple[str, int]:
    """host, port of the first Route (or the R-URI): loopback only."""
    uri = SipUri.parse(parse_name_addr(route_value)[1])
    if not uri.host.startswith("127."):
        raise ValueError(f"refusing to send outside loopback: {uri}")
    return uri.host, uri.port or 5060
