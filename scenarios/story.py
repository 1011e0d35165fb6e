"""What the stories share: the interface the harness relies on, and the parts
several ladders use (the run record, starting Kamailio with a variant, the
one-request UDP ladder, Kamailio's replies as Asterisk received them).

A story is a module registered in the `kamleak.scenarios` entry-point group
(kamleak.harness.registry); `Story` says what such a module offers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from kamleak.harness.errors import NotApplicable, ScenarioError, ServerError, UsageError
from kamleak.harness.judging import oracle
from kamleak.harness.judging.verdict import Reply, TransactionVerdict, Verdict, classify_reason
from kamleak.harness.probes import pbx_trace
from kamleak.harness.sip.message import SipParseError
from kamleak.harness.sip.udp import UdpClient
from kamleak.harness.stack.kamailio import Kamailio, TmTimers
from kamleak.harness.wait import WaitTimeout, poll


class Variant(Protocol):
    """A config variant: its name on the command line and the defines it sets."""

    @property
    def name(self) -> str: ...

    @property
    def defines(self) -> tuple[str, ...]: ...


class Story(Protocol):
    """What `kamleak check/bisect --scenario`, the plugin and the gate tests use."""

    ISSUE: int | None               # upstream issue (or PR) number; None: no report
    TITLE: str
    DEFAULT_VARIANT: str
    USER_CONFIG: bool               # runs on the user's own kamailio.cfg

    def parse_variant(self, name: str) -> Variant: ...

    def expected(self, build, variant: Variant) -> str:
        """"leak", "clean", "n/a" (Kamailio refuses the variant) or "unknown"."""

    def start_kamailio(self, kamailio_factory, variant: Variant) -> Kamailio: ...

    def gate(self, stack, variant: Variant, *, transport: str = ..., disconnect: str = ...,
             target: str = "") -> Verdict:
        """One run on a `kamleak.harness.stack.runner.Stack`."""


# ---------------------------------------------------------------------------
# Variants

@dataclass(frozen=True)
class FlaggedVariant:
    """A variant of BASE plus one `+FLAG` part of another story, which adds DEFINE.

    Other attributes (trigger, reply, delayed_reply_off, ...) are the base
    variant's, so the base story's start_kamailio() and run() take it as it is.
    """

    base: object
    flagged: bool = False
    BASE: ClassVar[type]
    FLAG: ClassVar[str] = ""
    DEFINE: ClassVar[str] = ""

    @classmethod
    def parse(cls, name: str) -> FlaggedVariant:
        parts = [p.strip() for p in name.split("+")]
        rest = "+".join(p for p in parts if p != cls.FLAG)
        if not rest:
            raise UsageError(f"variant '{name}' names no trigger", f"use e.g. {cls.BASE().name}")
        try:
            return cls(cls.BASE.parse(rest), cls.FLAG in parts)
        except UsageError as exc:
            raise UsageError(f"unknown variant '{name}': {exc.cause}",
                             f"{exc.fix}; add +{cls.FLAG} for {cls.DEFINE}") from None

    @property
    def name(self) -> str:
        return self.base.name + (f"+{self.FLAG}" if self.flagged else "")

    @property
    def defines(self) -> tuple[str, ...]:
        return self.base.defines + ((self.DEFINE,) if self.flagged else ())

    def __getattr__(self, attr):
        if attr == "base" or attr.startswith("__"):     # not set yet (copy, pickle)
            raise AttributeError(attr)
        return getattr(self.base, attr)


def start_kamailio(kamailio_factory, variant, timers: TmTimers | None = None,
                   extra_defines: tuple[str, ...] = ()) -> Kamailio:
    """Start Kamailio with VARIANT's defines.  A variant that needs a feature a
    build may lack (its `features`: knowledge.FIXES keys) and that Kamailio
    refuses is NotApplicable, not an error."""
    try:
        return kamailio_factory(defines=variant.defines + tuple(extra_defines), timers=timers)
    except ServerError as exc:
        text = str(exc)
        if any(k in text for k in ("Can't set module parameter", "unknown command")) and \
                getattr(variant, "features", ()):
            raise NotApplicable(f"Kamailio refused variant {variant.name}: {exc.cause}") from None
        raise


# ---------------------------------------------------------------------------
# The run record of the ladders with a PBX

@dataclass
class Run:
    """One run's clock, step marks and RPC snapshots."""

    kamailio: Kamailio
    pbx: object
    t0: float = field(default_factory=time.monotonic)
    t0_epoch: float = field(default_factory=time.time)
    timeline: list = field(default_factory=list)
    snapshots: dict = field(default_factory=dict)
    stats_before: dict = field(default_factory=dict)
    pbx_log_start: int = 0
    settled_at: float = 0.0
    settled: dict = field(default_factory=dict)     # counters.tm_and_shm once tm.stats settled

    def mark(self, label: str) -> None:
        self.timeline.append((round(time.monotonic() - self.t0, 3), label))


