"""BINRPC codec (upstream binrpc.h's own examples) and the watcher's cell follower."""
from __future__ import annotations

import pytest

from kamleak.harness.judging.oracle import Timers
from kamleak.harness.probes import binrpc
from kamleak.harness.probes.rpc import Pairs
from kamleak.harness.stack.kamailio.timers import DEFAULTS, Timer
from kamleak.harness.tools.watch import BadAnswer, Bounds, Follower, cells_from


def test_header_round_trip():
    pkt = binrpc.encode_request("tm.list", (), cookie=0x1234)
    ptype, tlen, cookie, hlen = binrpc.parse_header(pkt)
    assert (ptype, cookie, hlen + tlen) == (binrpc.REQ, 0x1234, len(pkt))
    assert binrpc.decode_body(pkt[hlen:]) == ["tm.list"]


def test_binrpc_h_examples():
    # struct{ intval: int 0x3, s: str "abc" } as binrpc.h draws it
    body = bytes([0x03, 0x75]) + b"intval\0" + bytes([0x10, 0x03, 0x25]) + b"s\0" + \
        bytes([0x41]) + b"abc\0" + bytes([0x83])
    (s,) = binrpc.decode_body(body)
    assert isinstance(s, Pairs) and list(s) == [("intval", 3), ("s", "abc")]
    assert binrpc.decode_body(bytes([0x04, 0x10, 0x07, 0x41]) + b"abc\0" + bytes([0x84])) == \
        [[7, "abc"]]
    assert binrpc.encode_value(0x1234) == bytes([0x20, 0x12, 0x34])
    assert binrpc.encode_value("abcdefhij") == bytes([0x91, 0x0A]) + b"abcdefhij\0"


def test_not_binrpc_and_truncated():
    with pytest.raises(binrpc.BinRPCError):
        binrpc.parse_header(b"HTTP/1.1 400")
    with pytest.raises(binrpc.BinRPCError):
        binrpc.decode_body(bytes([0x03, 0x75]) + b"int")


def _fields(callid, tindex=1, tlabel=2, method="BYE", outgoings=0, tflags=0, ref=1):
    return [("cell", "0x1"), ("tindex", tindex), ("tlabel", tlabel), ("method", method),
            ("from", "From: <sip:a@b>;tag=f1\r\n"), ("to", "To: <sip:c@d>;tag=t1\r\n"),
            ("callid", f"Call-ID: {callid}\r\n"), ("cseq", "CSeq: 7"), ("uas_request", "yes"),
            ("tflags", tflags), ("outgoings", outgoings), ("ref_count", ref), ("lifetime", 9)]


def test_one_parser_for_both_transports():
    bucket = Pairs(_fields("a") + _fields("b"))      # two cells in one hash bucket
    assert [c.callid for c in cells_from(bucket)] == ["a", "b"]            # ctl: one struct
    assert [c.callid for c in cells_from([bucket])] == ["a", "b"]          # jsonrpcs: an array
    with pytest.raises(BadAnswer):
        cells_from(["garbage"])


def test_follower_stuck_after_bound_and_reused_slot_is_new():
    timers = Timers({n: Timer(DEFAULTS[n], "test") for n in DEFAULTS})
    f = Follower(Bounds(timers))
    bound = timers.deadline_for("BYE")                # (32 + 5) x1.25 + 2 = 48.25 s
    c = cells_from([Pairs(_fields("a"))])
    assert f.update(c, 0.0, 1000.0)[0] == []
    assert f.update(c, bound, 1000.0 + bound)[0] == []            # not older than the bound
    new, stuck, gone, oldest = f.update(c, bound + 1, 1001.0 + bound)
    assert [s.callid for s in new] == ["a"] and new[0].signature_4140
    assert (new[0].from_tag, new[0].to_tag) == ("f1", "t1")
    assert f.update(c, bound + 2, 0)[0] == []                      # reported once
    reused = cells_from([Pairs(_fields("b"))])                     # same tindex:tlabel
    new, stuck, gone, _ = f.update(reused, bound + 3, 0)
    assert new == [] and stuck == [] and gone[0][2] == "a"
    assert Bounds(timers, max_life=10)("INVITE") == pytest.approx(14.5)
