"""JSON-RPC parsing: tm.list's repeated keys per hash bucket must not lose cells."""

from __future__ import annotations

import json

import pytest

from kamleak.harness.errors import RPCError
from kamleak.harness.probes.rpc import KamailioRPC, loads, parse_tm_list

CELL_A = ('"cell": "0x7f2a89948238", "tindex": 46670, "tlabel": 181736009, "method": "BYE", '
          '"from": "From: <sip:600@127.0.0.1>;tag=b50a\\r\\n", "to": "To: <sip:kamleak@127.0.0.1>;tag=c575\\r\\n", '
          '"callid": "Call-ID: abc-1\\r\\n", "cseq": "CSeq: 10812", "uas_request": "yes", "tflags": 0, '
          '"outgoings": 0, "ref_count": 1, "lifetime": 50268069')
CELL_B = CELL_A.replace("0x7f2a89948238", "0x7f2a8994aaaa").replace("abc-1", "abc-2") \
    .replace('"method": "BYE"', '"method": "MESSAGE"').replace('"ref_count": 1', '"ref_count": 2')
CELL_C = CELL_A.replace("0x7f2a89948238", "0x7f2a8994cccc").replace("abc-1", "abc-3") \
    .replace('"tindex": 46670', '"tindex": 17')


def test_two_cells_in_one_bucket_are_both_kept():
    text = '{"jsonrpc": "2.0", "result": [{' + CELL_A + ", " + CELL_B + "}, {" + CELL_C + '}], "id": 1}'
    assert len(json.loads(text)["result"][0]) == 13, "plain json.loads collapses the bucket"
    cells = parse_tm_list(loads(text).get("result"))
    assert [c.callid for c in cells] == ["abc-1", "abc-2", "abc-3"]
    assert [c.method for c in cells] == ["BYE", "MESSAGE", "BYE"]
    assert cells[1].ref_count == 2 and cells[0].ref_count == 1


def test_header_lines_are_reduced_to_values():
    cell = parse_tm_list(loads("[{" + CELL_A + "}]"))[0]
    assert cell.callid == "abc-1"
    assert cell.cseq == "10812"
    assert cell.from_ == "<sip:600@127.0.0.1>;tag=b50a"
    assert (cell.outgoings, cell.ref_count, cell.tflags) == (0, 1, 0)
    assert "BYE Call-ID abc-1 CSeq 10812" in cell.describe()


def test_empty_list():
    assert parse_tm_list(loads("[]")) == []


class FakeResponse:
    def __init__(self, status, text, reason="OK"):
        self.status_code, self.text, self.reason = status, text, reason


@pytest.mark.parametrize("status, body, expected", [
    (200, "not json at all", "malformed JSON"),
    (404, "<html>nope</html>", "answered HTTP 404"),
    (400, '{"jsonrpc":"2.0","error":{"code":400,"message":"Variable exists, but it is not readable"},"id":1}',
     "failed: 400 Variable exists"),
    (200, '[1, 2]', "non-object"),
    (200, '{"jsonrpc":"2.0","id":1}', "without a result"),
])
def test_rpc_errors_are_one_clear_line(monkeypatch, status, body, expected):
    monkeypatch.setattr(KamailioRPC, "_post", lambda self, payload: FakeResponse(status, body))
    with pytest.raises(RPCError) as exc:
        KamailioRPC("http://127.0.0.1:1/RPC").call("tm.stats")
    assert expected in str(exc.value) and "\n" not in str(exc.value)


def test_connection_refused_is_named():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RPCError) as exc:
        KamailioRPC(f"http://127.0.0.1:{port}/RPC", timeout=2).call("core.version")
    assert "refused the connection" in str(exc.value)


def test_rpc_connections_come_from_their_own_loopback_address():
    """Never from a port a SIP client can hold (the kernel's ephemeral range):
    Kamailio would let an RPC connection from a client's ip:port replace that
    client's alias (see kamleak.harness.probes.rpc)."""
    import socket
    import threading
    low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())

    seen = []
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()

        def serve():
            conn, peer = srv.accept()
            seen.append(peer)
            conn.recv(65536)
            body = b'{"jsonrpc":"2.0","result":"ok","id":1}'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            conn.close()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        assert KamailioRPC(f"http://127.0.0.1:{srv.getsockname()[1]}/RPC", timeout=5).call("x") == "ok"
        t.join(5)
    assert len(seen) == 1
    ip, port = seen[0]
    # Seen by the server: 127.0.0.1 (which a stock config's `src_ip!=127.0.0.1`
    # check lets in), on a port above the ephemeral range; or, where none is
    # left, another loopback address.
    assert (ip == "127.0.0.1" and port > high) or \
        (ip != "127.0.0.1" and ip.startswith("127."))
