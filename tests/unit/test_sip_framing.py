"""SIP over plain TCP and UDP: the stream framing (Content-Length, RFC 3261 18.3) and
the UA on those transports, against a scripted in-test peer on 127.0.0.1 (it checks
what the UA sends; it is not a stand-in for Kamailio)."""

from __future__ import annotations

import socket
import threading

import pytest

from kamleak.harness.sip import SipMessage, Via, WebSocketUA, build_request, build_response, parse_name_addr
from kamleak.harness.sip.framing import DatagramFraming, FramingError, StreamFraming

MSG = (b"MESSAGE sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5;branch=z9hG4bKx\r\n"
       b"From: <sip:b@127.0.0.1>;tag=1\r\nTo: <sip:a@127.0.0.1>\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\n"
       b"Content-Length: 5\r\n\r\nhello")


def test_a_stream_is_cut_at_each_message_end_whatever_the_chunks():
    f = StreamFraming()
    two = MSG + MSG.replace(b"Content-Length: 5", b"l: 5")      # the compact form too
    events = []
    for i in range(0, len(two), 7):                              # 7-byte chunks
        events += f.receive(two[i:i + 7])
    assert [e[1] for e in events] == [MSG, MSG.replace(b"Content-Length: 5", b"l: 5")]
    assert f.receive(MSG[:-1]) == [] and f.receive(MSG[-1:]) == [("message", MSG, 0)]


def test_a_crlf_ping_is_answered_and_not_a_message():
    f = StreamFraming()
    assert f.receive(b"\r\n\r\n" + MSG) == [("message", MSG, 0)]
    assert f.outgoing() == b"\r\n" and f.outgoing() == b""       # RFC 5626 4.4.1 pong, once


def test_a_stream_without_a_header_end_is_an_error():
    with pytest.raises(FramingError, match="no end of a SIP header"):
        StreamFraming().receive(b"X" * 70000)


def test_a_datagram_is_a_message():
    assert DatagramFraming().receive(MSG) == [("message", MSG, 0)]


def _ok(req: SipMessage) -> bytes:
    return build_response(req, 200, to_tag="t1").encode()


def test_the_ua_over_tcp_names_its_own_socket_and_reads_a_reply_in_pieces():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    seen = {}

    def peer():
        conn, _ = server.accept()
        framing, got = StreamFraming(), []
        while not got:
            got = framing.receive(conn.recv(65536))
        req = seen["req"] = SipMessage.parse(got[0][1])
        reply = _ok(req)
        conn.sendall(reply[:20])
        conn.sendall(reply[20:])
        conn.recv(10)            # until the UA closes
        conn.close()

    t = threading.Thread(target=peer, daemon=True)
    t.start()
    with WebSocketUA(f"tcp://127.0.0.1:{server.getsockname()[1]}", user="alice") as ua:
        ua.connect()
        resp = ua.register("sip:alice@127.0.0.1", timeout=3)
        assert resp.status == 200
        with pytest.raises(ValueError, match="WebSocket close frame"):
            ua.disconnect("close")
    t.join(3)
    server.close()
    via = Via.parse(seen["req"].header("Via"))
    assert via.transport == "TCP" and f"{via.host}:{via.port}" == ua.local_addr
    assert parse_name_addr(seen["req"].header("Contact"))[1].startswith(f"sip:alice@{ua.local_addr};transport=tcp")


def test_the_ua_over_udp_is_reachable_on_its_socket_and_can_only_fall_silent():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(3)
    ua = WebSocketUA(f"udp://127.0.0.1:{server.getsockname()[1]}", user="bob")
    ua.connect()
    try:
        pending = threading.Thread(target=lambda: ua.request("OPTIONS", timeout=3), daemon=True)
        pending.start()
        data, src = server.recvfrom(65535)
        req = SipMessage.parse(data)
        via = Via.parse(req.header("Via"))
        assert via.transport == "UDP" and f"127.0.0.1:{src[1]}" == ua.local_addr == f"{via.host}:{via.port}"
        server.sendto(_ok(req), src)
        pending.join(3)
        # A request towards the UA's own port: answered from it.
        server.sendto(build_request("OPTIONS", f"sip:bob@{ua.local_addr}", from_="<sip:p@127.0.0.1>;tag=9",
                                    to=f"<sip:bob@{ua.local_addr}>", call_id="k1", cseq=1,
                                    via=f"SIP/2.0/UDP 127.0.0.1:{server.getsockname()[1]};branch=z9hG4bKq").encode(),
                      src)
        assert SipMessage.parse(server.recvfrom(65535)[0]).status == 200
        for mode in ("rst", "fin", "close"):
            with pytest.raises(ValueError, match="no connection"):
                ua.disconnect(mode)
        ua.disconnect("drop")                      # silence, no iptables: nothing to drop
        assert not ua.connected
    finally:
        ua.close()
        server.close()


def test_over_udp_an_unanswered_request_is_resent_until_its_final_response():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(3)
    with WebSocketUA(f"udp://127.0.0.1:{server.getsockname()[1]}") as ua:
        ua.connect()
        answered = {}
        t = threading.Thread(target=lambda: answered.setdefault("r", ua.request("MESSAGE", timeout=5)),
                             daemon=True)
        t.start()
        first, src = server.recvfrom(65535)           # unanswered: as a racing worker drops it
        again, _ = server.recvfrom(65535)             # timer E: T1 later, the same request
        assert again == first
        server.sendto(_ok(SipMessage.parse(again)), src)
        t.join(3)
        assert answered["r"].status == 200
        server.settimeout(1.5)                        # answered: no more copies
        with pytest.raises(TimeoutError):
            server.recvfrom(65535)
    server.close()
