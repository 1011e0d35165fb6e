"""The one-request UDP client: finals collected in order, non-2xx to INVITE ACKed (RFC 3261 17.1.1.3)."""
from __future__ import annotations

import socket
import threading

from kamleak.harness.sip.message import SipMessage, build_response
from kamleak.harness.sip.udp import UdpClient


def _uas(sock, codes, got):
    data, src = sock.recvfrom(65535)
    req = SipMessage.parse(data)
    for code in codes:
        sock.sendto(build_response(req, code, to_tag="uas1").encode(), src)
    sock.settimeout(1.0)
    try:
        while True:
            got.append(SipMessage.parse(sock.recvfrom(65535)[0]))
    except TimeoutError:
        pass


def _exchange(method, codes, quiet=0.2):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as uas:
        uas.bind(("127.0.0.1", 0))
        got = []
        t = threading.Thread(target=_uas, args=(uas, codes, got))
        t.start()
        with UdpClient() as c:
            req = c.build(method, f"sip:x@127.0.0.1:{uas.getsockname()[1]}", body="v=0\r\n",
                          content_type="application/sdp")
            finals = c.request(req, uas.getsockname(), timeout=2.0, quiet=quiet)
        t.join()
        return req, finals, got


def test_invite_finals_in_order_each_acked_with_the_invite_branch():
    req, finals, got = _exchange("INVITE", [100, 500, 477])
    assert [f.message.status for f in finals] == [500, 477]
    assert [m.method for m in got] == ["ACK", "ACK"]
    ack = got[0]
    assert ack.headers("Via")[0] == req.headers("Via")[0]          # same branch: hop-by-hop
    assert ack.uri == req.uri and ack.header("CSeq") == "1 ACK"
    assert "tag=uas1" in ack.header("To")


def test_non_invite_is_not_acked_and_quiet_zero_returns_at_the_first_final():
    _, finals, got = _exchange("MESSAGE", [202, 202], quiet=0)
    assert [f.message.status for f in finals] == [202]
    assert got == []


def test_no_reply_is_an_empty_list():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        with UdpClient() as c:
            req = c.build("MESSAGE", "sip:x@127.0.0.1")
            assert c.request(req, silent.getsockname(), timeout=0.2) == []
