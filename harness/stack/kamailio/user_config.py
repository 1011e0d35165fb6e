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
  2. load tm, websocket and xhttp, and accept WebSocket HTTP (tcp_accept_no_cl=yes);
  3. in event_route[xhttp:request], accept WebSocket upgrades with ws_handle_handshake();
  4. offer kamleak an RPC: JSON-RPC over HTTP (jsonrpcs with bit 1 in its transport, and
     jsonrpc_dispatch() for /RPC in that route), or else load ctl.so: kamleak then adds a
     BINRPC socket of its own on loopback TCP after your config
     (modparam("ctl", "binrpc", "tcp:127.0.0.1:<port>")) and reads the same state there
     (`Rpc`); JSON-RPC stays the first choice;
  5. send calls from WebSocket clients to the PBX at KAMLEAK_PBX_HOSTPORT under KAMLEAK
     (e.g. `$du = "sip:KAMLEAK_PBX_HOSTPORT";` in the route that picks your PBX), or have a
     registrar kamleak registers the PBX in;
  6. with tls.so: name a TLS config file.  Where that file does not exist where Kamailio
     runs, kamleak provides its own (a `Provision`): a #!subst in the header points
     the path at KAMLEAK_DIR/tls.cfg and its throwaway certificate (a KEMI script the
     same way, from beside the config: kemi.Kemi.provision).
