"""How a verdict reads: the one-line sentence CI logs and JUnit carry, and the
early verdict's lines and side-by-side rows `kamleak repro` prints."""

from __future__ import annotations

from kamleak.harness.judging.verdict import Reply, TransactionVerdict
from kamleak.harness.probes.rpc import TmCell
from kamleak.harness.reporting import text


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


# --- the early verdict: when the orphan was proven, and the bound -----------------------

PROOF = {"at": 1.0048, "rule": "count", "cell": "0x7f1ebf82fd80",
         "evidence": "outgoings 0, ref_count 1, not on the wait timer: tm.stats current-waiting +1 "
                     "since the call began = the 1 cell(s) tm.list holds"}


def _cell() -> TmCell:
    return TmCell(cell="0x7f1ebf82fd80", tindex=1, tlabel=2, method="BYE", from_="", to="",
                  callid="abc", cseq="5707 BYE", uas_request="yes", tflags=0, outgoings=0,
                  ref_count=1, lifetime=0, raw={})


def _leak(orphan=PROOF, confirmed=False, watched_for=1.01, early=""):
    return TransactionVerdict(
        leaked=True, method="BYE", call_id="abc", cells=[_cell()],
        replies=[Reply(500, "Server error (1/SL)", 0.007, True)], watched_for=watched_for,
        deadline=7.0, gone_after=None, seen=True, stats_before={"current": 0},
        stats_after={"current": 1}, stats_consistent=True, stats_note="", timers={},
        orphan=orphan, early=early, confirmed=confirmed)


def test_early_lines_say_when_how_and_that_the_bound_was_not_waited_out():
    lines = text.early_lines(_leak())
    assert lines[0] == "orphan proven 1.0 s after the BYE (count):"
    assert lines[1] == "  " + PROOF["evidence"]
    assert lines[2] == "bound 7.0 s not waited out: the proof ended the watch"


def test_early_lines_with_confirm_say_the_bound_was_waited_out_and_agrees():
    lines = text.early_lines(_leak(confirmed=True, watched_for=7.02))
    assert lines[0].startswith("orphan proven 1.0 s after the BYE (count)")
    assert lines[-1] == "bound 7.0 s waited out too: the cell was still there, the two agree"


def test_early_lines_without_a_proof_say_why_the_bound_was_waited_out():
    why = "no early verdict for kamailio:local: waiting out the bound"
    assert text.early_lines(_leak(orphan=None, watched_for=7.02, early=why)) == [
        f"bound 7.0 s waited out: {why}"]
    assert text.early_lines(_leak(orphan=None, watched_for=7.02)) == [
        "bound 7.0 s waited out: not proven orphaned"]


def test_a_clean_verdict_has_no_early_lines():
    assert text.early_lines(_verdict([])) == []


def test_side_by_side_shows_the_orphan_and_the_bound_aligned():
    lines = text.side_by_side("as deployed", _leak(), "mitigated", _verdict([]))
    row = next(ln for ln in lines if ln.lstrip().startswith("BYE transaction"))
    assert "orphaned 1.0 s after the BYE (bound 7.0 s)" in row and row.endswith("gone after 1.0 s")
    decided = next(ln for ln in lines if ln.lstrip().startswith("decided by"))
    assert "orphan proof (count)" in decided and decided.endswith("cell left tm.list")
    # the right column starts at one place on every row
    starts = {ln.rindex(word) for ln, word in zip(lines, ["mitigated", "-", "gone", "0 → 0", "+0",
                                                          "cell left", "CLEAN"])}
    assert len(starts) == 1, lines


def test_side_by_side_names_a_bound_waited_out():
    confirmed = text.side_by_side("a", _leak(confirmed=True, watched_for=7.02), "b", _verdict([]))
    assert any("orphaned 1.0 s after the BYE (bound 7.0 s waited out)" in ln for ln in confirmed)
    assert any("orphan proof (count), bound agrees" in ln for ln in confirmed)
    plain = text.side_by_side("a", _leak(orphan=None, watched_for=7.02), "b", _verdict([]))
    assert any("still in tm.list after 7.0 s (bound 7.0 s)" in ln for ln in plain)
    assert any("bound waited out" in ln for ln in plain)
