"""A KEMI config: routing written in Lua or Python instead of the native language.

`cfgengine "lua"` (app_lua) or `cfgengine "python"` (app_python3) hands Kamailio's
routing to the script the module's `load` parameter names; the config keeps the
globals, modules and modparams.  kamleak runs it as it runs a native config, with
the script beside the config (copied with it into the container, as includes are).
The config names it as it would at home (upstream's example: /usr/local/etc/kamailio/
<script>); where that path does not exist where Kamailio runs, kamleak provides the
script beside the config there (a Provision, as it does a TLS config).  A config may
also name it under KAMLEAK as KAMLEAK_DIR/<script>.  What the gate's contract asks of
routing is then asked of the script: xhttp's `event_callback` function answers /RPC
with KSR.jsonrpcs.dispatch() and WebSocket upgrades with
KSR.websocket.handle_handshake(), and the registrar is KSR.registrar.save/lookup.
The script is read as text (kamleak has no Lua or Python reader): a call that is
written in it counts, wherever it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kamleak.harness.errors import UsageError
from kamleak.harness.stack.kamailio.config import Provision

# cfgengine name -> the module that registers it, as kamleak's images carry them
# (Debian's kamailio-lua-modules and kamailio-python3-modules; source builds build
# the modules the config loads).  app_python3 registers the engine "python"
# (app_python3_mod.c, `sr_kemi_eng_register`).
ENGINES = {"lua": "app_lua", "python": "app_python3"}
LANGUAGE = {"app_lua": "Lua", "app_python3": "Python"}
NATIVE = "native"
# app_python3 takes the script as "load" or "script_name" (app_python3_mod.c).
LOAD_PARAMS = ("load", "script_name")

_CFGENGINE = re.compile(r'\s*cfgengine\s*=?\s*"?([\w.-]+)"?')


@dataclass(frozen=True)
class Kemi:
    engine: str
    module: str
    script: Path             # on the host, beside the config
    named: str               # the path as the config names it
    src: object              # the modparam's (or cfgengine's) Src

    @property
    def language(self) -> str:
        return LANGUAGE[self.module]

    def text(self) -> str:
        return self.script.read_text(encoding="utf-8", errors="replace")

    def provision(self) -> Provision | None:
        """The script beside the config, standing in at the path the config names where
        Kamailio has none there; None for KAMLEAK_DIR/<script> (kamleak's directory)."""
        if self.named.startswith("KAMLEAK_DIR/"):
            return None
        return Provision(self.named, self.script.name, "from beside your config")

    def calls(self, function: str) -> bool:
        """The script calls KSR.<function> (e.g. 'jsonrpcs.dispatch') somewhere."""
        return re.search(r"\bKSR\." + re.escape(function) + r"\s*\(", self.text()) is not None

    def has_registrar(self) -> bool:
        """KSR.registrar.save and .lookup of "location" (see user_config.has_registrar)."""
        return all(re.search(r"\bKSR\.registrar\." + fn + r"\(\s*[\"']location[\"']", self.text())
                   for fn in ("save", "lookup"))


def read(cfg, lines, path: str) -> Kemi | None:
    """The config's KEMI engine and script; None for native routing.

    A cfgengine kamleak has no module for, or a script that is not beside the
    config: one line (UsageError)."""
    engine = src = None
    for s, line in lines:
        m = _CFGENGINE.match(line)
        if m:
            engine, src = m.group(1), s
    if engine is None or engine == NATIVE:
        return None
    where = f"{src.file or path}:{src.line}"
    module = ENGINES.get(engine)
    if module is None or module not in cfg.modules:
        raise UsageError(f'{where}: cfgengine "{engine}" '
                         + (f"without {module}.so loaded" if module else
                            "is not one kamleak gates (KEMI in Lua and Python only)"),
                         "write the routing in Lua (app_lua, cfgengine \"lua\") or Python "
                         "(app_python3, cfgengine \"python\"), or natively")
    load = next((v for p in LOAD_PARAMS if (v := cfg.modparam(module, p))), None)
    if load is None:
        raise UsageError(f'{where}: cfgengine "{engine}" but no modparam("{module}", "load", …) '
                         "names its script",
                         f'add modparam("{module}", "load", "<path of the script>"), the '
                         "script beside the config")
    named = "".join(t.val for t in load[0] if t.kind == "str")
    where = f"{load[1].file or path}:{load[1].line}"
    ours = named.startswith("KAMLEAK_DIR/")
    name = named[len("KAMLEAK_DIR/"):] if ours else Path(named).name
    script = Path(path).resolve().parent / name
    # The contract is read from the script beside the config; a script only where
    # Kamailio runs would run unread.  (Where NAMED exists there, Kamailio runs that
    # one, as it uses a TLS config that exists there.)
    if (ours and "/" in name) or not script.is_file():
        raise UsageError(f"{where}: the {LANGUAGE[module]} script {named} is not beside the "
                         f"config ({script})" + ("" if ours else
                                                 f": kamleak reads it there, and provides it at "
                                                 f"{named} where Kamailio has none"),
                         f"put {Path(name).name} in {script.parent}: kamleak copies the "
                         "files beside the config into Kamailio's KAMLEAK_DIR")
    return Kemi(engine, module, script, named, load[1])


def serves_jsonrpc(kemi: Kemi, cfg) -> bool:
    """HTTP reaches the script (xhttp's event_callback) and it dispatches JSON-RPC."""
    return cfg.modparam("xhttp", "event_callback") is not None and kemi.calls("jsonrpcs.dispatch")


def problems(kemi: Kemi, cfg, jsonrpc: bool) -> list[tuple[object, str, str]]:
    """What the contract asks of routing, asked of the script: (src, what, add).
    JSONRPC: kamleak needs JSON-RPC from it (no ctl.so to read instead)."""
    out: list[tuple[object, str, str]] = []
    if cfg.modparam("xhttp", "event_callback") is None:
        out.append((cfg.modules.get("xhttp"), "routes in KEMI but gives xhttp no event_callback, "
                    "so no HTTP request (WebSocket handshake, /RPC) reaches the script",
                    'modparam("xhttp", "event_callback", "ksr_xhttp_event") and that function '
                    f"in {kemi.script.name}"))
    wanted = [("websocket.handle_handshake", "does not accept WebSocket upgrades",
               "KSR.websocket.handle_handshake()")]
    if jsonrpc:
        wanted.insert(0, ("jsonrpcs.dispatch", "does not serve JSON-RPC",
                          'KSR.jsonrpcs.dispatch() for a path starting with "/RPC", first'))
    for fn, what, add in wanted:
        if not kemi.calls(fn):
            out.append((kemi.src, f"{kemi.script.name}'s xhttp event function {what}",
                        f"{add} in the function xhttp's event_callback names"))
    return out
