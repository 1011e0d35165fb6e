"""SIP user agent over WebSocket (RFC 7118), and over plain TCP or UDP (RFC 3261,
RFC 4028 session timers).

Built so a test reads like a call ladder::

    with WebSocketUA("ws://127.0.0.1:5066", user="alice", domain="127.0.0.1") as ua:
        ua.connect()
        dialog = ua.invite("sip:600123@127.0.0.1", session_expires=1800, refresher="uac")
        dialog.reinvite()
        dialog.update(session_expires=1800)             # RFC 3311 / RFC 4028 7.4 refresh
        ua.wait_for_request("BYE", timeout=30)
        ua.disconnect("rst")

    ua.register("sip:alice@127.0.0.1", expires=600)     # REGISTER; again: re-REGISTER
    pending = ua.invite_start("sip:600123@127.0.0.1")    # INVITE, not waiting
    pending.wait_provisional(180)
    pending.cancel()                                     # CANCEL (RFC 3261 9.1)
    pending.wait_final()                                 # 487, or the 200 that won: ACK + BYE

The URL's scheme picks the transport: ``ws://`` and ``wss://`` (WebSocket
frames, websocket.py), ``tcp://`` (a SIP byte stream) and ``udp://`` (datagrams
from the UA's own UDP socket; framing.py).  Over TCP and UDP, Via and Contact
carry the UA's real ip:port, so requests can reach it back.

A background reader thread receives messages, matches responses to client
transactions (top Via branch + CSeq method, RFC 3261 17.1.3), auto-answers
in-dialog requests and queues every request for ``wait_for_request``.
Every wait has a deadline. Over WebSocket and TCP nothing is retransmitted
(reliable transports: RFC 3261 17.1.1.2 timers A/E are not used).  Over UDP a
request is resent as 17.1.1.2/17.1.2.2 say (T1 doubling, up to T2 for a
non-INVITE) until a response (INVITE) or a final one: loopback loses nothing,
but Kamailio's UDP workers race (a CANCEL handled before its INVITE's
transaction exists is dropped, and only its retransmission is relayed).  The
peer's retransmissions are answered like the first copy.
"""

from __future__ import annotations

import logging
import random
import secrets
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from kamleak.harness.sip.framing import DatagramFraming, FramingError, StreamFraming
from kamleak.harness.sip.message import (
    ALLOW,
    SipMessage,
    SipParseError,
    SipUri,
    apply_route_set,
    build_ack,
    build_cancel,
    build_request,
    build_response,
    format_name_addr,
    missing_mandatory,
    new_branch,
    new_call_id,
    new_tag,
    parse_name_addr,
    parse_session_expires,
    route_set_from_record_route,
    sdp,
)
from kamleak.harness.sip.websocket import WebSocket, WebSocketError

__all__ = [
    "WebSocketUA",
    "Dialog",
    "PendingInvite",
    "Registration",
    "ClientTransaction",
    "TraceEntry",
    "ReceivedError",
    "UAError",
    "UATimeout",
    "CallFailed",
]

log = logging.getLogger(__name__)

# Requests that refresh the remote target and so carry a Contact (RFC 3261 12.2.1.1).
_TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})
_DISCONNECT_MODES = ("rst", "fin", "close", "silent", "drop", "close-frame")
TRANSPORTS = ("ws", "wss", "tcp", "udp")
# What a UDP client can do to "disconnect": fall silent (no connection to reset or close).
_UDP_DISCONNECT_MODES = ("silent", "drop")
T1, T2 = 0.5, 4.0   # RFC 3261 17.1.1.1: retransmission over UDP; a transaction gives up after 64*T1

T = TypeVar("T")


class UAError(Exception):
    """Base error of the user agent."""


class UATimeout(UAError):
    """A wait ran past its deadline."""


class CallFailed(UAError):
    """A request got a final response >= 300; ``.response`` holds it."""

    def __init__(self, response: SipMessage, message: str | None = None) -> None:
        self.response = response
        super().__init__(message or f"{response.status} {response.reason}")


@dataclass
class TraceEntry:
    ts: float  # time.time()
    direction: str  # "out" | "in"
    transport: str  # "ws" | "wss" | "tcp" | "udp"
    local: str  # "ip:port"
    remote: str
    message: SipMessage | None  # None when the received bytes did not parse
    raw: bytes


@dataclass
class ReceivedError:
    """Something the peer sent that we could not accept (kept, never fatal)."""

    ts: float
    reason: str
    raw: bytes

    def __str__(self) -> str:
        return self.reason


class ClientTransaction:
    """Client transaction state as far as a reliable transport needs it."""

    def __init__(self, request: SipMessage) -> None:
        self.request = request
        self.branch = request.top_via_branch
        self.method = request.method
        self.responses: list[SipMessage] = []
        self.final: SipMessage | None = None
        self.ack: SipMessage | None = None  # INVITE only; resent on retransmitted finals
        self._consumed = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.branch or "", self.method or "")

    def _next_response(self) -> SipMessage | None:
        if self._consumed < len(self.responses):
            self._consumed += 1
            return self.responses[self._consumed - 1]
        return None


