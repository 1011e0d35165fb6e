"""The real stack, end to end: WS/WSS client -> Kamailio -> Asterisk and back.

For each Kamailio target and transport: a call with session timers, a
refreshing re-INVITE, Asterisk hanging up, the BYE reaching the client
through Kamailio and answered 200; afterwards Kamailio holds no transaction
(`tm.list` empty, `tm.stats` created == freed).
"""

from __future__ import annotations

import random

import pytest

from kamleak.harness.wait import poll

pytestmark = [pytest.mark.kamailio, pytest.mark.asterisk]


def test_call_with_session_timers_and_pbx_hangup(kamailio, pbx, ua_factory, transport):
    ua = ua_factory(kamailio.url(transport))
    ext = str(random.randrange(10_000_000, 99_999_999))

    dialog = ua.invite(f"sip:{ext}@127.0.0.1", session_expires=1800, min_se=90,
                       refresher="uac", timeout=15)
    assert dialog.state == "confirmed"
    assert len(dialog.route_set) == 2, "Kamailio must double Record-Route between WS and UDP"

    refreshed = dialog.reinvite(session_expires=1800, timeout=15)
    assert refreshed.status == 200
    assert refreshed.header("Session-Expires"), "Asterisk runs session timers (RFC 4028)"

    pbx.hangup(ext)
    bye = ua.wait_for_request("BYE", timeout=15)
    assert bye.call_id == dialog.call_id
    assert dialog.state == "terminated"
    ours = [e for e in ua.trace if e.direction == "out" and not e.message.is_request]
    assert ours and ours[-1].message.status == 200 and ours[-1].message.cseq[1] == "BYE"

    # Every transaction of the call drains: nothing left, nothing lost.
    def drained():
        stats = kamailio.rpc.tm_stats()
        return stats if stats["current"] == 0 and not kamailio.rpc.tm_list() else None

    stats = poll(drained, timeout=15, what="Kamailio's transactions draining")
    assert stats["created"] == stats["freed"] > 0
    assert kamailio.version.startswith("kamailio ")
