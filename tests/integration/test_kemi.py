"""KEMI configs under the gate: routing in Lua (app_lua) and Python (app_python3).

tests/configs/kemi/ is upstream's KEMI example (5.8.5) with WebSocket handling and
the 4140 trigger in its scripts (README.md there).  The gate runs it as a user
would, the script travelling beside the config and loaded from the path upstream
names (/usr/local/etc/kamailio/<script>: kamleak provides it there), read over
ctl (upstream's example serves no JSON-RPC over HTTP); the mitigation is the same
scripts with KSR.sl.send_reply_error() after the failed t_relay().
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kamleak.harness.stack import containers
from tests.unit.test_kemi import UPSTREAM_DIR, serve_jsonrpc
from tests.unit.test_source_build import offline_source

SOURCE = offline_source()

ROOT = Path(__file__).resolve().parents[2]
KEMI = ROOT / "tests" / "configs" / "kemi"
ENGINES = ["lua", "python3"]

# The reply after a failed t_relay() in ksr_route_relay(), as upstream writes it,
# and the mitigation (sl.c's send_reply_error: the transaction's reply where there is one).
RELAY_ERROR = {
    "kamailio-basic-kemi-lua.lua": ("if KSR.tm.t_relay()<0 then\n\t\tKSR.sl.sl_reply_error();",
                                    "if KSR.tm.t_relay()<0 then\n\t\tKSR.sl.send_reply_error();"),
    "kamailio-basic-kemi-python.py": ("if KSR.tm.t_relay()<0 :\n            KSR.sl.sl_reply_error()",
                                      "if KSR.tm.t_relay()<0 :\n            KSR.sl.send_reply_error()"),
}


def provided(engine: str) -> str:
    """The gate's report line: the script at upstream's path, and RPC over ctl."""
    script = {"lua": "kamailio-basic-kemi-lua.lua", "python3": "kamailio-basic-kemi-python.py"}[engine]
    return (f"kamleak provided: {script} at {UPSTREAM_DIR}/{script} (absent where Kamailio runs: "
            "from beside your config); RPC over ctl: jsonrpcs has no HTTP transport")


def gate(cfg: Path, version: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`kamleak gate` on Debian's VERSION, or on upstream's tag built from source ("ref:5.8.5")."""
    build = ("--kamailio-ref", version[4:]) if version.startswith("ref:") else ("--kamailio-version", version)
    return subprocess.run([sys.executable, "-m", "kamleak.harness.tools.cli", "gate",
                           "--kamailio-config", str(cfg), *build],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL,
                          env={**os.environ, **({"KAMLEAK_KAMAILIO_SOURCE": SOURCE} if SOURCE else {})})


def copy_of_fixtures(tmp_path: Path) -> Path:
    d = tmp_path / "kemi"
    shutil.copytree(KEMI, d)
    return d


def mitigated(tmp_path: Path) -> Path:
    d = copy_of_fixtures(tmp_path)
    for name, (old, new) in RELAY_ERROR.items():
        text = (d / name).read_text()
        assert text.count(old) == 1, f"{name}: the relay's error reply moved"
        (d / name).write_text(text.replace(old, new))
    return d


@pytest.mark.parametrize("engine", ENGINES)
def test_trigger_in_the_script_leaks_on_601(kamleak_images, engine):
    proc = gate(KEMI / f"kamailio-{engine}.cfg", "6.0.1")
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.startswith("kamleak gate: LEAK: BYE Call-ID"), proc.stdout
    assert "(1/SL) statelessly" in proc.stdout
    assert provided(engine) in proc.stdout


@pytest.mark.parametrize("engine", ENGINES)
def test_send_reply_error_in_the_script_is_clean_on_601(kamleak_images, engine, tmp_path):
    proc = gate(mitigated(tmp_path) / f"kamailio-{engine}.cfg", "6.0.1")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.startswith("kamleak gate: CLEAN: BYE Call-ID"), proc.stdout
    assert "(1/TM) statefully" in proc.stdout


