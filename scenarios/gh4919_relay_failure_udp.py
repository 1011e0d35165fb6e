"""Kamailio issue 4919: t_relay() fails after a local request, over plain UDP.

The report (2026): a BYE arrives over UDP; while handling it the config
replicates an htable entry over DMQ (a KDMQ request: a local tm request);
then the request is relayed to a TCP destination with
`set_forward_no_connect()` and no connection exists, so `t_relay()` fails
and `sl_reply_error()` answers.  The transaction stays in `tm.list` for
good.  No WebSocket, no PBX: the same kill-reason mechanism as issue 4140
(REQ_FWDED from the local request turns REQ_ERR_DELAYED 16 into 17, the
stateless reply is sent and nobody releases the cell), reached from another
door (cf. also issue 1554).

The ladder, with a plain UDP client of the harness's own:

    client (UDP)                 Kamailio
      MESSAGE (out of dialog) -->          the trigger: a local request
                                           $du = tcp destination, no connection
                                           set_forward_no_connect(); t_relay() fails
      <-- 477 (…/SL)                       [watch the cell until fr+wt+margin]

Observed: where it leaks, Kamailio answers one stateless "500 (1/SL)" and
the cell keeps `outgoings 1` (the branch was built; only sending failed),
`ref_count 1`.  Without a trigger the reply is a stateful "477 (477/TM)";
5.6.3 sends a stateless 500 first, 6.1.5 with a trigger also both.

The triggers and reply styles are the issue-4140 ones (uac_req_send,
t_uac_send; sl_reply_error, send_reply_error, t_reply_error,
delayed_reply_off), and so are the expectations: a leak needs a trigger and
the stateless reply and a tm without bd0aaf89b8's t_unref() change
(kamleak.harness.knowledge).  pua_dialoginfo is no trigger here: there is
no dialog.
"""

from __future__ import annotations

from kamleak.harness.errors import UsageError
from kamleak.harness.judging.verdict import TransactionVerdict
from kamleak.harness.stack.kamailio import Kamailio
from kamleak.scenarios import story, triggers
from kamleak.scenarios.story import run_single_request

ISSUE = 4919
TITLE = "relay failure over UDP after a local request stays in tm.list"
EXTRA_DEFINES = ("WITH_RELAY_NOCONNECT",)
TRIGGERS = ("none", "uac_req_send", "t_uac_send")
DEFAULT_VARIANT = "uac_req_send"
METHOD = "MESSAGE"

Variant = triggers.Variant


def parse_variant(name: str) -> Variant:
    v = Variant.parse(name)
    if v.trigger not in TRIGGERS:
        raise UsageError(f"trigger '{v.trigger}' does not apply to issue {ISSUE} (no dialog here)",
                         f"use one of {', '.join(TRIGGERS)}")
    return v


def expected(build, variant: Variant) -> str:
    """Same mechanism, same expectations as issue 4140 (see its module): from
    kamleak.harness.knowledge, so for upstream builds too."""
    return triggers.expected(build, variant)


def start_kamailio(kamailio_factory, variant: Variant) -> Kamailio:
    return story.start_kamailio(kamailio_factory, variant, extra_defines=EXTRA_DEFINES)


def run(*, kamailio: Kamailio, variant: Variant, target: str = "", timeout: float = 10.0) -> TransactionVerdict:
    """Send one out-of-dialog MESSAGE over UDP and return the oracle's verdict."""
    return run_single_request(kamailio=kamailio, variant=variant, method=METHOD, target=target,
                              timeout=timeout)


USER_CONFIG = False     # needs the harness's own config (its defines build the story)

gate = story.own_config_gate(start_kamailio, run)
