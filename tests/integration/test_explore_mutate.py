"""`kamleak explore --mutate-config` on real Kamailio: every mutation point starts a
real Kamailio (`kamailio -c` stops before function fixups, a start does not), and a
finding's config mutation travels with its flow: the replay leaks where the 4140
mechanism is and not where bd0aaf89b8 frees the orphan."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kamleak.harness.errors import ServerError
from kamleak.harness.stack.targets import Target
from kamleak.harness.tools.explore import mutate

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kamailio_target", [Target("version", "6.1.5")], ids=["debian-6.1.5"], indirect=True)
def test_every_mutation_point_starts_a_real_kamailio(kamailio_factory, kamailio_target):
    refused = {}
    for point in mutate.POINTS:
        try:
            kamailio_factory(defines=(point.define,)).stop()
        except ServerError as exc:
            refused[point.name] = exc.cause
    # 6.1.5 has every function and parameter a point uses (delayed_reply since 6.1.0).
    assert refused == {}, refused


@pytest.mark.parametrize("version, verdict, code", [("6.0.1", "LEAK", 1), ("6.1.5", "CLEAN", 0)])
def test_a_findings_config_mutation_replays_with_its_flow(kamleak_images, tmp_path, version, verdict, code):
    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps({"transport": "ws", "steps": ["invite:answer", "rst", "pbx_bye"],
                                "config_mutation": "uac_req_send@request:BYE"}))
    proc = subprocess.run([sys.executable, "-m", "kamleak.harness.tools.cli", "explore",
                           "--kamailio-version", version, "--replay", str(flow), "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == code, proc.stdout + proc.stderr[-2000:]
    assert f"{verdict}: ws: invite:answer, rst, pbx_bye" in proc.stdout
    assert "config mutation uac_req_send@request:BYE" in proc.stdout