@pytest.mark.parametrize("engine", ENGINES)
def test_trigger_and_mitigation_are_clean_on_615(kamleak_images, engine, tmp_path):
    # Debian's 6.1.5 carries bd0aaf89b8: the stateless reply, then the stateful one, and the
    # cell freed.
    proc = gate(KEMI / f"kamailio-{engine}.cfg", "6.1.5")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.startswith("kamleak gate: CLEAN: BYE Call-ID"), proc.stdout
    assert "then 500 (2/TM) statefully" in proc.stdout
    assert provided(engine) in proc.stdout
    proc = gate(mitigated(tmp_path) / f"kamailio-{engine}.cfg", "6.1.5")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "(1/TM) statefully" in proc.stdout


@pytest.mark.parametrize("engine", ENGINES)
def test_trigger_in_the_script_leaks_on_563(kamleak_images, engine):
    proc = gate(KEMI / f"kamailio-{engine}.cfg", "5.6.3")
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.startswith("kamleak gate: LEAK: BYE Call-ID"), proc.stdout


def test_a_script_that_serves_json_rpc_is_read_over_it(kamleak_images, tmp_path):
    # JSON-RPC over HTTP added (jsonrpcs's transport, KSR.jsonrpcs.dispatch() for /RPC):
    # kamleak reads tm.list there instead of over ctl, and the verdict is the same
    d = copy_of_fixtures(tmp_path)
    serve_jsonrpc(d)
    proc = gate(d / "kamailio-lua.cfg", "6.0.1")
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.startswith("kamleak gate: LEAK: BYE Call-ID"), proc.stdout
    assert "RPC over ctl" not in proc.stdout
    assert "kamleak provided: kamailio-basic-kemi-lua.lua at " in proc.stdout


@pytest.mark.serial
@pytest.mark.skipif(SOURCE is None, reason="no offline Kamailio history "
                    "(../shared/kamailio-src or KAMLEAK_KAMAILIO_SOURCE)")
@pytest.mark.parametrize("engine", ENGINES)
def test_a_source_build_carries_the_scripts_module(kamleak_images, engine, tmp_path):
    # upstream 5.8.5 built with the modules the config loads: app_lua or app_python3 among
    # them; its tm keeps the exact-equality test (bd0aaf89b8 is master only)
    proc = gate(KEMI / f"kamailio-{engine}.cfg", "ref:5.8.5", timeout=1800)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.startswith("kamleak gate: LEAK: BYE Call-ID"), proc.stdout
    proc = gate(mitigated(tmp_path) / f"kamailio-{engine}.cfg", "ref:5.8.5")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "(1/TM) statefully" in proc.stdout


# ---- bad input: one line, exit 128 (the gate's "bad input"), no container --------------------------------------------

def refused(cfg: Path, docker_client) -> str:
    proc = subprocess.Popen([sys.executable, "-m", "kamleak.harness.tools.cli", "gate",
                             "--kamailio-config", str(cfg), "--kamailio-version", "6.0.1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128, out + err
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert not containers.started_by(docker_client, proc.pid)
    return err.strip()


def test_a_script_missing_beside_the_config_is_one_line(tmp_path, docker_client):
    d = copy_of_fixtures(tmp_path)
    (d / "kamailio-basic-kemi-lua.lua").unlink()
    line = refused(d / "kamailio-lua.cfg", docker_client)
    assert line.startswith(f"kamleak: {d / 'kamailio-basic-kemi.cfg'}:"), line
    # both places: upstream's path (where kamleak would provide it) and beside the config
    assert (f"Lua script {UPSTREAM_DIR}/kamailio-basic-kemi-lua.lua is not beside the config "
            f"({d / 'kamailio-basic-kemi-lua.lua'}): kamleak reads it there, and provides it at "
            f"{UPSTREAM_DIR}/kamailio-basic-kemi-lua.lua where Kamailio has none") in line
    assert f"put kamailio-basic-kemi-lua.lua in {d}" in line


def test_a_cfgengine_kamleak_has_no_module_for_is_one_line(tmp_path, docker_client):
    d = copy_of_fixtures(tmp_path)
    (d / "kamailio-jsdt.cfg").write_text('#!KAMAILIO\n#!define WITH_CFGJSDT\n'
                                         'include_file "kamailio-basic-kemi.cfg"\n')
    line = refused(d / "kamailio-jsdt.cfg", docker_client)
    assert 'cfgengine "jsdt" is not one kamleak gates' in line, line
    assert "Lua (app_lua" in line and "Python (app_python3" in line