What kamleak adds or substitutes is listed in the report (`provided()`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kamleak.harness.errors import UsageError
from kamleak.harness.stack.kamailio import kemi as kemi_
from kamleak.harness.stack.kamailio.cfg import parse, read_config
from kamleak.harness.stack.kamailio.config import Provision

HARNESS_DEFINES = {"KAMLEAK": "", "KAMLEAK_UDP_PORT": "5060", "KAMLEAK_WS_PORT": "8080",
                   "KAMLEAK_WSS_PORT": "4443", "KAMLEAK_RPC_PORT": "8081"}


@dataclass
class Problem:
    line: int | None
    what: str
    add: str          # exactly what to add or change
    file: str | None = None   # an included file; None: the config itself

    def line_text(self, path: str, label: str = "") -> str:
        """One line; advice of several lines (a preprocessor block: Kamailio reads a
        directive only on its own line) follows it, one line each, as they are pasted."""
        path = self.file or path
        where = f"{path}:{self.line}: " if self.line else f"{path}: "
        if "\n" not in self.add:
            return f"{where}{label}{self.what}; add: {self.add}"
        return "\n".join([f"{where}{label}{self.what}; add these lines:",
                          *(PASTE_INDENT + ln for ln in self.add.split("\n"))])


# Where the lines to paste start in a printed problem (after ContractError's own indent).
PASTE_INDENT = "    | "


def pasted(printed: str) -> str:
    """The lines to paste out of a printed problem (what a user copies)."""
    return "\n".join(ln.split(PASTE_INDENT, 1)[1] for ln in printed.split("\n")
                     if PASTE_INDENT in ln)


class ContractError(UsageError):
    """The config misses items of the contract: all of them, one line each."""

    def __init__(self, path: str, problems: list[Problem]):
        self.path, self.problems = path, problems
        n = len(problems)
        super().__init__(f"{path}: {n} thing{'s' if n > 1 else ''} to change before kamleak can "
                         "run it", "add what each line below says (README, 'Your own kamailio.cfg'; "
                         f"`kamleak lint {path} --contract` lists the same)")

    def line(self) -> str:
        return "\n".join([super().line()] + ["  " + ln for p in self.problems
                                             for ln in p.line_text(self.path).split("\n")])


def _calls(cfg, route_key) -> set[str]:
    route = cfg.routes.get(route_key)
    return {c.name for c in route.calls()} if route else set()


def _int(toks) -> int | None:
    vals = [t.val for t in toks if t.kind != "op" or t.val not in "()"]
    try:
        return int(vals[0], 0) if len(vals) == 1 else None
    except ValueError:
        return None


def _wrap(define: str, lines: list[str]) -> str:
    """A preprocessor block to paste, each directive on its own line."""
    return "\n".join([f"#!{define}", *lines, "#!endif"])


@dataclass(frozen=True)
class Rpc:
    """How kamleak reads the config's state: JSON-RPC over HTTP where the config
    serves it, else ctl's BINRPC on a socket kamleak adds (`why`: what JSON-RPC lacks)."""

    over: str                   # "jsonrpc" | "ctl"
    why: str = ""


def _jsonrpc_gaps(cfg, kemi=None) -> list[tuple]:
    """What keeps kamleak from JSON-RPC over HTTP: (the line it is about, why).
    KEMI: the script's xhttp event function stands for event_route[xhttp:request]."""
    gaps = []
    if "jsonrpcs" not in cfg.modules:
        gaps.append((None, "it does not load jsonrpcs"))
    # jsonrpcs_mod.c (5.8.0 to 6.1.x): `jsonrpc_transport = 6; /* fifo + datagram */`;
    # HTTP is bit 1, 0 means all.  Without it Kamailio answers no /RPC.
    transport = cfg.modparam("jsonrpcs", "transport")
    if "jsonrpcs" in cfg.modules and not transport:
        gaps.append((cfg.modules["jsonrpcs"], "jsonrpcs has no HTTP transport"))
    elif transport:
        value = _int(transport[0])
        if value is not None and value != 0 and not value & 1:
            gaps.append((transport[1], "jsonrpcs has no HTTP transport"))
    if "xhttp" not in cfg.modules:
        gaps.append((None, "it does not load xhttp"))
    key = ("event", "xhttp:request")
    if kemi is not None:
        if not kemi_.serves_jsonrpc(kemi, cfg):
            gaps.append((None, f"its {kemi.language} script's xhttp event function "
                         "calls no KSR.jsonrpcs.dispatch()"))
    elif key not in cfg.routes:
        gaps.append((None, "it has no event_route[xhttp:request]"))
    elif "jsonrpc_dispatch" not in _calls(cfg, key):
        gaps.append((cfg.routes[key].src, "event_route[xhttp:request] calls no jsonrpc_dispatch()"))
    return gaps


def rpc_of(cfg, lines=None, kemi=None) -> Rpc | None:
    """JSON-RPC over HTTP if the config serves it (the first choice), else ctl if it
    loads ctl.so, else None: kamleak could read nothing."""
    gaps = _jsonrpc_gaps(cfg, kemi)
    if not gaps:
        return Rpc("jsonrpc")
    return Rpc("ctl", gaps[0][1]) if "ctl" in cfg.modules else None


def _tls_config(cfg) -> tuple[str, object] | None:
    """The TLS config file named by modparam("tls", "config", …): (path, its line)."""
    tls_cfg = cfg.modparam("tls", "config")
    if not tls_cfg:
        return None
    vals = [t.val for t in tls_cfg[0] if t.kind != "op" or t.val not in "()"]
    return (vals[0].strip('"'), tls_cfg[1]) if len(vals) == 1 else None


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
            at(src, f"declares its own socket ({line.strip()[:60]}) while KAMLEAK is defined "
               "(the harness listens on loopback ports of its own)",
               _wrap("ifndef KAMLEAK", [line.strip()]))
    for mod in ("tm", "websocket", "xhttp"):
        if mod not in cfg.modules:
            at(None, f"does not load {mod}.so", f'loadmodule "{mod}.so"')
    if not any(re.match(r"\s*tcp_accept_no_cl\s*=\s*(yes|1)", ln) for _, ln in lines):
        at(None, "does not accept HTTP without Content-Length (WebSocket)", "tcp_accept_no_cl=yes")
    rpc = rpc_of(cfg, lines, kemi)
    if rpc is None:
        # Neither: one line that fixes it (JSON-RPC over HTTP takes up to three edits).
        gaps = _jsonrpc_gaps(cfg, kemi)
        src, why = next((g for g in gaps if g[0]), gaps[0])
        at(src, f"offers kamleak no RPC: no JSON-RPC over HTTP ({why}) and no ctl.so, which "
           "kamleak would read over BINRPC on a socket of its own", 'loadmodule "ctl.so"')
    key = ("event", "xhttp:request")
    if kemi is not None:
        for src, what, add in kemi_.problems(kemi, cfg, jsonrpc=rpc is None):
            at(src, what, add)
    elif key not in cfg.routes:
        at(None, "has no event_route[xhttp:request]",
           "event_route[xhttp:request] {\n\tif (ws_handle_handshake()) exit;\n}")
    elif "ws_handle_handshake" not in _calls(cfg, key):
        at(cfg.routes[key].src, "event_route[xhttp:request] does not accept WebSocket upgrades",
           "if (ws_handle_handshake()) exit;")
    if "KAMLEAK_PBX_HOSTPORT" not in text and not has_registrar(cfg) \
            and not (kemi and kemi.has_registrar()):
        at(None, "never sends calls to the harness's PBX: it sets no KAMLEAK_PBX_HOSTPORT and "
           'has no registrar (save("location") and lookup("location")) that kamleak could '
           "register the PBX in, so add where your config picks the destination of a call "
           "from a WebSocket client, then relay it",
           _wrap("ifdef KAMLEAK", ['$du = "sip:KAMLEAK_PBX_HOSTPORT";']))
    if "tls" in cfg.modules and _tls_config(cfg) is None:
        at(cfg.modules["tls"], "loads tls.so but names no TLS config file for kamleak to provide",
           'modparam("tls", "config", "KAMLEAK_DIR/tls.cfg")')
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
    rpc: Rpc = Rpc("jsonrpc")
    # The TLS config file it names, unless it is kamleak's (KAMLEAK_DIR/…): kamleak
    # provides one where that path does not exist (KamailioConfig.tls_provided).
    tls_config: str | None = None
    # Files it names that kamleak provides where Kamailio has none: the TLS config
    # above, a KEMI script named where it lives at home (Kemi.provision).
    provisions: tuple[Provision, ...] = ()

    @classmethod
    def load(cls, path: str) -> UserConfig:
        p = Path(path)
        text = read_config(path)
        problems = check(text, str(p))
        if problems:
            raise ContractError(str(p), problems)
        cfg, lines = parse(text, defines=HARNESS_DEFINES, path=str(p))
        kemi = kemi_.read(cfg, lines, str(p))
        encoding = "utf-8"
        try:
            p.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            encoding = "latin-1"            # how read_config() decoded it
        tls = _tls_config(cfg) if "tls" in cfg.modules else None
        tls_config = tls[0] if tls and "KAMLEAK_DIR" not in tls[0] else None
        provisions = [Provision(tls_config, "tls.cfg", "kamleak's, with a throwaway certificate")
                      ] if tls_config else []
        if kemi is not None and kemi.provision():
            provisions.append(kemi.provision())
        return cls(p.resolve(), text, "tls" in cfg.modules, encoding,
                   pbx_by_registrar="KAMLEAK_PBX_HOSTPORT" not in text,
                   rpc=rpc_of(cfg, lines, kemi), tls_config=tls_config,
                   provisions=tuple(provisions))

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
