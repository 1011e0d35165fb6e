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


@pytest.mark.parametrize("cfg_name, engine, module, script", [
    ("kamailio-lua.cfg", "lua", "app_lua", "kamailio-basic-kemi-lua.lua"),
    ("kamailio-python3.cfg", "python", "app_python3", "kamailio-basic-kemi-python.py"),
])
def test_the_fixtures_engine_and_script(cfg_name, engine, module, script):
    k, cfg = read(KEMI / cfg_name)
    assert (k.engine, k.module, k.named) == (engine, module, f"KAMLEAK_DIR/{script}")
    assert k.script == KEMI / script
    # the modparam is in the included file, and is cited there
    assert k.src.file.endswith("kamailio-basic-kemi.cfg") and k.src.line > 0
    assert k.has_registrar() and k.calls("jsonrpcs.dispatch")
    assert k.calls("websocket.handle_handshake") and not k.calls("websocket.close")
    assert kemi.serves_jsonrpc(k, cfg)
    assert check(read_config(str(KEMI / cfg_name)), str(KEMI / cfg_name)) == []
    user = UserConfig.load(str(KEMI / cfg_name))
    assert user.pbx_by_registrar
    # the script travels with the config
    assert KEMI / script in user.siblings()


def test_native_config_has_no_kemi():
    assert read(KEMI.parent / "user" / "deployment.cfg")[0] is None
    # upstream's cfg with no WITH_CFG* define: cfgengine "native"
    assert read(KEMI / "kamailio-basic-kemi.cfg")[0] is None


def test_a_script_missing_beside_the_config_is_one_usage_error(copy):
    (copy / "kamailio-basic-kemi-python.py").unlink()
    with pytest.raises(UsageError) as exc:
        read(copy / "kamailio-python3.cfg")
    line = exc.value.line()
    assert "\n" not in line
    assert line.startswith(f"{copy / 'kamailio-basic-kemi.cfg'}:454: ")
    assert "Python script KAMLEAK_DIR/kamailio-basic-kemi-python.py is not beside the config" in line
    # UserConfig.load (the gate's way in) says the same
    with pytest.raises(UsageError, match="is not beside the config"):
        UserConfig.load(str(copy / "kamailio-python3.cfg"))


def test_a_script_in_a_subfolder_is_not_beside_the_config(copy):
    (copy / "sub").mkdir()
    shutil.move(copy / "kamailio-basic-kemi-lua.lua", copy / "sub" / "kamailio-basic-kemi-lua.lua")
    edit(copy / "kamailio-basic-kemi.cfg", '"KAMLEAK_DIR/kamailio-basic-kemi-lua.lua"',
         '"KAMLEAK_DIR/sub/kamailio-basic-kemi-lua.lua"')
    with pytest.raises(UsageError, match="is not beside the config"):
        read(copy / "kamailio-lua.cfg")


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


def test_a_script_path_kamleak_cannot_see_is_a_contract_problem(copy):
    edit(copy / "kamailio-basic-kemi.cfg", '#!define KEMILOAD "KAMLEAK_DIR/kamailio-basic-kemi-lua.lua"',
         '#!define KEMILOAD "/usr/local/etc/kamailio/kamailio-basic-kemi-lua.lua"')
    k, _ = read(copy / "kamailio-lua.cfg")
    assert k.script is None
    problems = check(read_config(str(copy / "kamailio-lua.cfg")), str(copy / "kamailio-lua.cfg"))
    [p] = [p for p in problems if "Lua script" in p.what]
    assert "/usr/local/etc/kamailio/kamailio-basic-kemi-lua.lua" in p.what
    assert 'modparam("app_lua", "load", "KAMLEAK_DIR/kamailio-basic-kemi-lua.lua")' in p.add
    assert p.file.endswith("kamailio-basic-kemi.cfg") and p.line


def test_the_contract_reads_the_scripts_xhttp_function(copy):
    # no WebSocket handshake, no JSON-RPC: both named, on the modparam that loads the script
    edit(copy / "kamailio-basic-kemi-lua.lua", "KSR.websocket.handle_handshake()", "true")
    edit(copy / "kamailio-basic-kemi-lua.lua", "KSR.jsonrpcs.dispatch();", "")
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
    # the fixture loads ctl.so too: JSON-RPC stays the first choice
    assert UserConfig.load(str(KEMI / "kamailio-lua.cfg")).rpc.over == "jsonrpc"
    # without KSR.jsonrpcs.dispatch() in the script: ctl, and the contract asks nothing more
    edit(copy / "kamailio-basic-kemi-lua.lua", "KSR.jsonrpcs.dispatch();", "")
    user = UserConfig.load(str(copy / "kamailio-lua.cfg"))
    assert user.rpc.over == "ctl" and "KSR.jsonrpcs.dispatch()" in user.rpc.why
