"""Kamailio issue 4140: a BYE towards a WebSocket client that is gone leaks its transaction.

The report (5.8.5): a WebRTC client on WebSocket calls through Kamailio to an
Asterisk PBX with session timers.  The client's connection dies.  Asterisk
hangs up and sends BYE; Kamailio cannot reach the client ("TCP/TLS connection
for WebSocket could not be found"), answers with a stateless error, and the
BYE transaction stays in `tm.list` for good: shared memory leaks per call.

Why (tm): on a forwarding error `t_relay()` sets the kill reason
REQ_ERR_DELAYED (16) and expects the error reply at the end of the script;
tm sends that delayed reply and releases the cell only if the kill reason is
*exactly* 16.  If anything in the same worker created a local tm request
while the BYE was handled (uac_req_send(), t_uac_send(), pua_dialoginfo
publishing "terminated"), the kill reason also carries REQ_FWDED (1): 17.
Then sl_reply_error() replies statelessly and nobody ever releases the cell
(outgoings 0, ref_count 1).  A textbook config, without such a trigger,
does not leak.

The ladder this module drives, with real Asterisk and real Kamailio:

    UA (WS/WSS)            Kamailio               Asterisk
      INVITE + Session-Expires -->   INVITE -->
      <-- 200                       <-- 200
      ACK -->                        ACK -->
      re-INVITE (refresh) -->        re-INVITE -->
      <-- 200 / ACK -->              ...
      RST (connection dies)
                   [wait until ws.dump no longer lists it]
                                     <-- BYE        (Asterisk hangs up)
                            500 (1/SL) -->          (the client is gone)
                   [watch the BYE cell in tm.list until max_noninv_lifetime+wt+margin]

Variants are Kamailio defines; the expectations below are what the
project's own tests assert for the versions the harness builds.
"""

from __future__ import annotations

import random
import time

from kamleak.harness import progress
from kamleak.harness.errors import ScenarioError, UsageError
from kamleak.harness.judging import oracle
from kamleak.harness.judging.verdict import TransactionVerdict
from kamleak.harness.probes import counters, pbx_trace, ws_connections
from kamleak.harness.probes.sampler import StatsSampler
from kamleak.harness.sip import UAError
from kamleak.harness.stack.kamailio import Kamailio, TmTimers
from kamleak.harness.wait import WaitTimeout, poll
from kamleak.scenarios import story
from kamleak.scenarios.story import Run

# 4140's variants, and which builds leak with which, are the shared trigger rules.
from kamleak.scenarios.triggers import TRIGGERS as TRIGGERS
from kamleak.scenarios.triggers import Variant as Variant
from kamleak.scenarios.triggers import applicable as applicable
from kamleak.scenarios.triggers import expected as expected

ISSUE = 4140
TITLE = "BYE to a closed WebSocket connection stays in tm.list"

DEFAULT_VARIANT = "pua_dialoginfo"  # the realistic trigger, stock reply style
DISCONNECTS = ("rst", "fin", "close", "rst+advertise")
# Modes that also shape Kamailio's config (start_kamailio(extra_defines=...)).
# "rst+advertise": the report's failure (README, "Disconnect modes"): WS/WSS
# listen sockets with `advertise`, so via_builder() writes the socket's proto
# and skips the connection lookup (core/msg_translator.c:2960 at 5.8.5); the
# send's lookup then fails (core/forward.h:217) -> E_SEND, and with the stock
# `if (!t_relay()) sl_reply_error();` the reply is 477 (477/SL).
DISCONNECT_DEFINES = {"rst+advertise": ("WITH_LISTEN_ADVERTISE", "WITH_STOCK_RELAY")}
# Who ends the call: the harness on Asterisk's CLI (fast), or Asterisk's own
# session timer once the dead client stops refreshing (the report: ~1 min).
HANGUPS = ("command", "session-timer")
SESSION_TIMER_SE = 90          # Session-Expires = Min-SE: Asterisk's floor


