"""Your own kamailio.cfg under test: the contract, checked before any run.

The harness brings the sockets and the values; your routing stays as it is.
Use the substdef values inside strings ("KAMLEAK_SELF"); plain #!define values
(the ports) are substituted by Kamailio only outside strings.
It prepends a header to your config that defines `KAMLEAK` and the values
below, and listens on loopback ports of its own choosing:

    #!define KAMLEAK
    #!define KAMLEAK_UDP_PORT / KAMLEAK_WS_PORT / KAMLEAK_WSS_PORT / KAMLEAK_RPC_PORT  <port>
    #!substdef "!KAMLEAK_PBX_HOSTPORT!127.0.0.1:<port>!g"     (the Asterisk PBX)
    #!substdef "!KAMLEAK_SELF!sip:127.0.0.1:<udp port>!g"      (Kamailio itself, e.g. as the
                                                               presence server of pua)
    #!substdef "!KAMLEAK_DIR!<dir>!g"                          (tls.cfg + certificate)
    listen=udp:127.0.0.1:<udp>  listen=tcp:127.0.0.1:<ws>  listen=tcp:127.0.0.1:<rpc>
    listen=tls:127.0.0.1:<wss>  (only if your config loads tls.so)

So your config must (`CONTRACT`, checked by `check`):
  1. declare no sockets of its own under KAMLEAK (wrap listen=/port= in #!ifndef KAMLEAK);
  2. load tm, websocket, xhttp and jsonrpcs, and accept WebSocket HTTP (tcp_accept_no_cl=yes);
  3. in event_route[xhttp:request], answer /RPC with jsonrpc_dispatch() and
     WebSocket upgrades with ws_handle_handshake();
  4. send calls from WebSocket clients to the PBX at KAMLEAK_PBX_HOSTPORT under KAMLEAK
     (e.g. `$du = "sip:KAMLEAK_PBX_HOSTPORT";` in the route that picks your PBX);
  5. with tls.so: use the harness's TLS config under KAMLEAK:
     modparam("tls", "config", "KAMLEAK_DIR/tls.cfg").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

HARNESS_DEFINES = {"KAMLEAK": "", "KAMLEAK_UDP_PORT": "5060", "KAMLEAK_WS_PORT": "8080",
                   "KAMLEAK_WSS_PORT": "4443", "KAMLEAK_RPC_PORT": "8081"}


@dataclass
class Problem:
    line: int | None
    what: str
    add: str          # exactly what to add or change

    def line_text(self, path: str) -> str:
        where = f"{path}:{self.line}: " if self.line else f"{path}: "
        return f"{where}{self.what}; add: {self.add}"


def _calls(cfg, route_key) -> set[str]:
    route = cfg.routes.get(route_key)
    return {c.name for c in route.calls()} if route else set()


def check(text: str, path: str = "kamailio.cfg") -> list[Problem]:
    """Everything the config lacks for the harness, most basic first."""
    from ..lint import parse

    cfg, lines = parse(text, defines=HARNESS_DEFINES, path=path)
    problems: list[Problem] = []
    for src, line in lines:
        m = re.match(r"\s*(listen|port|alias)\s*=", line)
        if m and m.group(1) in ("listen", "port"):
            problems.append(Problem(src.line, f"declares its own socket ({line.strip()[:60]}) "
                                    "while KAMLEAK is defined",
                                    "#!ifndef KAMLEAK … #!endif around it (the harness listens "
                                    "on loopback ports of its own)"))
    for mod in ("tm", "websocket", "xhttp", "jsonrpcs"):
        if mod not in cfg.modules:
            problems.append(Problem(None, f"does not load {mod}.so", f'loadmodule "{mod}.so"'))
    if not any(re.match(r"\s*tcp_accept_no_cl\s*=\s*(yes|1)", ln) for _, ln in lines):
        problems.append(Problem(None, "does not accept HTTP without Content-Length (WebSocket)",
                                "tcp_accept_no_cl=yes"))
    xhttp = _calls(cfg, ("event", "xhttp:request"))
    if ("event", "xhttp:request") not in cfg.routes:
        problems.append(Problem(None, "has no event_route[xhttp:request]",
                                'event_route[xhttp:request] { if ($hu =~ "^/RPC") { '
                                "jsonrpc_dispatch(); exit; } if (ws_handle_handshake()) exit; }"))
    else:
        if "jsonrpc_dispatch" not in xhttp:
            problems.append(Problem(cfg.routes[("event", "xhttp:request")].src.line,
                                    "event_route[xhttp:request] does not serve JSON-RPC",
                                    'if ($hu =~ "^/RPC") { jsonrpc_dispatch(); exit; }'))
        if "ws_handle_handshake" not in xhttp:
            problems.append(Problem(cfg.routes[("event", "xhttp:request")].src.line,
                                    "event_route[xhttp:request] does not accept WebSocket upgrades",
                                    "if (ws_handle_handshake()) exit;"))
    if "KAMLEAK_PBX_HOSTPORT" not in text:
        problems.append(Problem(None, "never sends calls to the harness's PBX",
                                '#!ifdef KAMLEAK $du = "sip:KAMLEAK_PBX_HOSTPORT"; #!endif in the '
                                "route that picks your PBX for calls from WebSocket clients"))
    if "tls" in cfg.modules:
        tls_cfg = cfg.modparam("tls", "config")
        if not tls_cfg or "KAMLEAK_DIR" not in " ".join(t.val for t in tls_cfg[0]):
            problems.append(Problem(tls_cfg[1].line if tls_cfg else None,
                                    "loads tls.so but not the harness's TLS config",
                                    '#!ifdef KAMLEAK modparam("tls", "config", "KAMLEAK_DIR/tls.cfg") '
                                    "#!endif"))
    return problems


@dataclass
class UserConfig:
    path: Path
    text: str
    uses_tls: bool

    @classmethod
    def load(cls, path: str) -> "UserConfig":
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read the Kamailio config {path}: {exc.strerror}",
                             "pass the path of your kamailio.cfg") from None
        problems = check(text, str(p))
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UsageError(f"{problems[0].line_text(str(p))}{more}",
                             "see README, 'Your own kamailio.cfg', or `kamleak lint`")
        from ..lint import parse
        cfg, _ = parse(text, defines=HARNESS_DEFINES, path=str(p))
        return cls(p.resolve(), text, "tls" in cfg.modules)

    def body(self) -> str:
        """The config without its first `#!KAMAILIO` line (the header has it)."""
        lines = self.text.split("\n")
        if lines and lines[0].strip() in ("#!KAMAILIO", "#!SER", "#!OPENSER", "#!MAXCOMPAT", "#!ALL"):
            lines = lines[1:]
        return "\n".join(lines)

    def siblings(self) -> list[Path]:
        """Files next to the config (includes), copied beside the rendered one."""
        return [f for f in self.path.parent.iterdir() if f.is_file() and f != self.path]
