"""The PNG timeline and the HTML report, from synthetic run records (no Docker)."""

from __future__ import annotations

import re
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from kamleak.harness.reporting.html import render_html
from kamleak.harness.reporting.plot import PlotHints, draw_timeline, early_marks, render_timeline
from kamleak.harness.reporting.summary import early_fields

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


EVIDENCE = ("outgoings 0, ref_count 1, not on the wait timer: tm.stats current-waiting +1 since "
            "the call began = the 1 cell(s) tm.list holds")


def early_run(at: float = 1.0, rule: str = "count", confirmed: bool = False) -> dict:
    """The leak, proven orphaned AT s after the BYE (at 0.32): the watch stopped
    there unless CONFIRMED, which waits out the 7.0 s bound too."""
    run = leak_run()
    proof_t = round(0.32 + at, 3)
    until = 7.4 if confirmed else proof_t + 0.1      # the sampler's last read follows the proof
    run.update(orphan={"at": at, "rule": rule, "evidence": EVIDENCE, "cell": "0x7f3a1c2b9e40"},
               confirmed=confirmed, watched_for=7.04 if confirmed else at + 0.01,
               early=f"orphaned {at:.1f} s after the BYE: {EVIDENCE}; the bound (7.0 s) was not waited out",
               sentence="BYE Call-ID f7b1c44a16c9e82680210b34 orphaned in tm.list 1.0 s after the BYE",
               timeline=BASE_TIMELINE + [[proof_t, f"BYE cell orphaned ({rule})"]]
               + ([[7.36, "deadline: BYE cell still there"]] if confirmed else []),
               stats_samples=_samples(until, bye=0.32, drain_at=None))
    return run


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


# --- the early verdict on the PNG ---------------------------------------------------

def test_early_marks_put_the_proof_and_the_bound_on_the_scenarios_clock():
    m = early_marks(early_run())
    assert m.proof == pytest.approx(1.32) and m.rule == "count"
    assert m.bound == pytest.approx(7.32) and m.watch_end == pytest.approx(1.33)
    assert not m.waited_out
    assert m.orphan_label == "orphan proven (count)"
    assert m.bound_label == "bound: 7.0 s (not waited out)"
    assert early_marks(early_run(confirmed=True)).bound_label == "bound: 7.0 s (waited out, agrees)"
    plain = early_marks(leak_run())
    assert plain.proof is None and plain.orphan_label == "" and plain.bound_label == "bound: 7.0 s"


def _texts(fig) -> dict[str, object]:
    """The counts panel's texts (first axes), by their content."""
    return {t.get_text(): t for t in fig.axes[0].texts if t.get_text()}


def _assert_apart(fig) -> None:
    """No two texts of the counts panel (nor the legend) overlap, and all stay inside it."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    inside = ax.get_window_extent(renderer)
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts if t.get_text()]
    boxes.append(("legend", ax.get_legend().get_window_extent(renderer)))
    for name, b in boxes:
        assert inside.x0 - 1 <= b.x0 and b.x1 <= inside.x1 + 1, f"{name!r} leaves the panel"
    for i, (a, ba) in enumerate(boxes):
        for b, bb in boxes[i + 1:]:
            assert not ba.overlaps(bb), f"{a!r} overlaps {b!r}"


def test_png_marks_the_orphan_proof_and_the_bound_past_the_data(tmp_path):
    import matplotlib.pyplot as plt
    fig = draw_timeline(early_run())
    try:
        ax = fig.axes[0]
        texts = _texts(fig)
        orphan = texts["orphan proven (count): 1.00 s after the BYE"]
        assert orphan.get_position()[0] == pytest.approx(1.32, abs=0.1)
        bound = texts["bound: 7.0 s (not waited out)"]
        assert bound.get_position()[0] == pytest.approx(7.32, abs=0.1)
        # the bound is on the axis, past the last sample, as a dashed line
        assert ax.get_xlim()[1] > 7.32 > max(s["t"] for s in early_run()["stats_samples"]) + 5
        dashed = [ln for ln in ax.get_lines() if ln.get_xdata()[0] == pytest.approx(7.32)
                  and ln.get_linestyle() not in ("-", "None")]
        assert dashed, "no dashed line at the bound"
        # the leaked cell is named where the data end
        leaked = next(t for t in texts if t.startswith("1 BYE cell left in tm.list"))
        assert "0x7f3a1c2b9e40" in leaked and "proven orphaned" in leaked
        _assert_apart(fig)
    finally:
        plt.close(fig)
    _assert_png(render_timeline(early_run(), tmp_path / "early.png"))


@pytest.mark.parametrize("run", [early_run(at=5.9, rule="time"), early_run(confirmed=True),
                                 early_run(at=0.05)], ids=["time-near-bound", "confirmed", "at-once"])
def test_png_early_labels_stay_apart(run):
    import matplotlib.pyplot as plt
    fig = draw_timeline(run)
    try:
        texts = _texts(fig)
        assert any(t.startswith(f"orphan proven ({run['orphan']['rule']})") for t in texts), texts
        assert any(t.startswith("bound: 7.0 s") for t in texts), texts
        _assert_apart(fig)
    finally:
        plt.close(fig)


def test_png_a_far_bound_is_named_at_the_axis_edge():
    """A bound that would squash the data to a sliver stays off the axis, said with an arrow."""
    import matplotlib.pyplot as plt
    run = early_run()
    run["deadline"] = 37.0
    fig = draw_timeline(run)
    try:
        assert fig.axes[0].get_xlim()[1] < 5
        assert any(t.startswith("bound: 37.0 s") and t.endswith("→") for t in _texts(fig))
        _assert_apart(fig)
    finally:
        plt.close(fig)


def test_png_clean_run_names_the_bound_without_stretching_the_axis():
    import matplotlib.pyplot as plt
    fig = draw_timeline(clean_run())
    try:
        texts = _texts(fig)
        assert "bound: 7.0 s →" in texts and not any(t.startswith("orphan") for t in texts)
        assert fig.axes[0].get_xlim()[1] < 2
    finally:
        plt.close(fig)


# --- the leaked cell's own lane, step labels apart ------------------------------------

def _artist(fig, gid: str):
    """(axes, artist) of the artist with GID, or (None, None)."""
    for ax in fig.axes:
        for a in [*ax.collections, *ax.lines]:
            if a.get_gid() == gid:
                return ax, a
    return None, None


def real_like_leak() -> dict:
    """The shape of a real 6.0.1 run (docs/repro/leaking): 12 transactions at the
    BYE, the leaked one a 1 at the end; the oracle's tm.list samples at each change."""
    run = leak_run()
    run["stats_samples"] = [{**s, "current": s["current"] + (11 if 0.3 <= s["t"] < 1.1 else 0)}
                            for s in run["stats_samples"]]
    run["samples"] = [{"t": 0.02, "cells": 1}, {"t": 7.1, "cells": 1}]      # to watched_for
    return run


