"""explore's steps of issue 22, each driven for real through Debian's Kamailio to Asterisk:
clients over plain TCP and UDP, `drop` (a silent vanish), `reconnect` (the alias
takeover), `st_expire` (Asterisk's session timer ends the call) and `message_ood`.

One batch per build, all flows at once on one Kamailio with a local-request trigger
(uac_req_send) and WITH_RELAY_NOCONNECT, each judged by its own Call-IDs: where
6.0.1 leaks (the 4140 mechanism over TCP, after a takeover, and issue 4919's
MESSAGE over UDP) 6.1.5 frees the cell; the other flows leave nothing on either.
"""

from __future__ import annotations

import pytest

from kamleak.harness.judging import oracle
from kamleak.harness.stack import netdrop
from kamleak.harness.stack.targets import Target
from kamleak.harness.tools.explore import flow as fl
from kamleak.harness.tools.explore.run import run_batch

pytestmark = [pytest.mark.kamailio, pytest.mark.asterisk]

DEFINES = ("WITH_TRIGGER_UAC_REQ_SEND", "WITH_RELAY_NOCONNECT")
LEAK, CLEAN = True, False

# flow -> {build: (leaks?, what each step got)}; a build missing from a row does not run it.
FLOWS = {
    # Plain calls over the new transports: the PBX's BYE reaches the live client.
    "tcp: invite:answer, bye": {"6.0.1": (CLEAN, ["200", "200"]), "6.1.5": (CLEAN, ["200", "200"])},
    "udp: invite:answer, pbx_bye": {"6.0.1": (CLEAN, ["200", "200"]), "6.1.5": (CLEAN, ["200", "200"])},
    # 4140 over plain TCP: the client's RST, then the PBX's BYE Kamailio cannot send
    # (connect refused; the trigger makes sl_reply_error's 500 on both, 6.1.5 frees the cell).
    "tcp: invite:answer, rst, pbx_bye": {"6.0.1": (LEAK, ["200", "gone", "500"]),
                                         "6.1.5": (CLEAN, ["200", "gone", "500"])},
    # The silent client: Kamailio's BYE is never answered, tm times it out (408).
    "udp: invite:answer, drop, pbx_bye": {"6.1.5": (CLEAN, ["200", "silent", "408"])},
    "ws: invite:answer, drop, pbx_bye": {"6.1.5": (CLEAN, ["200", "silent", "408"])},
    # The takeover: 6.0.1 loses the live client (500, and the trigger leaks the BYE); 6.1.5 delivers.
    "ws: invite:answer, reconnect, pbx_bye": {"6.0.1": (LEAK, ["200", "taken over", "500"]),
                                              "6.1.5": (CLEAN, ["200", "taken over", "200"])},
    "tcp: invite:answer, reconnect, pbx_bye": {"6.1.5": (CLEAN, ["200", "taken over", "200"])},
    # Issue 4919: an out-of-dialog MESSAGE over UDP relayed nowhere after a local request.
    "udp: message_ood": {"6.0.1": (LEAK, ["500"]), "6.1.5": (CLEAN, ["500"])},
    "ws: message_ood": {"6.1.5": (CLEAN, ["403"])},          # kamleak's config: not from WebSocket
    # Asterisk's session timer ends the call: to a dead client (the report's ladder), to a live one.
    "ws: invite_se:answer, rst, st_expire": {"6.0.1": (LEAK, ["200", "gone", "500"])},
    "udp: invite_se:answer, st_expire": {"6.0.1": (CLEAN, ["200", "200"])},
}


def _flows(version: str) -> list[fl.Flow]:
    out = []
    for text, builds in FLOWS.items():
        transport, _, steps = text.partition(": ")
        if version in builds and ("drop" not in steps or netdrop.available() is None):
            out.append(fl.parse(transport, steps.split(", ")))
    return out


@pytest.mark.parametrize("kamailio_target", [Target("version", v) for v in ("6.0.1", "6.1.5")],
                         ids=["debian-6.0.1", "debian-6.1.5"], indirect=True)
def test_each_new_step_drives_and_is_judged_as_the_build_behaves(kamailio_factory, pbx, kamailio_target):
    version = kamailio_target.ref
    kamailio = kamailio_factory(defines=DEFINES)
    timers = oracle.read_timers(kamailio.rpc, kamailio.config, kamailio.version)
    judged = run_batch(kamailio, pbx, _flows(version), timers)
    got = {j.run.flow.text(): (j.leaked, j.run.steps) for j in judged}
    want = {text: builds[version] for text, builds in FLOWS.items() if text in got}
    assert got == want
    for j in judged:
        assert j.run.error is None, (j.run.flow.text(), j.run.error)
        # The client's own port, what ws.dump and tm.list's evidence name it by.
        assert len(j.run.ports) == 1 and 1024 < j.run.ports[0] < 65536, j.run.ports
    if version == "6.1.5":
        # Every flow's cells are gone, over every transport.
        ours = set().union(*(j.run.call_ids for j in judged))
        assert not [c for c in kamailio.rpc.tm_list() if c.callid in ours]
