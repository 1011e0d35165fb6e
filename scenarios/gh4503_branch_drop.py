"""Kamailio issue 4503: `drop` in branch_route after a local request leaks the INVITE.

The report (2025, "Potential SHM memory leak in drop;?"): a proxy drops
branches in a `branch_route` (a policy check) and loads pua_dialoginfo.
Transactions pile up in shared memory for good: `outgoings 0`,
`ref_count 1`, no timer running; only `tm.clean` frees them.  The fix
(PR 4644, 2026) names the cause: pua_dialoginfo calls `t_request()`
inline while the INVITE is handled (the dialog is created and "Trying" is
published), which marks the worker's kill reason with REQ_FWDED (1).  Then:

* path A, the stock `if (!t_relay()) sl_reply_error();`: `t_relay()`
  fails (its only branch was dropped) and adds REQ_ERR_DELAYED (16): 17,
  not exactly 16, so `t_unref()` neither sends the delayed reply nor frees
  the cell; `sl_reply_error()` answers statelessly;
* path B, internal replies disabled (`t_set_disable_internal_reply(1)`):
  REQ_ERR_DELAYED is never set; the kill reason stays 1 and no check in
  `t_unref()` matches it either.

The issue-4140 mechanism, reached through `drop` instead of a dead
connection.  The ladder, with the harness's UDP client:

    client (UDP)                 Kamailio
      INVITE -->                   dlg_manage(): pua_dialoginfo PUBLISHes "Trying"
                                   (or uac_req_send()/t_uac_send(): a MESSAGE)
                                   t_relay() -> branch_route: drop;  t_relay() fails
      <-- 500 (…/SL) / ACK -->     [watch the INVITE cell until max_inv_lifetime+fr+wt+margin]

Expectations (what the project's tests assert on the Debian builds) are in
`expected()`; they were measured, then found to follow the 4140 rule.
"""

from __future__ import annotations

from kamleak.harness.judging.verdict import TransactionVerdict
from kamleak.harness.stack.kamailio import Kamailio, TmTimers
from kamleak.scenarios import story, triggers
from kamleak.scenarios.story import run_single_request

ISSUE = 4503
TITLE = "an INVITE whose branch is dropped in branch_route stays in tm.list"
EXTRA_DEFINES = ("WITH_BRANCH_DROP",)
NO_INTERNAL_REPLY = "no_internal_reply"
DEFAULT_VARIANT = "pua_dialoginfo"
METHOD = "INVITE"
# Short INVITE timers: the oracle's deadline for an INVITE is
# max_inv_lifetime + fr_timer (the negative reply awaiting its ACK) + wt_timer
# (kamleak.harness.judging.oracle.Timers.lifetime_ms): 7 s here, 10.75 s with the margin.
TIMERS = TmTimers(fr_timer=3000, fr_inv_timer=3000, wt_timer=1000, max_inv_lifetime=3000)



class Variant(story.FlaggedVariant):
    """An issue-4140 variant, plus `+no_internal_reply` for path B."""

    BASE = triggers.Variant
    FLAG = NO_INTERNAL_REPLY
    DEFINE = "WITH_NO_INTERNAL_REPLY"

    @property
    def no_internal_reply(self) -> bool:
        return self.flagged


def parse_variant(name: str) -> Variant:
    return Variant.parse(name)


def expected(build, variant: Variant) -> str:
    """"leak", "clean", "n/a" or "unknown": the issue-4140 rule, from kamleak.harness.knowledge.

    Measured (tests/gate/test_gh4503_branch_drop.py): the issue-4140 rule,
    for path A and path B alike.  A trigger (pua_dialoginfo, uac_req_send,
    t_uac_send) plus a stateless error reply leaks on 5.6.3 and 6.0.1 with
    one "500 (1/SL)"; the dialog module alone, or no trigger, does not
    (5.6.3 then sends 500 (1/SL) and 500 (6/TM), 6.0.1 only the stateful
    one).  send_reply_error()/t_reply_error() are clean, also with internal
    replies disabled.  Debian's 6.1.5 drops the orphaned cell in t_unref(),
    on both paths, before upstream's fix for 4503 (PR 4644) was needed.
    Upstream, that fix is bd0aaf89b8 (knowledge key t_unref_orphans, master
    only): knowledge answers it from git for source builds.
    """
    return triggers.expected(build, variant.base)


def start_kamailio(kamailio_factory, variant: Variant) -> Kamailio:
    return story.start_kamailio(kamailio_factory, variant, timers=TIMERS,
                                extra_defines=EXTRA_DEFINES)


def run(*, kamailio: Kamailio, variant: Variant, target: str = "", timeout: float = 10.0) -> TransactionVerdict:
    """Send one INVITE over UDP whose branch the config drops; return the verdict."""
    return run_single_request(kamailio=kamailio, variant=variant, method=METHOD, target=target,
                              body=_SDP, content_type="application/sdp", timeout=timeout)


_SDP = ("v=0\r\no=kamleak 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


USER_CONFIG = False     # needs the harness's own config (its defines build the story)

gate = story.own_config_gate(start_kamailio, run)
