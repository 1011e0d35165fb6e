"""WebSocketUA state machine against a scripted in-test WebSocket SIP peer.

The peer is a minimal WebSocket server on a stdlib socket (127.0.0.1 only),
framing through kamleak's one codec (harness/sip/websocket.py): handshake with
``Sec-WebSocket-Protocol: sip``, unmasked frames from the server, masked
frames from the client. It checks what the UA sends; it is
not a stand-in for Kamailio.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest

from kamleak.harness.sip import (
    CallFailed,
    SipMessage,
    SipUri,
    UAError,
    UATimeout,
    Via,
    WebSocketUA,
    build_request,
    build_response,
    new_branch,
    parse_name_addr,
)
from kamleak.harness.sip.websocket import WebSocket

OP_TEXT, OP_CLOSE, OP_PING = 0x1, 0x8, 0x9
TIMEOUT = 3.0  # per-step deadline inside the peer


class PeerEOF(Exception):
    pass


class WsPeer:
    """One-connection WebSocket server run by a script in a thread."""

    def __init__(self, script, *, tls: ssl.SSLContext | None = None, subprotocol: str | None = "sip"):
        self.script = script
        self.tls = tls
        self.subprotocol = subprotocol
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.lsock.settimeout(TIMEOUT)
        port = self.lsock.getsockname()[1]
        self.url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}"
        self.conn: socket.socket | None = None
        self.error: BaseException | None = None
        self.result: dict = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self._accept()
            self.script(self)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread by join()
            self.error = exc
        finally:
            if self.conn is not None:
                self.conn.close()
            self.lsock.close()

    def join(self, timeout: float = 5.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "peer script did not finish"
        if self.error is not None:
            raise self.error

    def _accept(self):
        conn, _ = self.lsock.accept()
        conn.settimeout(TIMEOUT)
        if self.tls:
            conn = self.tls.wrap_socket(conn, server_side=True)
        self.conn = conn
        self.ws = WebSocket(client=False)
        self.pending: list = []
        while not self.pending:
            chunk = conn.recv(1024)
            if not chunk:
                raise PeerEOF("EOF during handshake")
            self.pending = self.ws.receive(chunk)
        kind, subprotocols, _ = self.pending.pop(0)
        assert kind == "request"
        assert "sip" in [p.strip() for p in subprotocols]
        conn.sendall(self.ws.accept(self.subprotocol))

    def recv_frame(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        """The next message or control frame from the UA, through the one codec
        (it refuses unmasked client frames, RFC 6455 5.3, with a 1002 close)."""
        self.conn.settimeout(timeout)
        while not self.pending:
            chunk = self.conn.recv(65536)
            if not chunk:
                raise PeerEOF("EOF")
            self.pending = self.ws.receive(chunk)
            out = self.ws.outgoing()        # the close reply
            if out:
                self.conn.sendall(out)
        ev = self.pending.pop(0)
        if ev[0] == "close":
            assert ev[1] != 1002, "client frames must be masked (RFC 6455 5.3)"
            return OP_CLOSE, struct.pack("!H", ev[1]) + ev[2].encode()
        if ev[0] == "pong":
            return 0xA, ev[1]
        return ev[2], ev[1]

    def send_frame(self, opcode: int, payload: bytes):
        if opcode == OP_PING:
            data = self.ws.ping(payload)
        elif opcode == OP_CLOSE:
            data = self.ws.close(struct.unpack("!H", payload[:2])[0])   # b"" once the reply went out
        else:
            data = self.ws.message(payload, opcode)
        self.conn.sendall(data)

    def recv_sip(self, timeout: float = TIMEOUT) -> SipMessage:
        opcode, data = self.recv_frame(timeout)
        assert opcode == OP_TEXT, f"expected a text frame, got opcode {opcode}"
        return SipMessage.parse(data)

    def send_sip(self, msg: SipMessage | bytes):
        self.send_frame(OP_TEXT, msg.encode() if isinstance(msg, SipMessage) else msg)


def peer_request(method, dialog_req, dialog_resp, cseq, *, body=b"", extra=()):
    """In-dialog request from the peer (the UAS of ``dialog_req``): From/To
    swapped, R-URI = the UA's Contact (RFC 3261 12.2.1.1)."""
    ua_contact = parse_name_addr(dialog_req.header("Contact"))[1]
    return build_request(
        method, ua_contact,
        from_=dialog_resp.header("To"), to=dialog_req.header("From"),
        call_id=dialog_req.call_id, cseq=cseq,
        via=f"SIP/2.0/WS 127.0.0.1:5066;branch={new_branch()}",
        contact="<sip:bob@127.0.2.9:5080>" if method == "INVITE" else None,
        extra_headers=list(extra), body=body,
        content_type="application/sdp" if body else None,
    )


