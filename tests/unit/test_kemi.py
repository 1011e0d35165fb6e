"""Reading a KEMI config (harness/stack/kamailio/kemi.py) and the contract it meets.

On the fixtures of tests/configs/kemi/ (upstream's KEMI example, 5.8.5) and on
small edits of copies; no container.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kamleak.harness.errors import UsageError
from kamleak.harness.stack.kamailio import kemi
from kamleak.harness.stack.kamailio.cfg import parse, read_config
from kamleak.harness.stack.kamailio.config import KamailioConfig, Provision
from kamleak.harness.stack.kamailio.user_config import HARNESS_DEFINES, UserConfig, check

KEMI = Path(__file__).resolve().parents[1] / "configs" / "kemi"


def read(path: Path):
    cfg, lines = parse(read_config(str(path)), defines=HARNESS_DEFINES, path=str(path))
    return kemi.read(cfg, lines, str(path)), cfg


@pytest.fixture
def copy(tmp_path) -> Path:
    d = tmp_path / "kemi"
    shutil.copytree(KEMI, d)
    return d


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


UPSTREAM_DIR = "/usr/local/etc/kamailio"   # where upstream's example loads its script from

# kamleak's JSON-RPC over HTTP, added to a copy of the fixtures (upstream's example serves
# none; kamleak reads it over ctl): the transport, and /RPC dispatched first in the scripts'
# xhttp event function.
JSONRPC = {
    "kamailio-basic-kemi.cfg": ('modparam("jsonrpcs", "pretty_format", 1)\n',
                                'modparam("jsonrpcs", "pretty_format", 1)\n'
                                'modparam("jsonrpcs", "transport", 7)\n'),
    "kamailio-basic-kemi-lua.lua": ("function ksr_xhttp_event(evname)\n",
                                    "function ksr_xhttp_event(evname)\n"
                                    '\tif string.find(KSR.pv.gete("$hu"), "^/RPC") then\n'
                                    "\t\tKSR.jsonrpcs.dispatch();\n\t\treturn 1;\n\tend\n"),
    "kamailio-basic-kemi-python.py": ("    def ksr_xhttp_event(self, msg, evname):\n",
                                      "    def ksr_xhttp_event(self, msg, evname):\n"
                                      '        if KSR.pv.gete("$hu").startswith("/RPC") :\n'
                                      "            KSR.jsonrpcs.dispatch()\n"
                                      "            return 1\n"),
}


def serve_jsonrpc(d: Path) -> None:
    """The fixtures in D serve kamleak JSON-RPC over HTTP."""
    for name, (old, new) in JSONRPC.items():
        edit(d / name, old, new)


@pytest.mark.parametrize("cfg_name, engine, module, script", [
    ("kamailio-lua.cfg", "lua", "app_lua", "kamailio-basic-kemi-lua.lua"),
    ("kamailio-python3.cfg", "python", "app_python3", "kamailio-basic-kemi-python.py"),
])
def test_the_fixtures_engine_and_script(cfg_name, engine, module, script):
    k, cfg = read(KEMI / cfg_name)
    # the load path as upstream wrote it; the script read from beside the config
    assert (k.engine, k.module, k.named) == (engine, module, f"{UPSTREAM_DIR}/{script}")
    assert k.script == KEMI / script
    # the modparam is in the included file, and is cited there
    assert k.src.file.endswith("kamailio-basic-kemi.cfg") and k.src.line > 0
    assert k.has_registrar() and not k.calls("jsonrpcs.dispatch")
    assert k.calls("websocket.handle_handshake") and not k.calls("websocket.close")
    assert not kemi.serves_jsonrpc(k, cfg)
    assert check(read_config(str(KEMI / cfg_name)), str(KEMI / cfg_name)) == []
    user = UserConfig.load(str(KEMI / cfg_name))
    assert user.pbx_by_registrar
    # the script travels with the config, and stands in at upstream's path where Kamailio has none
    assert KEMI / script in user.siblings()
    assert user.provisions == (Provision(f"{UPSTREAM_DIR}/{script}", script, "from beside your config"),)


def test_native_config_has_no_kemi():
    assert read(KEMI.parent / "user" / "deployment.cfg")[0] is None
    # upstream's cfg with no WITH_CFG* define: cfgengine "native"
    assert read(KEMI / "kamailio-basic-kemi.cfg")[0] is None


def test_a_script_missing_beside_the_config_is_one_usage_error(copy):
    """Neither beside the config nor (kamleak cannot read it there) only where Kamailio
    runs: one line naming both places."""
    (copy / "kamailio-basic-kemi-python.py").unlink()
    with pytest.raises(UsageError) as exc:
        read(copy / "kamailio-python3.cfg")
    line = exc.value.line()
    assert "\n" not in line
    n = (copy / "kamailio-basic-kemi.cfg").read_text().split("\n").index(
        'modparam(KEMIMODULE, "load", KEMILOAD)') + 1
    assert line.startswith(f"{copy / 'kamailio-basic-kemi.cfg'}:{n}: ")
    assert (f"the Python script {UPSTREAM_DIR}/kamailio-basic-kemi-python.py is not beside the "
            f"config ({copy / 'kamailio-basic-kemi-python.py'}): kamleak reads it there, and provides "
            f"it at {UPSTREAM_DIR}/kamailio-basic-kemi-python.py where Kamailio has none") in line
    assert f"put kamailio-basic-kemi-python.py in {copy}" in line
    # UserConfig.load (the gate's way in) says the same
    with pytest.raises(UsageError, match="is not beside the config"):
        UserConfig.load(str(copy / "kamailio-python3.cfg"))
    # named under KAMLEAK_DIR (kamleak's directory) the same, without a path to provide at
    edit(copy / "kamailio-basic-kemi.cfg",
         f'"app_python3"\n#!define KEMILOAD "{UPSTREAM_DIR}/kamailio-basic-kemi-python.py"',
         '"app_python3"\n#!define KEMILOAD "KAMLEAK_DIR/kamailio-basic-kemi-python.py"')
    with pytest.raises(UsageError) as exc:
        read(copy / "kamailio-python3.cfg")
    assert "Python script KAMLEAK_DIR/kamailio-basic-kemi-python.py is not beside the config (" \
        in exc.value.line() and "provides" not in exc.value.line()


@pytest.mark.parametrize("named", ["KAMLEAK_DIR/sub/kamailio-basic-kemi-lua.lua",
                                   f"{UPSTREAM_DIR}/kamailio-basic-kemi-lua.lua"])
def test_a_script_in_a_subfolder_is_not_beside_the_config(copy, named):
    (copy / "sub").mkdir()
    shutil.move(copy / "kamailio-basic-kemi-lua.lua", copy / "sub" / "kamailio-basic-kemi-lua.lua")
    edit(copy / "kamailio-basic-kemi.cfg", f'"{UPSTREAM_DIR}/kamailio-basic-kemi-lua.lua"', f'"{named}"')
    with pytest.raises(UsageError, match="is not beside the config"):
        read(copy / "kamailio-lua.cfg")


@pytest.mark.parametrize("named", [f"{UPSTREAM_DIR}/kamailio-basic-kemi-lua.lua",
                                   "kamailio-basic-kemi-lua.lua", "scripts/kamailio-basic-kemi-lua.lua"])
def test_a_script_path_kamailio_lacks_is_provided_from_beside_the_config(copy, tmp_path, named):
    """Absolute or relative, the path as written: where Kamailio has no such file, a #!subst
    in the header points it at the script beside the config (copied into KAMLEAK_DIR), and
    the report says so; the TLS config's mechanism (config.Provision)."""
    edit(copy / "kamailio-basic-kemi.cfg", f'"{UPSTREAM_DIR}/kamailio-basic-kemi-lua.lua"', f'"{named}"')
    user = UserConfig.load(str(copy / "kamailio-lua.cfg"))
    [p] = user.provisions
    assert (p.path, p.name) == (named, "kamailio-basic-kemi-lua.lua")
    cfg = KamailioConfig(5070, 8080, 4443, 5080, rpc_port=8081, ctl_port=8082, user_config=user,
                         provisions=user.provisions)
    escaped = named.replace(".", "\\.")
    assert f'\n#!subst "!{escaped}!/etc/kamleak/kamailio-basic-kemi-lua.lua!g"\n' in cfg.header()
    assert cfg.provided() == [
        f"kamailio-basic-kemi-lua.lua at {named} (absent where Kamailio runs: from beside your config)",
        "RPC over ctl: jsonrpcs has no HTTP transport (kamleak's BINRPC socket tcp:127.0.0.1:8082)"]
    assert cfg.tls_provided is None
    out = tmp_path / "run"
    cfg.write(out)
    assert (out / "kamailio-basic-kemi-lua.lua").read_text() == \
        (copy / "kamailio-basic-kemi-lua.lua").read_text()
    # where Kamailio has the file (Kamailio.start keeps only the absent): no #!subst, nothing listed
    kept = KamailioConfig(5070, 8080, 4443, 5080, rpc_port=8081, ctl_port=8082, user_config=user)
    assert '#!subst "' not in kept.header() and len(kept.provided()) == 1


