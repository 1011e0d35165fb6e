"""BINRPC codec (upstream binrpc.h's own examples) and the watcher's cell follower:
stuck past the bound, orphaned by the orphan proof's time rule."""
from __future__ import annotations

import argparse
import io
import json

import pytest

from kamleak.harness.errors import RPCError
from kamleak.harness.judging.oracle import Timers
from kamleak.harness.probes import binrpc
from kamleak.harness.probes.rpc import Pairs
from kamleak.harness.stack.kamailio.timers import DEFAULTS, Timer
from kamleak.harness.tools.cli import main
from kamleak.harness.tools.watch import BadAnswer, Bounds, Follower, JsonOut, Watcher, _once, cells_from, status_line


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
    assert f.update(c, 0.0, 1000.0).new_stuck == []
    assert f.update(c, bound, 1000.0 + bound).new_stuck == []     # not older than the bound
    new = f.update(c, bound + 1, 1001.0 + bound).new_stuck
    assert [s.callid for s in new] == ["a"] and new[0].signature_4140
    assert (new[0].from_tag, new[0].to_tag) == ("f1", "t1")
    assert f.update(c, bound + 2, 0).new_stuck == []               # reported once
    reused = cells_from([Pairs(_fields("b"))])                     # same tindex:tlabel
    u = f.update(reused, bound + 3, 0)
    assert u.new_stuck == [] and u.stuck == [] and u.gone[0][2] == "a"
    assert Bounds(timers, max_life=10)("INVITE") == pytest.approx(14.5)


# ---------------------------------------------------------------------------
# The orphan proof's time rule in the follower, fed with tm.list answers
# recorded from Debian's 6.0.1 (harness config, wt_timer 1000 ms).

# A BYE left by issue 4140 (uac_req_send trigger; soak, built-in peer).
LEAKED_BYE = [("cell", "0x7fab19064a30"), ("tindex", 21955), ("tlabel", 957552154),
              ("method", "BYE"), ("from", "From: <sip:21470057@127.0.0.1>;tag=f9e6cea704\r\n"),
              ("to", "To: <sip:soak11@127.0.0.1>;tag=f23246db29\r\n"),
              ("callid", "Call-ID: 4551366c1ebe802f35798f2d\r\n"), ("cseq", "CSeq: 3663"),
              ("uas_request", "yes"), ("tflags", 0), ("outgoings", 0), ("ref_count", 1),
              ("lifetime", 10739636)]
# A MESSAGE left by issue 4919 (relay to a port nobody listens on): it keeps its branch.
LEAKED_MESSAGE = [("cell", "0x7f41c5831100"), ("tindex", 50827), ("tlabel", 197931484),
                  ("method", "MESSAGE"), ("from", "From: <sip:kamleak@127.0.0.1>;tag=1d23ff32c7\r\n"),
                  ("to", "To: <sip:gone@127.0.0.1:29110>\r\n"),
                  ("callid", "Call-ID: 86b7c32f5dbbc0c373dee368\r\n"), ("cseq", "CSeq: 1"),
                  ("uas_request", "yes"), ("tflags", 0), ("outgoings", 1), ("ref_count", 1),
                  ("lifetime", 81918725)]
WT_SOURCE = "kamailio.cfg:160 modparam"


def _bounds(wt_ms=1000):
    timers = Timers({n: Timer(DEFAULTS[n], "test") for n in DEFAULTS})
    timers.values["wt_timer"] = Timer(wt_ms, WT_SOURCE)
    return Bounds(timers)


def _answer(*cells, **changes):
    """One tm.list answer (jsonrpcs: an array of cells); CHANGES rewrite fields of every cell."""
    return cells_from([Pairs([(k, changes.get(k, v)) for k, v in c]) for c in cells])


