"""Kamailio PR 3403: a local request dropped in event_route[tm:local-request] leaks its buffer.

The report (2023, on presence NOTIFYs): a config filters local requests
in `event_route[tm:local-request]` and drops some.  tm builds the request
(`build_uac_req()`, in shm), runs the event route, and on `drop` frees the
cell but not the buffer it had not attached yet.  Shared memory grows with
every dropped request; `tm.list` shows nothing, and `core.shmmem` hides a
few hundred bytes a request in its noise.  The PR was closed unmerged; the
buffer is freed on the drop path in later tm code.

So the oracle here is Kamailio's own per-site shm accounting (`mod.stats
all shm`, see `kamleak.harness.probes.memstats`), compared around batches of requests:

    client (UDP)                 Kamailio
      MESSAGE -->                  t_uac_send() / uac_req_send(): a local MESSAGE
                                   event_route[tm:local-request]: drop;
      <-- 202 (…)                  [tm settles; snapshot mod.stats shm]
      … × 40 requests, × 3 batches a site that grew in every batch leaks

Variants: the trigger (`t_uac_send`, `uac_req_send`), with `+drop` for the
report's filter; without it the local request goes out and is answered
(the clean control on every version).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kamleak.harness import knowledge
from kamleak.harness.errors import ScenarioError, UsageError
from kamleak.harness.judging import oracle
from kamleak.harness.judging.verdict import MemoryVerdict
from kamleak.harness.reporting.plot import PlotHints
from kamleak.harness.sip.udp import UdpClient
from kamleak.harness.stack.kamailio import Kamailio
from kamleak.scenarios import story, triggers

ISSUE = 3403          # a pull request: the report is its description
TITLE = "a local request dropped in event_route[tm:local-request] leaks shm"
TRIGGERS = ("t_uac_send", "uac_req_send")
DEFAULT_VARIANT = "t_uac_send+drop"
METHOD = "MESSAGE"
# Three batches: allocations made once per process (tmx's pre-transaction slot
# on a worker's first request) can land in two batches when a worker gets its
# first request late, never in three: only two UDP workers handle these.
REQUESTS, BATCHES = 40, 3
# The plot's shm panel is tm's (all its sites) at each snapshot.
PLOT_HINTS = PlotHints(shm_label="tm shm (KiB)")



@dataclass(frozen=True)
class Variant:
    trigger: str = "t_uac_send"
    drop: bool = True

    @classmethod
    def parse(cls, name: str) -> Variant:
        parts = [p.strip() for p in name.split("+") if p.strip()]
        if not parts or parts[0] not in TRIGGERS or any(p != "drop" for p in parts[1:]):
            raise UsageError(f"unknown variant '{name}' for PR {ISSUE}",
                             f"use one of {', '.join(TRIGGERS)}, optionally with +drop")
        return cls(parts[0], "drop" in parts[1:])

    @property
    def name(self) -> str:
        return self.trigger + ("+drop" if self.drop else "")

    @property
    def defines(self) -> tuple[str, ...]:
        d = triggers.TRIGGERS[self.trigger] + ("WITH_LOCAL_REQUEST_ROUTE",)
        return d + (("WITH_LOCAL_REQUEST_DROP",) if self.drop else ())


def parse_variant(name: str) -> Variant:
    return Variant.parse(name)


def expected(build, variant: Variant) -> str:
    """A dropped request's buffer (~220-480 B a request at tm's build_uac_req) is
    lost without PR 3403's fix (ee06666c43, upstream 6.0.0; fc54fdcd67 on 5.8,
    5.8.2): kamleak.harness.knowledge says which builds have it (Debian's 5.6.3 lacks
    it, 6.0.1 and 6.1.5 free the buffer: measured)."""
    if not variant.drop:
        return "clean"
    fixed = knowledge.has("pr3403", build).value
    return "unknown" if fixed is None else "clean" if fixed else "leak"


def start_kamailio(kamailio_factory, variant: Variant) -> Kamailio:
    return story.start_kamailio(kamailio_factory, variant)


def _expect_202(finals) -> None:
    if not finals or finals[0].message.status != 202:
        got = f"{finals[0].message.status} {finals[0].message.reason}" if finals else "nothing"
        raise ScenarioError(f"Kamailio answered a {METHOD} with {got}, not 202",
                            "see the Kamailio log")


def run(*, kamailio: Kamailio, variant: Variant, target: str = "", requests: int = REQUESTS,
        batches: int = BATCHES) -> MemoryVerdict:
    """BATCHES × REQUESTS MESSAGEs over UDP, each creating one local request; the verdict."""
    rpc = kamailio.rpc
    t0, t0_epoch = time.monotonic(), time.time()
    timeline: list[tuple[float, str]] = []
    port = kamailio.config.udp_port
    call_ids: list[str] = []
    stats_before = rpc.tm_stats()
    timers = oracle.read_timers(rpc, kamailio.config, kamailio.version)

    def send_batch(n: int) -> None:
        timeline.append((round(time.monotonic() - t0, 3), f"{n} MESSAGEs"))
        with UdpClient() as client:           # one socket; a new Call-ID per request
            for _ in range(n):
                finals = client.request(client.build(METHOD, f"sip:notify@127.0.0.1:{port}"),
                                        ("127.0.0.1", port), timeout=5.0, quiet=0.0)
                call_ids.append(client.call_id)
                _expect_202(finals)
        timeline.append((round(time.monotonic() - t0, 3), "tm settled; mod.stats shm"))

    memory = oracle.shm_batches(rpc, send_batch, requests=requests, batches=batches,
                                settle_timeout=timers.settle_timeout())
    snapshots = {"mod.stats shm before": memory.pop("before"),
                 "mod.stats shm after": memory.pop("after")}
    # The plot: tm's counters and tm's shm (all its sites) at each snapshot.
    samples = [{"t": round(p["at"] - t0, 3), "current": p["current"], "waiting": p["waiting"],
                "created": p["created"], "freed": p["freed"],
                "shm_used": p["modules"].get("tm", 0)} for p in memory.pop("points")]
    memory["what"] = f"{METHOD}s" + (" (local request dropped)" if variant.drop else "")
    stats_after = rpc.tm_stats()
    snapshots.update({"tm.stats before": stats_before, "tm.stats after": stats_after})
    if kamailio.death():
        raise ScenarioError(f"Kamailio died during the scenario: {kamailio.death()}",
                            "see the Kamailio log")
    elapsed = round(time.monotonic() - t0, 3)
    return MemoryVerdict(
        leaked=bool(memory["leaked_sites"]), memory=memory, watched_for=elapsed,
        stats_before=stats_before, stats_after=stats_after, target=target,
        kamailio_version=kamailio.version or "", build_id=kamailio.build_id(),
        variant=variant.name, transport="udp", timeline=timeline, started_at=t0_epoch,
        snapshots=snapshots, stats_samples=samples)


USER_CONFIG = False     # needs the harness's own config (its defines build the story)

gate = story.own_config_gate(start_kamailio, run)