class Dialog:
    """An INVITE dialog where this UA was the UAC of the initial INVITE.

    ``refresher`` is "local", "remote" or None: who refreshes the session
    according to the last RFC 4028 negotiation.
    """

    def __init__(self, ua: WebSocketUA, invite: SipMessage, response: SipMessage, sdp_port: int) -> None:
        self.ua = ua
        self.invite = invite
        self.response = response
        self.call_id: str = invite.call_id or ""
        self.local_tag: str = invite.from_tag or ""
        self.remote_tag: str = response.to_tag or ""
        self.local_party: str = invite.header("From") or ""  # From value incl. our tag
        self.remote_party: str = response.header("To") or ""  # To value incl. remote tag
        self.local_uri = parse_name_addr(self.local_party)[1]
        self.remote_uri = parse_name_addr(self.remote_party)[1]
        self.local_cseq: int = invite.cseq[0] if invite.cseq else 1
        self.remote_cseq: int | None = None
        self.route_set: list[str] = []
        self.remote_target: str = invite.uri or ""
        self.state = "early"
        self.terminated_by: str | None = None  # "local" | "remote"
        self.session_expires: int | None = None
        self.min_se: int | None = None
        self.refresher: str | None = None
        self.sdp_session_id = random.randint(10**6, 10**9)
        self.sdp_version = 1
        self.sdp_port = sdp_port
        self._update_from_response(response)

    def __repr__(self) -> str:
        return f"<Dialog {self.state} call-id={self.call_id} local={self.local_tag} remote={self.remote_tag}>"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    def _update_from_response(self, response: SipMessage) -> None:
        # Route set comes from the dialog-creating response (12.1.2); a 2xx
        # recomputes what an early dialog had (13.2.2.4).
        self.route_set = route_set_from_record_route(response, as_uac=True)
        self._refresh_target(response)
        if 200 <= (response.status or 0) < 300:
            self.response = response
            self.remote_party = response.header("To") or self.remote_party
            self.state = "confirmed"

    def _refresh_target(self, msg: SipMessage) -> None:
        contact = msg.header("Contact")
        if contact:
            self.remote_target = parse_name_addr(contact)[1]

    def _apply_session_timer(self, msg: SipMessage, we_are_uac: bool) -> None:
        seconds, refresher = parse_session_expires(msg.header("Session-Expires"))
        if seconds is None:
            return
        self.session_expires = seconds
        if refresher:
            local = (refresher == "uac") == we_are_uac
            self.refresher = "local" if local else "remote"

    def sdp(self) -> bytes:
        """Our current SDP (offer or answer)."""
        return sdp(self.sdp_session_id, self.sdp_version, self.sdp_port, self.ua.sdp_ip)

    def build_request(
        self,
        method: str,
        extra_headers: Iterable[tuple[str, str]] = (),
        body: bytes | str = b"",
        content_type: str | None = None,
    ) -> SipMessage:
        """Next in-dialog request (RFC 3261 12.2.1.1); bumps the local CSeq."""
        method = method.upper()
        if method in ("ACK", "CANCEL"):
            raise ValueError(f"{method} is not sent as a new in-dialog request")
        with self.ua._cond:
            self.local_cseq += 1
            cseq = self.local_cseq
        ruri, routes = apply_route_set(self.remote_target, self.route_set)
        return build_request(
            method,
            ruri,
            from_=self.local_party,
            to=self.remote_party,
            call_id=self.call_id,
            cseq=cseq,
            via=self.ua._new_via(),
            contact=self.ua.contact if method in _TARGET_REFRESH else None,
            route=routes,
            extra_headers=[("User-Agent", self.ua.user_agent)] + list(extra_headers),
            body=body,
            content_type=content_type,
        )

    def request(
        self,
        method: str,
        *,
        extra_headers: Iterable[tuple[str, str]] = (),
        body: bytes | str = b"",
        content_type: str | None = None,
        timeout: float = 10.0,
        check: bool = False,
    ) -> SipMessage:
        """Send an in-dialog request and return its final response (ACKed if
        it was an INVITE). With ``check`` a final >= 300 raises CallFailed."""
        req = self.build_request(method, extra_headers, body, content_type)
        tx = self.ua._start_transaction(req)
        final = self.ua._wait_final(tx, timeout)
        if req.method == "UPDATE" and 200 <= final.status < 300:
            self._refresh_target(final)  # UPDATE is a target refresh request (RFC 3311 5.1)
            self._apply_session_timer(final, we_are_uac=True)  # RFC 4028 7.4
        if req.method == "INVITE":
            if 200 <= final.status < 300:
                self._refresh_target(final)  # 2xx to re-INVITE is a target refresh (12.2.1.2)
                self._apply_session_timer(final, we_are_uac=True)
                ack = build_ack(req, final, route_set=self.route_set, remote_target=self.remote_target,
                                via=self.ua._new_via())
                self.ua._send_ack(tx, ack)
            # a non-2xx final was ACKed by the transaction (_on_response, 17.1.1.3)
        if req.method == "BYE" or final.status in (408, 481):
            self._terminate("local" if req.method == "BYE" else "remote")  # RFC 3261 12.2.1.2
        if check and final.status >= 300:
            raise CallFailed(final, f"in-dialog {req.method} failed: {final.status} {final.reason}")
        return final

    def reinvite(
        self,
        session_expires: int | None = None,
        min_se: int | None = None,
        refresher: str | None = None,
        *,
        timeout: float = 10.0,
        extra_headers: Iterable[tuple[str, str]] = (),
        check: bool = False,
    ) -> SipMessage:
        """Session refresh re-INVITE (RFC 4028 7.4) with the same SDP,
        version + 1. Defaults re-use the negotiated session timer values."""
        self.sdp_version += 1
        headers = self.ua._timer_headers(
            session_expires if session_expires is not None else self.session_expires,
            min_se if min_se is not None else self.min_se,
            refresher if refresher is not None else {"local": "uac", "remote": "uas"}.get(self.refresher or ""),
        )
        return self.request(
            "INVITE",
            extra_headers=headers + [("Allow", ALLOW)] + list(extra_headers),
            body=self.sdp(),
            content_type="application/sdp",
            timeout=timeout,
            check=check,
        )

    def update(
        self,
        session_expires: int | None = None,
        min_se: int | None = None,
        refresher: str | None = None,
        *,
        with_sdp: bool = False,
        timeout: float = 10.0,
        extra_headers: Iterable[tuple[str, str]] = (),
        check: bool = False,
    ) -> SipMessage:
        """In-dialog UPDATE (RFC 3311) as a session refresh (RFC 4028 7.4):
        Session-Expires/Min-SE default to the negotiated values, Supported:
        timer (RFC 4028 7.1), our Contact (a target refresh, RFC 3311 5.1).
        Without ``with_sdp`` no body (RFC 4028 7.4 recommends a refresh
        UPDATE without an offer); with it, our SDP, version + 1, as an offer.
        A 2xx refreshes the remote target and the session timer."""
        headers = self.ua._timer_headers(
            session_expires if session_expires is not None else self.session_expires,
            min_se if min_se is not None else self.min_se,
            refresher if refresher is not None else {"local": "uac", "remote": "uas"}.get(self.refresher or ""),
        )
        headers = [("Supported", "timer")] + headers + [("Allow", ALLOW)] + list(extra_headers)
        if with_sdp:
            self.sdp_version += 1
        return self.request(
            "UPDATE",
            extra_headers=headers,
            body=self.sdp() if with_sdp else b"",
            content_type="application/sdp" if with_sdp else None,
            timeout=timeout,
            check=check,
        )

    def bye(self, *, timeout: float = 10.0, extra_headers: Iterable[tuple[str, str]] = (),
            check: bool = False) -> SipMessage:
        """UA-initiated BYE; returns the final response."""
        return self.request("BYE", extra_headers=extra_headers, timeout=timeout, check=check)

    def _terminate(self, by: str) -> None:
        with self.ua._cond:
            if self.state != "terminated":
                self.state = "terminated"
                self.terminated_by = by
            self.ua._cond.notify_all()