def disconnect_defines(disconnect: str) -> tuple[str, ...]:
    return DISCONNECT_DEFINES.get(disconnect, ())


# ---------------------------------------------------------------------------

def new_extension() -> str:
    return str(random.randrange(10_000_000, 99_999_999))


def start_kamailio(kamailio_factory, variant: Variant, timers: TmTimers | None = None,
                   extra_defines: tuple[str, ...] = ()) -> Kamailio:
    """Start Kamailio with the variant; a refused variant-only feature is N/A."""
    return story.start_kamailio(kamailio_factory, variant, timers, extra_defines)


def run(*, kamailio: Kamailio, pbx, ua_factory, transport: str, variant: Variant,
        disconnect: str = "rst", target: str = "", cut=None, ua_options: dict | None = None,
        hangup: str = "command", call_timeout: float = 15.0,
        verdict_within: float | None = None) -> TransactionVerdict:
    """Drive the issue-4140 ladder once and return the oracle's verdict.  CALL_TIMEOUT: how
    long the INVITE and the re-INVITE may wait for their final response; VERDICT_WITHIN: how
    long after the BYE a verdict may take before the run ends without one (None: the
    timers' bound).  A reduce probe gives up on both sooner than a gate."""
    if cut is None and disconnect not in DISCONNECTS:
        raise UsageError(f"unknown disconnect mode '{disconnect}'", f"use one of {', '.join(DISCONNECTS)}")
    if hangup not in HANGUPS:
        raise UsageError(f"unknown hangup '{hangup}'", f"use one of {', '.join(HANGUPS)}")
    r = Run(kamailio, pbx)
    # Pre-condition: snapshot Kamailio's counters; sample them all along.
    r.stats_before = kamailio.rpc.tm_stats()
    r.snapshots.update({"core.version": kamailio.version, "tm.stats before": r.stats_before,
                        "core.shmmem before": kamailio.rpc.shmmem()})
    r.pbx_log_start = len(pbx.log())
    sampler = StatsSampler(kamailio.rpc, r.t0).start()
    try:
        verdict = _ladder(r, ua_factory, transport, variant, disconnect, target, cut=cut,
                          ua_options=ua_options, hangup=hangup, call_timeout=call_timeout,
                          verdict_within=verdict_within)
    finally:
        samples = sampler.stop()
    # Close the series with the counters read once tm.stats had settled.
    if r.settled:
        samples.append({"t": round(r.settled_at - r.t0, 3), **r.settled})
    verdict.stats_samples = samples
    return verdict


