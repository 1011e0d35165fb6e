"""explore's flows: the generator only yields flows a client could drive, and they round-trip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kamleak.harness.errors import UsageError
from kamleak.harness.tools.explore import flow as fl


@settings(max_examples=300, deadline=None)
@given(fl.flows())
def test_every_generated_flow_is_valid_ends_the_call_and_round_trips(f):
    states = f.states()
    assert states[-1] in ("ended", "idle")
    assert fl.Flow.from_json(f.to_json()) == f
    gone = False
    for state, step in zip(states, f.steps):
        assert state in fl.STEPS[step.name]
        if gone:   # nothing from the client once its connection is dead
            assert step.name in ("pbx_bye", "pause", *fl.DISCONNECTS), f.text()
        gone = gone or step.name in fl.DISCONNECTS


def test_the_issue_4140_flow_reads_as_an_engineer_writes_it():
    f = fl.parse("ws", ["invite_se:answer", "reinvite", "rst", "pbx_bye"])
    assert f.states() == ["idle", "confirmed", "confirmed", "gone", "ended"]
    assert f.text() == "ws: invite_se:answer, reinvite, rst, pbx_bye"
    assert "[gone     ] PBX pbx_bye" in f.ladder()


@pytest.mark.parametrize("steps, message", [
    (["invite:answer", "dance"], "unknown step 'dance' (step 2)"),
    (["invite:maybe"], "unknown PBX answer 'maybe' for invite (step 1)"),
    (["bye"], "step 'bye' cannot come in state 'idle' (step 1)"),
    (["invite:answer", "rst", "reinvite"], "step 'reinvite' cannot come in state 'gone' (step 3)"),
    (["invite:no_answer", "bye"], "step 'bye' cannot come in state 'early' (step 2)"),
    (["pause:soon"], "pause takes milliseconds, not 'soon' (step 1)"),
    (["rst:hard"], "step 'rst' takes no argument"),
])
def test_a_flow_that_cannot_be_driven_is_one_line(steps, message):
    with pytest.raises(UsageError) as exc:
        fl.parse("ws", steps)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_transport_and_not_a_flow():
    with pytest.raises(UsageError, match="unknown transport 'sctp'"):
        fl.parse("sctp", ["invite:answer", "bye"])
    with pytest.raises(UsageError, match="not a kamleak flow"):
        fl.Flow.from_json({"transport": "ws"})


def test_the_generator_reaches_the_4140_shape():
    """Some generated flow disconnects in a confirmed call and then gets the PBX's BYE."""
    from hypothesis import find
    found = find(fl.flows(), lambda f: any(
        a.name in fl.DISCONNECTS and b.name == "pbx_bye" and s == "confirmed"
        for s, a, b in zip(f.states(), f.steps, f.steps[1:])), settings=settings(max_examples=2000, derandomize=True))
    assert [s.name for s in found.steps][-2:] in (["rst", "pbx_bye"], ["fin", "pbx_bye"],
                                                  ["close", "pbx_bye"])
    assert len(found.steps) <= 3         # shrunk: invite, the disconnect, the PBX's BYE


def test_shrinking_only_tries_flows_the_state_machine_allows():
    seen = []

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(st.data())
    def check(data):
        f = data.draw(fl.flows())
        seen.append(f)
        fl.parse(f.transport, [s.text() for s in f.steps])     # raises if not drivable
        assert not any(s.name == "reinvite" for s in f.steps)  # fails: Hypothesis shrinks it

    with pytest.raises(AssertionError):
        check()
    assert len(seen) > 1


@settings(max_examples=100, deadline=None)
@given(fl.flows(steps=["invite", "reinvite", "rst", "pbx_bye", "pause"], answers=["answer"]))
def test_a_narrowed_vocabulary_is_all_the_generator_draws(f):
    assert {s.name for s in f.steps} <= {"invite", "reinvite", "rst", "pbx_bye", "pause"}
    assert all(s.arg == "answer" for s in f.steps if s.name == "invite")
    fl.parse(f.transport, [s.text() for s in f.steps])


@pytest.mark.parametrize("steps, answers, message", [
    (["invite", "moonwalk"], None, "unknown step 'moonwalk'"),
    (["bye", "rst"], None, "the steps place no call"),
    (["invite"], ["maybe"], "unknown PBX answer 'maybe'"),
])
def test_a_bad_vocabulary_is_one_line(steps, answers, message):
    with pytest.raises(UsageError, match=message):
        fl.check_vocabulary(steps, answers)


def test_deleting_a_choice_deletes_its_step_and_the_rest_keeps_its_meaning():
    """What makes the shrinker effective: a flow is a list of choices, one a step."""
    reinvite, rst = (fl._DRAW.index("reinvite"), 0), (fl._DRAW.index("rst"), 0)
    long = fl.build("ws", [(0, 0), reinvite, reinvite, reinvite, rst])
    assert long.text() == "ws: invite:answer, reinvite, reinvite, reinvite, rst, pbx_bye"
    assert fl.build("ws", [(0, 0), rst]).text() == "ws: invite:answer, rst, pbx_bye"
    # Each index picks modulo the state's choices, so every list is a drivable flow.
    assert fl.parse("ws", [s.text() for s in fl.build("ws", [(7, 3), (200, 9), (13, 1)]).steps])


def test_the_shrinker_reaches_the_plainest_4140_flow():
    """From whatever flow first disconnects and then gets the PBX's BYE, to the report's three steps."""
    from hypothesis import find
    found = find(fl.flows(), lambda f: any(
        a.name == "rst" and b.name == "pbx_bye" for a, b in zip(f.steps, f.steps[1:])),
        settings=settings(max_examples=3000, derandomize=True, database=None))
    assert found.text() == "ws: invite:answer, rst, pbx_bye"


