"""The user's own kamailio.cfg under test (`--kamailio-config`, `kamleak gate --config`).

tests/configs/user/deployment.cfg is a WebRTC edge shaped like a real
deployment (stock-config layout, BLF with pua_dialoginfo, the stock
`sl_reply_error()`): it leaks on Debian's 6.0.1 and not on 6.1.5.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "tests/configs/user/deployment.cfg"


def kamleak(*args):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_gate_on_the_users_config_finds_the_leak(kamleak_images):
    proc = kamleak("gate", "--kamailio-config", CONFIG, "--kamailio-version", "6.0.1")
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.startswith("kamleak gate: LEAK: BYE Call-ID")


def test_gate_on_the_users_config_over_wss_on_a_fixed_kamailio(kamleak_images):
    proc = kamleak("gate", "--kamailio-config", CONFIG, "--kamailio-version", "6.1.5", "--transport", "wss")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.startswith("kamleak gate: CLEAN: BYE Call-ID")


def test_pytest_option_runs_the_gate_on_the_users_config(kamleak_images, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/gate/test_gh4140_bye_to_closed_ws.py",
         "-p", "no:cacheprovider", "--kamailio-config", CONFIG, "--kamailio-version", "6.0.1",
         "--transport", "ws", "--variant", "none", f"--kamleak-artifacts={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "still in tm.list" in proc.stdout
    cfg = next(tmp_path.glob("latest/*/kamailio.cfg")).read_text()
    assert "route[TOPBX]" in cfg and "#!define KAMLEAK" in cfg


def test_a_broken_users_config_is_refused_before_any_run(tmp_path):
    broken = tmp_path / "kamailio.cfg"
    broken.write_text((ROOT / CONFIG).read_text().replace("jsonrpc_dispatch();", ""))
    proc = kamleak("gate", "--kamailio-config", str(broken), "--kamailio-version", "6.0.1")
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"kamleak: {broken}:")
    assert "event_route[xhttp:request] does not serve JSON-RPC; add: if ($hu =~" in line