def _ladder(r: Run, ua_factory, transport, variant, disconnect, target, *,
            cut=None, ua_options: dict | None = None, hangup: str = "command",
            call_timeout: float = 15.0, verdict_within: float | None = None) -> TransactionVerdict:
    """The ladder; CUT(r, ua, ua_factory, transport) replaces step 2 for stories
    in which the client stays connected (a 200 to the BYE is then a verdict)."""
    kamailio, pbx, rpc = r.kamailio, r.pbx, r.kamailio.rpc
    t0, timeline, mark, snapshots = r.t0, r.timeline, r.mark, r.snapshots

    # 1. The call: INVITE with session timers, then the refreshing re-INVITE.
    ext = new_extension()
    user_config = kamailio.config.user_config
    if user_config is not None and user_config.pbx_by_registrar:
        _register_at_pbx(r, ext)
    try:
        ua = ua_factory(kamailio.url(transport), **(ua_options or {}))
        mark("INVITE")
        # A session-timer hangup needs a session Asterisk ends soon: 90 s.
        se = SESSION_TIMER_SE if hangup == "session-timer" else 1800
        dialog = ua.invite(f"sip:{ext}@127.0.0.1", session_expires=se, min_se=90,
                           refresher="uac", timeout=call_timeout)
        call_id = dialog.call_id
        mark("200 OK + ACK")
        mark("re-INVITE")
        resp = dialog.reinvite(session_expires=se, timeout=call_timeout)
    except UAError as exc:
        raise ScenarioError(f"the call could not be set up: {exc}",
                            "see the SIP trace and the Kamailio log") from None
    if resp.status != 200:
        raise ScenarioError(f"re-INVITE answered {resp.status} {resp.reason}", "see the SIP trace")
    mark("re-INVITE 200 OK + ACK")

    # 2. The client's connection dies; wait until Kamailio has really dropped it.
    if cut is not None:
        cut(r, ua, ua_factory, transport)
    else:
        _disconnect(r, ua, disconnect)

    # 3. Asterisk hangs up: its BYE must cross Kamailio towards the dead client.
    timers = oracle.read_timers(rpc, kamailio.config, kamailio.version)
    deadline = timers.deadline_for("BYE")
    if hangup == "session-timer":
        # Nobody refreshes now: Asterisk's timer ends the session and sends the BYE.
        bye_sent = _await_timer_bye(r, call_id, se)
        mark("BYE (Asterisk's session timer expired)")
    else:
        pbx.hangup(ext)
        bye_sent = time.monotonic()
        mark("BYE (Asterisk hangs up)")

    # 4. The oracle: watch the BYE transaction until it is gone or the deadline.
    watch_until = deadline if verdict_within is None else min(deadline, verdict_within)
    watch = oracle.watch_cell(kamailio, timers, r.stats_before, call_id, "BYE", deadline=deadline,
                              started=bye_sent, until=watch_until,
                              tick=progress.countdown("watching the BYE cell", watch_until))
    if watch_until < deadline and watch.orphan is None and (watch.cells or not watch.seen):
        # Cut short, the watch proves nothing: neither a leak (the bound was not waited out)
        # nor clean (the cell is still there, or has not come).
        raise ScenarioError(f"no verdict within {watch_until:.1f} s of the BYE (the BYE cell "
                            f"{'still in tm.list, not proven orphaned' if watch.seen else 'never seen'})",
                            "a reduce probe gives up there; kamleak gate waits out the bound")
    at_bye = bye_sent - t0
    if watch.first_seen is not None:
        timeline.append((round(at_bye + watch.first_seen, 3), "BYE cell in tm.list"))
    if watch.orphan is not None:
        timeline.append((round(at_bye + watch.orphan.at, 3), f"BYE cell orphaned ({watch.orphan.rule})"))
    if watch.gone_after is not None:
        timeline.append((round(at_bye + watch.gone_after, 3), "BYE cell gone"))
    elif watch.orphan is None or watch.confirmed:
        mark("deadline: BYE cell still there" if watch.seen else "watch ended")

    # Kamailio's replies, as Asterisk received them (evidence, not timing).
    replies = story.bye_replies(pbx, r.pbx_log_start, call_id, timeout=2.0 if watch.seen else deadline)
    for reply in replies:
        timeline.append((round(at_bye + reply.at, 3), f"Kamailio replies {reply.code} to the BYE"))
    timeline.sort()

    if not watch.seen and not replies:
        raise ScenarioError("Asterisk's BYE never reached Kamailio (no BYE cell, no reply)",
                            "see the Asterisk log")
    if cut is None and any(reply.code == 200 for reply in replies):
        raise ScenarioError("the BYE was answered 200: a live client got it, the disconnect "
                            "did not happen", "see the SIP trace")

    leaked = bool(watch.cells)
    snapshots["tm.list at verdict"] = [c.raw for c in watch.cells]
    within = None if verdict_within is None else max(1.0, verdict_within - (time.monotonic() - bye_sent))
    stats_after, note = oracle.post_condition(rpc, r.stats_before, watch.cells, "BYE", timers,
                                              deadline=deadline, within=within)
    r.settled_at = time.monotonic()
    snapshots["tm.stats after"] = stats_after
    snapshots["core.shmmem after"] = rpc.shmmem()
    r.settled = counters.tm_and_shm(rpc)
    if kamailio.death():
        raise ScenarioError(f"Kamailio died during the scenario: {kamailio.death()}",
                            "see the Kamailio log")
    return TransactionVerdict(
        leaked=leaked, method="BYE", call_id=call_id, cells=watch.cells, replies=replies,
        watched_for=watch.watched_for, deadline=deadline, gone_after=watch.gone_after,
        seen=watch.seen, stats_before=r.stats_before, stats_after=stats_after,
        stats_consistent=True, stats_note=note, timers=timers.as_dict("BYE"),
        target=target, kamailio_version=kamailio.version or "", build_id=kamailio.build_id(),
        variant=variant.name,
        transport=transport, timeline=timeline, samples=watch.samples, started_at=r.t0_epoch,
        snapshots=snapshots, **oracle.early_fields(watch))


