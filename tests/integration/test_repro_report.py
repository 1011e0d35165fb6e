"""`make repro` is the report of Kamailio issue 4140, for real: `kamleak repro` with no
option (what the Makefile runs) on upstream 5.8.5 built from source, the report's
steps beside what Kamailio did, its 477 (477/SL), then send_reply_error() beside it.

The source is the offline copy of upstream's history beside the checkout (or
$KAMLEAK_KAMAILIO_SOURCE); without one this skips.  The 5.8.5 test is
serial: its first run builds 5.8.5, which test_source_build.py and the upstream
matrix reuse.  `make repro VERSION=6.0.1`, the documented quick path on Debian's
package, takes the report's failure path too.
"""

from __future__ import annotations

import re

import pytest

from kamleak.harness.stack import source_build
from tests.integration.test_cli_workflows import kamleak
from tests.unit.test_source_build import offline_source

SOURCE = offline_source()
pytestmark = pytest.mark.kamailio
needs_source = pytest.mark.skipif(SOURCE is None, reason="no offline Kamailio history "
                                  "(../shared/kamailio-src or KAMLEAK_KAMAILIO_SOURCE)")


def _step(out: str, n: int, step: str) -> str:
    """What Kamailio did at the report's step N (its line in the steps table)."""
    m = re.search(rf"^  {n}\. {re.escape(step)}\s*\| (.*)$", out, re.M)
    assert m, f"step {n} '{step}' missing:\n{out[:4000]}"
    return m.group(1)


@needs_source
@pytest.mark.serial     # its first run builds 5.8.5 (minutes of both cores)
def test_make_repro_is_the_report_on_585(kamleak_images, monkeypatch):
    monkeypatch.setenv(source_build.SOURCE_ENV, SOURCE)
    proc = kamleak("repro", timeout=1800)    # the environment: the source, as make exports it
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-3000:]
    assert "target src:5.8.5, WSS client, gone by RST+ADVERTISE" in out
    deployed, mitigated = out.split("── mitigated: pua_dialoginfo+send_reply_error", 1)
    deployed = deployed.split("── as deployed: pua_dialoginfo with sl_reply_error()", 1)[1]
    mitigated, side = mitigated.split("── side by side", 1)

    # The report's steps, each with this run's evidence.
    assert _step(deployed, 1, "Kamailio idle").startswith("kamailio 5.8.5 ")
    assert _step(deployed, 2, "one WSS client").startswith("ws.dump: 1 connection(s)")
    assert "relayed to Asterisk, 200 back" in _step(deployed, 3, "INVITE with session timers")
    assert "relayed, 200 back" in _step(deployed, 4, "re-INVITE (refresh)")
    assert "disconnect (rst+advertise);" in _step(deployed, 5, "client killed, then wait")
    assert "ws.dump: gone" in _step(deployed, 5, "client killed, then wait")
    assert re.match(r"t= *\d+\.\d+ s  Asterisk hangs up on command", _step(deployed, 6, "the PBX sends BYE"))
    assert _step(deployed, 7, "Kamailio replies") == \
        "477 Unfortunately error on sending to next hop occurred (477/SL)"
    assert "msg_send_buffer(): TCP/TLS connection for WebSocket could not be found" in \
        _step(deployed, 8, "Kamailio's log")
    assert _step(deployed, 9, "tm.list").startswith("1 BYE cell(s)")
    assert "outgoings 1, ref_count 1" in deployed     # the send failed after the branch was added
    assert "Verdict: LEAK: BYE Call-ID" in deployed

    # The report's mitigation: the same steps, the same 477, now stateful, and nothing left.
    assert _step(mitigated, 1, "Kamailio idle").startswith("kamailio 5.8.5 ")
    assert _step(mitigated, 7, "Kamailio replies").startswith(
        "477 Unfortunately error on sending to next hop occurred (477/TM)")
    assert _step(mitigated, 9, "tm.list").startswith("0 BYE cell(s)")
    assert "Verdict: CLEAN: BYE Call-ID" in mitigated

    rows = {line.split("  ")[1].strip(): line for line in side.splitlines() if line.startswith("  ")}
    assert re.search(r"477 \(477/SL\) statelessly\s+477 \(477/TM\) statefully", rows["reply to the BYE"])
    assert re.search(r"LEAK\s+CLEAN$", rows["verdict"])


def test_the_quick_debian_path_takes_the_reports_failure_path(kamleak_images):
    """Debian's 6.0.1 with the report's defaults: the same 477 from msg_send_buffer()
    (docs/disconnects.md, 20/20), and send_reply_error() removes the leak."""
    proc = kamleak("repro", "--kamailio-version", "6.0.1")
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-3000:]
    assert "target debian-6.0.1, WSS client, gone by RST+ADVERTISE" in out
    deployed, rest = out.split("── mitigated: pua_dialoginfo+send_reply_error", 1)
    assert _step(deployed, 7, "Kamailio replies") == \
        "477 Unfortunately error on sending to next hop occurred (477/SL)"
    assert "msg_send_buffer(): TCP/TLS connection for WebSocket could not be found" in \
        _step(deployed, 8, "Kamailio's log")
    assert "Verdict: LEAK: BYE Call-ID" in deployed and "Verdict: CLEAN: BYE Call-ID" in rest
