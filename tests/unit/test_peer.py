"""The built-in UDP PBX peer, against raw UDP sockets playing Kamailio (no containers).

A raw socket sends what Kamailio would forward (Via of its own, a double
Record-Route, the WebSocket client's Contact with ;alias) and reads what the
peer answers; hangups must follow the route set to the first Route hop.
"""

from __future__ import annotations

import socket
import time

import pytest

from kamleak.harness.sip.message import SipMessage, SipParseError, parse_name_addr
from kamleak.harness.sip.peer import UdpPeer

CALLER_CONTACT = "<sip:alice@a1b2c3.invalid;transport=ws;ob;alias=127.0.0.1~40000~5>"


class FakeProxy:
    """A UDP socket standing in for Kamailio's UDP side."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # 500 BYEs at once
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2.0)
        self.port = self.sock.getsockname()[1]
        self.rr = [f"<sip:127.0.0.1:{self.port};r2=on;lr>",
                   "<sip:127.0.0.1:5066;transport=ws;r2=on;lr>"]
        self.seq = 0

    def close(self):
        self.sock.close()

    def send(self, peer: UdpPeer, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", peer.sip_port))

    def recv(self, timeout: float = 2.0) -> SipMessage:
        self.sock.settimeout(timeout)
        data, _ = self.sock.recvfrom(65535)
        return SipMessage.parse(data)

    def recv_final(self, timeout: float = 2.0) -> SipMessage:
        while True:
            msg = self.recv(timeout)
            if msg.is_request or msg.status >= 200:
                return msg

    def invite(self, ext: str, call_id: str, *, branch: str | None = None, session_expires: str | None =
               "1800;refresher=uac", cseq: int = 1, to_tag: str | None = None,
               from_tag: str = "caller1") -> tuple[bytes, str]:
        self.seq += 1
        branch = branch or f"z9hG4bKproxy{self.seq}x{call_id}"
        body = (b"v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                b"m=audio 30000 RTP/AVP 0\r\n")
        lines = [f"INVITE sip:{ext}@127.0.0.1:5060 SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch}",
                 "Via: SIP/2.0/WS a1b2c3.invalid;rport=40000;received=127.0.0.1;branch=z9hG4bKua1"]
        if to_tag is None:
            lines += [f"Record-Route: {r}" for r in self.rr]
        lines += ["Max-Forwards: 69", f"From: <sip:alice@127.0.0.1>;tag={from_tag}",
                  f"To: <sip:{ext}@127.0.0.1>" + (f";tag={to_tag}" if to_tag else ""),
                  f"Call-ID: {call_id}", f"CSeq: {cseq} INVITE", f"Contact: {CALLER_CONTACT}",
                  "Supported: timer", "Content-Type: application/sdp"]
        if session_expires:
            lines += [f"Session-Expires: {session_expires}", "Min-SE: 90"]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body, branch

    def in_dialog(self, method: str, call_id: str, to_tag: str, cseq: int, ext: str = "600",
                  from_tag: str = "caller1") -> bytes:
        self.seq += 1
        lines = [f"{method} sip:{ext}@127.0.0.1:5060 SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bKdlg{self.seq}",
                 "Max-Forwards: 69", f"From: <sip:alice@127.0.0.1>;tag={from_tag}",
                 f"To: <sip:{ext}@127.0.0.1>;tag={to_tag}", f"Call-ID: {call_id}",
                 f"CSeq: {cseq} {method}", "Content-Length: 0"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def call(self, peer: UdpPeer, ext: str, call_id: str) -> SipMessage:
        data, _ = self.invite(ext, call_id)
        self.send(peer, data)
        ok = self.recv_final()
        assert ok.status == 200
        ack = self.in_dialog("ACK", call_id, ok.to_tag, 1, ext)
        self.send(peer, ack)
        return ok


@pytest.fixture
def peer():
    p = UdpPeer().start()
    yield p
    p.stop()


@pytest.fixture
def proxy():
    p = FakeProxy()
    yield p
    p.close()


def test_invite_gets_trying_then_200_with_sdp_and_session_timer(peer, proxy):
    data, branch = proxy.invite("600123", "call-a")
    proxy.send(peer, data)
    trying = proxy.recv()
    assert trying.status == 100 and trying.to_tag is None
    ok = proxy.recv()
    assert ok.status == 200 and ok.cseq == (1, "INVITE")
    assert ok.to_tag and ok.from_tag == "caller1" and ok.call_id == "call-a"
    assert ok.headers("Via")[0].endswith(branch) and len(ok.headers("Via")) == 2
    assert ok.headers("Record-Route") == proxy.rr, "Record-Route copied in order (RFC 3261 12.1.1)"
    assert ok.header("Require") == "timer"
    assert ok.header("Session-Expires") == "1800;refresher=uac"
    assert ok.header("Contact") == f"<sip:600123@127.0.0.1:{peer.sip_port}>"
    assert ok.content_type == "application/sdp" and ok.body.startswith(b"v=0\r\n")
    d = peer.dialogs["call-a"]
    assert d.extension == "600123" and d.remote_target == CALLER_CONTACT[1:-1]
    assert d.route_set == proxy.rr and d.session_expires == 1800 and d.refresher == "uac"


def test_no_session_expires_no_timer_and_refresher_defaults_to_uac(peer, proxy):
    data, _ = proxy.invite("600", "call-b", session_expires=None)
    proxy.send(peer, data)
    ok = proxy.recv_final()
    assert ok.status == 200 and ok.header("Require") is None and ok.header("Session-Expires") is None
    data, _ = proxy.invite("601", "call-c", session_expires="1800")
    proxy.send(peer, data)
    assert proxy.recv_final().header("Session-Expires") == "1800;refresher=uac"  # RFC 4028 9


def test_session_interval_below_min_se_is_refused_with_422(peer, proxy):
    data, _ = proxy.invite("600", "call-short", session_expires="30")
    proxy.send(peer, data)
    resp = proxy.recv_final()
    assert resp.status == 422 and resp.header("Min-SE") == "90"


def test_retransmitted_invite_gets_the_same_answer(peer, proxy):
    data, _ = proxy.invite("600", "call-rt")
    proxy.send(peer, data)
    first = proxy.recv_final()
    proxy.send(peer, data)                      # same branch: a retransmission
    again = proxy.recv_final()
    assert again.encode() == first.encode()
    assert peer.counters["dialogs"] == 1 and peer.counters["retransmissions"] == 1


def test_reinvite_ack_and_caller_bye(peer, proxy):
    ok = proxy.call(peer, "600", "call-d")
    tag = ok.to_tag
    data, _ = proxy.invite("600", "call-d", cseq=2, to_tag=tag)
    proxy.send(peer, data)
    re_ok = proxy.recv_final()
    assert re_ok.status == 200 and re_ok.to_tag == tag
    assert re_ok.header("Session-Expires") == "1800;refresher=uac"
    assert b" 2 IN IP4 " in re_ok.body, "SDP version goes up on a re-INVITE answer"
    proxy.send(peer, proxy.in_dialog("ACK", "call-d", tag, 2))
    with pytest.raises(socket.timeout):
        proxy.recv(timeout=0.3)                 # ACK is never answered
    proxy.send(peer, proxy.in_dialog("BYE", "call-d", tag, 3))
    bye_ok = proxy.recv_final()
    assert bye_ok.status == 200 and bye_ok.cseq == (3, "BYE")
    d = peer.dialogs["call-d"]
    assert d.acked and d.state == "terminated" and d.terminated_by == "remote"


def test_requests_in_unknown_dialogs_get_481(peer, proxy):
    proxy.send(peer, proxy.in_dialog("BYE", "nobody", "nope", 2))
    assert proxy.recv_final().status == 481
    ok = proxy.call(peer, "600", "call-e")
    proxy.send(peer, proxy.in_dialog("BYE", "call-e", "wrong-tag", 2))
    assert proxy.recv_final().status == 481
    proxy.send(peer, proxy.in_dialog("BYE", "call-e", ok.to_tag, 0))
    assert proxy.recv_final().status == 500    # CSeq out of order (12.2.2)


def test_hangup_sends_bye_along_the_route_set_and_records_the_reply(peer, proxy):
    ok = proxy.call(peer, "700123", "call-f")
    results = []
    peer.on_bye_result = lambda cid, code, reason: results.append((cid, code, reason))
    assert peer.hangup("700123") == "call-f"
    bye = proxy.recv_final()                    # the first Route hop is the proxy's UDP socket
    assert bye.method == "BYE"
    assert bye.uri == CALLER_CONTACT[1:-1], "Request-URI is the caller's Contact"
    assert bye.headers("Route") == proxy.rr, "Route = Record-Route as received (UAS)"
    assert bye.from_tag == ok.to_tag and bye.to_tag == "caller1" and bye.call_id == "call-f"
    num, method = bye.cseq
    assert method == "BYE"
    assert bye.top_via_branch.startswith("z9hG4bK")
    assert bye.top_via.port == peer.sip_port and bye.top_via.host == "127.0.0.1"
    resp = (f"SIP/2.0 500 I'm terribly sorry, server error occurred (1/SL)\r\n"
            f"Via: {bye.headers('Via')[0]}\r\nFrom: {bye.header('From')}\r\nTo: {bye.header('To')}\r\n"
            f"Call-ID: call-f\r\nCSeq: {num} BYE\r\nContent-Length: 0\r\n\r\n").encode()
    proxy.send(peer, resp)
    result = peer.wait_bye_result("call-f", timeout=2)
    assert result.code == 500 and result.reason.endswith("(1/SL)") and result.after is not None
    assert results == [("call-f", 500, "I'm terribly sorry, server error occurred (1/SL)")]
    with pytest.raises(ValueError):
        peer.hangup_call("call-f")              # already over


def test_unanswered_bye_is_not_retransmitted(peer, proxy):
    proxy.call(peer, "701", "call-g")
    peer.hangup_call("call-g")
    assert proxy.recv_final().method == "BYE"
    with pytest.raises(socket.timeout):
        proxy.recv(timeout=0.7)                 # no timer E on loopback (T1 = 0.5 s)
    assert peer.wait_bye_result("call-g", timeout=0.1).code is None


def test_hundreds_of_concurrent_dialogs(peer, proxy):
    n = 500
    t0 = time.monotonic()
    for i in range(n):
        proxy.send(peer, proxy.invite(str(800000 + i), f"many-{i}")[0])
    tags = {}
    while len(tags) < n:
        msg = proxy.recv_final(timeout=5)
        assert msg.status == 200
        tags[msg.call_id] = msg.to_tag
    for i in range(n):
        proxy.send(peer, proxy.in_dialog("ACK", f"many-{i}", tags[f"many-{i}"], 1, str(800000 + i)))
    assert peer.counters["dialogs"] == n
    for i in range(n):
        peer.hangup_call(f"many-{i}")
    byes = set()
    while len(byes) < n:
        msg = proxy.recv(timeout=5)
        assert msg.method == "BYE"
        byes.add(msg.call_id)
    elapsed = time.monotonic() - t0
    assert elapsed < 10, f"{n} calls took {elapsed:.1f} s"


def test_pause_lets_another_loop_pump(peer, proxy):
    peer.pause()
    assert peer.death() is None
    proxy.send(peer, proxy.invite("600", "call-p")[0])
    deadline = time.monotonic() + 2
    while "call-p" not in peer.dialogs and time.monotonic() < deadline:
        peer.pump()
    assert proxy.recv_final().status == 200
    peer.resume()
    proxy.send(peer, proxy.invite("601", "call-q")[0])
    assert proxy.recv_final().status == 200


def test_lean_parser():
    raw = (b"SIP/2.0 200 OK\r\nv: SIP/2.0/WS x.invalid;branch=z9hG4bKabc;rport\r\n"
           b"Record-Route: <sip:127.0.0.1:1;lr>, <sip:127.0.0.1:2;transport=ws;lr>\r\n"
           b"f: <sip:a@b;tag=uriparam>;tag=fromtag\r\nt: \"B\" <sip:c@d>;tag=totag\r\n"
           b"i: cid\r\nCSeq: 7 INVITE\r\nm: <sip:c@127.0.0.1:5>\r\nSubject: a\r\n folded\r\n"
           b"l: 3\r\n\r\nabcdef")
    m = SipMessage.parse(raw, strict=False, mandatory=True)
    assert m.status == 200 and m.call_id == "cid" and m.cseq == (7, "INVITE")
    assert m.top_via_branch == "z9hG4bKabc" and m.from_tag == "fromtag" and m.to_tag == "totag"
    assert m.headers("Record-Route") == ["<sip:127.0.0.1:1;lr>", "<sip:127.0.0.1:2;transport=ws;lr>"]
    assert m.contact_uri == "sip:c@127.0.0.1:5"
    assert m.header("Subject") == "a folded" and m.body == b"abc"
    assert parse_name_addr("<sip:x@y;tag=no>")[2].get("tag") is None
    with pytest.raises(SipParseError):
        SipMessage.parse(b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n", strict=False, mandatory=True)  # no From/To/...
    with pytest.raises(SipParseError):
        SipMessage.parse(b"garbage", strict=False, mandatory=True)


def test_refuses_non_loopback():
    with pytest.raises(ValueError):
        UdpPeer(host="0.0.0.0")
