"""Kamailio issue 3236: WebSocket peers that vanish silently must not hold shm for good.

The report (5.6.1): clients on WSS disappear without closing (a network
adapter disabled); `ws_current_connections` never goes down and the shm of
`wsconn_add()` (`mod.stats all shm`) keeps growing.  Only connections that
close properly were released.

A silent peer here: the client stops reading its socket but keeps it open
(no FIN, no RST, no PONG; on loopback the kernel still ACKs, as a NAT that
has not timed out yet would).  What can end its state is Kamailio's side:

* `ping`: websocket keepalive_mechanism 1 (Kamailio's default) with
  keepalive_timeout 2 s: PING after 2 s idle, "forcibly closing
  connection" when the next check finds no PONG;
* `lifetime`: no WebSocket keepalive, tcp_connection_lifetime 2 s: the TCP
  layer closes the idle connection and websocket must notice;
* `none`: no keepalive, the stock tcp_connection_lifetime (3605 s);
* `concheck`: keepalive_mechanism 3, which only checks that the TCP
  connection exists: it does, so a silent peer passes.

    UA × 5 (WS)                 Kamailio
      handshake, OPTIONS -->       wsconn_add(): ~64 KB shm a connection
      <-- 403
      [silent: never read again]   [poll ws_current_connections, ws.dump and
                                    the websocket module's shm sites until they
                                    are back to the baseline, or the deadline]

The verdict is a memory verdict: leak = the connections' state outlived
the deadline.  Measured: no Debian build loses a wsconn (both `ping` and
`lifetime` drain: ws.dump first, then the records and their shm
rm_delay_interval (5 s) later), so the 3236 defect itself is not present in
5.6.3+.  `none` and `concheck` hold every silent peer (and its 64 KB) for
tcp_connection_lifetime: the gate flags that as a leak, because for a
deployment it is one, caused by configuration rather than by a bug.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kamleak.harness import knowledge
from kamleak.harness.errors import ScenarioError, UsageError
from kamleak.harness.judging.verdict import MemoryVerdict
from kamleak.harness.probes import memstats
from kamleak.harness.reporting.plot import PlotHints
from kamleak.harness.sip import UAError
from kamleak.harness.stack.kamailio import Kamailio
from kamleak.harness.wait import WaitTimeout, poll
from kamleak.scenarios import story

ISSUE = 3236
TITLE = "silent WebSocket peers: connection state must drain after keepalive"
CLIENTS = 5
KEEPALIVE_TIMEOUT = 2        # s, websocket keepalive_timeout (ping, concheck)
TCP_LIFETIME = 2             # s, tcp_connection_lifetime (lifetime)
RM_DELAY = 5                 # s, websocket rm_delay_interval (Kamailio's default)
MECHANISMS = {
    "ping": (f"KAMLEAK_WS_KEEPALIVE_TIMEOUT={KEEPALIVE_TIMEOUT}",),
    "lifetime": ("WITH_WS_KEEPALIVE_NONE", f"KAMLEAK_TCP_LIFETIME={TCP_LIFETIME}"),
    "none": ("WITH_WS_KEEPALIVE_NONE",),
    "concheck": ("WITH_WS_KEEPALIVE_CONCHECK", f"KAMLEAK_WS_KEEPALIVE_TIMEOUT={KEEPALIVE_TIMEOUT}"),
}
DEFAULT_VARIANT = "ping"
# The plot's counts are WebSocket connections, its shm the websocket module's.
PLOT_HINTS = PlotHints(counts_label="WebSocket connections",
                       count_names=(("current", "ws_current_connections"), ("waiting", "in ws.dump")),
                       shm_label="websocket shm (KiB)")



@dataclass(frozen=True)
class Variant:
    mechanism: str = "ping"

    @classmethod
    def parse(cls, name: str) -> Variant:
        if name not in MECHANISMS:
            raise UsageError(f"unknown variant '{name}' for issue {ISSUE}",
                             f"use one of {', '.join(MECHANISMS)}")
        return cls(name)

    @property
    def name(self) -> str:
        return self.mechanism

    @property
    def defines(self) -> tuple[str, ...]:
        return MECHANISMS[self.mechanism]

    @property
    def deadline(self) -> float:
        """Seconds after the peers fall silent by which a healthy Kamailio has let go.

        ping: idle check, then the PING, then the check that finds no PONG
        (2 × keepalive_timeout + the 1 s keepalive_interval); lifetime: the
        TCP layer's idle timeout plus its timer's slack (measured up to
        ~7 s); then websocket's rm_delay_interval before the record and
        its shm go; plus a margin for timer slack on a loaded machine
        (drained measured at 10.9-11.1 s for ping, 14.0-15.1 s for lifetime).
        """
        if self.mechanism == "lifetime":
            return TCP_LIFETIME + 8 + RM_DELAY + 5
        return 2 * KEEPALIVE_TIMEOUT + 1 + RM_DELAY + 5


def parse_variant(name: str) -> Variant:
    return Variant.parse(name)


def expected(build, variant: Variant) -> str:
    """Measured the same on Debian's 5.6.3, 6.0.1 and 6.1.5 (see the module's
    story); no upstream commit is recorded for it (kamleak.harness.knowledge), so on
    any other build "unknown": only a run can tell."""
    if knowledge.provenance(build).kind != "debian":
        return "unknown"
    return "leak" if variant.mechanism in ("none", "concheck") else "clean"


def start_kamailio(kamailio_factory, variant: Variant) -> Kamailio:
    return story.start_kamailio(kamailio_factory, variant)


def _state(rpc) -> dict:
    """What a connection holds: the counters and the websocket module's shm sites."""
    stats = rpc.call("stats.get_statistics", "ws_current_connections")
    current = 0
    for line in stats if isinstance(stats, list) else [stats]:
        name, _, value = str(line).partition("=")
        if name.strip().endswith("ws_current_connections"):
            current = int(value)
    sites = {s: b for s, b in memstats.snapshot(rpc).items() if s.startswith("websocket:")}
    dump = rpc.ws_dump()
    return {"ws_current_connections": current,
            "ws.dump connections": len(dump.get("connections") or []), "sites": sites}


