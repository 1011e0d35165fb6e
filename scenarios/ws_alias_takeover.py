"""A second connection from a live WebSocket client's ip:port makes the client unreachable.

Found by kamleak's own soak, not reported upstream as such: healthy calls
failed now and then because the PBX's BYE could not reach a client that was
still connected ("TCP/TLS connection (id: 0) for WebSocket could not be
found").  The cause is in Kamailio's TCP layer:

* Kamailio finds the connection for a request to `127.0.0.1:P;transport=ws`
  through aliases keyed by the peer's ip:port (plus the local address, or
  "any").  When a *new* connection arrives from an ip:port that already has
  aliases, it takes them over: `new_conn_alias_flags` defaults to
  TCP_ALIAS_REPLACE (core/tcp_options.c).
* TCP allows two connections from the same ip:port when their destinations
  differ.  A NAT mapping does this; so does the kernel's ephemeral port choice
  (kamleak's JSON-RPC client once drew a WebSocket client's port for its
  connection to the RPC port; it now binds a port above the ephemeral range).
* When the newcomer leaves, the aliases go with it: the first connection
  is alive but can no longer be found by address, so a request towards it
  fails in via_builder exactly as if the client were gone, and with a
  local-request trigger its transaction leaks as in issue 4140.

The ladder (the 4140 ladder with step 2 replaced):

    UA (WS, port P)         Kamailio               Asterisk
      INVITE, 200, ACK, re-INVITE, 200, ACK       (as in 4140)
    newcomer from P --> WSS port: handshake, close
                   [wait until ws.dump no longer lists the newcomer;
                    the UA's connection is still listed and open]
                                     <-- BYE        (Asterisk hangs up)
      5.6.3, 6.0.1:        500 (.../SL or /TM) -->   (client not found)
      6.1.5:     <-- BYE   200 -->                   (delivered)

Measured on the Debian builds: 5.6.3 and 6.0.1 lose the client (and leak
the BYE cell with a trigger, as 4140 does); `tcp_connection_match=1` does
not help on either (6.0.1's via_builder looks the connection up by ip:port
and the "any" local address, the alias the newcomer took); 6.1.5 delivers
the BYE to the live client.  The mitigations of 4140 (send_reply_error(),
t_reply_error()) keep the cell from leaking but not the client from being
lost.
"""

from __future__ import annotations

from kamleak.harness import knowledge
from kamleak.harness.errors import ScenarioError, UsageError
from kamleak.harness.judging.verdict import TransactionVerdict
from kamleak.harness.probes import ws_connections
from kamleak.harness.wait import WaitTimeout
from kamleak.scenarios import gh4140_bye_to_closed_ws as gh4140
from kamleak.scenarios import story, triggers

ISSUE = None
TITLE = "a second connection from a live WebSocket client's ip:port takes over its alias"
CONNECTION_MATCH = "tcp_connection_match"      # core parameter tcp_connection_match=1
DEFAULT_VARIANT = "uac_req_send"



class Variant(story.FlaggedVariant):
    """A 4140 config variant, optionally with tcp_connection_match=1."""

    BASE = triggers.Variant
    FLAG = CONNECTION_MATCH
    DEFINE = "WITH_TCP_CONNECTION_MATCH"


def applicable(build, variant: Variant) -> str | None:
    return triggers.applicable(build, variant.base)


# Measured on Debian's builds (tests/gate/test_ws_alias_takeover.py).  No
# upstream commit is known to change this, so for any other build it is unknown.
_CLIENT_LOST_DEBIAN = {"5.6.3": True, "6.0.1": True, "6.1.5": False}


def client_lost(build) -> bool | None:
    """Whether BUILD loses the live client after the takeover: measured on
    Debian's builds; None (unknown) elsewhere - only a run can tell."""
    prov = knowledge.provenance(build)
    return _CLIENT_LOST_DEBIAN.get(prov.version or "") if prov.kind == "debian" else None


def expected(build, variant: Variant) -> str:
    """"leak", "clean", "n/a" or "unknown": a lost client is the 4140 path, so
    4140's table applies; where losing the client is not known, "unknown"."""
    if applicable(build, variant):
        return "n/a"
    lost = client_lost(build)
    if lost is None:
        return "unknown"
    if not lost:
        return "clean"
    return triggers.expected(build, variant.base)


def takeover(r, ua, ua_factory, transport: str) -> None:
    """Step 2: a newcomer connects from the UA's ip:port to the other WebSocket
    listener, then leaves; the UA's own connection stays open throughout."""
    rpc = r.kamailio.rpc
    ip, port = ua.local_addr.rsplit(":", 1)
    other = "wss" if transport == "ws" else "ws"
    own = r.kamailio.config.user_config
    if other == "wss" and own is not None and not own.uses_tls:
        raise UsageError("the takeover's second connection goes to the WSS listener, and "
                         "this kamailio.cfg loads no tls.so", "load tls.so, or use gh4140")
    r.snapshots["ws.dump before takeover"] = rpc.ws_dump()
    ua_factory(r.kamailio.url(other), user="newcomer", source=(ip, int(port))).disconnect("close")
    r.mark(f"a second connection from {ip}:{port} ({other}) opens and closes")
    try:
        ws_connections.wait_gone(rpc, int(port), proto=other, abort=r.kamailio.death)
    except WaitTimeout:
        raise ScenarioError(f"Kamailio still lists the second connection from port {port}",
                            "its close did not take effect") from None
    r.mark("ws.dump: the second connection gone")
    dump = rpc.ws_dump()
    r.snapshots["ws.dump after takeover"] = dump
    if not ua.connected or f"{transport}:{ip}:{port} ->" not in str(dump.get("connections")):
        raise ScenarioError(f"the client's own connection from port {port} is gone too",
                            "the takeover needs it alive; see the Kamailio log")


# The 4140 ladder with its step 2 replaced; the client must be able to share its port.
LADDER = {"cut": takeover, "ua_options": {"share_port": True}}


def run(*, kamailio, pbx, ua_factory, transport: str, variant: Variant, target: str = "") -> TransactionVerdict:
    return gh4140.run(kamailio=kamailio, pbx=pbx, ua_factory=ua_factory, transport=transport,
                      variant=variant, target=target, **LADDER)


def start_kamailio(kamailio_factory, variant: Variant, timers=None):
    return story.start_kamailio(kamailio_factory, variant, timers)


# The uniform entry points `kamleak check/bisect --scenario` use.
USER_CONFIG = True


def parse_variant(name: str) -> Variant:
    return Variant.parse(name)


def gate(bench, variant: Variant, *, transport: str = "ws", disconnect: str = "rst",
         target: str = "") -> TransactionVerdict:
    """One run on a `kamleak.harness.stack.runner.Stack` (DISCONNECT does not apply: the client stays)."""
    return gh4140.gate(bench, variant, transport=transport, target=target, **LADDER)
