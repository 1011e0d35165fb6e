"""The PBX's behaviours, through the real stack: WS client -> Kamailio -> Asterisk.

The word before the digits picks what Asterisk does (docker/asterisk/etc/
extensions.conf): ring, busy, noanswer, decline; digits alone answer at once.
Each test leaves no Asterisk channel behind.
"""

from __future__ import annotations

import random
import time

import pytest

from kamleak.harness.sip import CallFailed, UATimeout
from kamleak.harness.stack import asterisk
from kamleak.harness.wait import poll

# The dialplan is Asterisk's, not Kamailio's: one Kamailio target is enough.
pytestmark = [pytest.mark.kamailio, pytest.mark.asterisk, pytest.mark.single_target]


def _digits() -> str:
    return str(random.randrange(10_000_000, 99_999_999))


def _responses(ua, call_id: str) -> list:
    """The responses the UA received for the call, in wire order."""
    return [e.message for e in ua.trace
            if e.direction == "in" and e.message is not None and not e.message.is_request
            and e.message.call_id == call_id]


def _no_channel(pbx, ext: str, timeout: float = 10.0) -> None:
    poll(lambda: not any(c.get("extension") == ext for c in pbx.channels()) or None,
         timeout=timeout, what=f"Asterisk's channel for {ext} to go")


def test_ring_then_answer(kamailio, pbx, ua_factory):
    ua = ua_factory(kamailio.url("ws"))
    ext = asterisk.RING + _digits()
    t0 = time.monotonic()
    dialog = ua.invite(f"sip:{ext}@127.0.0.1", timeout=15)
    took = time.monotonic() - t0
    try:
        assert dialog.state == "confirmed"
        codes = [r.status for r in _responses(ua, dialog.call_id)]
        assert 180 in codes and codes[-1] == 200, codes
        assert codes.index(180) < codes.index(200), codes
        assert took >= 0.9, f"answered {took:.2f} s after the INVITE: Wait(1) before Answer()"
    finally:
        pbx.hangup(ext)
    bye = ua.wait_for_request("BYE", timeout=15)
    assert bye.call_id == dialog.call_id
    _no_channel(pbx, ext)


def test_busy(kamailio, pbx, ua_factory):
    ua = ua_factory(kamailio.url("ws"))
    ext = asterisk.BUSY + _digits()
    with pytest.raises(CallFailed) as failed:
        ua.invite(f"sip:{ext}@127.0.0.1", timeout=15)
    assert failed.value.response.status == 486, failed.value.response.summary()
    codes = [r.status for r in _responses(ua, failed.value.response.call_id)]
    assert [c for c in codes if c >= 200] == [486], codes
    _no_channel(pbx, ext)


def test_decline(kamailio, pbx, ua_factory):
    ua = ua_factory(kamailio.url("ws"))
    ext = asterisk.DECLINE + _digits()
    with pytest.raises(CallFailed) as failed:
        ua.invite(f"sip:{ext}@127.0.0.1", timeout=15)
    assert failed.value.response.status == 603, failed.value.response.summary()
    _no_channel(pbx, ext)


def test_ring_no_answer(kamailio, pbx, ua_factory):
    ua = ua_factory(kamailio.url("ws"))
    ext = asterisk.NOANSWER + _digits()
    try:
        with pytest.raises(UATimeout):
            ua.invite(f"sip:{ext}@127.0.0.1", timeout=3)
        invite = next(e.message for e in ua.trace
                      if e.direction == "out" and e.message is not None
                      and e.message.method == "INVITE")
        codes = [r.status for r in _responses(ua, invite.call_id)]
        assert 180 in codes, codes
        assert all(c < 200 for c in codes), f"a final response within 3 s: {codes}"
        assert pbx.channel_for(ext, timeout=1)
    finally:
        pbx.cli("channel request hangup all")
    _no_channel(pbx, ext)