RR = "<sip:p2.example;lr>, <sip:p1.example;lr>"
BOB_CONTACT = "<sip:bob@127.0.2.9:5080>"


def answer_invite(peer, *, record_route=True, to_tag="bobtag"):
    inv = peer.recv_sip()
    assert inv.method == "INVITE"
    peer.send_sip(build_response(inv, 100))
    extra = [("Contact", BOB_CONTACT), ("Require", "timer"), ("Session-Expires", "1800;refresher=uac")]
    if record_route:
        extra.insert(0, ("Record-Route", RR))
    ok = build_response(inv, 200, to_tag=to_tag, extra_headers=extra, body=b"v=0\r\n", content_type="application/sdp")
    peer.send_sip(ok)
    ack = peer.recv_sip()
    return inv, ok, ack


def sdp_version(msg):
    line = next(ln for ln in msg.text.splitlines() if ln.startswith("o="))
    return int(line.split()[2])


@pytest.fixture
def ua_factory():
    uas = []

    def make(url, **kw):
        ua = WebSocketUA(url, user="alice", domain="127.0.0.1", **kw)
        uas.append(ua)
        return ua

    yield make
    for ua in uas:
        ua.close()


def test_call_ladder(ua_factory):
    def script(peer):
        inv, ok, ack = answer_invite(peer)
        r = peer.result
        r["invite"] = inv
        # 2xx ACK (RFC 3261 13.2.2.4): new branch, same CSeq number, route set, R-URI = remote target
        assert ack.method == "ACK" and ack.uri == "sip:bob@127.0.2.9:5080"
        assert ack.top_via_branch != inv.top_via_branch
        assert ack.cseq == (1, "ACK") and ack.to_tag == "bobtag" and ack.from_tag == inv.from_tag
        assert ack.headers("Route") == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]

        reinv = peer.recv_sip()
        assert reinv.method == "INVITE" and reinv.uri == "sip:bob@127.0.2.9:5080"
        assert reinv.cseq == (2, "INVITE") and reinv.to_tag == "bobtag" and reinv.from_tag == inv.from_tag
        assert reinv.call_id == inv.call_id
        assert reinv.headers("Route") == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
        assert reinv.header("Session-Expires") == "1800;refresher=uac"
        assert reinv.header("Contact") == inv.header("Contact")
        assert sdp_version(reinv) == sdp_version(inv) + 1
        peer.send_sip(build_response(reinv, 200, extra_headers=[("Contact", BOB_CONTACT),
                                                                ("Session-Expires", "1800;refresher=uac")],
                                     body=b"v=0\r\n", content_type="application/sdp"))
        ack2 = peer.recv_sip()
        assert ack2.method == "ACK" and ack2.cseq == (2, "ACK") and ack2.top_via_branch != reinv.top_via_branch

        bye = peer_request("BYE", inv, ok, 101)
        peer.send_sip(bye)
        resp = peer.recv_sip()
        assert resp.status == 200 and resp.cseq == (101, "BYE")
        assert resp.top_via_branch == bye.top_via_branch and resp.to_tag == inv.from_tag

    peer = WsPeer(script)
    ua = ua_factory(peer.url)
    ua.connect(timeout=2)
    assert ua.connected and ua.remote_addr == peer.url.split("//")[1] and ua.local_addr.startswith("127.0.0.1:")

    dialog = ua.invite("sip:600123@127.0.0.1", session_expires=1800, min_se=90, refresher="uac", timeout=2)
    assert dialog.state == "confirmed"
    assert dialog.remote_tag == "bobtag" and dialog.remote_target == "sip:bob@127.0.2.9:5080"
    assert dialog.route_set == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]  # Record-Route reversed
    assert dialog.session_expires == 1800 and dialog.refresher == "local"

    resp = dialog.reinvite(session_expires=1800, timeout=2)
    assert resp.status == 200 and resp.cseq == (2, "INVITE")

    bye = ua.wait_for_request("BYE", timeout=2)
    assert bye.call_id == dialog.call_id
    assert dialog.state == "terminated" and dialog.terminated_by == "remote"
    peer.join()

    inv = peer.result["invite"]
    assert inv.uri == "sip:600123@127.0.0.1"
    assert inv.header("Supported") == "timer"
    assert inv.header("Session-Expires") == "1800;refresher=uac" and inv.header("Min-SE") == "90"
    contact = SipUri.parse(parse_name_addr(inv.header("Contact"))[1])
    assert contact.user == "alice" and contact.host.endswith(".invalid")
    assert contact.transport == "ws" and "ob" in contact.params
    via = Via.parse(inv.header("Via"))
    assert via.transport == "WS" and via.host.endswith(".invalid") and "rport" in via.params
    assert via.branch.startswith("z9hG4bK")
    assert inv.content_type == "application/sdp"
    assert "m=audio " in inv.text and "RTP/AVP 0" in inv.text and "c=IN IP4 127.0.0.1" in inv.text

    ladder = [(e.direction, e.message.summary().split(" sip:")[0]) for e in ua.trace]
    assert ladder == [
        ("out", "INVITE"), ("in", "100 Trying (INVITE)"), ("in", "200 OK (INVITE)"), ("out", "ACK"),
        ("out", "INVITE"), ("in", "200 OK (INVITE)"), ("out", "ACK"),
        ("in", "BYE"), ("out", "200 OK (BYE)"),
    ]
    assert all(e.transport == "ws" and e.local == ua.local_addr and e.remote == ua.remote_addr for e in ua.trace)
    assert [e.ts for e in ua.trace] == sorted(e.ts for e in ua.trace)
    assert all(SipMessage.parse(e.raw).encode() == e.message.encode() for e in ua.trace)
    assert ua.errors == []


