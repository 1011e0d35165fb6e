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
the stateless reply before 6.1.  pua_dialoginfo is no trigger here: there is
no dialog.
"""

from __future__ import annotations

import socket
import time

from harness import oracle
from harness.errors import ScenarioError, UsageError
from harness.kamailio import Kamailio
from harness.sip.message import SipMessage, SipParseError, new_branch, new_call_id, new_tag
from harness.verdict import Reply, Verdict, classify_reason
from scenarios import gh4140_bye_to_closed_ws as gh4140

ISSUE = 4919
TITLE = "relay failure over UDP after a local request stays in tm.list"
EXTRA_DEFINES = ("WITH_RELAY_NOCONNECT",)
TRIGGERS = ("none", "uac_req_send", "t_uac_send")
DEFAULT_VARIANT = "uac_req_send"
METHOD = "MESSAGE"

Variant = gh4140.Variant
NotApplicable = gh4140.NotApplicable


def parse_variant(name: str) -> Variant:
    v = Variant.parse(name)
    if v.trigger not in TRIGGERS:
        raise UsageError(f"trigger '{v.trigger}' does not apply to issue {ISSUE} (no dialog here)",
                         f"use one of {', '.join(TRIGGERS)}")
    return v


def expected(version: str, variant: Variant) -> str:
    """Same mechanism, same expectations as issue 4140 (see its module)."""
    return gh4140.expected(version, variant)


def start_kamailio(kamailio_factory, variant: Variant) -> Kamailio:
    return gh4140.start_kamailio(kamailio_factory, variant, extra_defines=EXTRA_DEFINES)


def run(*, kamailio: Kamailio, variant: Variant, target: str = "", timeout: float = 10.0) -> Verdict:
    """Send one out-of-dialog MESSAGE over UDP and return the oracle's verdict."""
    rpc = kamailio.rpc
    t0, t0_epoch = time.monotonic(), time.time()
    timeline: list[tuple[float, str]] = []
    stats_before = rpc.tm_stats()
    timers = oracle.read_timers(rpc, kamailio.config.timers)
    deadline = timers.deadline_for(METHOD)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout)
        port = sock.getsockname()[1]
        call_id = new_call_id()
        request = (
            f"{METHOD} sip:gone@127.0.0.1:{kamailio.config.udp_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={new_branch()};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:kamleak@127.0.0.1>;tag={new_tag()}\r\n"
            "To: <sip:gone@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: 1 {METHOD}\r\n"
            "Content-Type: text/plain\r\n"
            "Content-Length: 5\r\n\r\nhello")
        sock.sendto(request.encode(), ("127.0.0.1", kamailio.config.udp_port))
        sent = time.monotonic()
        timeline.append((round(sent - t0, 3), f"{METHOD} sent over UDP"))
        replies = []
        try:
            while True:   # a final reply; 6.1 may send two: read until quiet
                data, _ = sock.recvfrom(65535)
                msg = SipMessage.parse(data)
                if msg.is_request or msg.status < 200:
                    continue
                at = round(time.monotonic() - sent, 3)
                replies.append(Reply(msg.status, msg.reason, at, classify_reason(msg.reason)))
                timeline.append((round(sent - t0 + at, 3), f"Kamailio replies {msg.status}"))
                sock.settimeout(0.5)
        except socket.timeout:
            pass
        except SipParseError as exc:
            raise ScenarioError(f"Kamailio's reply does not parse: {exc}") from None
    if not replies:
        raise ScenarioError(f"Kamailio never answered the {METHOD} within {timeout:.0f} s",
                            "see the Kamailio log")

    watch = oracle.watch_transaction(rpc, call_id, METHOD, deadline=deadline, started=sent,
                                     alive=kamailio.death, appear_within=deadline)
    if watch.gone_after is not None:
        timeline.append((round(sent - t0 + watch.gone_after, 3), f"{METHOD} cell gone"))
    stats_after, consistent, note = oracle.stats_settled(rpc, stats_before, len(watch.cells),
                                                         timeout=timers.wt_timer / 1000 * 2 + 2)
    if kamailio.death():
        raise ScenarioError(f"Kamailio died during the scenario: {kamailio.death()}",
                            "see the Kamailio log")
    return Verdict(
        leaked=bool(watch.cells), method=METHOD, call_id=call_id, cells=watch.cells,
        replies=replies, watched_for=watch.watched_for, deadline=deadline,
        gone_after=watch.gone_after, seen=watch.seen, stats_before=stats_before,
        stats_after=stats_after, stats_consistent=consistent, stats_note=note,
        timers=timers.as_dict(), target=target, kamailio_version=kamailio.version or "",
        build_id=kamailio.build_id(), variant=variant.name, transport="udp",
        timeline=sorted(timeline), samples=watch.samples, started_at=t0_epoch,
        snapshots={"tm.stats before": stats_before, "tm.stats after": stats_after,
                   "tm.list at verdict": [c.raw for c in watch.cells]})
