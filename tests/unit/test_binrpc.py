"""ctl's BINRPC as Kamailio writes it: what the gate reads over ctl (tests/unit/test_watch_units.py
has the header and the binrpc.h examples)."""
from __future__ import annotations

import pytest

from kamleak.harness.probes import binrpc
from kamleak.harness.probes.rpc import Pairs, _plain


def _str(s: str, rtype: int = binrpc.T_STR) -> bytes:
    return binrpc._record(rtype, s.encode() + b"\0")


START, END = bytes([binrpc.T_STRUCT]), bytes([0x80 | binrpc.T_STRUCT])


def test_an_array_member_of_a_struct_is_read_as_the_array_it_is():
    # ws.dump over ctl (5.8.5 binrpc_run.c rpc_struct_add: '[' is written as a struct,
    # rpc_array_add puts unnamed values in it): {connections: ["...", "..."], info: {wscounter: 2}}
    body = (START + _str("connections", binrpc.T_AVP) + START + _str("1: 127.0.0.1:5") + _str("2: x")
            + END + _str("info", binrpc.T_AVP) + START + _str("wscounter", binrpc.T_AVP)
            + binrpc._record(binrpc.T_INT, b"\x02") + END + END)
    (dump,) = binrpc.decode_body(body)
    assert isinstance(dump, Pairs)
    assert _plain(dump) == {"connections": ["1: 127.0.0.1:5", "2: x"], "info": {"wscounter": 2}}
    # No connections: an empty struct, as empty as jsonrpcs's [].
    (empty,) = binrpc.decode_body(START + _str("connections", binrpc.T_AVP) + START + END + END)
    assert not _plain(empty)["connections"]


def test_a_struct_that_mixes_named_and_unnamed_members_is_refused():
    body = START + _str("a", binrpc.T_AVP) + _str("1") + _str("loose") + END
    with pytest.raises(binrpc.BinRPCError, match="mixes named and unnamed"):
        binrpc.decode_body(body)


def test_doubles_as_ctl_writes_them():
    # binrpc_add_double_type: the value x1000 as a long long in its fewest bytes, the length in
    # the header's 4 bits (8 for a negative one: 0x82, not a length-of-length mark).
    neg = bytes([0x82]) + (-1000 & (1 << 64) - 1).to_bytes(8, "big")
    assert binrpc.decode_body(neg + bytes([0x12, 0xC8]) + bytes([0x02])) == [-1.0, 0.2, 0.0]
    (struct,) = binrpc.decode_body(START + _str("Q", binrpc.T_AVP) + neg + END)
    assert _plain(struct) == {"Q": -1.0}


def test_ul_dump_over_ctl_reads_as_over_json_rpc():
    # ul.dump as ctl writes it (6.1.5, decoded): each '[' a struct of named members,
    # two contacts of one AoR under the same name "Contact" (a dict would keep one).
    from kamleak.harness.probes import state

    def contact(addr, expires):
        return Pairs([("Address", addr), ("Expires", expires), ("Call-ID", "c-" + addr[-1]),
                      ("Received", "[not set]"), ("Tcpconn-Id", 7)])
    info = Pairs([("AoR", "100"), ("HashID", 1),
                  ("Contacts", Pairs([("Contact", contact("sip:100@127.0.0.1:1", 600)),
                                      ("Contact", contact("sip:100@127.0.0.1:2", "expired"))]))])
    dump = Pairs([("Domains", Pairs([("Domain", Pairs([("Domain", "location"), ("Size", 1024),
                                                       ("AoRs", Pairs([("Info", info)]))]))]))])
    contacts = state.parse_ul_dump(dump)
    assert [(c.aor, c.address, c.expires, c.expires_text) for c in contacts] == [
        ("100", "sip:100@127.0.0.1:1", 600, "600"), ("100", "sip:100@127.0.0.1:2", None, "expired")]
    # No contacts: ctl's empty struct, jsonrpcs's empty array.
    empty = Pairs([("Domains", Pairs([("Domain", Pairs([("Domain", "location"), ("AoRs", Pairs())]))]))])
    assert state.parse_ul_dump(empty) == []


def test_an_rpc_no_module_serves_is_known_over_either_transport():
    from kamleak.harness.probes import state
    from kamleak.harness.probes.rpc import RPCCallError
    assert state.not_served(binrpc.CtlCallError("dlg.list", 500, "command dlg.list not found"))
    assert state.not_served(RPCCallError("dlg.list", 500, "Method Not Found"))
    assert not state.not_served(binrpc.CtlCallError("ul.dump", 500, "Internal error"))


def test_a_ctl_that_resets_the_connection_is_a_failed_call_not_a_crash():
    """A Kamailio exiting while kamleak asks it (a config it refuses at start) resets ctl's
    connection: an RPCError the start-up wait retries past and then explains (a fresh-clone
    make test saw `internal error: ConnectionResetError` from the gate)."""
    import socket
    import struct
    import threading

    from kamleak.harness.errors import RPCError

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def reset_the_first() -> None:
        conn, _ = srv.accept()
        conn.recv(64)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()                    # linger 0: an RST, as a process that dies mid-request

    t = threading.Thread(target=reset_the_first, daemon=True)
    t.start()
    try:
        with pytest.raises(RPCError, match=r"dropped the connection during core.version"):
            binrpc.BinRPC(f"tcp:127.0.0.1:{port}", timeout=5).call("core.version")
    finally:
        t.join(5)
        srv.close()
