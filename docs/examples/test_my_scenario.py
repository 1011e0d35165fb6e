"""Your own scenario on kamleak's fixtures (README: "Write your own scenario").

Runs from any directory once kamleak is installed in the environment
(`pip install kamleak` or `pip install -e <checkout>`): the pytest plugin
is found through its entry point and brings the options
(`--kamailio-version`, `--kamailio-image`, `--kamailio-bin`,
`--kamailio-config`, `--transport`), the fixtures and the markers.

    pytest test_my_scenario.py --kamailio-version 6.1.5 --transport ws

The story: a WebSocket client calls through Kamailio to Asterisk, the
*client* hangs up, and Kamailio sends itself a MESSAGE while it handles
that BYE (the harness config's WITH_TRIGGER_UAC_REQ_SEND).  Afterwards no
transaction may be left in tm.list.
"""

from __future__ import annotations

import random

import pytest

from kamleak.harness.wait import poll

pytestmark = [pytest.mark.kamailio, pytest.mark.asterisk]


def test_client_hangup_with_a_local_request_leaves_nothing(kamailio_factory, pbx, ua_factory,
                                                           transport):
    # kamailio_factory(defines=..., timers=...): a fresh Kamailio on loopback
    # ports of its own, routing calls to the session's Asterisk (`pbx`).
    kamailio = kamailio_factory(defines=("WITH_TRIGGER_UAC_REQ_SEND",))
    # ua_factory(url): a connected SIP-over-WebSocket client, closed at teardown.
    ua = ua_factory(kamailio.url(transport))

    ext = str(random.randrange(10_000_000, 99_999_999))
    dialog = ua.invite(f"sip:{ext}@127.0.0.1", timeout=15)
    assert dialog.state == "confirmed", f"call to Asterisk at {pbx.address} failed"

    reply = dialog.bye(timeout=15)
    assert reply.status == 200

    # Every transaction drains within the tm timers (poll with a deadline, no sleep).
    def drained():
        stats = kamailio.rpc.tm_stats()
        return stats if stats["current"] == 0 and not kamailio.rpc.tm_list() else None

    stats = poll(drained, timeout=15, what="Kamailio's transactions draining")
    assert stats["created"] == stats["freed"] > 0
