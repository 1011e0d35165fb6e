"""Explore's oracle beyond tm.list on real Kamailio and Asterisk: the per-flow
dialog, WebSocket and contact checks and the per-campaign trend find nothing on a
clean build, and on 6.0.1 the 4140 flow is still a tm leak whose dialog is
reported as Kamailio holds it (deleted, kept by the orphaned BYE), never as a
dialog leak before its bound."""

from __future__ import annotations

import time

import pytest

from kamleak.harness.judging import oracle
from kamleak.harness.probes import state
from kamleak.harness.stack.kamailio.variants import Variant
from kamleak.harness.stack.runner import launch_kamailio
from kamleak.harness.stack.targets import Target
from kamleak.harness.tools.explore import flow as fl
from kamleak.harness.tools.explore import trend
from kamleak.harness.tools.explore.judge import DIALOG, TM
from kamleak.harness.tools.explore.run import run_batch

# Six batches of four: every answer, both transports, each disconnect, CANCEL and
# its race, in-dialog requests, REGISTER (403 on kamleak's config).
BATCHES = [
    [("ws", ["invite:answer", "bye"]), ("wss", ["invite:ring_answer", "pbx_bye", "fin"]),
     ("ws", ["invite:busy", "close"]), ("ws", ["invite:no_answer", "cancel"])],
    [("ws", ["invite:answer", "reinvite", "options", "bye"]), ("wss", ["invite_se:answer", "pbx_bye"]),
     ("ws", ["cancel_race"]), ("ws", ["register", "unregister"])],
    [("ws", ["invite:answer", "message", "info", "pbx_bye", "rst"]), ("wss", ["invite:answer", "update", "bye"]),
     ("ws", ["pause:50", "invite:answer", "bye", "close"]), ("wss", ["invite:busy", "rst"])],
    [("ws", ["invite:answer", "pbx_bye", "close"]), ("wss", ["invite:no_answer", "cancel", "fin"]),
     ("ws", ["invite:ring_answer", "bye"]), ("ws", ["invite_se:answer", "reinvite", "bye"])],
    [("wss", ["invite:answer", "options", "pbx_bye"]), ("ws", ["invite:answer", "info", "bye", "rst"]),
     ("ws", ["cancel_race", "close"]), ("wss", ["register", "invite:answer", "bye"])],
    [("ws", ["invite:answer", "update", "pbx_bye", "fin"]), ("wss", ["invite:ring_answer", "pbx_bye"]),
     ("ws", ["invite:busy"]), ("ws", ["invite:answer", "message", "bye"])],
]


@pytest.fixture
def start(docker_client, kamleak_images, pbx, tmp_path):
    started = []

    def run(version: str):
        k = launch_kamailio(Target("version", version), docker_client, pbx.sip_port, tmp_path,
                            Variant.parse("pua_dialoginfo").defines)
        started.append(k)
        return k
    yield run
    for k in started:
        k.stop()


def test_a_clean_build_leaves_no_dialog_connection_or_trend(start, pbx):
    kam = start("6.1.5")
    timers = oracle.read_timers(kam.rpc, kam.config, kam.version)
    series = trend.Series(kam, timers)
    judged_all = []
    for batch in BATCHES:
        flows = [fl.parse(t, steps) for t, steps in batch]
        judged = run_batch(kam, pbx, flows, timers)
        pbx.cli("channel request hangup all")
        assert series.after_batch(flows, judged) == []
        judged_all += judged
    assert [j.run.error for j in judged_all] == [None] * len(judged_all)
    assert not any(j.leaked for j in judged_all), [j.evidence() for j in judged_all if j.leaked]
    # Every flow's dialog and connection were read (the dialog module is loaded) and gone.
    assert all(j.held == [] for j in judged_all), [j.evidence() for j in judged_all if j.held]
    assert not any("dialogs not checked" in n or "WebSocket connections not checked" in n
                   for j in judged_all for n in j.notes)
    assert state.dialogs(kam.rpc) == []
    memory = series.memory()
    assert memory == [], [m.as_dict() for m in memory]
    # The trend was judged, not skipped: every sample comparable to the baseline.
    assert not any("not judged: " in n and "comparable" in n for n in series.notes), series.notes
    assert all(s.took_s < 1.0 for s in series.samples), [s.took_s for s in series.samples]


def test_the_4140_flow_is_a_tm_leak_and_its_dialog_is_reported_held_not_leaked(start, pbx):
    kam = start("6.0.1")
    timers = oracle.read_timers(kam.rpc, kam.config, kam.version)
    series = trend.Series(kam, timers)
    flows = [fl.parse("ws", ["invite:answer", "rst", "pbx_bye"]), fl.parse("ws", ["invite:answer", "bye"])]
    leak, plain = run_batch(kam, pbx, flows, timers)
    assert leak.run.error is None and plain.run.error is None
    assert leak.leaked and leak.kind == TM and leak.signature().startswith("tm cell: BYE/out0/ref1")
    assert not plain.leaked and plain.held == []
    (held,) = leak.held
    (listed,) = [d for d in state.dialogs(kam.rpc) if d.callid in leak.run.call_ids]
    # Reported as Kamailio holds it: deleted, with its bound from the clean run, not a leak.
    assert held.kind == DIALOG and held.key == listed.key and listed.state == state.DLG_DELETED
    assert held.shape == f"deleted/ref{listed.ref}" and not held.leaked
    assert held.bound_at is not None and held.bound_at - time.monotonic() > 300
    assert any("dialog still listed" in e and "no verdict" in e for e in leak.evidence())
    # The campaign's drain allows the reported cell, and rechecks the dialog within its bound.
    assert series.after_batch(flows, [leak, plain]) == []
    assert [h.key for _, h in series.held] == [held.key]
    series.memory()
    assert any("left out of the memory trend" in n or "not judged" in n for n in series.notes)
