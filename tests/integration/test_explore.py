"""`kamleak explore` on real Kamailio and Asterisk: it finds the 4140 leak where it is, and
nothing where it is not. Short campaigns (narrowed steps, a fixed seed); the long ones
and the rediscovery table are `make explore` (docs/explore.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kamleak.harness.probes.capture import available, udp_datagrams
from kamleak.harness.sip.message import SipMessage

ROOT = Path(__file__).resolve().parents[2]
STEPS = "invite,invite_se,reinvite,options,bye,pbx_bye,rst,fin,pause"


def explore(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "kamleak.harness.tools.cli", "explore", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_a_short_campaign_finds_shrinks_and_confirms_the_4140_leak(kamleak_images, tmp_path):
    out = tmp_path / "ex"
    proc = explore("--kamailio-version", "6.0.1", "--variant", "pua_dialoginfo", "--steps", STEPS,
                   "--answers", "answer", "--budget", "8m", "--seed", "4140", "--out", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    (finding,) = summary["findings"]
    steps = [s.partition(":")[0] for s in finding["flow"]["steps"]]
    # The shrunk flow is the report's: a call, the client's connection dies, the PBX hangs up.
    assert len(steps) <= 6 and steps[0] in ("invite", "invite_se"), steps
    assert steps[-1] == "pbx_bye" and steps[-2] in ("rst", "fin"), steps
    assert finding["sure"] and finding["confirmed"] == finding["replays"] == 3
    assert "BYE" in finding["signature"] and "out0/ref1" in finding["signature"]
    assert "the bound agrees" not in " ".join(finding["evidence"])   # the campaign's own proof
    # A confirming replay's files: the PBX's BYE in the pcap, its Call-ID in both logs.
    files, d = finding["replay_files"], out / "finding-1"
    assert files["replay"] == 1 and {"kamailio.log", "asterisk.log", "sip-trace.txt"} <= set(files["files"])
    if available() is None:
        assert files["pcap"].startswith("not captured (neither tcpdump nor tshark"), files
    else:
        assert files["pcap"] == "capture.pcap", files
        byes = [SipMessage.parse(x.payload) for x in udp_datagrams((d / "capture.pcap").read_bytes())
                if x.payload.startswith(b"BYE ")]
        assert byes, "no BYE in the replay's pcap"
        assert byes[0].call_id in (d / "kamailio.log").read_text()
        assert byes[0].call_id in (d / "asterisk.log").read_text()
    test_file = next((out / "finding-1").glob("test_explore_*.py"))
    # The emitted regression test fails where the leak is and passes where it is not.
    run = subprocess.run([sys.executable, "-m", "pytest", str(test_file), "-p", "no:cacheprovider",
                          "--kamailio-version", "6.0.1,6.1.5", "--rootdir", str(out), "-q"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "1 failed, 1 passed" in run.stdout, run.stdout[-3000:]
    assert "debian-6.0.1] FAILED" in run.stdout or "test_explore_finding[debian-6.0.1]" in run.stdout
    again = explore("--kamailio-version", "6.0.1", "--variant", "pua_dialoginfo",
                    "--replay", str(out / "finding-1" / "flow.json"), "--out", str(tmp_path / "r"))
    assert again.returncode == 1 and "LEAK:" in again.stdout, again.stdout + again.stderr[-2000:]
    assert f"files of this replay in {tmp_path / 'r'}: asterisk.log" in again.stdout, again.stdout
    assert (tmp_path / "r" / "kamailio.log").is_file()


def test_a_short_campaign_on_a_clean_build_finds_nothing(kamleak_images, tmp_path):
    proc = explore("--kamailio-version", "6.1.5", "--variant", "pua_dialoginfo", "--steps", STEPS,
                   "--answers", "answer", "--max-flows", "40", "--budget", "5m", "--seed", "4140",
                   "--out", str(tmp_path / "ex"))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "ex" / "summary.json").read_text())
    assert summary["findings"] == [] and summary["flows"] >= 40, summary
    assert summary["harness_errors"] == 0, summary


@pytest.mark.parametrize("args, message", [
    (["--steps", "invite,moonwalk"], "unknown step 'moonwalk'"),
    (["--budget", "0"], "a budget of 0 explores nothing"),
    (["--budget", "soon"], "not a budget: 'soon'"),
    (["--answers", "maybe"], "unknown PBX answer 'maybe'"),
    (["--replay", "/nonexistent/flow.json"], "cannot read the flow /nonexistent/flow.json"),
])
def test_bad_input_is_one_line_and_starts_nothing(args, message, tmp_path):
    proc = explore(*args, "--out", str(tmp_path / "ex"), timeout=60)
    assert proc.returncode == 128, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