def test_idle_cell_is_orphaned_past_wt_timer_once_and_says_why():
    f = Follower(_bounds(1000))                          # needs idle > 1.0 x1.25 + 0.5 = 1.75 s
    bye = _answer(LEAKED_BYE)
    assert f.update(bye, 10.0, 1000.0).orphaned == []    # first sighting starts the idle run
    assert f.update(bye, 11.75, 1001.75).orphaned == []  # not longer than 1.75 s
    u = f.update(bye, 11.8, 1001.8)
    assert [o.callid for o in u.new_orphaned] == ["4551366c1ebe802f35798f2d"]
    o = u.new_orphaned[0]
    assert (o.idle_since, o.wt_timer_ms, o.wt_timer_source) == (1000.0, 1000, WT_SOURCE)
    assert o.signature_4140 and (o.from_tag, o.to_tag) == ("f9e6cea704", "f23246db29")
    assert "orphaned: outgoings 0, ref_count 1, idle 1.8 s > wt_timer 1000 ms x1.25 + 0.5 s" \
        in o.line() and WT_SOURCE in o.line()
    assert o.as_dict()["evidence"] == o.evidence
    u = f.update(bye, 12.5, 1002.5)
    assert u.new_orphaned == [] and len(u.orphaned) == 1  # reported once, still counted
    assert u.stuck == []                                  # its bound, 48.25 s, is far
    gone = f.update([], 13.0, 1003.0).gone               # tm.clean: it leaves, and says so
    assert [k[2] for k in gone] == ["4551366c1ebe802f35798f2d"]


def test_a_poll_that_sees_it_busy_restarts_the_idle_run():
    f = Follower(_bounds(1000))
    bye = _answer(LEAKED_BYE)
    f.update(bye, 0.0, 0.0)
    assert f.update(_answer(LEAKED_BYE, ref_count=2), 1.0, 1.0).orphaned == []  # a process holds it
    assert f.update(bye, 1.5, 1.5).orphaned == []         # the run starts again here
    assert f.update(bye, 3.2, 3.2).orphaned == []         # 1.7 s since 1.5: not yet
    u = f.update(bye, 3.3, 3.3)
    assert len(u.new_orphaned) == 1 and u.new_orphaned[0].idle_since == 1.5
    u = f.update(_answer(LEAKED_BYE, outgoings=1), 4.0, 4.0)  # a branch again: no longer orphaned
    assert len(u.contradicted) == 1 and "busy again (outgoings 1" in u.contradicted[0]  # said loudly
    assert f.update(bye, 4.5, 4.5).orphaned == []
    assert len(f.update(bye, 6.3, 6.3).new_orphaned) == 1  # proven again, reported again


def test_polls_farther_apart_than_the_wait_need_two_idle_sightings():
    f = Follower(_bounds(1000))
    bye = _answer(LEAKED_BYE)
    assert f.update(bye, 0.0, 0.0).orphaned == []         # one sighting proves nothing
    assert len(f.update(bye, 10.0, 10.0).new_orphaned) == 1


def test_never_orphaned_with_a_branch_an_invite_or_a_flag_of_tm():
    f = Follower(_bounds(1000))
    cases = (_answer(LEAKED_MESSAGE),                     # 4919: outgoings 1, only STUCK later
             _answer(LEAKED_BYE, method="INVITE"),        # an INVITE's reply timer may run
             _answer(LEAKED_BYE, tflags=1 << 5),          # T_IN_AGONY
             _answer(LEAKED_BYE, tflags=1 << 15))         # T_ASYNC_SUSPENDED
    for cells in cases:
        f.forget()
        for t in range(0, 40, 5):
            assert f.update(cells, float(t), float(t)).orphaned == [], cells[0].describe()


def test_orphaned_first_then_stuck_past_the_bound():
    timers = Timers({n: Timer(DEFAULTS[n], "tm default") for n in DEFAULTS})
    f = Follower(Bounds(timers))                          # wt 5000 ms: 6.75 s; BYE bound 48.25 s
    bye = _answer(LEAKED_BYE)
    events = []
    for t in range(0, 60, 5):
        u = f.update(bye, float(t), float(t))
        events += [("orphaned", t) for _ in u.new_orphaned] + [("stuck", t) for _ in u.new_stuck]
    assert events == [("orphaned", 10), ("stuck", 50)]


class _Recorded:
    """An RPC answering from recorded answers: tm.list in turn, tm.stats and core.shmmem fixed."""

    def __init__(self, lists):
        self.lists = list(lists)

    def tm_stats(self):
        return {"current": 1, "waiting": 0, "created": 1, "freed": 0}

    def shmmem(self):
        return {"real_used": 1}

    def call(self, method):
        assert method == "tm.list"
        return self.lists.pop(0)


