"""The ladder the UDP scenarios share: one request, Kamailio's replies, the cell watched.

    client (UDP)               Kamailio
      REQUEST -->                 the config's trigger, then t_relay() fails
      <-- final reply(ies)        (ACKed when the request is an INVITE)
                                  [watch the cell until its tm lifetime + margin]

Pre-condition: `tm.stats` before; post-condition: `tm.stats` settled, and
`created - freed` must account for exactly the cells left behind.
"""

from __future__ import annotations

import time

from kamleak.harness.judging import oracle
from kamleak.harness.errors import ScenarioError
from kamleak.harness.stack.kamailio import Kamailio
from kamleak.harness.sip.message import SipParseError
from kamleak.harness.sip.udp import UdpClient
from kamleak.harness.judging.verdict import Reply, Verdict, classify_reason


def run_single_request(*, kamailio: Kamailio, variant, method: str, target: str = "",
                       body: str = "hello", content_type: str = "text/plain",
                       timeout: float = 10.0) -> Verdict:
    rpc = kamailio.rpc
    t0, t0_epoch = time.monotonic(), time.time()
    stats_before = rpc.tm_stats()
    timers = oracle.read_timers(rpc, kamailio.config, kamailio.version)
    deadline = timers.deadline_for(method)
    port = kamailio.config.udp_port

    with UdpClient() as client:
        request = client.build(method, f"sip:gone@127.0.0.1:{port}", body=body,
                               content_type=content_type)
        try:
            finals = client.request(request, ("127.0.0.1", port), timeout=timeout)
        except SipParseError as exc:
            raise ScenarioError(f"Kamailio's reply does not parse: {exc}") from None
        sent, call_id = client.sent_at, client.call_id
    if not finals:
        raise ScenarioError(f"Kamailio never answered the {method} within {timeout:.0f} s",
                            "see the Kamailio log")
    at_sent = round(sent - t0, 3)
    timeline = [(at_sent, f"{method} sent over UDP")]
    replies = []
    for r in finals:
        replies.append(Reply(r.message.status, r.message.reason, r.at,
                             classify_reason(r.message.reason)))
        timeline.append((round(at_sent + r.at, 3), f"Kamailio replies {r.message.status}"))

    watch = oracle.watch_transaction(rpc, call_id, method, deadline=deadline, started=sent,
                                     alive=kamailio.death, appear_within=deadline)
    if watch.gone_after is not None:
        timeline.append((round(at_sent + watch.gone_after, 3), f"{method} cell gone"))
    stats_after, note = oracle.post_condition(rpc, stats_before, watch.cells, method, timers,
                                              deadline=deadline)
    if kamailio.death():
        raise ScenarioError(f"Kamailio died during the scenario: {kamailio.death()}",
                            "see the Kamailio log")
    return Verdict(
        leaked=bool(watch.cells), method=method, call_id=call_id, cells=watch.cells,
        replies=replies, watched_for=watch.watched_for, deadline=deadline,
        gone_after=watch.gone_after, seen=watch.seen, stats_before=stats_before,
        stats_after=stats_after, stats_consistent=True, stats_note=note,
        timers=timers.as_dict(method), target=target, kamailio_version=kamailio.version or "",
        build_id=kamailio.build_id(), variant=variant.name, transport="udp",
        timeline=sorted(timeline), samples=watch.samples, started_at=t0_epoch,
        snapshots={"tm.stats before": stats_before, "tm.stats after": stats_after,
                   "tm.list at verdict": [c.raw for c in watch.cells]})