class PendingInvite:
    """An initial INVITE sent and not yet finished (``WebSocketUA.invite_start``).

    Responses are taken in wire order by whichever wait runs:
    `wait_provisional`, `cancel` (which waits for a provisional first, RFC
    3261 9.1) and `wait_final`.  A 1xx with a To tag makes an early dialog
    (12.1.2); the final response is ACKed as `invite()` does (17.1.1.3 for
    >= 300, 13.2.2.4 for 2xx).  `provisionals` are the 1xx the reader has
    matched so far, read or not.
    """

    def __init__(self, ua: WebSocketUA, request: SipMessage, sdp_port: int, sdp_session_id: int,
                 min_se: int | None) -> None:
        self.ua = ua
        self.request = request
        self.uri = request.uri or ""
        self.sdp_port = sdp_port
        self.sdp_session_id = sdp_session_id
        self.min_se = min_se
        self.early: dict[str, Dialog] = {}
        self.final: SipMessage | None = None
        self.dialog: Dialog | None = None  # the confirmed dialog of a 2xx
        self.cancel_request: SipMessage | None = None
        self.cancel_response: SipMessage | None = None
        self.bye_response: SipMessage | None = None  # the BYE of a 2xx that won the race with our CANCEL
        self.tx = ua._start_transaction(request)

    def __repr__(self) -> str:
        state = f"final {self.final.status}" if self.final is not None else "pending"
        return f"<PendingInvite {self.uri} {state}{' cancelled' if self.cancel_request else ''}>"

    @property
    def call_id(self) -> str:
        return self.request.call_id or ""

    @property
    def provisionals(self) -> list[SipMessage]:
        """Every 1xx received so far (including ones no wait has taken yet)."""
        with self.ua._cond:
            return [r for r in self.tx.responses if r.status < 200]

    @property
    def cancelled(self) -> bool:
        return self.cancel_request is not None

    def _new_dialog(self, resp: SipMessage) -> Dialog:
        d = Dialog(self.ua, self.request, resp, self.sdp_port)
        d.sdp_session_id = self.sdp_session_id
        d.min_se = self.min_se
        with self.ua._cond:
            self.ua._dialogs[d.key] = d
        return d

    def _take(self, resp: SipMessage) -> None:
        """Process the next response of the INVITE (in wire order)."""
        if resp.status < 200:
            tag = resp.to_tag
            if tag and resp.status > 100:
                if tag in self.early:
                    self.early[tag]._update_from_response(resp)
                else:
                    self.early[tag] = self._new_dialog(resp)
            return
        if self.final is not None:
            return  # a retransmitted final: the reader ACKs it again
        self.final = resp
        req, ua = self.request, self.ua
        if resp.status >= 300:
            # the transaction ACKed it already (_on_response, RFC 3261 17.1.1.3)
            for d in self.early.values():
                d._terminate("remote")
            return
        dialog = self.early.get(resp.to_tag or "")
        if dialog is not None:
            dialog._update_from_response(resp)
        else:
            dialog = self._new_dialog(resp)
        for d in self.early.values():
            if d is not dialog:
                d._terminate("remote")  # other early dialogs end with the 2xx (13.2.2.4)
        if not resp.header("Contact"):
            ua._record_error(f"2xx to INVITE without Contact (RFC 3261 13.3.1.4): {resp.summary()}", resp.encode())
        # No Session-Expires in the 2xx means no session timer (RFC 4028 7.2).
        dialog._apply_session_timer(resp, we_are_uac=True)
        self.dialog = dialog
        ua._send_ack(self.tx, build_ack(req, resp, route_set=dialog.route_set,
                                        remote_target=dialog.remote_target, via=ua._new_via()))

    def _next(self, deadline: float, timeout: float, what: str) -> SipMessage:
        resp = self.ua._wait(self.tx._next_response, deadline, timeout, what)
        self._take(resp)
        return resp

    def wait_provisional(self, status: int | None = None, timeout: float = 10.0) -> SipMessage:
        """The next provisional response (of STATUS, if given; earlier other
        1xx are processed and skipped).  A final response first raises
        CallFailed (>= 300) or UAError (2xx), having ACKed it."""
        if self.final is not None:
            raise UAError(f"INVITE {self.uri} already has its final response {self.final.status}")
        deadline = time.monotonic() + timeout
        what = f"{status or 'provisional'} response to INVITE"
        while True:
            resp = self._next(deadline, timeout, what)
            if resp.status >= 200:
                if resp.status >= 300:
                    raise CallFailed(resp, f"INVITE {self.uri}: {resp.status} {resp.reason} before {what}")
                raise UAError(f"INVITE {self.uri}: {resp.status} {resp.reason} before {what}")
            if status is None or resp.status == status:
                return resp

    def wait_final(self, timeout: float = 10.0, *, bye_after_cancel: bool = True) -> SipMessage:
        """The final response, ACKed; a 2xx sets `dialog`.  If we sent a
        CANCEL and the 2xx won the race (RFC 3261 9.1: the CANCEL has no
        effect on a transaction already answered), the call is up: with
        BYE_AFTER_CANCEL it is ended at once with a BYE (RFC 3261 15), its
        final response in `bye_response`."""
        deadline = time.monotonic() + timeout
        while self.final is None:
            self._next(deadline, timeout, "final response to INVITE")
        if (bye_after_cancel and self.cancelled and self.dialog is not None
                and self.dialog.state == "confirmed" and self.bye_response is None):
            self.bye_response = self.dialog.bye(timeout=max(0.5, deadline - time.monotonic()))
        return self.final

    def wait_dialog(self, timeout: float = 10.0) -> Dialog:
        """The confirmed dialog; a final >= 300 raises CallFailed (what `invite()` does)."""
        final = self.wait_final(timeout, bye_after_cancel=False)
        if final.status >= 300:
            raise CallFailed(final, f"INVITE {self.uri} failed: {final.status} {final.reason}")
        assert self.dialog is not None
        return self.dialog

    def cancel(self, *, timeout: float = 10.0, require_provisional: bool = True,
               extra_headers: Iterable[tuple[str, str]] = ()) -> SipMessage | None:
        """CANCEL the INVITE (RFC 3261 9.1) and return the CANCEL's final response.

        RFC 3261 9.1: a CANCEL MUST NOT be sent before a provisional response
        has been received, and SHOULD NOT once a final one has.  So by default
        this first waits (within TIMEOUT) for a provisional response, and
        sends nothing (returns None) if the final response comes first or was
        already here (a 2xx then is an established call: `dialog.bye()` it).
        ``require_provisional=False`` sends it at once whatever
        has or has not arrived: the CANCEL before any response, or racing the
        200, as a UA breaking the rule would.  The INVITE's outcome (487, or a
        2xx that won) is `wait_final()`'s.
        """
        if self.cancel_request is not None:
            raise UAError(f"INVITE {self.uri} was already cancelled")
        deadline = time.monotonic() + timeout
        if require_provisional:
            if self.final is not None:
                return None
            while not any(r.status < 200 for r in self.tx.responses[: self.tx._consumed]):
                resp = self._next(deadline, timeout, "provisional response to INVITE (before CANCEL)")
                if resp.status >= 200:
                    return None
        req = build_cancel(self.request, [("User-Agent", self.ua.user_agent)] + list(extra_headers))
        self.cancel_request = req
        tx = self.ua._start_transaction(req)
        self.cancel_response = self.ua._wait_final(tx, max(0.001, deadline - time.monotonic()))
        return self.cancel_response