def test_peer_requests_are_auto_answered_and_ua_bye(ua_factory):
    def script(peer):
        inv, ok, _ = answer_invite(peer, record_route=False)
        refresh = peer_request("INVITE", inv, ok, 201, body=b"v=0\r\n", extra=[("Session-Expires", "900")])
        peer.send_sip(refresh)
        r200 = peer.recv_sip()
        assert r200.status == 200 and r200.cseq == (201, "INVITE")
        assert r200.header("Session-Expires") == "900;refresher=uac" and r200.header("Require") == "timer"
        assert r200.content_type == "application/sdp" and "m=audio" in r200.text
        assert r200.header("Contact") == inv.header("Contact")
        peer.send_sip(build_request("ACK", refresh.uri, from_=refresh.header("From"), to=r200.header("To"),
                                    call_id=inv.call_id, cseq=201, via=f"SIP/2.0/WS p;branch={new_branch()}"))
        opts = peer_request("OPTIONS", inv, ok, 202)
        peer.send_sip(opts)
        assert peer.recv_sip().status == 200
        info = peer_request("INFO", inv, ok, 203)
        peer.send_sip(info)
        assert peer.recv_sip().status == 501
        stale = peer_request("BYE", inv, ok, 204)
        stale.set_header("To", inv.header("From").replace(inv.from_tag, "nosuchtag"))
        peer.send_sip(stale)
        assert peer.recv_sip().status == 481  # unknown dialog (RFC 3261 12.2.2)
        bye = peer.recv_sip()
        assert bye.method == "BYE" and bye.cseq == (2, "BYE") and bye.uri == "sip:bob@127.0.2.9:5080"
        assert not bye.has_header("Route")
        peer.send_sip(build_response(bye, 200))

    peer = WsPeer(script)
    ua = ua_factory(peer.url)
    ua.connect(timeout=2)
    dialog = ua.invite("600123", session_expires=1800, timeout=2)
    assert dialog.route_set == []
    refresh = ua.wait_for_request("INVITE", timeout=2)
    assert refresh.cseq == (201, "INVITE")
    assert dialog.session_expires == 900 and dialog.refresher == "remote" and dialog.remote_cseq == 201
    assert ua.wait_for_request("ACK", timeout=2).cseq == (201, "ACK")
    for method in ("OPTIONS", "INFO", "BYE"):
        ua.wait_for_request(method, timeout=2)
    assert dialog.state == "confirmed"  # the stale BYE was for another dialog
    resp = dialog.bye(timeout=2)
    assert resp.status == 200 and dialog.state == "terminated" and dialog.terminated_by == "local"
    peer.join()


