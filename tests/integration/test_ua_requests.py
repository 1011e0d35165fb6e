"""The UA's REGISTER, UPDATE and CANCEL through kamleak's Kamailio config to Asterisk.

What the real stack answers, asserted as it is: kamleak's config has no
registrar (a REGISTER is not an INVITE from a WebSocket client: 403), relays
in-dialog UPDATEs (loose_route), and relays a CANCEL that matches its INVITE's
transaction (t_check_trans).  Every test leaves Kamailio without transactions
and Asterisk without channels.
"""

from __future__ import annotations

import random

import pytest

from kamleak.harness.stack import asterisk
from kamleak.harness.wait import poll

pytestmark = [pytest.mark.kamailio, pytest.mark.asterisk]


def _ext(prefix: str = "") -> str:
    return prefix + str(random.randrange(10_000_000, 99_999_999))


def _drained(kamailio, *, stateful: bool = True):
    """Kamailio holds no transaction, and freed all it created (STATEFUL: some)."""
    def check():
        stats = kamailio.rpc.tm_stats()
        return stats if stats["current"] == 0 and not kamailio.rpc.tm_list() else None

    stats = poll(check, timeout=15, what="Kamailio's transactions draining")
    assert stats["created"] == stats["freed"]
    if stateful:
        assert stats["created"] > 0


def _no_channels(pbx):
    poll(lambda: pbx.channels() == [] or None, timeout=10, what="Asterisk's channels gone")


def test_register_through_kamleak_config(kamailio_factory, pbx, ua_factory):
    kamailio = kamailio_factory()
    ua = ua_factory(kamailio.url("ws"))
    resp = ua.register("sip:alice@127.0.0.1", expires=600, timeout=10)
    assert resp.status >= 200, resp.summary()
    assert resp.cseq == (1, "REGISTER") and resp.call_id == ua.registration.call_id
    if resp.status == 200:
        again = ua.register("sip:alice@127.0.0.1", expires=600, timeout=10)
        assert again.status == 200 and again.cseq == (2, "REGISTER")
        gone = ua.unregister(timeout=10)
        assert gone.status == 200 and gone.cseq == (3, "REGISTER")
    else:
        # kamleak's config: only INVITEs from WebSocket clients go anywhere.
        assert resp.status == 403, resp.summary()
    _drained(kamailio, stateful=resp.status == 200)   # sl_send_reply's 403 makes no transaction


def test_update_refresh_in_call_answered_by_asterisk(kamailio_factory, pbx, ua_factory):
    kamailio = kamailio_factory()
    ua = ua_factory(kamailio.url("ws"))
    ext = _ext()
    try:
        dialog = ua.invite(f"sip:{ext}@127.0.0.1", session_expires=1800, min_se=90, refresher="uac", timeout=15)
        assert dialog.state == "confirmed" and len(dialog.route_set) == 2
        resp = dialog.update(session_expires=1800, timeout=15)
        assert resp.status == 200, resp.summary()
        assert resp.cseq == (2, "UPDATE")
        assert resp.header("Session-Expires"), "Asterisk runs session timers over UPDATE (RFC 4028 7.4)"
        with_sdp = dialog.update(session_expires=1800, with_sdp=True, timeout=15)
        assert with_sdp.status == 200, with_sdp.summary()
        info = dialog.request("OPTIONS", timeout=15)
        assert info.status >= 200
        bye = dialog.bye(timeout=15)
        assert bye.status == 200 and dialog.state == "terminated"
        _drained(kamailio)
        _no_channels(pbx)
    finally:
        pbx.cli("channel request hangup all")


@pytest.mark.parametrize("require_provisional", [True, False], ids=["after-100", "race"])
def test_cancel_of_an_answered_extension(kamailio_factory, pbx, ua_factory, require_provisional):
    """Asterisk answers a normal extension at once: the CANCEL races the 200.
    Either the 487 comes, or the 200 wins and the UA ACKs and BYEs it."""
    kamailio = kamailio_factory()
    ua = ua_factory(kamailio.url("ws"))
    ext = _ext()
    try:
        pending = ua.invite_start(f"sip:{ext}@127.0.0.1")
        cancel = pending.cancel(timeout=15, require_provisional=require_provisional)
        final = pending.wait_final(timeout=15)
        if cancel is None:
            assert require_provisional and final.status == 200   # the 200 came before any 1xx we took
            assert pending.dialog.bye().status == 200
        else:
            assert cancel.status == 200, cancel.summary()
            assert final.status in (200, 487), final.summary()
            if final.status == 200:
                assert pending.bye_response.status == 200 and pending.dialog.state == "terminated"
            else:
                assert pending.dialog is None
        _drained(kamailio)
        _no_channels(pbx)
    finally:
        pbx.cli("channel request hangup all")


def test_cancel_after_180_of_noanswer(kamailio_factory, pbx, ua_factory):
    ext = _ext(asterisk.NOANSWER)
    if "Ringing" not in pbx.cli(f"dialplan show {ext}@kamleak"):
        pytest.skip("Asterisk's dialplan has no noanswer<digits> extension (rebuild: kamleak setup)")
    kamailio = kamailio_factory()
    ua = ua_factory(kamailio.url("ws"))
    try:
        pending = ua.invite_start(f"sip:{ext}@127.0.0.1")
        ringing = pending.wait_provisional(180, timeout=15)
        assert ringing.to_tag and pending.early
        cancel = pending.cancel(timeout=15)
        assert cancel.status == 200, cancel.summary()
        final = pending.wait_final(timeout=15)
        assert final.status == 487, final.summary()
        assert all(d.state == "terminated" for d in pending.early.values())
        _drained(kamailio)
        _no_channels(pbx)
    finally:
        pbx.cli("channel request hangup all")
