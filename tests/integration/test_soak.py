"""Soak mode against real Kamailio 6.0.1 with the built-in UDP peer.

300 calls over WebSocket, 1 in 100 of them the issue-4140 ladder (client RST,
Kamailio drops the connection, the PBX hangs up): with the `uac_req_send`
trigger each of those BYE cells stays in tm.list, so the leak rate is the
number of calls that really hit the dead-connection path; without a trigger
(`none`) the same calls leave nothing behind.  The drains prove each leaked
BYE cell orphaned (the orphan proof's time rule) and record when.
"""

from __future__ import annotations

import json

import pytest

from kamleak.harness.judging.evidence import attach
from kamleak.harness.plugin import state
from kamleak.harness.sip.peer import UdpPeer
from kamleak.harness.stack.kamailio import TmTimers
from kamleak.harness.stack.runner import launch_kamailio
from kamleak.harness.stack.targets import Target
from kamleak.harness.tools.soak import run_soak
from kamleak.scenarios.gh4140_bye_to_closed_ws import Variant

pytestmark = [pytest.mark.kamailio]

VERSION = "6.0.1"
CALLS, MIX = 300, 0.01


@pytest.fixture
def soak_bench(request, docker_client, kamleak_images, tmp_path):
    """(peer, start(variant) -> Kamailio pointed at the peer); all stopped at teardown."""
    targets = request.config.stash[state.TARGETS]
    if not any(t.kind == "version" and t.ref == VERSION for t in targets):
        pytest.skip(f"the soak test needs Kamailio {VERSION} among the targets")
    peer = UdpPeer().start()
    started = []

    def start(variant: str):
        k = launch_kamailio(Target("version", VERSION), docker_client, peer.sip_port, tmp_path,
                            Variant.parse(variant).defines, TmTimers(),
                            on_start=started.append)
        # Kept with the artifacts of a failing run: the soak's errors name the
        # calls (Call-ID, client port); Kamailio's log says what happened to them.
        attach(request, f"kamailio log ({variant})", k.log, f"kamailio-{variant}.log",
               in_report=False)
        return k

    yield peer, start
    for k in started:
        k.stop()
    peer.stop()


def _soak(kamailio, peer, variant: str, tmp_path):
    res = run_soak(kamailio, peer, calls=CALLS, concurrency=20, rate=150, mix=MIX, seed=4140,
                   checkpoints=3, variant=variant)
    json_path, png = res.write(tmp_path / variant)
    print(res.summary_line())
    assert json.loads(json_path.read_text())["calls"] == CALLS
    assert png is not None and png.read_bytes().startswith(b"\x89PNG")
    assert res.failed == 0, res.errors
    assert res.calls_4140 == 3
    assert res.settled, "every checkpoint drained within fr_timer + wt_timer"
    return res


def test_soak_leaks_one_cell_per_call_that_hit_the_dead_connection(soak_bench, tmp_path):
    peer, start = soak_bench
    kamailio = start("uac_req_send")
    res = _soak(kamailio, peer, "uac_req_send", tmp_path)
    assert res.hits >= 1, f"no 4140 call reached the dead-connection path: {res.outcomes}"
    assert all(r.endswith("(1/SL)") for r in res.bye_replies), res.bye_replies
    assert res.leaked_cells == res.hits
    assert res.created_minus_freed == res.hits
    assert len(res.leaked_in_tm_list) == res.hits, "the leaked cells are those calls' BYEs"
    # Each of those BYE cells was proven orphaned by a drain (the time rule), with its evidence.
    assert [o["call_id"] for o in res.orphaned] == res.leaked_in_tm_list, res.orphaned
    assert all(o["proven_at"] is not None and o["evidence"].startswith("outgoings 0, ref_count 1")
               for o in res.orphaned), res.orphaned
    assert "wt_timer 1000 ms" in res.orphan_rule, res.orphan_rule
    fit = res.cells_per_call
    assert fit["slope"] > 0 and fit["ci95"][0] > 0, fit
    assert abs(fit["slope"] - res.hits / CALLS) < 0.01
    assert any("did not return" in f for f in res.flags)
    assert res.leaked


def test_soak_without_a_trigger_leaves_nothing(soak_bench, tmp_path):
    peer, start = soak_bench
    kamailio = start("none")
    res = _soak(kamailio, peer, "none", tmp_path)
    assert res.hits == 3, f"the 4140 calls must still hit the dead connection: {res.outcomes}"
    assert all(r.endswith("/TM)") for r in res.bye_replies), res.bye_replies
    assert res.leaked_cells == 0 and res.created_minus_freed == 0
    assert res.leaked_in_tm_list == []
    assert res.orphaned == []
    assert res.cells_per_call["slope"] == 0
    assert not any("tm cell" in f for f in res.flags), res.flags
    assert not res.leaked