def test_invite_rejected_gets_hop_by_hop_ack(ua_factory):
    def script(peer):
        inv = peer.recv_sip()
        peer.send_sip(build_response(inv, 180, to_tag="t1", extra_headers=[("Contact", BOB_CONTACT)]))
        peer.send_sip(build_response(inv, 486, to_tag="t1"))
        ack = peer.recv_sip()
        assert ack.method == "ACK" and ack.uri == inv.uri
        assert ack.top_via_branch == inv.top_via_branch  # RFC 3261 17.1.1.3
        assert ack.cseq == (1, "ACK") and ack.to_tag == "t1"

    peer = WsPeer(script)
    ua = ua_factory(peer.url)
    ua.connect(timeout=2)
    with pytest.raises(CallFailed) as info:
        ua.invite("sip:600123@127.0.0.1", timeout=2)
    assert info.value.response.status == 486 and "486" in str(info.value)
    peer.join()
    (early,) = ua.dialogs  # 180 with a tag created an early dialog, ended by the 486
    assert early.state == "terminated"


def test_retransmitted_2xx_is_acked_again(ua_factory):
    def script(peer):
        inv, ok, ack = answer_invite(peer)
        peer.send_sip(ok)  # 2xx retransmission (RFC 3261 13.3.1.4)
        again = peer.recv_sip()
        assert again.method == "ACK" and again.encode() == ack.encode()  # 13.2.2.4

    peer = WsPeer(script)
    ua = ua_factory(peer.url)
    ua.connect(timeout=2)
    ua.invite("sip:600123@127.0.0.1", timeout=2)
    peer.join()
    assert [e.direction for e in ua.trace] == ["out", "in", "in", "out", "in", "out"]


def test_timeout_names_what_was_awaited(ua_factory):
    done = threading.Event()

    def script(peer):
        assert peer.recv_sip().method == "INVITE"
        done.wait(TIMEOUT)

    peer = WsPeer(script)
    ua = ua_factory(peer.url)
    ua.connect(timeout=2)
    t0 = time.monotonic()
    with pytest.raises(UATimeout, match=r"no final response to INVITE within 0\.3 s"):
        ua.invite("sip:600123@127.0.0.1", timeout=0.3)
    with pytest.raises(UATimeout, match=r"no BYE request within 0\.2 s"):
        ua.wait_for_request("BYE", timeout=0.2)
    assert time.monotonic() - t0 < 1.5
    done.set()
    peer.join()


def test_malformed_message_is_recorded_and_reader_survives(ua_factory):
    garbage = b"INVITE sip:a@b SIP/2.0\r\nCSeq: 1 INVITE\r\nContent-Length: 99\r\n\r\nshort"

    def script(peer):
        peer.send_sip(garbage)
        peer.send_frame(OP_PING, b"hi")  # control frames are handled transparently
        peer.send_sip(build_request("OPTIONS", "sip:alice@127.0.0.1", from_="<sip:k@p>;tag=1", to="<sip:alice@p>",
                                    call_id="opt1", cseq=1, via=f"SIP/2.0/WS p;branch={new_branch()}"))
        opcode, _ = peer.recv_frame()
        assert opcode == 0xA  # pong
        resp = peer.recv_sip()
        assert resp.status == 200 and resp.call_id == "opt1"

    peer = WsPeer(script)
    ua = ua_factory(peer.url)
    ua.connect(timeout=2)
    with pytest.raises(UAError, match="malformed SIP message received: Content-Length 99"):
        ua.wait_for_request("OPTIONS", timeout=2)
    assert len(ua.errors) == 1 and ua.errors[0].raw == garbage
    assert ua.trace[0].direction == "in" and ua.trace[0].message is None and ua.trace[0].raw == garbage
    # The error is reported once; the reader kept going and answered the OPTIONS.
    assert ua.wait_for_request("OPTIONS", timeout=2).call_id == "opt1"
    peer.join()
    assert len(ua.errors) == 1


