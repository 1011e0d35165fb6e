"""The gate as CI uses it: a pytest run whose exit code and JUnit tell the verdict.

Runs `pytest tests/gate/test_gh4140_bye_to_closed_ws.py` in a subprocess,
exactly as a user's pipeline would, against a Kamailio that leaks (Debian
5.6.3 with the realistic trigger) and one that does not (6.1.5).
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GATE = "tests/gate/test_gh4140_bye_to_closed_ws.py"


def run_gate(tmp_path, *args) -> tuple[int, str, ET.Element]:
    junit = tmp_path / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", GATE, "-p", "no:cacheprovider",
                           f"--junitxml={junit}", "--transport", "ws", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert junit.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.returncode, proc.stdout, ET.parse(junit).getroot()


def test_gate_fails_on_a_leaking_kamailio_and_names_the_cell(tmp_path):
    rc, out, junit = run_gate(tmp_path, "--kamailio-version", "5.6.3")
    assert rc == 1, out[-3000:]
    failures = junit.findall(".//testcase/failure")
    assert len(failures) == 1, out[-3000:]
    message = failures[0].get("message", "")
    assert "still in tm.list" in message and "outgoings 0, ref_count 1" in message, message
    assert "500 (1/SL) statelessly" in message, message
    call_id = message.split("Call-ID ", 1)[1].split()[0]
    assert call_id in (failures[0].text or ""), "the leaked cell's Call-ID is in the JUnit text"
    props = {p.get("name"): p.get("value") for p in junit.iter("property")}
    assert props.get("kamleak.outcome") == "leak"


def test_gate_passes_on_a_kamailio_that_frees_the_cell(tmp_path):
    rc, out, junit = run_gate(tmp_path, "--kamailio-version", "6.1.5")
    assert rc == 0, out[-3000:]
    cases = junit.findall(".//testcase")
    assert len(cases) == 1 and not cases[0].findall("failure") and not cases[0].findall("error")
    props = {p.get("name"): p.get("value") for p in junit.iter("property")}
    assert props.get("kamleak.outcome") == "clean"
