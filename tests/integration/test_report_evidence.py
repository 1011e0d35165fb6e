"""The evidence a run leaves: what sip-trace.txt and report.html show (real runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kamleak.harness.probes import capture

ROOT = Path(__file__).resolve().parents[2]
GATE = "tests/gate/test_gh4140_bye_to_closed_ws.py"


@pytest.mark.skipif(capture.available() is None, reason="no tcpdump/tshark: no pcap to read")
@pytest.mark.parametrize("variant, method", [("uac_req_send", "MESSAGE"),
                                             ("pua_dialoginfo", "PUBLISH")])
def test_sip_trace_shows_the_local_request_that_causes_the_leak(tmp_path, kamleak_images,
                                                                variant, method):
    """The trigger's MESSAGE/PUBLISH goes from Kamailio to itself over UDP: in the
    pcap only.  6.1.5 (clean) so the gate passes; --keep-artifacts writes the trace."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", GATE, "--kamailio-version", "6.1.5", "--transport", "ws",
         "--variant", variant, "--keep-artifacts", "--kamleak-artifacts", str(tmp_path),
         "-p", "no:cacheprovider", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "KAMLEAK_RUN_DIR_NAME"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    traces = [t for t in tmp_path.glob("*/*/sip-trace.txt") if "latest" not in t.parts]
    assert len(traces) == 1, list(tmp_path.rglob("*"))
    trace = traces[0].read_text()
    ladder, _, messages = trace.partition("# messages")
    assert f"{method} sip:" in ladder and "(captured)" in ladder, ladder
    assert f"\n    {method} sip:" in messages, "the request in full"
    assert "BYE sip:" in ladder, "the BYE it belongs to"
    # The one that matters is sent while Kamailio handles Asterisk's BYE: after it
    # (pua also publishes the early/confirmed states during the INVITE).
    lines = ladder.splitlines()
    bye = next(i for i, ln in enumerate(lines) if "BYE sip:" in ln and "Asterisk" in ln)
    assert any(f"{method} sip:" in ln for ln in lines[bye:]), ladder


def test_a_config_run_is_labelled_by_its_config(tmp_path, kamleak_images):
    """On the user's config the trigger is the config's: verdict.json, the summary,
    the verdict table, the plot and report.html name the config, not variant `none`."""
    summary = tmp_path / "verdicts.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", GATE, "--kamailio-version", "6.1.5", "--transport", "ws",
         "--kamailio-config", "tests/configs/user/deployment.cfg", "--variant", "none",
         "--keep-artifacts", "--kamleak-html", "--kamleak-artifacts", str(tmp_path / "a"),
         "--kamleak-summary", str(summary), "-p", "no:cacheprovider", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "KAMLEAK_RUN_DIR_NAME"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    import json
    [rec] = json.loads(summary.read_text())
    assert rec["variant"] == "config deployment.cfg"
    table = proc.stdout.split("kamleak verdicts", 1)[1]
    assert "config deployment.cfg" in table and " none " not in table
    [verdict] = [v for v in (tmp_path / "a").glob("*/*/verdict.json") if "latest" not in v.parts]
    assert json.loads(verdict.read_text())["variant"] == "config deployment.cfg"
    [html] = [h for h in (tmp_path / "a").glob("*/report.html") if "latest" not in h.parts]
    assert "variant <code>config deployment.cfg</code>" in html.read_text()