@dataclass
class Registration:
    """This UA's registration binding (RFC 3261 10.2): one Call-ID for all
    REGISTERs to the registrar, CSeq + 1 each time."""

    aor: str
    registrar: str  # the REGISTER's Request-URI
    call_id: str
    cseq: int = 0
    expires: int | None = None  # what the last 2xx granted (our Contact's expires, else Expires)
    response: SipMessage | None = None  # the last final response


class WebSocketUA:
    """A SIP UA on one WebSocket connection (RFC 7118), or one TCP connection, or one UDP socket.

    ``auto_answer=False`` leaves incoming requests unanswered (answer them
    with :meth:`respond`); they are queued for :meth:`wait_for_request` either way.
    """

    def __init__(
        self,
        url: str,
        user: str = "kamleak",
        domain: str | None = None,
        *,
        display_name: str | None = None,
        sdp_ip: str = "127.0.0.1",
        user_agent: str = "kamleak",
        auto_answer: bool = True,
        io_timeout: float = 0.1,
        send_timeout: float = 5.0,
        source: tuple[str, int] | None = None,
        share_port: bool = False,
    ) -> None:
        """SOURCE: bind the connection to this (ip, port) first. SHARE_PORT:
        SO_REUSEADDR, so that a second connection (to another destination) may
        use the same ip:port, as a NAT mapping can; both sides must set it."""
        parts = urlsplit(url)
        if parts.scheme not in TRANSPORTS:
            raise ValueError(f"UA URL must be ws://, wss://, tcp:// or udp://, got {url!r}")
        self.url = url
        self.transport = parts.scheme  # "ws" | "wss" | "tcp" | "udp"
        self.user = user
        self.domain = domain or parts.hostname or "invalid"
        self.display_name = display_name
        self.sdp_ip = sdp_ip
        self.user_agent = user_agent
        self.auto_answer = auto_answer
        self.io_timeout = io_timeout
        self.send_timeout = send_timeout
        self.source = source
        self.share_port = share_port or source is not None
        # RFC 7118 5.2: the UA has no reachable address, so Via/Contact use a
        # random .invalid host; ";ob" asks for flow reuse (RFC 5626 5.4).
        # Over TCP/UDP they name the socket's own ip:port, known once it is bound (connect()).
        self.via_host = f"{secrets.token_hex(6)}.invalid"
        self.contact = f"<sip:{user}@{self.via_host};transport=ws;ob>"

        self.trace: list[TraceEntry] = []
        self.errors: list[ReceivedError] = []
        self.stray_responses: list[SipMessage] = []  # responses matching no client transaction
        self.local_addr: str | None = None
        self.remote_addr: str | None = None
        self.closed_reason: str | None = None

        self._ws: WebSocket | None = None
        self._early: list = []
        self._sock: socket.socket | None = None
        self._open = False
        self._closed = False
        self._silent = False   # disconnect("silent"): socket open, never read
        self._blackhole = None  # disconnect("drop"): the rules to remove on close()
        self._cond = threading.Condition(threading.RLock())
        self._io_lock = threading.Lock()  # serialises socket I/O (an SSL object is not thread-safe)
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._transactions: dict[tuple[str, str], ClientTransaction] = {}
        self._resend: dict[tuple[str, str], list] = {}  # UDP: key -> [tx, next at, interval, give up at]
        self._dialogs: dict[tuple[str, str, str], Dialog] = {}
        self._requests: list[SipMessage] = []
        self._errors_reported = 0
        self.registration: Registration | None = None

    # -- connection ----------------------------------------------------------

    def __enter__(self) -> WebSocketUA:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<WebSocketUA {self.user} {self.url} {'connected' if self.connected else 'not connected'}>"

    @property
    def connected(self) -> bool:
        return self._open

    @property
    def dialogs(self) -> list[Dialog]:
        with self._cond:
            return list(self._dialogs.values())

    @property
    def websocket(self) -> bool:
        return self.transport in ("ws", "wss")

    def connect(self, timeout: float = 5.0) -> WebSocketUA:
        """Open the WebSocket with subprotocol "sip" (RFC 7118 4); over TCP the
        connection, over UDP the UA's own socket (bound, and connected to the server)."""
        if self._ws is not None or self._closed:
            raise UAError("connect() called twice; use a new WebSocketUA per connection")
        parts = urlsplit(self.url)
        ws = WebSocket(client=True) if self.websocket else \
            StreamFraming() if self.transport == "tcp" else DatagramFraming()
        sock = None
        events: list = []
        try:
            sock = self._open_socket(timeout)
            if self.websocket:
                events = self._handshake(ws, sock, parts, timeout)
            local, remote = sock.getsockname(), sock.getpeername()
        except UAError:
            sock.close()
            raise
        except (WebSocketError, OSError, ValueError) as exc:
            if sock is not None:
                sock.close()
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise UAError(f"cannot connect to {self.url}: {type(exc).__name__}: {reason}") from None
        sock.settimeout(self.io_timeout)
        self._ws, self._sock = ws, sock
        self._early = [ev for ev in events if ev[0] != "open"]   # frames that came with the 101
        self.local_addr, self.remote_addr = _fmt_addr(local), _fmt_addr(remote)
        if not self.websocket:
            # Reachable as it is: requests towards the UA go to this socket.
            self.via_host = self.local_addr
            param = ";transport=tcp" if self.transport == "tcp" else ""
            self.contact = f"<sip:{self.user}@{self.local_addr}{param}>"
        self._open = True
        self._reader = threading.Thread(target=self._reader_loop, name=f"kamleak-ua-{self.user}", daemon=True)
        self._reader.start()
        log.debug("%s connected %s -> %s", self.user, self.local_addr, self.remote_addr)
        return self

    def _handshake(self, ws: WebSocket, sock: socket.socket, parts, timeout: float) -> list:
        """The WebSocket upgrade; the events that came with the 101."""
        sock.sendall(ws.connect(parts.netloc, parts.path or "/"))
        deadline = time.monotonic() + timeout
        events: list = []
        while not ws.open:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection during the handshake")
            events = ws.receive(data)
            if events and events[0][0] == "refused":
                raise WebSocketError(f"the server answered the upgrade with HTTP {events[0][1]}")
        agreed = ws.subprotocol
        if (agreed or "").strip().lower() != "sip":
            raise UAError(f"cannot connect to {self.url}: server did not accept WebSocket subprotocol 'sip' "
                          f"(Sec-WebSocket-Protocol: {agreed!r})")
        return events

    def _open_socket(self, timeout: float) -> socket.socket:
        """The TCP (and TLS) connection, or the UDP socket connected to the server
        (it then hears only the server); bound first with SOURCE or SHARE_PORT."""
        parts = urlsplit(self.url)
        udp = self.transport == "udp"
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        default_port = {"wss": 443, "ws": 80}.get(self.transport, 5060)
        try:
            if self.share_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(self.source or ("127.0.0.1", 0))
            sock.settimeout(timeout)
            sock.connect((parts.hostname, parts.port or default_port))
            if self.transport == "wss":
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE   # self-signed test certs
                sock = ctx.wrap_socket(sock, server_hostname=parts.hostname)
        except BaseException:
            sock.close()
            raise
        return sock

    def newcomer(self, url: str, timeout: float = 5.0) -> None:
        """A second WebSocket connection from this UA's own ip:port to URL (another
        listener: TCP needs the destinations to differ), opened and closed with a
        close handshake, while this UA's connection stays open: what takes over
        Kamailio's aliases of the first (scenarios/ws_alias_takeover.py).  Needs
        SHARE_PORT here (both sockets set SO_REUSEADDR)."""
        if not self.share_port or self.local_addr is None or self.transport == "udp":
            raise UAError("newcomer() needs a connected TCP-based UA made with share_port=True")
        ip, port = self.local_addr.rsplit(":", 1)
        other = WebSocketUA(url, user="newcomer", source=(ip, int(port)), io_timeout=self.io_timeout)
        try:
            other.connect(timeout)
            other.disconnect("close", timeout=timeout)
        finally:
            other.close()

    def disconnect(self, mode: str = "rst", timeout: float = 2.0) -> None:
        """Drop the connection.

        "rst": stop the reader, SO_LINGER {1,0}, close -> the kernel sends a
        TCP RST at once (also on TLS: no close_notify is sent).
        "fin": stop the reader, shutdown(SHUT_RDWR) + close: FIN without a
        WebSocket close frame. "close": WebSocket close handshake (RFC 6455
        7.1.2), waiting up to ``timeout`` for the peer's close frame.
        "silent": the peer vanishes without a word (a laptop lid shut, a
        network gone): the reader stops, the socket stays open and is never
        read again, so no PING is answered and nothing is sent; only the
        kernel still ACKs.  `close()` later resets it.
        "drop": "silent", and every packet of the connection is dropped
        both ways (kamleak.harness.stack.netdrop: iptables on lo, these two ports only),
        so the server's data is never ACKed either: a peer gone without
        FIN or RST.  `close()` removes the rules, then resets the socket.
        "close-frame": a WebSocket close frame (RFC 6455 5.5.1), then
        "silent": the TCP connection is left to the server to close.
        Over TCP "close" and "close-frame" do not exist (no close frame);
        over UDP only "silent" and "drop" do, and both are "silent": no
        connection to reset, and datagrams the UA never reads are as lost as
        dropped ones (an unread UDP socket sends no ICMP).
        """
        if mode not in _DISCONNECT_MODES:
            raise ValueError(f"disconnect mode must be one of {_DISCONNECT_MODES}, got {mode!r}")
        if self.transport == "udp" and mode not in _UDP_DISCONNECT_MODES:
            raise ValueError(f"a UDP client has no connection to {mode}; it can only fall silent "
                             f"({', '.join(_UDP_DISCONNECT_MODES)})")
        if self.transport == "tcp" and mode in ("close", "close-frame"):
            raise ValueError(f"'{mode}' is a WebSocket close frame; a TCP client has rst, fin, silent, drop")
        if self._sock is None:
            raise UAError("not connected")
        self._stop_reader()
        if self.transport == "udp":
            mode = "silent"
        if mode == "close-frame":
            with self._io_lock:
                try:
                    self._sock.sendall(self._ws.close())
                except OSError as exc:
                    log.debug("disconnect(close-frame): %s", exc)
            mode = "silent"
        if mode == "drop":
            from kamleak.harness.stack.netdrop import Blackhole
            local, remote = self._sock.getsockname(), self._sock.getpeername()
            self._blackhole = Blackhole(local[:2], remote[:2]).start()
            mode = "silent"
        if mode == "silent":
            with self._cond:
                self.closed_reason = "silent: socket kept open, never read"
                self._open = False
                self._cond.notify_all()
            self._silent = True
            return
        with self._io_lock:
            ws, sock = self._ws, self._sock
            try:
                if mode == "rst":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
                elif mode == "fin":
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass  # peer already gone
                    sock.close()
                else:
                    sock.sendall(ws.close())
                    _await_close(ws, sock, timeout)
                    sock.close()
            except OSError as exc:
                log.debug("disconnect(%s): %s", mode, exc)
                sock.close()
            finally:
                self._sock = None
        with self._cond:
            if self._open:
                self.closed_reason = f"disconnected locally ({mode})"
            self._open = False
            self._cond.notify_all()
        log.debug("%s disconnected (%s)", self.user, mode)

    def close(self) -> None:
        """Idempotent cleanup: clean WebSocket close if still open (TCP: FIN; UDP: the socket)."""
        if self._closed:
            return
        self._closed = True
        if self._sock is None:
            return
        if self._silent or self.transport == "udp":
            if not self._silent:
                self._stop_reader()
            self._drop_silent()
            with self._cond:
                self._open = False
                self._cond.notify_all()
            return
        try:
            self.disconnect("close" if self._open and self.websocket else "fin", timeout=1.0)
        except UAError as exc:
            log.warning("%s: close: %s", self.user, exc)

    def _drop_silent(self) -> None:
        """End a silent connection with an RST (the reader is already stopped); a UDP socket just closes."""
        if self._blackhole is not None:
            self._blackhole.stop()
            self._blackhole = None
        with self._io_lock:
            sock, self._sock = self._sock, None
            if sock is not None:
                if self.transport != "udp":
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    except OSError:
                        pass
                sock.close()

    def _stop_reader(self) -> None:
        self._stop.set()
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=max(2.0, 20 * self.io_timeout))
            if reader.is_alive():
                raise UAError("reader thread did not stop")

    # -- reader --------------------------------------------------------------

    def _reader_loop(self) -> None:
        ws, sock = self._ws, self._sock
        assert ws is not None and sock is not None
        events, self._early = self._early, []
        udp = self.transport == "udp"
        while not self._stop.is_set():
            if udp and self._resend:
                self._resend_due()
            parsed: list[SipMessage] = []
            closed = None
            try:
                if not events:
                    # Wait for data without holding the I/O lock so senders are
                    # never blocked behind an idle recv.
                    if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                        readable, _, _ = select.select([sock], [], [], self.io_timeout)
                        if not readable:
                            continue
                with self._io_lock:
                    if self._stop.is_set():
                        break
                    if not events:
                        data = sock.recv(65536)
                        if not data and udp:
                            continue           # an empty datagram: nothing, not an EOF
                        if not data:
                            raise ConnectionResetError("the peer closed the connection")
                        events = ws.receive(data)
                    out = ws.outgoing()          # pong, close reply
                    if out:
                        sock.sendall(out)
                    for ev in events:
                        if ev[0] == "message":
                            # Trace while still holding the lock: trace order == wire order.
                            msg = self._record_incoming(ev[1])
                            if msg is not None:
                                parsed.append(msg)
                        elif ev[0] == "close":
                            closed = ev[1]
                            break
                    events = []
            except (TimeoutError, ssl.SSLWantReadError):
                continue  # partial TLS record: try again
            except ConnectionRefusedError:
                if self.transport == "udp":
                    continue  # an ICMP port unreachable for an earlier datagram: no connection to lose
                if not self._stop.is_set():
                    self._connection_lost("connection lost: ConnectionRefusedError")
                return
            except OSError as exc:
                if not self._stop.is_set():
                    self._connection_lost(f"connection lost: {type(exc).__name__}: {exc}")
                return
            except (WebSocketError, FramingError) as exc:
                what = "WebSocket" if self.websocket else "SIP framing"
                self._record_error(f"{what} protocol error: {exc}", b"")
                self._connection_lost(f"{what} protocol error: {exc}")
                return
            for msg in parsed:
                try:
                    if msg.is_response:
                        self._on_response(msg)
                    else:
                        self._on_request(msg)
                except Exception as exc:  # a bug here must not kill the reader silently
                    log.exception("error handling %s", msg.summary())
                    self._record_error(f"error handling {msg.summary()}: {type(exc).__name__}: {exc}", b"")
            if closed is not None:
                self._connection_lost(f"peer sent WebSocket close (code {int(closed)})")
                return

    def _record_incoming(self, data: bytes) -> SipMessage | None:
        if not data.strip(b"\r\n "):
            return None  # CRLF keep-alive (RFC 5626 4.4.1), not a message
        ts = time.time()
        msg: SipMessage | None = None
        try:
            msg = SipMessage.parse(data)
            _check_mandatory(msg)
        except Exception as exc:  # noqa: BLE001 - SipParseError, or anything odd: keep it, never kill the reader
            self._append_trace("in", msg, data, ts)
            self._record_error(f"malformed SIP message received: {exc}", data, ts)
            return None
        self._append_trace("in", msg, data, ts)
        log.debug("%s <- %s", self.user, msg.summary())
        return msg

    def _append_trace(self, direction: str, msg: SipMessage | None, raw: bytes, ts: float | None = None) -> TraceEntry:
        entry = TraceEntry(ts or time.time(), direction, self.transport, self.local_addr or "",
                           self.remote_addr or "", msg, raw)
        with self._cond:
            self.trace.append(entry)
        return entry

    def _record_error(self, reason: str, raw: bytes, ts: float | None = None) -> None:
        log.warning("%s: %s", self.user, reason)
        with self._cond:
            self.errors.append(ReceivedError(ts or time.time(), reason, raw))
            self._cond.notify_all()

    def _connection_lost(self, reason: str) -> None:
        log.debug("%s: %s", self.user, reason)
        with self._cond:
            if self._open:
                self.closed_reason = reason
            self._open = False
            self._cond.notify_all()

    def _on_response(self, resp: SipMessage) -> None:
        key = (resp.top_via_branch or "", resp.cseq[1])
        resend: SipMessage | None = None
        with self._cond:
            tx = self._transactions.get(key)
            if tx is None:
                self.stray_responses.append(resp)
                log.debug("stray response %s", resp.summary())
                return
            if resp.status >= 200 and tx.final is not None:
                # Retransmitted final: ACK every 2xx again (13.2.2.4) and
                # absorb non-2xx retransmissions with the same ACK (17.1.1.2).
                if tx.ack is not None and resp.to_tag == tx.final.to_tag:
                    resend = tx.ack
            elif resp.status >= 200:
                tx.final = resp
                if tx.method == "INVITE" and resp.status >= 300:
                    # The INVITE client transaction ACKs a non-2xx final itself
                    # (17.1.1.3), whether or not anyone waits for the response.
                    tx.ack = resend = build_ack(tx.request, resp)
            tx.responses.append(resp)
            if tx.method == "INVITE" or resp.status >= 200:
                self._resend.pop(key, None)   # an INVITE's any response, a non-INVITE's final (17.1)
            elif key in self._resend:
                self._resend[key][2] = T2     # a non-INVITE's provisional: every T2 now (17.1.2.2)
            self._cond.notify_all()
        if resend is not None:
            self._send_quiet(resend)

    def _on_request(self, req: SipMessage) -> None:
        if self.auto_answer:
            self._auto_answer(req)
        with self._cond:
            self._requests.append(req)
            self._cond.notify_all()

    def _find_dialog(self, req: SipMessage) -> Dialog | None:
        with self._cond:
            return self._dialogs.get((req.call_id or "", req.to_tag or "", req.from_tag or ""))

    def _auto_answer(self, req: SipMessage) -> None:
        method = req.method
        if method == "ACK":
            return  # never answered (RFC 3261 17.1.1.3)
        dialog = self._find_dialog(req)
        if req.to_tag is not None and (dialog is None or (method == "INVITE" and dialog.state == "terminated")):
            if method in ("BYE", "INVITE"):
                self._respond_quiet(req, 481)  # unknown dialog (RFC 3261 12.2.2)
                return
        if method == "CANCEL":
            self._respond_quiet(req, 481)  # we never have a pending server INVITE to cancel
            return
        if dialog is not None:
            cseq = req.cseq[0]
            if dialog.remote_cseq is not None and cseq < dialog.remote_cseq:
                self._respond_quiet(req, 500, "CSeq Out of Order")  # RFC 3261 12.2.2
                return
            dialog.remote_cseq = cseq
        if method == "BYE" and dialog is not None:
            self._respond_quiet(req, 200)
            dialog._terminate("remote")
        elif method == "INVITE" and dialog is not None:
            self._answer_refresh(dialog, req)
        elif method == "OPTIONS":
            self._respond_quiet(req, 200, extra_headers=[("Allow", ALLOW), ("Accept", "application/sdp"),
                                                         ("Supported", "timer")])
        else:
            self._respond_quiet(req, 501)

    def _answer_refresh(self, dialog: Dialog, req: SipMessage) -> None:
        """200 to a peer's re-INVITE (a session refresh, RFC 4028 9)."""
        dialog._refresh_target(req)  # target refresh request (12.2.2)
        headers: list[tuple[str, str]] = [("Contact", self.contact), ("Allow", ALLOW), ("Supported", "timer")]
        seconds, refresher = parse_session_expires(req.header("Session-Expires"))
        if seconds is not None:
            refresher = refresher or "uac"  # RFC 4028 9: UAS chooses when absent
            headers += [("Require", "timer"), ("Session-Expires", f"{seconds};refresher={refresher}")]
            dialog.session_expires = seconds
            dialog.refresher = "remote" if refresher == "uac" else "local"  # the peer is UAC here
        self._respond_quiet(req, 200, extra_headers=headers, body=dialog.sdp(), content_type="application/sdp")

    # -- sending -------------------------------------------------------------

    def _new_via(self) -> str:
        return f"SIP/2.0/{self.transport.upper()} {self.via_host};branch={new_branch()};rport"

    def _send(self, msg: SipMessage | bytes | str) -> None:
        if isinstance(msg, SipMessage):
            raw, parsed, what = msg.encode(), msg, msg.summary()
        else:
            raw = msg.encode("utf-8") if isinstance(msg, str) else bytes(msg)
            try:
                parsed = SipMessage.parse(raw)
            except SipParseError:
                parsed = None
            what = parsed.summary() if parsed else "raw data"
        with self._io_lock:
            ws, sock = self._ws, self._sock
            if ws is None or sock is None or not self._open:
                raise UAError(f"cannot send {what}: not connected ({self.closed_reason or 'never connected'})")
            entry = self._append_trace("out", parsed, raw)
            try:
                # The short reader timeout would abort a send mid-frame when
                # the peer's window is full; allow longer while we hold the lock.
                sock.settimeout(self.send_timeout)
                try:
                    sock.sendall(ws.message(raw))
                finally:
                    sock.settimeout(self.io_timeout)
            except OSError as exc:
                with self._cond:
                    self.trace.remove(entry)
                raise UAError(f"sending {what} failed: {type(exc).__name__}: {exc}") from None
        log.debug("%s -> %s", self.user, what)

    def _send_quiet(self, msg: SipMessage) -> None:
        """Send from the reader thread: a dead connection is already reported."""
        try:
            self._send(msg)
        except UAError as exc:
            log.debug("%s", exc)

    def send(self, msg: SipMessage) -> None:
        """Send a SipMessage as-is (no transaction is created)."""
        self._send(msg)

    def respond(
        self,
        request: SipMessage,
        status: int,
        reason: str | None = None,
        *,
        extra_headers: Iterable[tuple[str, str]] = (),
        body: bytes | str = b"",
        content_type: str | None = None,
        to_tag: str | None = None,
    ) -> SipMessage:
        """Answer a received request; adds a To tag if it has none (8.2.6.2)."""
        if request.to_tag is None and status > 100:
            to_tag = to_tag or new_tag()
        resp = build_response(request, status, reason, to_tag=to_tag,
                              extra_headers=[("User-Agent", self.user_agent)] + list(extra_headers),
                              body=body, content_type=content_type)
        self._send(resp)
        return resp

    def _respond_quiet(self, request: SipMessage, status: int, reason: str | None = None, **kw) -> None:
        try:
            self.respond(request, status, reason, **kw)
        except UAError as exc:
            log.debug("%s", exc)

    def _start_transaction(self, req: SipMessage) -> ClientTransaction:
        tx = ClientTransaction(req)
        with self._cond:
            self._transactions[tx.key] = tx
            if self.transport == "udp":
                now = time.monotonic()
                self._resend[tx.key] = [tx, now + T1, T1, now + 64 * T1]
        self._send(req)
        return tx

    def _resend_due(self) -> None:
        """UDP: resend each request still unanswered (timers A and E), from the reader."""
        now, send = time.monotonic(), []
        with self._cond:
            for key, e in list(self._resend.items()):
                tx, at, interval, give_up = e
                if at > now:
                    continue
                if now >= give_up:              # timer B/F: the wait's deadline reports it
                    del self._resend[key]
                    continue
                e[2] = interval * 2 if tx.method == "INVITE" else min(interval * 2, T2)
                e[1] = now + e[2]
                send.append(tx.request)
        for req in send:
            self._send_quiet(req)

    def _send_ack(self, tx: ClientTransaction, ack: SipMessage) -> None:
        with self._cond:
            tx.ack = ack
        self._send(ack)

    # -- waiting -------------------------------------------------------------

    def _wait(self, predicate: Callable[[], T | None], deadline: float, timeout: float, what: str) -> T:
        with self._cond:
            while True:
                if len(self.errors) > self._errors_reported:
                    new = self.errors[self._errors_reported:]
                    self._errors_reported = len(self.errors)
                    raise UAError(f"while waiting for {what}: " + "; ".join(str(e) for e in new))
                value = predicate()
                if value is not None:
                    return value
                if not self._open:
                    raise UAError(f"connection closed ({self.closed_reason}) while waiting for {what}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise UATimeout(f"no {what} within {timeout:.1f} s")
                self._cond.wait(remaining)

    def _wait_final(self, tx: ClientTransaction, timeout: float,
                    on_provisional: Callable[[SipMessage], None] | None = None) -> SipMessage:
        deadline = time.monotonic() + timeout
        what = f"final response to {tx.method}"
        while True:
            resp = self._wait(tx._next_response, deadline, timeout, what)
            if resp.status >= 200:
                return resp
            if on_provisional is not None:
                on_provisional(resp)

    def wait_for_request(self, method: str | None = None, timeout: float = 10.0, *,
                         call_id: str | None = None) -> SipMessage:
        """Next received request (optionally of ``method`` / ``call_id``),
        removed from the queue. Already auto-answered if auto_answer is on."""
        method = method.upper() if method else None

        def take() -> SipMessage | None:
            for i, req in enumerate(self._requests):
                if (method is None or req.method == method) and (call_id is None or req.call_id == call_id):
                    return self._requests.pop(i)
            return None

        what = f"{method or 'any'} request" + (f" in call {call_id}" if call_id else "")
        return self._wait(take, time.monotonic() + timeout, timeout, what)

    # -- client requests -----------------------------------------------------

    def _timer_headers(self, session_expires: int | None, min_se: int | None,
                       refresher: str | None) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        if session_expires is not None:
            value = str(session_expires) + (f";refresher={refresher}" if refresher else "")
            headers.append(("Session-Expires", value))
        if min_se is not None:
            headers.append(("Min-SE", str(min_se)))
        return headers

    def _from_value(self, tag: str) -> str:
        return format_name_addr(f"sip:{self.user}@{self.domain}", self.display_name, {"tag": tag})

    def _target_uri(self, target: str) -> str:
        return target if target.lower().startswith(("sip:", "sips:")) else f"sip:{target}@{self.domain}"

    def invite_start(
        self,
        target: str,
        *,
        session_expires: int | None = None,
        min_se: int | None = None,
        refresher: str | None = None,
        supported: str | None = "timer",
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> PendingInvite:
        """Send an initial INVITE and return at once: a `PendingInvite` to
        wait on (`wait_provisional`, `wait_final`, `wait_dialog`) or cancel."""
        uri = self._target_uri(target)
        sdp_port = random.randrange(10000, 60000, 2)  # RTP on an even port (RFC 3550 11)
        headers: list[tuple[str, str]] = [("Allow", ALLOW)]
        if supported:
            headers.append(("Supported", supported))
        headers += self._timer_headers(session_expires, min_se, refresher)
        headers.append(("User-Agent", self.user_agent))
        headers += list(extra_headers)
        req = build_request(
            "INVITE", uri,
            from_=self._from_value(new_tag()),
            to=format_name_addr(uri),
            call_id=new_call_id(),
            cseq=1,
            via=self._new_via(),
            contact=self.contact,
            extra_headers=headers,
            body=b"",
        )
        sdp_session_id = random.randint(10**6, 10**9)
        req.body = sdp(sdp_session_id, 1, sdp_port, self.sdp_ip)
        req.add_header("Content-Type", "application/sdp")
        return PendingInvite(self, req, sdp_port, sdp_session_id, min_se)

    def invite(
        self,
        target: str,
        *,
        session_expires: int | None = None,
        min_se: int | None = None,
        refresher: str | None = None,
        timeout: float = 10.0,
        supported: str | None = "timer",
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> Dialog:
        """Place a call and return the confirmed dialog.

        1xx with a To tag creates an early dialog (RFC 3261 12.1.2); 2xx
        confirms it and is ACKed end-to-end (13.2.2.4); >= 300 gets the
        hop-by-hop ACK (17.1.1.3) and raises CallFailed.
        """
        pending = self.invite_start(target, session_expires=session_expires, min_se=min_se,
                                    refresher=refresher, supported=supported, extra_headers=extra_headers)
        return pending.wait_dialog(timeout)

    def register(
        self,
        aor_uri: str | None = None,
        *,
        expires: int = 3600,
        registrar: str | None = None,
        timeout: float = 10.0,
        extra_headers: Iterable[tuple[str, str]] = (),
        check: bool = False,
    ) -> SipMessage:
        """REGISTER our Contact for AOR_URI (default ``sip:user@domain``) and
        return the final response (RFC 3261 10.2).

        The Request-URI is the registrar's domain, without user part
        (10.2: ``sip:<aor host>`` unless REGISTRAR is given); To is the AOR,
        From the AOR with a new tag.  Every REGISTER of this UA shares one
        Call-ID with CSeq + 1 each time (10.2), so calling it again is the
        re-REGISTER (refresh) and ``expires=0`` the unREGISTER of our
        Contact (10.2.2).  Expires is said both ways: the Contact's
        ``expires`` parameter and an Expires header.  The state is
        `self.registration`.  With ``check`` a final >= 300 raises CallFailed.
        """
        aor = self._target_uri(aor_uri or f"sip:{self.user}@{self.domain}")
        if registrar is None:
            parsed = SipUri.parse(aor)
            registrar = f"{parsed.scheme}:{parsed.hostport}"
        reg = self.registration
        if reg is None or reg.aor != aor or reg.registrar != registrar:
            reg = self.registration = Registration(aor=aor, registrar=registrar, call_id=new_call_id())
        reg.cseq += 1
        req = build_request(
            "REGISTER", registrar,
            from_=format_name_addr(aor, self.display_name, {"tag": new_tag()}),
            to=format_name_addr(aor),
            call_id=reg.call_id,
            cseq=reg.cseq,
            via=self._new_via(),
            contact=f"{self.contact};expires={int(expires)}",
            extra_headers=[("Expires", str(int(expires))), ("User-Agent", self.user_agent)] + list(extra_headers),
        )
        tx = self._start_transaction(req)
        final = self._wait_final(tx, timeout)
        reg.response = final
        if 200 <= final.status < 300:
            reg.expires = self._granted_expires(final)
        if check and final.status >= 300:
            raise CallFailed(final, f"REGISTER {aor} failed: {final.status} {final.reason}")
        return final

    def unregister(self, *, timeout: float = 10.0, check: bool = False) -> SipMessage:
        """unREGISTER the binding of the last `register()` (expires=0, 10.2.2)."""
        reg = self.registration
        if reg is None:
            raise UAError("unregister() before register()")
        return self.register(reg.aor, expires=0, registrar=reg.registrar, timeout=timeout, check=check)

    def _granted_expires(self, response: SipMessage) -> int | None:
        """Our binding's expiry in a 2xx to REGISTER: our Contact's expires
        parameter, else the Expires header (RFC 3261 10.2.4)."""
        ours = parse_name_addr(self.contact)[1]
        for value in response.headers("Contact"):
            try:
                _, uri, params = parse_name_addr(value)
            except SipParseError:
                continue
            if uri == ours and (params.get("expires") or "").isdigit():
                return int(params["expires"])
        header = (response.header("Expires") or "").strip()
        return int(header) if header.isdigit() else None

    def request(
        self,
        method: str,
        uri: str | None = None,
        *,
        extra_headers: Iterable[tuple[str, str]] = (),
        body: bytes | str = b"",
        content_type: str | None = None,
        timeout: float = 10.0,
        check: bool = False,
    ) -> SipMessage:
        """Out-of-dialog non-INVITE request (OPTIONS, MESSAGE, ...) -> final response."""
        method = method.upper()
        if method in ("INVITE", "ACK", "CANCEL"):
            raise ValueError(f"use invite()/dialogs for {method}")
        ruri = self._target_uri(uri or f"sip:{self.domain}")
        req = build_request(
            method, ruri,
            from_=self._from_value(new_tag()),
            to=format_name_addr(ruri),
            call_id=new_call_id(),
            cseq=1,
            via=self._new_via(),
            contact=self.contact if method in ("REGISTER", "SUBSCRIBE") else None,
            extra_headers=[("User-Agent", self.user_agent)] + list(extra_headers),
            body=body,
            content_type=content_type,
        )
        tx = self._start_transaction(req)
        final = self._wait_final(tx, timeout)
        if check and final.status >= 300:
            raise CallFailed(final, f"{method} {ruri} failed: {final.status} {final.reason}")
        return final


def _check_mandatory(msg: SipMessage) -> None:
    """Headers without which we cannot match or answer (RFC 3261 8.1.1)."""
    if missing := missing_mandatory(msg):
        raise SipParseError(f"missing mandatory header {missing} in {msg.summary()}")
    _ = msg.cseq  # raises SipParseError if malformed
    for name in ("From", "To"):
        parse_name_addr(msg.header(name) or "")
    if msg.top_via is None or (msg.is_response and not msg.top_via_branch):
        raise SipParseError(f"no usable top Via in {msg.summary()}")


def _await_close(ws: WebSocket, sock: socket.socket, timeout: float) -> None:
    """Read until the peer's close frame (RFC 6455 7.1.2), EOF or TIMEOUT."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except (TimeoutError, WebSocketError):
            return
        if not data or any(ev[0] == "close" for ev in ws.receive(data)):
            return


def _fmt_addr(addr) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