def _register_at_pbx(r: Run, ext: str) -> None:
    """A user config that routes calls through its registrar: the extension registers first."""
    from kamleak.harness.stack.kamailio.user_config import register_at_pbx

    r.mark(f"REGISTER {register_at_pbx(r.kamailio, r.pbx.address, ext)} -> PBX")


def _await_timer_bye(r: Run, call_id: str, session_expires: int) -> float:
    """Wait for the BYE Asterisk's session timer sends; returns when it was seen.

    RFC 4028 10: the side that does not refresh ends the session before it
    expires (Asterisk: about 2/3 of Session-Expires after the last refresh).
    """
    def bye():
        msgs = pbx_trace.parse_pjsip_log(r.pbx.log()[r.pbx_log_start:])
        return pbx_trace.requests_sent(msgs, call_id, "BYE") or None

    try:
        poll(bye, timeout=session_expires + 15, interval=0.2,
             what="Asterisk's session-timer BYE", abort=r.pbx.death)
    except WaitTimeout:
        raise ScenarioError(f"Asterisk sent no BYE within {session_expires + 15} s of the last "
                            "refresh", "check the endpoint's timers in docker/asterisk/pjsip.conf.in") from None
    return time.monotonic()


def _disconnect(r: Run, ua, disconnect: str) -> None:
    kamailio, rpc = r.kamailio, r.kamailio.rpc
    local_port = int(ua.local_addr.rsplit(":", 1)[1])
    r.snapshots["ws.dump before disconnect"] = rpc.ws_dump()
    ua.disconnect(disconnect.partition("+")[0])
    r.mark(f"disconnect ({disconnect})")
    try:
        ws_connections.wait_gone(rpc, local_port, abort=kamailio.death)
    except WaitTimeout:
        raise ScenarioError(f"Kamailio still lists the WebSocket connection from port {local_port} "
                            f"after the {disconnect} disconnect",
                            "the disconnect did not take effect") from None
    r.mark("ws.dump: connection gone")
    r.snapshots["ws.dump after disconnect"] = rpc.ws_dump()


# ---------------------------------------------------------------------------
# The uniform entry points `kamleak check/bisect --scenario` use.

USER_CONFIG = True      # runs on the user's own kamailio.cfg (the README's contract)


def parse_variant(name: str) -> Variant:
    return Variant.parse(name)


def gate(bench, variant: Variant, *, transport: str = "ws", disconnect: str = "rst",
         target: str = "", **ladder) -> TransactionVerdict:
    """One run on a `kamleak.harness.stack.runner.Stack`; LADDER: run()'s cut, ua_options and hangup."""
    kam = start_kamailio(bench.kamailio, variant, extra_defines=disconnect_defines(disconnect))
    return run(kamailio=kam, pbx=bench.pbx, ua_factory=bench.ua, transport=transport,
               variant=variant, disconnect=disconnect, target=target, **ladder)