def _expect_eof_without_close(peer):
    try:
        while True:
            opcode, _ = peer.recv_frame(timeout=2)
            assert opcode != OP_CLOSE, "fin must not send a WebSocket close frame"
    except PeerEOF:
        peer.result["eof"] = time.monotonic()


def _expect_rst(peer):
    sock = peer.conn
    if isinstance(sock, ssl.SSLSocket):
        # Python's TLS layer reports a reset as EOF; read the TCP stream
        # underneath instead. A close_notify would show up as data here.
        sock = socket.socket(fileno=os.dup(peer.conn.fileno()))
        sock.settimeout(2)
        try:
            with pytest.raises(ConnectionResetError):
                sock.recv(1024)
        finally:
            sock.close()
    else:
        with pytest.raises(ConnectionResetError):
            peer.recv_frame(timeout=2)
    peer.result["rst"] = time.monotonic()


def _expect_close(peer):
    opcode, data = peer.recv_frame(timeout=2)
    assert opcode == OP_CLOSE and struct.unpack("!H", data[:2])[0] == 1000
    peer.send_frame(OP_CLOSE, data[:2])
    with pytest.raises(PeerEOF):
        peer.recv_frame(timeout=2)
    peer.result["close"] = time.monotonic()


@pytest.mark.parametrize("mode, script", [("rst", _expect_rst), ("fin", _expect_eof_without_close),
                                          ("close", _expect_close)])
def test_disconnect_modes(ua_factory, mode, script):
    peer = WsPeer(script)
    ua = ua_factory(peer.url)
    ua.connect(timeout=2)
    t0 = time.monotonic()
    ua.disconnect(mode)
    assert not ua.connected and ua.closed_reason == f"disconnected locally ({mode})"
    peer.join()
    assert min(peer.result.values()) - t0 < 1.0
    with pytest.raises(UAError, match="not connected"):
        ua.request("OPTIONS", timeout=0.5)
    ua.close()
    ua.close()  # idempotent


def test_peer_close_fails_waits_fast(ua_factory):
    def script(peer):
        peer.recv_sip()
        peer.conn.shutdown(socket.SHUT_RDWR)

    peer = WsPeer(script)
    ua = ua_factory(peer.url)
    ua.connect(timeout=2)
    with pytest.raises(UAError, match=r"connection closed \(connection lost"):
        ua.invite("sip:600123@127.0.0.1", timeout=2)
    peer.join()
    assert not ua.connected


def test_connect_failures():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(UAError, match=rf"cannot connect to ws://127.0.0.1:{port}: .*refused") as info:
        WebSocketUA(f"ws://127.0.0.1:{port}").connect(timeout=1)
    assert "\n" not in str(info.value)

    peer = WsPeer(lambda p: None, subprotocol=None)
    with pytest.raises(UAError, match="subprotocol"):
        WebSocketUA(peer.url).connect(timeout=2)
    peer.join()