def bye_replies(pbx, log_start: int, call_id: str, timeout: float) -> list[Reply]:
    """Kamailio's final replies to Asterisk's BYE, from Asterisk's log since
    LOG_START (waits up to TIMEOUT for one; none: []).  `Reply.at` is on
    Asterisk's clock, from the BYE it sent to each reply it received."""
    def found():
        return pbx_trace.final_replies(pbx_trace.parse_pjsip_log(pbx.log()[log_start:]), call_id)

    try:
        finals = poll(found, timeout=timeout, what="Kamailio's reply to the BYE in Asterisk's log")
    except WaitTimeout:
        return []
    return [Reply(code=f.code, reason=f.reason, at=f.at, stateless=classify_reason(f.reason))
            for f in finals]


# ---------------------------------------------------------------------------
# The ladder of the UDP stories: one request, Kamailio's replies, the cell watched.
#
#     client (UDP)               Kamailio
#       REQUEST -->                 the config's trigger, then t_relay() fails
#       <-- final reply(ies)        (ACKed when the request is an INVITE)
#                                   [watch the cell until its tm lifetime + margin]
#
# Pre-condition: `tm.stats` before; post-condition: `tm.stats` settled, and
# `created - freed` must account for exactly the cells left behind.

def run_single_request(*, kamailio: Kamailio, variant, method: str, target: str = "",
                       body: str = "hello", content_type: str = "text/plain",
                       timeout: float = 10.0) -> TransactionVerdict:
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

    watch = oracle.watch_cell(kamailio, timers, stats_before, call_id, method, deadline=deadline,
                              started=sent)
    if watch.orphan is not None:
        timeline.append((round(at_sent + watch.orphan.at, 3), f"{method} cell orphaned ({watch.orphan.rule})"))
    if watch.gone_after is not None:
        timeline.append((round(at_sent + watch.gone_after, 3), f"{method} cell gone"))
    stats_after, note = oracle.post_condition(rpc, stats_before, watch.cells, method, timers,
                                              deadline=deadline)
    if kamailio.death():
        raise ScenarioError(f"Kamailio died during the scenario: {kamailio.death()}",
                            "see the Kamailio log")
    return TransactionVerdict(
        leaked=bool(watch.cells), method=method, call_id=call_id, cells=watch.cells,
        replies=replies, watched_for=watch.watched_for, deadline=deadline,
        gone_after=watch.gone_after, seen=watch.seen, stats_before=stats_before,
        stats_after=stats_after, stats_consistent=True, stats_note=note,
        timers=timers.as_dict(method), target=target, kamailio_version=kamailio.version or "",
        build_id=kamailio.build_id(), variant=variant.name, transport="udp",
        timeline=sorted(timeline), samples=watch.samples, started_at=t0_epoch,
        snapshots={"tm.stats before": stats_before, "tm.stats after": stats_after,
                   "tm.list at verdict": [c.raw for c in watch.cells]},
        **oracle.early_fields(watch))


def own_config_gate(start: Callable, run: Callable) -> Callable:
    """The gate() of a story that needs the harness's own config and no PBX:
    START(kamailio_factory, variant), then RUN(kamailio=, variant=, target=)."""
    def gate(bench, variant, *, transport: str = "udp", disconnect: str = "",
             target: str = "") -> Verdict:
        """One run on a `kamleak.harness.stack.runner.Stack` (transport and disconnect do not apply)."""
        return run(kamailio=start(bench.kamailio, variant), variant=variant, target=target)
    return gate
