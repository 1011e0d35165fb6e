"""Soak's own helpers: the plan, the least-squares fit and the WebSocket frames its client sends (no containers)."""

from __future__ import annotations


def test_ws_frames_round_trip_masked_and_split():
    from kamleak.harness.sip.websocket import WebSocket

    # The one codec: a client's frames, read by a server side that keeps partial frames itself.
    ws_frame = WebSocket(client=True).message
    server = WebSocket(client=False)
    server.open = True

    def ws_parse(chunk):
        return [(ev[2], True, ev[1]) for ev in server.receive(bytes(chunk))], len(chunk)

    payloads = [b"", b"x" * 125, b"y" * 126, b"z" * 70000]
    wire = bytearray(b"".join(ws_frame(p) for p in payloads))
    assert all(b & 0x80 for b in (wire[1],)), "client frames are masked (RFC 6455 5.3)"
    got, pos = [], 0
    for cut in (3, 200, 70100, len(wire)):       # arrive in pieces
        frames, used = ws_parse(wire[pos:cut])
        got += [p for _, _, p in frames]
        pos += used
    assert got == payloads and pos == len(wire)


def test_plan_kinds_spreads_4140_calls_exactly():
    from kamleak.harness.tools.soak import plan_kinds

    kinds = plan_kinds(1000, 0.001, seed=1)
    assert kinds.count("4140") == 1
    kinds = plan_kinds(300, 0.01, seed=1)
    assert [i for i, k in enumerate(kinds) if k == "4140"] == [99, 199, 299]
    assert set(plan_kinds(10, 0.0, seed=1)) <= {"client_bye", "peer_bye"}
    assert plan_kinds(50, 0.0, seed=7) == plan_kinds(50, 0.0, seed=7)


def test_ols_slope_and_interval():
    from kamleak.harness.tools.soak import ols

    fit = ols([0, 100, 200, 300], [0, 1, 2, 3])
    assert abs(fit.slope - 0.01) < 1e-12 and fit.half_width < 1e-9
    noisy = ols([0, 100, 200, 300, 400], [0, 1.2, 1.8, 3.1, 3.9])
    assert noisy.low < 0.01 < noisy.high and noisy.excludes_zero()
    assert ols([5, 5], [1, 2]) is None


# ---------------------------------------------------------------------------
# The drains' orphan proof (time rule) on 4140 BYE cells, fed with tm.list
# answers recorded from Debian's 6.0.1 (soak, uac_req_send, built-in peer).

def _cell(callid="4551366c1ebe802f35798f2d", **changes):
    from kamleak.harness.probes.rpc import TmCell
    f = {"cell": "0x7fab19064a30", "tindex": 21955, "tlabel": 957552154, "method": "BYE",
         "from": "From: <sip:21470057@127.0.0.1>;tag=f9e6cea704\r\n",
         "to": "To: <sip:soak11@127.0.0.1>;tag=f23246db29\r\n",
         "callid": f"Call-ID: {callid}\r\n", "cseq": "CSeq: 3663", "uas_request": "yes",
         "tflags": 0, "outgoings": 0, "ref_count": 1, "lifetime": 10739636}
    return TmCell.from_fields({**f, **changes})


CID = "4551366c1ebe802f35798f2d"


def test_bye_proofs_prove_an_idle_bye_of_a_4140_call_past_wt_timer():
    from kamleak.harness.tools.soak.run import ByeProofs

    p = ByeProofs(1000, t0=100.0)                      # needs idle > 1.75 s
    watched = {CID: 104.0}                             # its BYE answered at 104 s
    assert not p.observe(105.0, [_cell()], watched) and p.pending
    assert not p.observe(106.75, [_cell()], watched) and p.pending
    assert p.observe(106.8, [_cell()], watched) and not p.pending
    (row,) = p.record([CID])
    assert (row["idle_since"], row["proven_at"], row["after_bye"]) == (5.0, 6.8, 2.8)
    assert row["evidence"] == "outgoings 0, ref_count 1, idle 1.8 s > wt_timer 1000 ms x1.25 + 0.5 s"
    # A cell that is not a watched BYE keeps the drain going: nothing proves it.
    other = _cell("a-healthy-call", cell="0x7fab19080aa0", tindex=1, tlabel=2)
    assert not p.observe(107.0, [_cell(), other], watched)
    p.baseline = {p.key(other)}                         # ... unless it was there before the calls
    assert p.observe(107.1, [_cell(), other], watched)


def test_bye_proofs_restart_on_a_busy_read_and_never_prove_a_branch():
    from kamleak.harness.tools.soak.run import ByeProofs

    p = ByeProofs(1000, t0=0.0)
    watched = {CID: 0.0}
    p.observe(0.0, [_cell()], watched)
    assert not p.observe(1.0, [_cell(ref_count=2)], watched) and not p.pending
    assert not p.observe(2.0, [_cell()], watched)       # the run restarts here
    assert not p.observe(3.7, [_cell()], watched)
    assert p.observe(3.8, [_cell()], watched)
    for t in (4.0, 10.0, 20.0):                         # a branch again: not idle, not pending
        assert not p.observe(t, [_cell(outgoings=1)], watched) and not p.pending
    (row,) = p.record([CID])
    assert row["proven_at"] is None and row["why_not"].startswith("not idle: outgoings 1"), row
    assert not p.observe(30.0, [_cell(callid="not-a-4140-call")], watched) and not p.pending


class _RecordedRPC:
    """tm.stats and tm.list as a leaking 6.0.1 answered them, fixed."""

    def __init__(self, stats, cells):
        self.stats, self.cells = stats, cells

    def tm_stats(self):
        return dict(self.stats)

    def tm_list(self):
        return list(self.cells)


def test_drain_ends_at_the_proof_even_when_tm_stats_waiting_never_returns_to_0():
    from types import SimpleNamespace

    from kamleak.harness.tools.soak.run import ByeProofs, _drain

    # tm.stats `waiting` is `waiting - deleted`, unsigned: a cell deleted without the
    # wait timer wraps it, and a drain on tm.stats alone runs to its deadline.
    rpc = _RecordedRPC({"current": 1, "waiting": 4294967295}, [_cell()])
    counters = SimpleNamespace(rpc=rpc, mod_ok={})
    proofs = ByeProofs(100, t0=0.0)                    # wt_timer 100 ms: idle > 0.625 s
    _, settled = _drain(counters, 30.0, interval=0.05, proofs=proofs,
                        watched=lambda: {CID: None}, base_current=0)
    assert settled and CID in proofs.proven
    _, settled = _drain(counters, 0.3, interval=0.05)   # without the proof: the deadline
    assert not settled
