"""The report's own failure (issue 17): its 477 path and the BYE Asterisk's session timer sends.

`--disconnect rst+advertise`: the client dies with an RST; Kamailio's WS/WSS
listen sockets carry `advertise`, so via_builder() skips the connection
lookup and the send's lookup fails instead (core/forward.h:217 at 5.8.5):
"msg_send_buffer(): TCP/TLS connection for WebSocket could not be found",
E_SEND, and with the stock `if (!t_relay()) sl_reply_error();` the reply
"477 ... (477/SL)".  README, "Disconnect modes", has the measured table.
"""

from __future__ import annotations

import pytest

from kamleak.harness.stack.netdrop import leftovers
from kamleak.scenarios import gh4140_bye_to_closed_ws as gh4140

REPORT_LINE = "msg_send_buffer(): TCP/TLS connection for WebSocket could not be found"
VIA_LINE = "TCP/TLS connection (id: 0) for WebSocket could not be found"
# Measured (python -m kamleak.scenarios.measure_disconnects, 20 runs each; README "Disconnect modes"):
# Debian's 5.6.3 looks the connection up in via_builder() despite `advertise`.
REPLY_CODE = {"src:5.8.5": 477, "debian-5.6.3": 500}


def _run(kamailio_factory, pbx, ua_factory, transport, target, variant, disconnect, hangup="command"):
    kam = gh4140.start_kamailio(kamailio_factory, variant,
                                extra_defines=gh4140.disconnect_defines(disconnect))
    verdict = gh4140.run(kamailio=kam, pbx=pbx, ua_factory=ua_factory, transport=transport,
                         variant=variant, disconnect=disconnect, target=target.id, hangup=hangup)
    return kam, verdict


def test_rst_advertise_fails_at_send_with_477(kamailio_factory, pbx, ua_factory, transport,
                                              kamailio_target, record_verdict):
    variant = gh4140.Variant.parse("uac_req_send")
    want = gh4140.expected(kamailio_target, variant)
    if want in ("unknown", "n/a"):
        pytest.skip(f"no expected verdict for {kamailio_target.id}: {want}")
    kam, verdict = _run(kamailio_factory, pbx, ua_factory, transport, kamailio_target, variant,
                        "rst+advertise")
    record_verdict(verdict)
    assert verdict.outcome == want, verdict.report()
    assert verdict.replies, verdict.report()
    code = verdict.replies[0].code
    assert code == REPLY_CODE.get(kamailio_target.id, code), verdict.report()
    log = kam.log()
    if code == 477:
        # The Via was built; the send failed, as in the report.
        assert verdict.replies[0].reason.endswith("(477/SL)"), verdict.report()
        assert REPORT_LINE in log and VIA_LINE not in log
    else:
        assert code == 500 and VIA_LINE in log, verdict.report()


@pytest.mark.single_target
def test_session_timer_hangup_reaches_kamailio_as_in_the_report(kamailio_factory, pbx, ua_factory,
                                                                kamailio_target, record_verdict):
    """Slow (~1 min): Asterisk's session timer, not a command, sends the BYE."""
    variant = gh4140.Variant.parse("uac_req_send")
    want = gh4140.expected(kamailio_target, variant)
    if want in ("unknown", "n/a"):
        pytest.skip(f"no expected verdict for {kamailio_target.id}: {want}")
    kam, verdict = _run(kamailio_factory, pbx, ua_factory, "wss", kamailio_target, variant,
                        "rst+advertise", hangup="session-timer")
    record_verdict(verdict)
    labels = [label for _, label in verdict.timeline]
    assert "BYE (Asterisk's session timer expired)" in labels, verdict.timeline
    t = dict((label, at) for at, label in verdict.timeline)
    # No refresh after the re-INVITE: RFC 4028 puts the BYE before the 90 s expiry.
    assert 30 < t["BYE (Asterisk's session timer expired)"] - t["re-INVITE 200 OK + ACK"] < 90
    assert verdict.outcome == want, verdict.report()
    code = REPLY_CODE.get(kamailio_target.id)
    assert verdict.replies and verdict.replies[0].code == (code or verdict.replies[0].code), \
        verdict.report()


def test_drop_mode_leaves_no_rule_behind(kamailio_factory):
    """`drop` (measured, not kept: the BYE times out 408) cleans its iptables rules on close()."""
    from kamleak.harness.stack.netdrop import available
    if available():
        pytest.skip(available())
    kam = kamailio_factory()
    from kamleak.harness.sip import WebSocketUA
    ua = WebSocketUA(kam.url("ws")).connect()
    ua.disconnect("drop")
    assert len(leftovers()) == 2
    ua.close()
    assert leftovers() == []