def _drained(state: dict, base: dict) -> bool:
    return (state["ws_current_connections"] <= base["ws_current_connections"]
            and state["ws.dump connections"] <= base["ws.dump connections"]
            and not {s: b for s, b in memstats.growth(base["sites"], state["sites"]).items() if b > 0})


def run(*, kamailio: Kamailio, variant: Variant, ua_factory, transport: str = "ws",
        clients: int = CLIENTS, target: str = "") -> MemoryVerdict:
    """CLIENTS peers connect, say one thing, fall silent; does their state drain?"""
    rpc = kamailio.rpc
    t0, t0_epoch = time.monotonic(), time.time()
    timeline: list[tuple[float, str]] = []

    def mark(label: str) -> None:
        timeline.append((round(time.monotonic() - t0, 3), label))

    base = _state(rpc)
    stats_before = rpc.tm_stats()
    uas = []
    try:
        for _ in range(clients):
            ua = ua_factory(kamailio.url(transport))
            ua.request("OPTIONS", f"sip:ping@127.0.0.1:{kamailio.config.udp_port}", timeout=5)
            uas.append(ua)
    except UAError as exc:
        raise ScenarioError(f"a WebSocket peer could not talk to Kamailio: {exc}",
                            "see the SIP trace and the Kamailio log") from None
    mark(f"{clients} peers connected")
    connected = _state(rpc)
    if connected["ws_current_connections"] < base["ws_current_connections"] + clients:
        raise ScenarioError(f"Kamailio counts {connected['ws_current_connections']} WebSocket "
                            f"connections, expected {base['ws_current_connections'] + clients}",
                            "see the Kamailio log")
    for ua in uas:
        ua.disconnect("silent")
    silent_at = time.monotonic()
    mark("peers fall silent")

    deadline = variant.deadline
    samples, state, drained_after, dump_empty = [], connected, None, None

    def drained() -> bool:
        nonlocal state, dump_empty
        state = _state(rpc)
        t = time.monotonic() - silent_at
        # Plotted as the count panel's "current" (connections) and the shm panel.
        samples.append({"t": round(time.monotonic() - t0, 3),
                        "current": state["ws_current_connections"],
                        "waiting": state["ws.dump connections"],
                        "shm_used": sum(state["sites"].values())})
        if dump_empty is None and state["ws.dump connections"] <= base["ws.dump connections"]:
            dump_empty = t
            mark("ws.dump: peers gone")
        return _drained(state, base)

    try:
        poll(drained, timeout=max(0.0, deadline - (time.monotonic() - silent_at)),
             what="the silent peers' connection state draining", interval=0.25, max_interval=0.25)
        drained_after = round(time.monotonic() - silent_at, 3)
        mark("connection state drained")
    except WaitTimeout:
        mark("deadline: connection state still held")
    if kamailio.death():
        raise ScenarioError(f"Kamailio died during the scenario: {kamailio.death()}",
                            "see the Kamailio log")

    grown = {s: [b] for s, b in memstats.growth(base["sites"], connected["sites"]).items() if b > 0}
    held = {s: [b] for s, b in memstats.growth(base["sites"], state["sites"]).items() if b > 0}
    memory = {
        "requests": clients, "batches": 1, "unit": "peer",
        "what": f"silent {transport.upper()} peers ({variant.mechanism})",
        "sites": held or grown, "leaked_sites": sorted(held), "drained_after": drained_after,
        "ws_dump_empty_after": None if dump_empty is None else round(dump_empty, 3),
        "counters": {"ws_current_connections": [base["ws_current_connections"],
                                                connected["ws_current_connections"],
                                                state["ws_current_connections"]],
                     "ws.dump connections": [base["ws.dump connections"],
                                             connected["ws.dump connections"],
                                             state["ws.dump connections"]]},
        "bytes_per_peer": round(sum(b[0] for b in grown.values()) / clients) if grown else 0,
    }
    leaked = drained_after is None
    stats_after = rpc.tm_stats()
    return MemoryVerdict(
        leaked=leaked, memory=memory, watched_for=round(time.monotonic() - silent_at, 3),
        deadline=float(deadline), stats_before=stats_before, stats_after=stats_after,
        target=target, kamailio_version=kamailio.version or "", build_id=kamailio.build_id(),
        variant=variant.name, transport=transport, timeline=timeline, started_at=t0_epoch,
        snapshots={"websocket before": base, "websocket connected": connected,
                   "websocket at verdict": state},
        stats_samples=samples)


USER_CONFIG = False     # the deadline assumes the harness's keepalive settings


def gate(bench, variant: Variant, *, transport: str = "ws", disconnect: str = "",
         target: str = "") -> MemoryVerdict:
    """One run on a `kamleak.harness.stack.runner.Stack` (the peers fall silent: no disconnect mode)."""
    return run(kamailio=start_kamailio(bench.kamailio, variant), variant=variant,
               ua_factory=bench.ua, transport=transport, target=target)