@pytest.mark.parametrize("run, still", [(real_like_leak(), True), (early_run(), True),
                                        (clean_run(), False)], ids=["leak", "early", "clean"])
def test_png_the_watched_cell_has_a_lane_and_marker_of_its_own(run, still):
    import matplotlib.pyplot as plt
    fig = draw_timeline(run)
    try:
        fig.canvas.draw()
        lane, bar = _artist(fig, "leaked-cell" if still else "cell")
        assert bar is not None, "no bar of its own for the watched cell"
        assert lane is not fig.axes[0], "the cell's lane is not the counters' panel"
        assert _artist(fig, "leaked-cell")[1] is None or still, "a clean run has no leaked cell"
        (x0, x1), = [(p.get_extents().x0, p.get_extents().x1) for p in bar.get_paths()] or [(0, 0)]
        bye = 0.32
        # From the oracle's first sample holding it (else the request) to where it
        # left (gone_after) or the watch's last look (watched_for).
        first = bye + (run["samples"][0]["t"] if "samples" in run else 0.0)
        last = bye + (run["gone_after"] if run["gone_after"] is not None else run["watched_for"])
        assert (x0, x1) == (pytest.approx(first, abs=0.01), pytest.approx(last, abs=0.01))
        marker_ax, marker = _artist(fig, "leaked-cell-marker" if still else "cell-end")
        assert marker_ax is lane and marker.get_xdata()[0] == pytest.approx(last, abs=0.01)
        label = [t.get_text() for t in lane.texts]
        assert label == [f"BYE cell still in tm.list {last - bye:.2f} s after the BYE"
                         + (" (proven orphaned)" if run.get("orphan") else "")
                         if still else f"BYE cell left tm.list {last - bye:.2f} s after the BYE"]
        # The lane's label stays inside the lane, the mark row clear of the legend.
        r = fig.canvas.get_renderer()
        inside = lane.get_window_extent(r)
        box = lane.texts[0].get_window_extent(r)
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 + 1
        _assert_apart(fig)
    finally:
        plt.close(fig)


def test_png_a_memory_verdict_has_no_cell_lane():
    import matplotlib.pyplot as plt
    run = {"outcome": "leak", "kind": "memory", "timeline": [[0.02, "40 MESSAGEs"]],
           "stats_samples": [{"t": 0.02, "current": 0, "shm_used": 2100000}]}
    fig = draw_timeline(run)
    try:
        assert _artist(fig, "leaked-cell") == (None, None) and len(fig.axes) == 3
    finally:
        plt.close(fig)


def _strip_labels(fig) -> list:
    """The step labels: the rotated texts of the strip above the panels."""
    return [t for ax in fig.axes for t in ax.texts if t.get_rotation() == 90 and t.get_text()]


def crowded(n: int) -> dict:
    run = leak_run()
    run["timeline"] = BASE_TIMELINE + [[0.4 + 0.01 * i, f"ws frame {i} answered"] for i in range(n)] \
        + [[7.36, "deadline: BYE cell still there"]]
    return run


