"""How a verdict reads: the one-line sentence CI logs and JUnit carry."""

from __future__ import annotations

from kamleak.harness.judging.verdict import Reply, TransactionVerdict


def _verdict(replies, leaked=False):
    return TransactionVerdict(leaked=leaked, method="BYE", call_id="abc", cells=[], replies=replies,
                   watched_for=1.0, deadline=7.0, gone_after=1.0, seen=True, stats_before={},
                   stats_after={}, stats_consistent=True, stats_note="", timers={})


def test_an_error_reply_is_kamailios():
    text = _verdict([Reply(500, "Message processing error (2/TM)", 0.0, False)]).sentence()
    assert "Kamailio replied 500 (2/TM) statefully" in text


def test_a_2xx_is_the_client_answering_through_kamailio():
    text = _verdict([Reply(200, "OK", 0.0, None)]).sentence()
    assert "delivered: the client answered 200 OK" in text and "Kamailio replied" not in text


def test_no_reply_is_said():
    assert "no reply from Kamailio was seen" in _verdict([]).sentence()