def test_a_script_named_under_kamleak_dir_still_runs_from_there(copy):
    """Users who wrote KAMLEAK_DIR/<script> under KAMLEAK (before kamleak provided it): as then."""
    edit(copy / "kamailio-basic-kemi.cfg", f'"{UPSTREAM_DIR}/kamailio-basic-kemi-lua.lua"',
         '"KAMLEAK_DIR/kamailio-basic-kemi-lua.lua"')
    k, _ = read(copy / "kamailio-lua.cfg")
    assert k.script == copy / "kamailio-basic-kemi-lua.lua" and k.provision() is None
    user = UserConfig.load(str(copy / "kamailio-lua.cfg"))
    assert user.provisions == ()
    cfg = KamailioConfig(5070, 8080, 4443, 5080, ctl_port=8082, user_config=user)
    assert '#!subst "' not in cfg.header()
    assert '#!substdef "!KAMLEAK_DIR!/etc/kamleak!g"' in cfg.header()


@pytest.mark.parametrize("define, engine", [("WITH_CFGJSDT", "jsdt"), ("WITH_CFGRUBY", "ruby"),
                                            ("WITH_CFGPYTHON3S", "python")])
def test_an_engine_kamleak_has_no_module_for_is_one_usage_error(copy, define, engine):
    (copy / "other.cfg").write_text(f'#!KAMAILIO\n#!define {define}\n'
                                    'include_file "kamailio-basic-kemi.cfg"\n')
    with pytest.raises(UsageError) as exc:
        read(copy / "other.cfg")
    line = exc.value.line()
    assert "\n" not in line and f'cfgengine "{engine}"' in line
    # app_python3s registers "python" too: kamleak wants app_python3 for it
    if define == "WITH_CFGPYTHON3S":
        assert "without app_python3.so loaded" in line


