"""The PNG timeline and the HTML report, from synthetic run records (no Docker)."""

from __future__ import annotations

import re
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from kamleak.harness.reporting.html import render_html
from kamleak.harness.reporting.plot import PlotHints, render_timeline

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHM0 = 3441968


def _samples(until: float, bye: float, drain_at: float | None) -> list[dict]:
    """tm.stats/shm every 0.1 s: INVITE + re-INVITE transactions come and go,
    the BYE creates one more; it is freed at drain_at (None: never)."""
    out = []
    for i in range(int(until / 0.1) + 1):
        t = round(i * 0.1, 3)
        created = freed = 0
        if t >= 0.0:
            created += 1                 # INVITE
        if t >= 0.1:
            created += 1                 # re-INVITE
        if t >= 0.2:
            freed += 2                   # both completed (wait timer is short here)
        if t >= bye:
            created += 1                 # the BYE
        if drain_at is not None and t >= drain_at:
            freed += 1
        current = created - freed
        out.append({"t": t, "current": current, "waiting": 1 if 0.1 <= t < 0.2 else 0,
                    "created": created, "freed": freed,
                    "shm_used": SHM0 + 18432 * min(i, 3) + (i * 37 % 5) * 1024 + 2048 * current})
    return out


BASE_TIMELINE = [
    [0.013, "INVITE"], [0.06, "200 OK + ACK"], [0.06, "re-INVITE"],
    [0.10, "re-INVITE 200 OK + ACK"], [0.20, "disconnect (rst)"],
    [0.21, "ws.dump: connection gone"], [0.32, "BYE (Asterisk hangs up)"],
    [0.33, "Kamailio replies 500 to the BYE"], [0.34, "BYE cell in tm.list"],
]


def leak_run() -> dict:
    return {
        "test": "tests/gate/test_gh4140.py::test_bye_after_ws_close[6.0.1-pua_dialoginfo-ws]",
        "outcome": "leak",
        "sentence": "BYE Call-ID f7b1c44a16c9e82680210b34 still in tm.list 7.1 s after the BYE "
                    "(outgoings 0, ref_count 1); Kamailio replied 500 (1/SL) statelessly",
        "kamailio_version": "kamailio 6.0.1 (x86_64/linux)", "target": "6.0.1",
        "variant": "pua_dialoginfo", "transport": "ws", "method": "BYE",
        "call_id": "f7b1c44a16c9e82680210b34", "deadline": 7.0, "watched_for": 7.1,
        "gone_after": None, "seen": True,
        "timeline": BASE_TIMELINE + [[7.36, "deadline: BYE cell still there"]],
        "stats_samples": _samples(7.4, bye=0.32, drain_at=None),
        "replies": [{"code": 500, "reason": "Server error (1/SL)", "at": 0.01, "stateless": True}],
        "cells": [{"cell": "0x7f3a1c2b9e40", "tindex": 1234, "tlabel": 56, "method": "BYE",
                   "from_": "<sip:asterisk@pbx>", "to": "<sip:1000@ws>",
                   "callid": "f7b1c44a16c9e82680210b34", "cseq": "103 BYE",
                   "uas_request": "yes", "tflags": 4194304, "outgoings": 0, "ref_count": 1,
                   "lifetime": 0}],
    }


def clean_run() -> dict:
    return {
        "test": "tests/gate/test_gh4140.py::test_bye_after_ws_close[6.0.2-pua_dialoginfo-ws]",
        "outcome": "clean",
        "sentence": "BYE Call-ID 0a9d33e1c5b24f7e8d10aa42 left tm.list 1.0 s after the BYE; "
                    "Kamailio replied 500 (1/TM) statefully",
        "kamailio_version": "kamailio 6.0.2 (x86_64/linux)", "target": "6.0.2",
        "variant": "pua_dialoginfo", "transport": "ws", "method": "BYE",
        "call_id": "0a9d33e1c5b24f7e8d10aa42", "deadline": 7.0, "watched_for": 1.03,
        "gone_after": 1.02, "seen": True,
        "timeline": BASE_TIMELINE + [[1.35, "BYE cell gone"]],
        "stats_samples": _samples(1.5, bye=0.32, drain_at=1.35),
        "replies": [{"code": 500, "reason": "Server error (1/TM)", "at": 0.01, "stateless": False}],
        "cells": [],
    }


def _assert_png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 900 <= width <= 1100 and 500 <= height <= 700, (width, height)
    assert 20_000 < len(data) < 2_000_000
    return width, height


# --- PNG -----------------------------------------------------------------------------

def test_leak_and_clean_pngs(tmp_path):
    leak = render_timeline(leak_run(), tmp_path / "leak.png")
    clean = render_timeline(clean_run(), tmp_path / "sub" / "clean.png")
    assert leak == tmp_path / "leak.png" and clean.exists()
    _assert_png(leak)
    _assert_png(clean)
    assert leak.read_bytes() != clean.read_bytes()


@pytest.mark.parametrize("samples", [[], [{"t": 0.0, "current": 0, "waiting": 0, "created": 0,
                                             "freed": 0, "shm_used": SHM0}]])
