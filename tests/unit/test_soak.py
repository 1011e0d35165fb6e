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
