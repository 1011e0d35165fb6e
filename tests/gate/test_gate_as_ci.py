"""The gate as CI uses it: a pytest run whose exit code and JUnit tell the verdict.

Runs `pytest tests/gate/test_gh4140_bye_to_closed_ws.py` in a subprocess,
exactly as a user's pipeline would, against a Kamailio that leaks (Debian
5.6.3 with the realistic trigger) and one that does not (6.1.5).
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATE = "tests/gate/test_gh4140_bye_to_closed_ws.py"


def run_gate(tmp_path, *args) -> tuple[int, str, ET.Element]:
    junit = tmp_path / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", GATE, "-p", "no:cacheprovider",
                           f"--junitxml={junit}", "--transport", "ws",
                           f"--kamleak-artifacts={tmp_path / 'artifacts'}", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert junit.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.returncode, proc.stdout, ET.parse(junit).getroot()


def test_gate_fails_on_a_leaking_kamailio_and_names_the_cell(tmp_path):
    rc, out, junit = run_gate(tmp_path, "--kamailio-version", "5.6.3", "--kamleak-html")
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

    # The JUnit file validates and names the cell.
    from junitparser import Failure, JUnitXml
    cases = [c for suite in JUnitXml.fromfile(str(tmp_path / "junit.xml")) for c in suite]
    assert len(cases) == 1 and isinstance(cases[0].result[0], Failure)
    assert call_id in cases[0].result[0].message

    # The evidence tree: everything a Kamailio engineer opens first.
    run = (tmp_path / "artifacts" / "latest").resolve()
    [test_dir] = [d for d in run.iterdir() if d.is_dir()]
    for name in ("kamailio.log", "asterisk.log", "kamailio.cfg", "sip-trace.txt", "verdict.json",
                 "timeline.png", "rpc/tm.list-at-verdict.json", "rpc/tm.stats-before.json",
                 "rpc/tm.stats-after.json", "rpc/ws.dump-after-disconnect.json"):
        assert (test_dir / name).is_file(), name
    for name in ("kamailio.log", "asterisk.log", "sip-trace.txt", "verdict.json",
                 "rpc/tm.list-at-verdict.json"):
        assert call_id in (test_dir / name).read_text(), f"{name} names the leaked call"
    assert (test_dir / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The terminal shows the verdict, the ladder and where the files are; the servers'
    # logs in full go to the JUnit <system-out> (and the files above), not thousands of lines.
    assert "kamleak: verdict, ladder, evidence" in out and "# ladder (UA = " in out, out[-3000:]
    assert f"evidence in {test_dir}/:" in out and "kamailio.cfg  kamailio.log  sip-trace.txt" in out, out[-3000:]
    assert "kamleak: kamailio log" not in out and "kamleak: asterisk log" not in out
    assert "# messages" not in out and len(out.splitlines()) < 150, len(out.splitlines())
    system_out = junit.find(".//testcase/system-out").text or ""
    for title in ("kamleak: kamailio log", "kamleak: asterisk log", "kamleak: SIP trace",
                  "kamleak: kamleak verdict"):
        assert title in system_out, title
    assert call_id in system_out.split("kamleak: asterisk log", 1)[1]
    pcap = test_dir / "capture.pcap"
    if pcap.exists():  # tcpdump/tshark on the host (make setup installs tcpdump)
        assert pcap.read_bytes()[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x0a\x0d\x0d\x0a")
        assert call_id.encode() in pcap.read_bytes()
    else:
        assert "no pcap" in (test_dir / "capture.txt").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert [r["outcome"] for r in summary] == ["leak"] and summary[0]["call_id"] == call_id
    assert summary[0]["kamailio_version"].startswith("kamailio 5.6.3")
    html = (run / "report.html").read_text()
    assert call_id in html and "timeline.png" in html


def test_gate_passes_on_a_kamailio_that_frees_the_cell(tmp_path):
    rc, out, junit = run_gate(tmp_path, "--kamailio-version", "6.1.5")
    assert rc == 0, out[-3000:]
    cases = junit.findall(".//testcase")
    assert len(cases) == 1 and not cases[0].findall("failure") and not cases[0].findall("error")
    props = {p.get("name"): p.get("value") for p in junit.iter("property")}
    assert props.get("kamleak.outcome") == "clean"
    # A pass keeps only the summary...
    run = (tmp_path / "artifacts" / "latest").resolve()
    assert [p.name for p in run.iterdir()] == ["summary.json"]
    assert json.loads((run / "summary.json").read_text())[0]["outcome"] == "clean"


def test_keep_artifacts_keeps_a_passing_test_s_evidence(tmp_path):
    rc, out, _ = run_gate(tmp_path, "--kamailio-version", "6.1.5", "--keep-artifacts")
    assert rc == 0, out[-3000:]
    run = (tmp_path / "artifacts" / "latest").resolve()
    [test_dir] = [d for d in run.iterdir() if d.is_dir()]
    verdict = json.loads((test_dir / "verdict.json").read_text())
    assert verdict["outcome"] == "clean" and verdict["gone_after"] is not None
    assert (test_dir / "timeline.png").is_file()