def test_watcher_polls_carry_orphaned_cells_and_count_a_cell_once():
    raw = [Pairs(LEAKED_BYE)]
    clock = iter([0.0, 1.0, 2.0]).__next__
    w = Watcher(_Recorded([raw, raw, raw]), _bounds(1000), interval=1.0, clock=clock)
    p0, _, p2 = w.poll(), w.poll(), w.poll()
    assert (p0.orphaned_count, p0.as_dict()["orphaned"]) == (0, 0)
    assert p2.orphaned_count == 1 and p2.as_dict()["orphaned"] == 1 and p2.leaked_count == 1
    assert [o.callid for o in p2.new_orphaned] == ["4551366c1ebe802f35798f2d"]
    out = io.StringIO()
    JsonOut(out).poll(p2)
    events = [json.loads(ln) for ln in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["orphaned", "poll"]
    assert events[0]["wt_timer_source"] == WT_SOURCE and events[0]["idle"] == 2.0


def test_once_with_state_keeps_the_idle_run_between_runs(tmp_path, capsys):
    state = tmp_path / "watch.state"
    args = argparse.Namespace(state=str(state), warning=1, critical=10, json=False, interval=5.0)

    def once():
        w = Watcher(_Recorded([[Pairs(LEAKED_BYE)]]), _bounds(1000), interval=5.0)
        code = _once(args, w, "kamailio 6.0.1")
        return code, capsys.readouterr().out

    code, out = once()
    assert code == 0 and out.startswith("KAMLEAK OK - 0 stuck transaction(s) of 1, 0 orphaned"), out
    saved = json.loads(state.read_text())
    ((key, (first, idle)),) = saved.items()
    assert first == idle                                  # first sighting, idle: the run starts
    # As if that cron run were 10 s ago: the next run sees it idle again, past 1.75 s.
    state.write_text(json.dumps({key: [first - 10, idle - 10]}))
    code, out = once()
    assert code == 2, out                                 # the issue-4140 signature: CRITICAL
    assert "1 orphaned" in out and "orphaned before its bound: BYE Call-ID 4551366c1ebe802f" in out
    assert "wt_timer from kamailio.cfg:160 modparam" in out and "orphaned=1;1;10" in out
    # An older state file (first sightings only) still reads; the idle run starts afresh.
    state.write_text(json.dumps({key: first - 10}))
    code, out = once()
    assert code == 0 and "0 orphaned" in out, out


def test_an_orphaned_cell_that_leaves_tm_list_contradicts_the_rule():
    f = Follower(_bounds(1000))
    bye = _answer(LEAKED_BYE)
    f.update(bye, 0.0, 0.0)
    assert len(f.update(bye, 2.0, 2.0).new_orphaned) == 1
    u = f.update([], 3.0, 3.0)
    assert u.gone and len(u.contradicted) == 1 and "tm.clean" in u.contradicted[0]


# --- --once as a monitoring plugin: a status line on stdout in every case ------------

class _ListTooBig(_Recorded):
    """tm.stats answers, tm.list does not (a busy server: the reply cannot be allocated)."""

    def call(self, method):
        raise RPCError("tm.list timed out after 10 s")


def test_once_without_tm_list_is_unknown_with_u_for_what_it_cannot_count(tmp_path, capsys):
    args = argparse.Namespace(state=str(tmp_path / "st"), warning=1, critical=10, json=False,
                              interval=5.0)
    code = _once(args, Watcher(_ListTooBig([]), _bounds(1000), interval=5.0), "kamailio 6.0.1")
    (line,) = capsys.readouterr().out.splitlines()
    assert code == 3
    assert line.startswith("KAMLEAK UNKNOWN - tm.list unavailable (tm.list timed out after 10 s)")
    # Nagios perfdata: U where the value cannot be had, never an empty value.
    assert line.endswith("| stuck=U;1;10 orphaned=U;1;10 current=1 waiting=0 drift=1"), line


def test_status_line_keeps_one_line_and_the_perfdata_separator_its_own():
    assert status_line(3, "cannot read x | y\n  second line") == \
        "KAMLEAK UNKNOWN - cannot read x / y second line"
    assert status_line(0, "fine", "stuck=0;1;10") == "KAMLEAK OK - fine | stuck=0;1;10"


@pytest.mark.parametrize("once", [True, False])
def test_a_refused_command_line_says_unknown_on_stdout_with_once(once, capsys):
    argv = ["watch", "--kamailio-rpc", "tcp:127.0.0.1:1", "--interval", "0"] + (["--once"] * once)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 3
    (line,) = err.splitlines()
    assert line.startswith("kamleak watch: argument --interval: --interval 0 is outside"), line
    if once:
        assert out == f"KAMLEAK UNKNOWN - {line.removeprefix('kamleak watch: ')}\n"
    else:
        assert out == ""
