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

When its UDP port is not 5060 it also adds `alias=127.0.0.1:5060`: the
harness's INVITE goes to sip:<ext>@127.0.0.1 (no port, so 5060), which stock
configs test with `uri==myself` and refuse ("403 Not relaying") unless Kamailio
knows that address as its own.  (It cannot bring jsonrpcs itself: Kamailio
5.8.5/6.0.1 refuse a config that loads a module twice, sr_module.c `skip:`
returns -1; measured on Debian's 6.0.1: "failed to load module".)

So your config must (`check()`, every problem at once):
  1. declare no sockets of its own under KAMLEAK (wrap listen=/port= in #!ifndef KAMLEAK);
  2. load tm, websocket, xhttp and jsonrpcs, and accept WebSocket HTTP (tcp_accept_no_cl=yes);
  3. in event_route[xhttp:request], answer /RPC with jsonrpc_dispatch() and
     WebSocket upgrades with ws_handle_handshake();
  4. serve JSON-RPC over HTTP: modparam("jsonrpcs", "transport", …) with bit 1 set (1, 3, 5,
     7…) or 0; jsonrpcs's default, 6 (FIFO + datagram), has no HTTP;
  5. send calls from WebSocket clients to the PBX at KAMLEAK_PBX_HOSTPORT under KAMLEAK
     (e.g. `$du = "sip:KAMLEAK_PBX_HOSTPORT";` in the route that picks your PBX);
  6. with tls.so: use the harness's TLS config under KAMLEAK:
     modparam("tls", "config", "KAMLEAK_DIR/tls.cfg").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kamleak.harness.errors import UsageError
from kamleak.harness.stack.kamailio import kemi as kemi_
from kamleak.harness.stack.kamailio.cfg import parse, read_config

HARNESS_DEFINES = {"KAMLEAK": "", "KAMLEAK_UDP_PORT": "5060", "KAMLEAK_WS_PORT": "8080",
                   "KAMLEAK_WSS_PORT": "4443", "KAMLEAK_RPC_PORT": "8081"}


@dataclass
class Problem:
    line: int | None
    what: str
    add: str          # exactly what to add or change
    file: str | None = None   # an included file; None: the config itself

    def line_text(self, path: str, label: str = "") -> str:
        path = self.file or path
        where = f"{path}:{self.line}: " if self.line else f"{path}: "
        return f"{where}{label}{self.what}; add: {self.add}"


class ContractError(UsageError):
    """The config misses items of the contract: all of them, one line each."""

    def __init__(self, path: str, problems: list[Problem]):
        self.path, self.problems = path, problems
        n = len(problems)
        super().__init__(f"{path}: {n} thing{'s' if n > 1 else ''} to change before kamleak can "
                         "run it", "add what each line below says (README, 'Your own kamailio.cfg'; "
                         f"`kamleak lint {path} --contract` lists the same)")

    def line(self) -> str:
        return "\n".join([super().line()] + ["  " + p.line_text(self.path) for p in self.problems])


def _calls(cfg, route_key) -> set[str]:
    route = cfg.routes.get(route_key)
    return {c.name for c in route.calls()} if route else set()


def _int(toks) -> int | None:
    vals = [t.val for t in toks if t.kind != "op" or t.val not in "()"]
    try:
        return int(vals[0], 0) if len(vals) == 1 else None
    except ValueError:
        return None


def check(text: str, path: str = "kamailio.cfg") -> list[Problem]:
    """Everything the config lacks for the harness, in the config's order."""
    cfg, lines = parse(text, defines=HARNESS_DEFINES, path=path)
    kemi = kemi_.read(cfg, lines, path)
    problems: list[Problem] = []

    def at(src, what, add):
        problems.append(Problem(src.line if src else None, what, add, src.file if src else None))

    for src, line in lines:
        m = re.match(r"\s*(listen|port)\s*=", line)
        if m:
            at(src, f"declares its own socket ({line.strip()[:60]}) while KAMLEAK is defined",
               "#!ifndef KAMLEAK … #!endif around it (the harness listens on loopback ports of "
               "its own)")
    for mod in ("tm", "websocket", "xhttp", "jsonrpcs"):
        if mod not in cfg.modules:
            at(None, f"does not load {mod}.so", f'loadmodule "{mod}.so"')
    if not any(re.match(r"\s*tcp_accept_no_cl\s*=\s*(yes|1)", ln) for _, ln in lines):
        at(None, "does not accept HTTP without Content-Length (WebSocket)", "tcp_accept_no_cl=yes")
    # jsonrpcs_mod.c (5.8.0 to 6.1.x): `jsonrpc_transport = 6; /* fifo + datagram */`;
    # HTTP is bit 1, 0 means all.  Without it Kamailio answers no /RPC.
    transport = cfg.modparam("jsonrpcs", "transport")
    if "jsonrpcs" in cfg.modules and not transport:
        at(cfg.modules["jsonrpcs"], "leaves jsonrpcs's transport at its default (6: FIFO and "
           "datagram, no HTTP), so Kamailio answers no JSON-RPC over HTTP",
           'modparam("jsonrpcs", "transport", 7)')
    elif transport:
        value = _int(transport[0])
        if value is not None and value != 0 and not value & 1:
            at(transport[1], f'sets modparam("jsonrpcs", "transport", {value}), which has no '
               "JSON-RPC over HTTP (Kamailio: 'jsonrpc over http not initialized')",
               f'#!ifdef KAMLEAK modparam("jsonrpcs", "transport", {value | 1}) #!else … #!endif '
               "(bit 1 is HTTP)")
    key = ("event", "xhttp:request")
    if kemi is not None:
        for src, what, add in kemi_.problems(kemi, cfg, jsonrpc=True):
            at(src, what, add)
    elif key not in cfg.routes:
        at(None, "has no event_route[xhttp:request]",
           'event_route[xhttp:request] { if ($hu =~ "^/RPC") { jsonrpc_dispatch(); exit; } '
           "if (ws_handle_handshake()) exit; }")
    else:
        xhttp, src = _calls(cfg, key), cfg.routes[key].src
        if "jsonrpc_dispatch" not in xhttp:
            at(src, "event_route[xhttp:request] does not serve JSON-RPC",
               'if ($hu =~ "^/RPC") { jsonrpc_dispatch(); exit; } at its start')
        if "ws_handle_handshake" not in xhttp:
            at(src, "event_route[xhttp:request] does not accept WebSocket upgrades",
               "if (ws_handle_handshake()) exit;")
    if "KAMLEAK_PBX_HOSTPORT" not in text and not has_registrar(cfg) \
            and not (kemi and kemi.has_registrar()):
        at(None, "never sends calls to the harness's PBX: it sets no KAMLEAK_PBX_HOSTPORT and "
           'has no registrar (save("location") and lookup("location")) that kamleak could '
           "register the PBX in",
           '#!ifdef KAMLEAK $du = "sip:KAMLEAK_PBX_HOSTPORT"; #!endif where your config picks '
           "the destination of a call from a WebSocket client, then relay it")
    if "tls" in cfg.modules:
        tls_cfg = cfg.modparam("tls", "config")
        if not tls_cfg or "KAMLEAK_DIR" not in " ".join(t.val for t in tls_cfg[0]):
            at(tls_cfg[1] if tls_cfg else cfg.modules["tls"],
               "loads tls.so but not the harness's TLS config",
               '#!ifdef KAMLEAK modparam("tls", "config", "KAMLEAK_DIR/tls.cfg") #!else … #!endif')
    return sorted(problems, key=lambda p: (p.file or "", p.line or 0))


def has_registrar(cfg) -> bool:
    """Saves REGISTERs and looks calls up in `location`: then kamleak registers the
    called extension with the PBX as its contact, and the config's own routing
    takes the call there (as it would to a registered phone)."""
    calls = [c for route in cfg.routes.values() for c in route.calls()]
    return all(any(c.name == fn and (c.literal(0) or "").strip('"') == "location" for c in calls)
               for fn in ("save", "lookup"))


@dataclass
class UserConfig:
    path: Path
    text: str
    uses_tls: bool
    # Kamailio reads bytes: a Latin-1 config is written back in Latin-1.
    encoding: str = "utf-8"
    # No KAMLEAK_PBX_HOSTPORT in it: calls reach the PBX through its registrar
    # (`has_registrar`), so the scenario registers the extension first.
    pbx_by_registrar: bool = False

    @classmethod
    def load(cls, path: str) -> UserConfig:
        p = Path(path)
        text = read_config(path)
        problems = check(text, str(p))
        if problems:
            raise ContractError(str(p), problems)
        cfg, _ = parse(text, defines=HARNESS_DEFINES, path=str(p))
        encoding = "utf-8"
        try:
            p.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            encoding = "latin-1"            # how read_config() decoded it
        return cls(p.resolve(), text, "tls" in cfg.modules, encoding,
                   pbx_by_registrar="KAMLEAK_PBX_HOSTPORT" not in text)

    def body(self) -> str:
        """The config without its first `#!KAMAILIO` line (the header has it)."""
        lines = self.text.split("\n")
        if lines and lines[0].strip() in ("#!KAMAILIO", "#!SER", "#!OPENSER", "#!MAXCOMPAT", "#!ALL"):
            lines = lines[1:]
        return "\n".join(lines)

    def siblings(self) -> list[Path]:
        """Files next to the config (includes), copied beside the rendered one."""
        return [f for f in self.path.parent.iterdir() if f.is_file() and f != self.path]


def register_at_pbx(kamailio, pbx_address: str, ext: str) -> str:
    """For a config that routes calls through its registrar (`pbx_by_registrar`):
    register EXT with the PBX as its contact, as a phone registers itself, so the
    config's own lookup takes a call to EXT to the PBX.  Returns the AOR."""
    from kamleak.harness.errors import ScenarioError
    from kamleak.harness.sip.udp import UdpClient

    aor = f"sip:{ext}@127.0.0.1"
    with UdpClient() as c:
        finals = c.register(("127.0.0.1", kamailio.config.udp_port), aor, f"sip:{ext}@{pbx_address}")
    if not finals or finals[-1].message.status != 200:
        got = f"{finals[-1].message.status} {finals[-1].message.reason}" if finals else "no reply"
        raise ScenarioError(f"your config answered kamleak's REGISTER of {aor} with {got}",
                            'let it register under KAMLEAK, or set $du = "sip:KAMLEAK_PBX_HOSTPORT" '
                            "for calls (README, 'Your own kamailio.cfg')")
    return aor