def test_the_contract_reads_the_scripts_xhttp_function(copy):
    # no WebSocket handshake, no JSON-RPC: both named, on the modparam that loads the script
    edit(copy / "kamailio-basic-kemi-lua.lua", "KSR.websocket.handle_handshake()", "true")
    edit(copy / "kamailio-basic-kemi.cfg", 'loadmodule "ctl.so"\n', "")
    cfg_path = str(copy / "kamailio-lua.cfg")
    whats = [p.what for p in check(read_config(cfg_path), cfg_path)]
    assert any("does not accept WebSocket upgrades" in w for w in whats), whats
    assert any("does not serve JSON-RPC" in w for w in whats), whats
    # without xhttp's event_callback nothing reaches the script
    edit(copy / "kamailio-basic-kemi.cfg", 'modparam("xhttp", "event_callback", "ksr_xhttp_event")', "")
    whats = [p.what for p in check(read_config(cfg_path), cfg_path)]
    assert any("gives xhttp no event_callback" in w for w in whats), whats


def test_a_kemi_config_needs_no_native_request_route():
    k, cfg = read(KEMI / "kamailio-lua.cfg")
    assert k is not None and ("request", "") not in cfg.routes and not cfg.routes


def test_kamleak_reads_a_kemi_config_over_json_rpc_when_its_script_dispatches_it(copy):
    # upstream's example serves no JSON-RPC over HTTP but loads ctl.so: ctl, nothing to edit
    user = UserConfig.load(str(KEMI / "kamailio-lua.cfg"))
    assert (user.rpc.over, user.rpc.why) == ("ctl", "jsonrpcs has no HTTP transport")
    # with the transport and KSR.jsonrpcs.dispatch() in the script: JSON-RPC, the first choice
    serve_jsonrpc(copy)
    for name in ("kamailio-lua.cfg", "kamailio-python3.cfg"):
        assert UserConfig.load(str(copy / name)).rpc.over == "jsonrpc", name
    # the transport without the dispatch: ctl, and the contract asks nothing more
    edit(copy / "kamailio-basic-kemi-lua.lua", "KSR.jsonrpcs.dispatch();", "")
    user = UserConfig.load(str(copy / "kamailio-lua.cfg"))
    assert user.rpc.over == "ctl" and "KSR.jsonrpcs.dispatch()" in user.rpc.why
