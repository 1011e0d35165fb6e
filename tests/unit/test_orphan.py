"""The orphan proof's rules, fed with tm.list / tm.stats answers as Kamailio gave them.

The sequences below are the shapes measured on Debian 6.0.1 (kamleak check,
tm.stats and tm.list read every 50 ms): the leaking BYE cell idle beside the
trigger's MESSAGE on the wait timer, then alone; the mitigated BYE on the
wait timer (current 1, waiting 1).  Real runs are held to the same rules by
tests/gate (assert_early) and tests/gate/test_early_verdict.py.
"""

from __future__ import annotations

import pytest

from kamleak.harness.errors import ScenarioError
from kamleak.harness.judging import oracle, orphan
from kamleak.harness.knowledge import Provenance
from kamleak.harness.probes.rpc import TmCell


def cell(method="BYE", outgoings=0, ref_count=1, tflags=0, ptr="0x7f33de9906d0", label=7,
         callid="c1") -> TmCell:
    return TmCell.from_fields({"cell": ptr, "tindex": 1, "tlabel": label, "method": method,
                               "callid": f"Call-ID: {callid}\r\n", "cseq": "CSeq: 2",
                               "tflags": tflags, "outgoings": outgoings, "ref_count": ref_count})


class Answers:
    """tm.stats and tm.list answers in the order Kamailio gave them."""

    def __init__(self, stats: list[dict], lists: list[list[TmCell]]):
        self.stats, self.lists = list(stats), list(lists)

    def tm_stats(self):
        return self.stats.pop(0) if len(self.stats) > 1 else self.stats[0]

    def tm_list(self):
        return self.lists.pop(0) if len(self.lists) > 1 else self.lists[0]


BASE = {"current": 0, "waiting": 0}
DEBIAN = Provenance.debian("6.0.1")


def prover(rpc, *, baseline=BASE, wt_ms=1000, log=None, **kw) -> orphan.Prover:
    return orphan.Prover(rpc, wt_ms=wt_ms, baseline=baseline,
                         applicable=orphan.applicability(DEBIAN, baseline=baseline, **kw), log=log)


def test_idle_is_no_branch_no_holder_no_reply_timer():
    assert orphan.idle(cell())
    assert not orphan.idle(cell(method="INVITE"))          # its reply may be retransmitted
    assert not orphan.idle(cell(outgoings=1))              # a branch and its timers
    assert not orphan.idle(cell(ref_count=2))              # a process holds it
    assert not orphan.idle(cell(tflags=orphan.T_ASYNC_SUSPENDED))
    assert not orphan.idle(cell(tflags=orphan.T_IN_AGONY))
    assert "outgoings 1" in orphan.why_not_idle(cell(outgoings=1))


def test_count_proves_the_lone_idle_cell_off_the_wait_timer():
    bye = cell()
    rpc = Answers([{"current": 1, "waiting": 0}], [[bye]])
    proof = prover(rpc).observe(1.04, [bye], [bye])
    assert proof is not None and proof.rule == "count" and proof.cell == bye.cell
    assert "current-waiting +1" in proof.evidence


def test_count_waits_while_another_cell_may_be_the_unwaited_one():
    bye, message = cell(), cell(method="MESSAGE", outgoings=1, ptr="0x2", label=9)
    rpc = Answers([{"current": 2, "waiting": 1}], [[bye, message]])
    assert prover(rpc).observe(0.8, [bye, message], [bye]) is None


def test_a_cell_on_the_wait_timer_is_never_proven():
    bye = cell(tflags=orphan.T_ADMIN_REPLY)      # send_reply_error(): a stateful reply, on wait
    rpc = Answers([{"current": 1, "waiting": 1}], [[bye]])
    p = prover(rpc)
    assert p.observe(0.1, [bye], [bye]) is None
    assert p.observe(0.9, [bye], [bye]) is None   # it leaves at ~1.0 s; the time proof needs 1.75 s


def test_count_needs_two_equal_reads_and_current_matching_them():
    bye, other = cell(), cell(method="OPTIONS", ptr="0x3", label=3)
    moved = Answers([{"current": 1, "waiting": 0}], [[bye, other]])
    assert prover(moved).observe(1.0, [bye], [bye]) is None
    counted = Answers([{"current": 2, "waiting": 1}], [[bye]])
    assert prover(counted).observe(1.0, [bye], [bye]) is None


def test_a_tm_deletion_without_the_wait_timer_disables_the_count():
    bye = cell()
    rpc = Answers([{"current": 1, "waiting": 0}], [[bye]])
    log = (" 0(12) ERROR: tm [uac.c:552]: t_uac_prepare(): Error while building message\n")
    p = prover(rpc, log=lambda: log)
    assert p.observe(1.0, [bye], [bye]) is None
    assert p.applicable.count and "uac.c" in p.applicable.count and p.notes
    proof = p.observe(2.8, [bye], [bye])               # idle since 1.0: the time proof decides
    assert proof is not None and proof.rule == "time"


