"""Reading Kamailio's replies out of Asterisk's res_pjsip_logger output."""
from __future__ import annotations

from kamleak.harness.judging.verdict import Reply, classify_reason
from kamleak.harness.probes.pbx_trace import parse_pjsip_log, requests_sent, responses_to, stamp_seconds

LOG = """\
[2026-11-23 21:40:52.980] VERBOSE[64][C-00000001] pbx.c: Spawn extension (kamleak, 83762883, 1) exited non-zero
[2026-11-23 21:40:52.980] VERBOSE[52] res_pjsip_logger.c: <--- Transmitting SIP request (534 bytes) to UDP:127.0.0.1:30179 --->
BYE sip:kamleak@e23e.invalid;transport=ws;ob;alias=127.0.0.1~47846~5 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:31246;rport;branch=z9hG4bKPjbda4
From: <sip:83762883@127.0.0.1>;tag=14e0
To: <sip:kamleak@127.0.0.1>;tag=b2ed
Call-ID: b2d5afc02efc
CSeq: 5641 BYE
Route: <sip:127.0.0.1:30179;lr;r2=on>
Route: <sip:127.0.0.1:31066;transport=ws;lr;r2=on>
Content-Length:  0


[2026-11-23 21:40:52.984] VERBOSE[57] res_pjsip_logger.c: <--- Received SIP response (410 bytes) from UDP:127.0.0.1:30179 --->
SIP/2.0 500 I'm terribly sorry, server error occurred (1/SL)
Via: SIP/2.0/UDP 127.0.0.1:31246;rport=31246;branch=z9hG4bKPjbda4;received=127.0.0.1
From: <sip:83762883@127.0.0.1>;tag=14e0
To: <sip:kamleak@127.0.0.1>;tag=b2ed
Call-ID: b2d5afc02efc
CSeq: 5641 BYE
Server: kamailio (5.6.3 (x86_64/linux))
Content-Length: 0


[2026-11-23 21:40:52.986] VERBOSE[57] res_pjsip_logger.c: <--- Received SIP response (410 bytes) from UDP:127.0.0.1:30179 --->
SIP/2.0 500 I'm terribly sorry, server error occurred (2/TM)
Via: SIP/2.0/UDP 127.0.0.1:31246;rport=31246;branch=z9hG4bKPjbda4;received=127.0.0.1
From: <sip:83762883@127.0.0.1>;tag=14e0
To: <sip:kamleak@127.0.0.1>;tag=b2ed
Call-ID: b2d5afc02efc
CSeq: 5641 BYE
Content-Length: 0


"""


def test_messages_in_order_with_direction_and_peer():
    msgs = parse_pjsip_log(LOG)
    assert [m.direction for m in msgs] == ["out", "in", "in"]
    assert msgs[0].message.method == "BYE" and msgs[0].peer == "127.0.0.1:30179"
    assert len(msgs[0].message.headers("Route")) == 2


def test_replies_to_the_bye_and_their_timing():
    msgs = parse_pjsip_log(LOG)
    replies = responses_to(msgs, "b2d5afc02efc", "BYE")
    assert [r.message.status for r in replies] == [500, 500]
    sent = requests_sent(msgs, "b2d5afc02efc", "BYE")[0]
    assert round(stamp_seconds(replies[0].stamp) - stamp_seconds(sent.stamp), 3) == 0.004
    assert responses_to(msgs, "other-call", "BYE") == []


def test_stateless_or_stateful_from_kamailios_mark():
    assert classify_reason("I'm terribly sorry, server error occurred (1/SL)") is True
    assert classify_reason("I'm terribly sorry, server error occurred (2/TM)") is False
    assert classify_reason("Request Timeout") is None
    r = Reply(500, "I'm terribly sorry, server error occurred (1/SL)", 0.004, True)
    assert r.describe() == "500 (1/SL) statelessly"
    assert Reply(408, "Request Timeout", 3.0, None).describe() == "408 Request Timeout"