@pytest.fixture(scope="module")
def tls_ctx(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl not available to make a self-signed cert")
    d = tmp_path_factory.mktemp("tls")
    cert, key = os.fspath(d / "cert.pem"), os.fspath(d / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True, timeout=10,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def test_wss_call_and_rst(ua_factory, tls_ctx):
    def script(peer):
        inv, _, ack = answer_invite(peer)
        assert Via.parse(inv.header("Via")).transport == "WSS"
        assert ack.method == "ACK"
        _expect_rst(peer)

    peer = WsPeer(script, tls=tls_ctx)
    ua = ua_factory(peer.url)
    ua.connect(timeout=2)
    dialog = ua.invite("sip:600123@127.0.0.1", timeout=2)
    assert dialog.state == "confirmed" and ua.trace[0].transport == "wss"
    ua.disconnect("rst")
    peer.join()


# -- REGISTER, CANCEL, UPDATE ---------------------------------------------------


def test_register_reregister_unregister(ua_factory):
    def script(peer):
        regs = []
        for expires in ("600", "600", "0"):
            reg = peer.recv_sip()
            regs.append(reg)
            assert reg.method == "REGISTER" and reg.header("Expires") == expires
            contact = reg.header("Contact")
            assert parse_name_addr(contact)[2]["expires"] == expires
            extra = [("Contact", contact)] if expires != "0" else []
            peer.send_sip(build_response(reg, 200, to_tag=f"reg{len(regs)}", extra_headers=extra))
        peer.result["regs"] = regs

    peer = WsPeer(script)
    ua = ua_factory(peer.url)
    ua.connect(timeout=2)
    assert ua.registration is None
    assert ua.register(expires=600, timeout=2).status == 200
    reg = ua.registration
    assert reg.aor == "sip:alice@127.0.0.1" and reg.registrar == "sip:127.0.0.1"
    assert reg.cseq == 1 and reg.expires == 600
    assert ua.register("sip:alice@127.0.0.1", expires=600, timeout=2).status == 200  # re-REGISTER
    assert ua.registration is reg and reg.cseq == 2
    assert ua.unregister(timeout=2).status == 200
    assert reg.cseq == 3 and reg.expires is None and reg.response.status == 200
    peer.join()

    first, again, unreg = peer.result["regs"]
    # RFC 3261 10.2: R-URI is the registrar's domain (no user part); To = the AOR, From = AOR + tag
    for r in (first, again, unreg):
        assert r.uri == "sip:127.0.0.1"
        assert parse_name_addr(r.header("To"))[1] == "sip:alice@127.0.0.1" and r.to_tag is None
        assert parse_name_addr(r.header("From"))[1] == "sip:alice@127.0.0.1" and r.from_tag
        contact = SipUri.parse(parse_name_addr(r.header("Contact"))[1])
        assert contact.user == "alice" and contact.host.endswith(".invalid") and "ob" in contact.params
        assert "+sip.instance" not in r.header("Contact") and not r.has_header("Require")
    # One Call-ID for all REGISTERs to a registrar, CSeq + 1 each time (10.2)
    assert first.call_id == again.call_id == unreg.call_id
    assert [r.cseq for r in (first, again, unreg)] == [(1, "REGISTER"), (2, "REGISTER"), (3, "REGISTER")]
    assert len({r.top_via_branch for r in (first, again, unreg)}) == 3  # new transactions


def test_register_rejected_keeps_state_and_check_raises(ua_factory):
    def script(peer):
        for _ in range(2):
            reg = peer.recv_sip()
            peer.send_sip(build_response(reg, 403, to_tag="r"))

    peer = WsPeer(script)
    ua = ua_factory(peer.url)
    ua.connect(timeout=2)
    assert ua.register(timeout=2).status == 403
    with pytest.raises(CallFailed, match="403"):
        ua.register(timeout=2, check=True)
    assert ua.registration.cseq == 2 and ua.registration.expires is None
    peer.join()


def _assert_cancel_matches(cancel, inv):
    """RFC 3261 9.1: what a CANCEL copies from the INVITE it cancels."""
    assert cancel.method == "CANCEL" and cancel.uri == inv.uri
    assert cancel.headers("Via") == [inv.headers("Via")[0]]  # one Via: the INVITE's top Via
    assert cancel.top_via_branch == inv.top_via_branch
    assert cancel.cseq == (inv.cseq[0], "CANCEL")
    assert cancel.call_id == inv.call_id
    assert cancel.header("From") == inv.header("From") and cancel.header("To") == inv.header("To")
    assert cancel.headers("Route") == inv.headers("Route")
    assert cancel.has_header("Max-Forwards") and not cancel.body and not cancel.has_header("Contact")


def test_cancel_after_180_gets_487_acked_hop_by_hop(ua_factory):
    def script(peer):
        inv = peer.recv_sip()
        peer.send_sip(build_response(inv, 100))
        peer.send_sip(build_response(inv, 180, to_tag="t1", extra_headers=[("Contact", BOB_CONTACT)]))
        cancel = peer.recv_sip()
        _assert_cancel_matches(cancel, inv)
        peer.send_sip(build_response(cancel, 200, to_tag="t1"))
        peer.send_sip(build_response(inv, 487, to_tag="t1"))
        ack = peer.recv_sip()
        assert ack.method == "ACK" and ack.top_via_branch == inv.top_via_branch and ack.cseq == (1, "ACK")
        assert ack.uri == inv.uri and ack.to_tag == "t1"   # RFC 3261 17.1.1.3

    peer = WsPeer(script)
    ua = ua_factory(peer.url)
    ua.connect(timeout=2)
    pending = ua.invite_start("sip:600123@127.0.0.1")
    assert pending.wait_provisional(180, timeout=2).status == 180
    assert [r.status for r in pending.provisionals] == [100, 180]
    (early,) = pending.early.values()
    assert early.state == "early"
    resp = pending.cancel(timeout=2)
    assert resp.status == 200 and resp.cseq[1] == "CANCEL" and pending.cancelled
    final = pending.wait_final(timeout=2)
    assert final.status == 487 and pending.dialog is None and pending.bye_response is None
    assert early.state == "terminated"
    peer.join()
    ladder = [(e.direction, e.message.summary().split(" sip:")[0]) for e in ua.trace]
    assert ladder == [
        ("out", "INVITE"), ("in", "100 Trying (INVITE)"), ("in", "180 Ringing (INVITE)"),
        ("out", "CANCEL"), ("in", "200 OK (CANCEL)"), ("in", "487 Request Terminated (INVITE)"), ("out", "ACK"),
    ]
    assert ua.errors == []


def test_cancel_waits_for_a_provisional_response(ua_factory):
    """RFC 3261 9.1: no CANCEL before a provisional response has been received."""
    def script(peer):
        inv = peer.recv_sip()
        with pytest.raises(TimeoutError):   # nothing comes while no provisional was sent
            peer.recv_frame(timeout=0.3)
        peer.send_sip(build_response(inv, 100))
        cancel = peer.recv_sip()
        _assert_cancel_matches(cancel, inv)
        peer.send_sip(build_response(cancel, 200))
        peer.send_sip(build_response(inv, 487, to_tag="t9"))
        assert peer.recv_sip().method == "ACK"

    peer = WsPeer(script)
    ua = ua_factory(peer.url)
    ua.connect(timeout=2)
    pending = ua.invite_start("sip:600123@127.0.0.1")
    assert pending.cancel(timeout=2).status == 200
    assert pending.wait_final(timeout=2).status == 487
    peer.join()
    directions = [(e.direction, e.message.method or e.message.status) for e in ua.trace]
    assert directions[:3] == [("out", "INVITE"), ("in", 100), ("out", "CANCEL")]


def test_cancel_after_final_sends_nothing(ua_factory):
    def script(peer):
        inv = peer.recv_sip()
        peer.send_sip(build_response(inv, 486, to_tag="b"))
        assert peer.recv_sip().method == "ACK"
        with pytest.raises(TimeoutError):   # no CANCEL (RFC 3261 9.1: SHOULD NOT once final)
            peer.recv_frame(timeout=0.3)

    peer = WsPeer(script)
    ua = ua_factory(peer.url)
    ua.connect(timeout=2)
    pending = ua.invite_start("sip:600123@127.0.0.1")
    assert pending.cancel(timeout=2) is None and not pending.cancelled
    assert pending.final.status == 486
    assert pending.wait_final(timeout=2).status == 486
    with pytest.raises(CallFailed, match="486"):
        pending.wait_dialog(timeout=2)
    peer.join()


def test_cancel_races_the_200_which_wins_ack_then_bye(ua_factory):
    def script(peer):
        inv = peer.recv_sip()
        cancel = peer.recv_sip()   # sent at once: before any response (require_provisional=False)
        _assert_cancel_matches(cancel, inv)
        ok = build_response(inv, 200, to_tag="won", extra_headers=[("Record-Route", RR), ("Contact", BOB_CONTACT)],
                            body=b"v=0\r\n", content_type="application/sdp")
        peer.send_sip(ok)                               # the 200 crossed the CANCEL
        peer.send_sip(build_response(cancel, 200))      # the CANCEL itself is answered (RFC 3261 9.2)
        ack = peer.recv_sip()
        assert ack.method == "ACK" and ack.cseq == (1, "ACK") and ack.top_via_branch != inv.top_via_branch
        bye = peer.recv_sip()
        assert bye.method == "BYE" and bye.cseq == (2, "BYE") and bye.to_tag == "won"
        assert bye.uri == "sip:bob@127.0.2.9:5080"
        assert bye.headers("Route") == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
        peer.send_sip(build_response(bye, 200))

    peer = WsPeer(script)
    ua = ua_factory(peer.url)
    ua.connect(timeout=2)
    pending = ua.invite_start("sip:600123@127.0.0.1")
    assert pending.cancel(timeout=2, require_provisional=False).status == 200
    final = pending.wait_final(timeout=2)
    assert final.status == 200
    assert pending.dialog.state == "terminated" and pending.dialog.terminated_by == "local"
    assert pending.bye_response.status == 200
    peer.join()
    assert ua.errors == []


def test_update_refresh_without_and_with_sdp(ua_factory):
    def script(peer):
        inv, ok, _ = answer_invite(peer)
        upd = peer.recv_sip()
        assert upd.method == "UPDATE" and upd.uri == "sip:bob@127.0.2.9:5080"
        assert upd.cseq == (2, "UPDATE") and upd.call_id == inv.call_id
        assert upd.from_tag == inv.from_tag and upd.to_tag == "bobtag"
        assert upd.headers("Route") == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
        assert upd.header("Contact") == inv.header("Contact")   # a target refresh (RFC 3311 5.1)
        assert upd.header("Session-Expires") == "900;refresher=uac" and upd.header("Min-SE") == "90"
        assert "timer" in upd.headers("Supported")
        assert upd.body == b"" and not upd.has_header("Content-Type")
        peer.send_sip(build_response(upd, 200, extra_headers=[("Contact", "<sip:bob@127.0.2.9:5090>"),
                                                              ("Require", "timer"),
                                                              ("Session-Expires", "900;refresher=uas")]))
        upd2 = peer.recv_sip()
        assert upd2.method == "UPDATE" and upd2.cseq == (3, "UPDATE") and upd2.uri == "sip:bob@127.0.2.9:5090"
        assert upd2.header("Session-Expires") == "900;refresher=uas"  # the negotiated values by default
        assert upd2.content_type == "application/sdp" and sdp_version(upd2) == sdp_version(inv) + 1
        peer.send_sip(build_response(upd2, 200, extra_headers=[("Contact", "<sip:bob@127.0.2.9:5090>")],
                                     body=b"v=0\r\n", content_type="application/sdp"))
        with pytest.raises(TimeoutError):   # no ACK follows an UPDATE
            peer.recv_frame(timeout=0.3)

    peer = WsPeer(script)
    ua = ua_factory(peer.url)
    ua.connect(timeout=2)
    dialog = ua.invite("sip:600123@127.0.0.1", session_expires=1800, min_se=90, refresher="uac", timeout=2)
    resp = dialog.update(session_expires=900, timeout=2)
    assert resp.status == 200 and resp.cseq == (2, "UPDATE")
    assert dialog.remote_target == "sip:bob@127.0.2.9:5090"
    assert dialog.session_expires == 900 and dialog.refresher == "remote"
    assert dialog.update(with_sdp=True, timeout=2).status == 200
    assert dialog.state == "confirmed" and dialog.local_cseq == 3
    peer.join()
    assert ua.errors == []


def test_non_2xx_final_is_acked_by_the_transaction_unawaited(ua_factory):
    """RFC 3261 17.1.1.3: the INVITE client transaction ACKs a 487 itself,
    though the flow never calls wait_final()."""
    def script(peer):
        inv = peer.recv_sip()
        peer.send_sip(build_response(inv, 180, to_tag="t2"))
        cancel = peer.recv_sip()
        peer.send_sip(build_response(cancel, 200))
        peer.send_sip(build_response(inv, 487, to_tag="t2"))
        ack = peer.recv_sip()
        assert ack.method == "ACK" and ack.top_via_branch == inv.top_via_branch and ack.to_tag == "t2"
        peer.send_sip(build_response(inv, 487, to_tag="t2"))   # a retransmission: the same ACK again
        assert peer.recv_sip().encode() == ack.encode()

    peer = WsPeer(script)
    ua = ua_factory(peer.url)
    ua.connect(timeout=2)
    pending = ua.invite_start("sip:600123@127.0.0.1")
    assert pending.cancel(timeout=2).status == 200
    peer.join()
    assert pending.wait_final(timeout=2).status == 487
    assert [e.message.method for e in ua.trace if e.direction == "out"] == ["INVITE", "CANCEL", "ACK", "ACK"]