def test_time_proof_needs_the_cell_idle_without_a_break():
    bye, busy = cell(), cell(ref_count=2)
    p = prover(Answers([{"current": 1, "waiting": 1}], [[bye]]))   # the count never decides here
    assert orphan.time_needed(1000) == pytest.approx(1.75)
    assert p.observe(0.10, [bye], [bye]) is None
    assert p.observe(1.00, [busy], [busy]) is None                  # a process took it: restart
    assert p.observe(1.10, [bye], [bye]) is None
    assert p.observe(2.80, [bye], [bye]) is None                    # 1.70 s idle
    proof = p.observe(2.90, [bye], [bye])
    assert proof is not None and proof.rule == "time" and "idle for 1.8 s" in proof.evidence


def test_what_is_decisive_where():
    unknown = orphan.applicability(Provenance.unknown("the image ghcr.io/kamailio/kamailio:5.8.5"))
    assert not unknown.decisive and "waiting out the bound" in unknown.fallback
    assert "ghcr.io/kamailio/kamailio:5.8.5" in unknown.fallback
    route = orphan.applicability(DEBIAN, local_request_route=True)
    assert route.decisive and route.time is None and "tm:local-request" in route.count
    busy = orphan.applicability(DEBIAN, baseline={"current": 3, "waiting": 3})
    assert busy.count and "not empty" in busy.count
    upstream = orphan.applicability(Provenance.upstream("bd0aaf89b8", "/tmp/repo"))
    assert upstream.time is None and upstream.count is None


def test_confirm_turns_a_proof_the_bound_contradicts_into_an_error():
    bye = cell()
    lists = [[bye]] * 3 + [[]]          # ... and then the cell leaves: the proof was wrong
    rpc = Answers([{"current": 1, "waiting": 0}], lists)
    p = prover(rpc)
    with pytest.raises(ScenarioError, match="early verdict and the bound disagree"):
        oracle.watch_transaction(rpc, "c1", "BYE", deadline=5.0, started=_now(), interval=0.01,
                                 prover=p, confirm=True)


def test_without_confirm_the_watch_ends_at_the_proof():
    bye = cell()
    rpc = Answers([{"current": 1, "waiting": 0}], [[bye]])
    w = oracle.watch_transaction(rpc, "c1", "BYE", deadline=5.0, started=_now(), interval=0.01,
                                 prover=prover(rpc), confirm=False)
    assert w.orphan is not None and w.cells == [bye] and not w.confirmed
    assert w.watched_for < 5.0 and "was not waited out" in w.early


def test_confirm_waits_out_the_bound_and_says_they_agree():
    bye = cell()
    rpc = Answers([{"current": 1, "waiting": 0}], [[bye]])
    w = oracle.watch_transaction(rpc, "c1", "BYE", deadline=0.3, started=_now(), interval=0.01,
                                 prover=prover(rpc), confirm=True)
    assert w.orphan is not None and w.confirmed and w.watched_for >= 0.3
    assert "waited out too and agrees" in w.early


def test_an_invite_falls_back_to_the_bound_and_says_why():
    invite = cell(method="INVITE")
    rpc = Answers([{"current": 1, "waiting": 0}], [[invite]])
    w = oracle.watch_transaction(rpc, "c1", "INVITE", deadline=0.2, started=_now(), interval=0.01,
                                 prover=prover(rpc), confirm=False)
    assert w.orphan is None and w.cells and "an INVITE" in w.early


def _now() -> float:
    import time
    return time.monotonic()


def test_life_proves_a_branch_held_cell_past_its_end_of_life():
    """The 477 path (advertise): the failed branch keeps outgoings 1, with no timer."""
    bye = cell(outgoings=1)
    rpc = Answers([{"current": 1, "waiting": 0}], [[bye]])
    p = orphan.Prover(rpc, wt_ms=1000, baseline=BASE, max_noninv_ms=3000,
                      applicable=orphan.applicability(DEBIAN, baseline=BASE))
    assert p.observe(0.05, [bye], [bye]) is None
    assert p.observe(4.20, [bye], [bye]) is None          # 3000 ms x1.25 + 0.5 s = 4.25 s
    proof = p.observe(4.30, [bye], [bye])
    assert proof is not None and proof.rule == "life" and "end of life" in proof.evidence
    on_wait = Answers([{"current": 1, "waiting": 1}], [[bye]])
    p = orphan.Prover(on_wait, wt_ms=1000, baseline=BASE, max_noninv_ms=3000,
                      applicable=orphan.applicability(DEBIAN, baseline=BASE))
    assert p.observe(0.05, [bye], [bye]) is None and p.observe(9.0, [bye], [bye]) is None
    moved = orphan.applicability(DEBIAN, baseline=BASE, sets_lifetime=True)
    assert moved.life and "t_set_max_lifetime" in moved.life and moved.count is None