@pytest.mark.parametrize("run", [leak_run(), early_run(), clean_run(), real_like_leak(), crowded(30),
                                 crowded(150)],
                         ids=["leak", "early", "clean", "real-like", "30-more-steps", "150-more-steps"])
def test_png_step_labels_never_overlap_and_stay_on_the_figure(run):
    import matplotlib.pyplot as plt
    fig = draw_timeline(run)
    try:
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        labels = _strip_labels(fig)
        boxes = [(t.get_text(), t.get_window_extent(r)) for t in labels]
        page = fig.bbox
        for text, b in boxes:
            assert page.x0 <= b.x0 and b.x1 <= page.x1 and b.y1 <= page.y1, f"{text!r} leaves the figure"
        for i, (a, ba) in enumerate(boxes):
            for b, bb in boxes[i + 1:]:
                assert not ba.overlaps(bb), f"{a!r} overlaps {b!r}"
        texts = [t for t, _ in boxes]
        # Every step is in a label (merged ones say how many), the first step and
        # the last (the deadline, the proof, the cell gone) keep theirs.
        assert texts[0].startswith("0.01 INVITE")
        t_last, last = run["timeline"][-1]
        assert texts[-1].replace("\n", " ").startswith(f"{t_last:.2f} {last[:12]}"), texts[-1]
        merged = sum(int(m) for t in texts for m in re.findall(r"\((\d+) steps\)", t))
        assert merged or len(texts) >= len(run["timeline"]) - 3   # _group_steps joins a few
        if len(run["timeline"]) > 100:
            assert merged >= len(run["timeline"]) - 2 * len(texts)
    finally:
        plt.close(fig)


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


def test_html_run_table_shows_orphan_proven_at_rule_and_bound(tmp_path):
    html = render_html([early_run(), leak_run(), clean_run(), early_run(confirmed=True)],
                       tmp_path).read_text(encoding="utf-8")
    head = re.search(r"<table><tr><th>test</th>(.*?)</tr>", html, re.S).group(1)
    assert "<th>orphan proven at</th><th>rule</th><th>bound</th>" in head
    rows = re.findall(r'<tr class="run [a-z]+"[^>]*>(.*?)</tr>', html, re.S)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)[-3:] for r in rows]
    assert cells == [["1.0 s", "count", "7.0 s (not waited out)"],
                     ["-", "", "7.0 s (waited out)"],
                     ["-", "", "7.0 s"],
                     ["1.0 s", "count", "7.0 s (waited out)"]]
    assert "BYE cell orphaned in tm.list 1.0 s after the BYE (count)" in rows[0]
    # the run's section names the proof and its evidence
    assert "orphan proven <code>1.0 s after the BYE (count)</code>" in html
    assert "evidence <code>outgoings 0, ref_count 1, not on the wait timer" in html
    assert "bound <code>not waited out</code>" in html and "bound <code>waited out too, agrees</code>" in html
    # without a proof, the section says why the bound was waited out
    waited = leak_run()
    waited["early"] = "no early verdict for this build: waiting out the bound"
    assert "early verdict <code>no early verdict for this build" in \
        render_html([waited], tmp_path / "w").read_text(encoding="utf-8")


# --- summary.json --------------------------------------------------------------------

def test_summary_line_carries_orphan_at_rule_and_deadline():
    assert early_fields(early_run(at=1.00484)) == {"orphan_at": 1.005, "orphan_rule": "count",
                                                   "deadline": 7.0}
    assert early_fields(leak_run()) == {"orphan_at": None, "orphan_rule": None, "deadline": 7.0}
    assert early_fields({"outcome": "error"}) == {"orphan_at": None, "orphan_rule": None,
                                                  "deadline": None}


def test_plugin_summary_records_carry_the_early_fields():
    """The line pytest writes to summary.json (plugin._records), from a real verdict."""
    from types import SimpleNamespace

    from kamleak.harness.judging.verdict import TransactionVerdict
    from kamleak.harness.plugin import _records, state
    from kamleak.harness.probes.rpc import TmCell

    cell = TmCell(cell="0x1", tindex=1, tlabel=2, method="BYE", from_="", to="", callid="c",
                  cseq="1 BYE", uas_request="yes", tflags=0, outgoings=0, ref_count=1, lifetime=0,
                  raw={})
    v = TransactionVerdict(leaked=True, method="BYE", call_id="c", cells=[cell], replies=[],
                           watched_for=1.01, deadline=7.0, gone_after=None, seen=True,
                           stats_before={}, stats_after={}, stats_consistent=True, stats_note="",
                           timers={}, orphan={"at": 1.0048, "rule": "time", "evidence": "e",
                                              "cell": "0x1"})
    config = SimpleNamespace(stash={state.VERDICTS: [("t::a", v)]})
    rec = _records(config)[0]
    assert (rec["orphan_at"], rec["orphan_rule"], rec["deadline"]) == (1.005, "time", 7.0)