# -- issue 22's vocabulary: TCP and UDP clients, drop, reconnect, st_expire, message_ood

@pytest.mark.parametrize("transport, steps, message", [
    ("udp", ["invite:answer", "rst", "pbx_bye"], "step 'rst' cannot be taken over udp (step 2)"),
    ("udp", ["invite:answer", "fin", "pbx_bye"], "step 'fin' cannot be taken over udp (step 2)"),
    ("udp", ["invite:answer", "reconnect", "pbx_bye"], "step 'reconnect' cannot be taken over udp"),
    ("tcp", ["invite:answer", "close", "pbx_bye"], "step 'close' cannot be taken over tcp (step 2)"),
    ("ws", ["invite:answer", "rst", "st_expire"], "step 'st_expire' needs a call placed with invite_se"),
    ("ws", ["invite:answer", "rst", "reconnect"], "step 'reconnect' cannot come in state 'gone'"),
    ("ws", ["invite:answer", "message_ood"], "step 'message_ood' cannot come in state 'confirmed'"),
])
def test_what_a_transport_or_a_call_cannot_do_is_refused_in_one_line(transport, steps, message):
    with pytest.raises(UsageError) as exc:
        fl.parse(transport, steps)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_the_new_steps_move_the_call_as_the_client_sees_it():
    assert fl.parse("udp", ["invite:answer", "drop", "pbx_bye"]).states() == ["idle", "confirmed", "gone", "ended"]
    assert fl.parse("tcp", ["invite:answer", "rst", "pbx_bye"]).states() == ["idle", "confirmed", "gone", "ended"]
    assert fl.parse("ws", ["invite:answer", "reconnect", "pbx_bye"]).states() == ["idle", "confirmed",
                                                                                  "confirmed", "ended"]
    assert fl.parse("udp", ["message_ood"]).states() == ["idle", "idle"]
    f = fl.parse("wss", ["invite_se:answer", "rst", "st_expire"])
    assert f.states()[-1] == "ended" and not f.connected
    assert "[gone     ] PBX st_expire" in f.ladder()
    assert "net reconnect" in fl.parse("tcp", ["invite:answer", "reconnect", "bye"]).ladder()


def test_steps_for_is_the_state_machine_the_transport_and_what_came_before():
    plain, se = [fl.Step("invite", "answer")], [fl.Step("invite_se", "answer")]
    udp = set(fl.steps_for("udp", "confirmed", plain))
    assert {"drop", "pbx_bye", "bye", "reinvite"} <= udp and not udp & {"rst", "fin", "close", "reconnect"}
    tcp = set(fl.steps_for("tcp", "confirmed", plain))
    assert {"rst", "fin", "drop", "reconnect"} <= tcp and "close" not in tcp
    assert "st_expire" not in fl.steps_for("ws", "confirmed", plain)
    assert "st_expire" in fl.steps_for("ws", "confirmed", se)
    assert fl.steps_for("ws", "gone", se + [fl.Step("rst")]) == ["pbx_bye", "pause", "st_expire"]
    assert "message_ood" in fl.steps_for("udp", "idle") and "message_ood" not in fl.steps_for("udp", "early")
    # What steps_for offers is what parse accepts.
    for transport in fl.TRANSPORTS:
        for name in fl.steps_for(transport, "confirmed", se):
            arg = ":answer" if name.startswith("invite") else ""
            fl.parse(transport, ["invite_se:answer", name + arg])


def test_st_expire_is_drawn_only_when_named():
    assert "st_expire" not in fl.default_steps() and "st_expire" in fl.OPT_IN
    from hypothesis import find
    # Named, the generator reaches it, and only after invite_se (parse checks it).
    found = find(fl.flows(steps=["invite", "invite_se", "rst", "st_expire", "pbx_bye"], answers=["answer"]),
                 lambda f: any(s.name == "st_expire" for s in f.steps),
                 settings=settings(max_examples=2000, derandomize=True, database=None))
    fl.parse(found.transport, [s.text() for s in found.steps])
    names = [s.name for s in found.steps]
    assert names[0] == "invite_se" and names[-1] == "st_expire" and len(names) <= 3, names


@settings(max_examples=200, deadline=None)
@given(fl.flows())
def test_the_default_vocabulary_never_waits_for_a_session_timer(f):
    assert all(s.name not in fl.OPT_IN for s in f.steps)


@settings(max_examples=200, deadline=None)
@given(fl.flows(transports=("udp",), steps=["invite", "invite_se", "st_expire", "rst", "fin", "close", "drop",
                                             "reconnect", "pbx_bye", "bye", "message_ood", "pause"]))
def test_a_udp_flow_has_no_connection_to_lose_or_take_over(f):
    assert not {s.name for s in f.steps} & fl.NOT_ON["udp"]
    fl.parse("udp", [s.text() for s in f.steps])


def test_an_out_of_dialog_request_alone_is_a_vocabulary():
    assert fl.check_vocabulary(["message_ood"])[0] == ("message_ood",)


def test_drop_without_root_is_left_out_by_default_and_refused_by_name(monkeypatch):
    monkeypatch.setattr(fl.netdrop, "available", lambda: "dropping packets needs root (iptables)")
    assert "drop" not in fl.default_steps() and "rst" in fl.default_steps()
    with pytest.raises(UsageError) as exc:
        fl.check_vocabulary(["invite", "drop", "pbx_bye"])
    assert "step 'drop' cannot run here: dropping packets needs root" in str(exc.value)