def test_png_with_empty_or_single_sample(tmp_path, samples):
    run = leak_run()
    run["stats_samples"] = samples
    _assert_png(render_timeline(run, str(tmp_path / "few.png")))


def test_png_with_nothing_but_an_outcome(tmp_path):
    out = render_timeline({"outcome": "error"}, tmp_path / "bare.png")
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_png_without_timeline(tmp_path):
    run = clean_run()
    del run["timeline"]
    _assert_png(render_timeline(run, tmp_path / "notl.png"))


# --- HTML ----------------------------------------------------------------------------

class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])
        if tag == "img" and a.get("src"):
            self.srcs.append(a["src"])
        if tag == "script":
            self.scripts += 1


def test_html_report(tmp_path):
    out_dir = tmp_path / "report"
    art = out_dir / "runs" / "leak 1"          # a space: hrefs must be quoted
    art.mkdir(parents=True)
    (art / "kamailio.log").write_text("log\n")
    (art / "verdict.json").write_text("{}\n")
    (art / "capture.pcap").write_bytes(b"\xd4\xc3\xb2\xa1")
    (art / "rpc").mkdir()
    (art / "rpc" / "tm.list-at-deadline.json").write_text("[]\n")
    leak = leak_run()
    leak["watched_for"] = 7.015491770000153   # as measured: shown rounded, with its unit
    leak["artifacts"] = "runs/leak 1"
    render_timeline(leak, art / "timeline.png")
    clean = clean_run()
    clean["sentence"] += ' <script>alert("x")</script> & more'
    clean["artifacts"] = "runs/missing"       # nothing there: no links
    error = {"test": "t::error", "outcome": "error", "error": "Kamailio did not start <boom>"}

    path = render_html([leak, clean, error], out_dir, title="gate <run>")
    assert path == out_dir / "report.html" and path.exists()
    html = path.read_text(encoding="utf-8")

    assert leak["call_id"] in html and clean["call_id"] in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "&lt;boom&gt;" in html and "gate &lt;run&gt;" in html
    assert "http://" not in html and "https://" not in html

    # the leak row is marked as such, the clean one is not
    rows = re.findall(r'<tr class="run ([a-z]+)"[^>]*>(.*?)</tr>', html, re.S)
    by_outcome = {cls: body for cls, body in rows}
    assert set(by_outcome) == {"leak", "clean", "error"}
    assert "LEAK" in by_outcome["leak"] and "LEAK" not in by_outcome["clean"]
    assert "500" in by_outcome["leak"] and "stateless" in by_outcome["leak"]
    assert re.search(r"1\s*leak", html) and re.search(r"1\s*clean", html) and re.search(r"1\s*error", html)

    # links and the embedded image point at files that exist
    parser = _Links()
    parser.feed(html)
    assert parser.scripts == 0
    from urllib.parse import unquote
    files = [h for h in parser.hrefs if not h.startswith("#")]
    assert {Path(unquote(h)).name for h in files} == {"kamailio.log", "verdict.json", "timeline.png",
                                                      "capture.pcap", "tm.list-at-deadline.json"}
    assert any(unquote(h).endswith("/rpc/tm.list-at-deadline.json") for h in files)
    for ref in files + parser.srcs:
        assert (out_dir / unquote(ref)).is_file(), ref
    assert [Path(unquote(s)).name for s in parser.srcs] == ["timeline.png"]
    assert "missing" not in " ".join(files)

    # durations carry their unit and are rounded
    assert "watched for <code>7.0 s</code>" in html and "deadline <code>7.0 s</code>" in html
    assert "7.0154" not in html

    # the leaked cell is tabulated
    assert "0x7f3a1c2b9e40" in html and "4194304" in html and "103 BYE" in html


def test_memory_verdict_in_html_and_png(tmp_path):
    """A memory verdict (PR 3403's shape) shows its shm sites, not tm cell fields."""
    run = {"test": "t::pr3403", "outcome": "leak", "kind": "memory", "variant": "t_uac_send+drop",
           "kamailio_version": "kamailio 5.6.3", "transport": "udp",
           "sentence": "2 × 40 MESSAGEs: shm at tm: build_uac_req(1618) grew 34248 B",
           "timeline": [[0.02, "40 MESSAGEs"], [0.06, "tm settled; mod.stats shm"]],
           "stats_samples": [{"t": 0.02, "current": 0, "waiting": 0, "created": 5, "freed": 5,
                              "shm_used": 2100000}, {"t": 0.06, "current": 0, "waiting": 0,
                                                     "created": 45, "freed": 45, "shm_used": 2117000}],
           "memory": {"requests": 40, "batches": 2, "leaked_sites": ["tm: build_uac_req(1618)"],
                      "sites": {"tm: build_uac_req(1618)": [17288, 16960],
                                "tmx: tmx_check_pretran(250)": [400, 0]}}}
    html = render_html([run], tmp_path).read_text(encoding="utf-8")
    assert "tm: build_uac_req(1618)" in html and "17288, 16960" in html
    assert "tmx: tmx_check_pretran(250)" in html
    assert "Call-ID" not in html and "batches <code>2</code>" in html
    png = render_timeline(run, tmp_path / "memory.png", PlotHints(shm_label="tm shm (KiB)"))
    assert png.stat().st_size > 10_000
