"""explore's report: what `cli._write` puts in summary.json, the index.html and junit.xml
written from it (read back with junitparser and Python's HTML parser), `--merge` of
shards' directories, and the live progress line (its text, and drawn on a real
pseudo-terminal, never on a pipe)."""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from junitparser import Failure, JUnitXml

from kamleak.harness.errors import UsageError
from kamleak.harness.tools.explore import cli, report
from kamleak.harness.tools.explore.campaign import Finding, Result
from kamleak.harness.tools.explore.flow import parse
from kamleak.harness.tools.explore.mutate import Mutation
from kamleak.harness.tools.explore.trend import TrendFinding

ROOT = Path(__file__).resolve().parents[2]
BYE = "tm cell: BYE/out0/ref1/t0x40"


def finding(steps, signature=BYE, confirmed=3, replays=3, mutation="none", transport="ws") -> Finding:
    flow = parse(transport, steps)
    return Finding(flow, signature, [f"BYE cell of {flow.text()} orphaned 1.2 s after the BYE (idle rule)",
                                     "<ref_count 1 & no outgoing>"],
                   [f"got {s}" for s in steps], confirmed=confirmed, replays=replays, found_after_flows=29,
                   found_after_s=12.5, shrink_runs=4, mutation=Mutation.parse(mutation))


def campaign_dir(tmp_path: Path, name: str, findings: list[Finding], shard="1/2", *argv) -> Path:
    """An --out directory as a campaign leaves it: cli._write with the command's own parsed options."""
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args(["--kamailio-version", "6.0.1", "--variant", "uac_req_send", "--seed", "1",
                         "--jobs", "20", *(["--shard", shard] if shard else []), *argv])
    result = Result(flows=120, batches=6, harness_errors=2, elapsed=60.0, findings=findings,
                    stopped="a finding" if findings else "budget",
                    refused={"t_relay_to@0x02": "ERROR: <core> [cfg.y]: unknown flag"},
                    trend=[TrendFinding("shm", "tm: h_table.c: build_cell", ["rose in 6 of 8 batches"],
                                        [0, 64, 128, 192, 256, 320], status="unconfirmed")],
                    trend_notes=["pkg per process: 2 samples where tm cells were as at the start, 5 needed"])
    out = tmp_path / name
    out.mkdir()
    cli._write(out, result, "debian-6.0.1", "variant uac_req_send", ("WITH_TRIGGER_UAC_REQ_SEND",), args,
               ("ws",), 120.0)
    return out


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.links, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k in ("href", "src")]

    def handle_data(self, data):
        self.text.append(data)


def page(path: Path) -> Page:
    p = Page()
    p.feed(path.read_text())
    return p


def test_a_campaigns_summary_holds_what_its_report_shows(tmp_path):
    out = campaign_dir(tmp_path, "s1", [finding(["invite:answer", "rst", "pbx_bye"])])
    s = json.loads((out / "summary.json").read_text())
    assert (s["shard"], s["seed"], s["rate_per_min"], s["budget_s"], s["jobs"]) == ("1/2", 1, 120.0, 120.0, 20)
    assert s["replay_args"] == ["--kamailio-version", "6.0.1", "--variant", "uac_req_send"]
    assert s["trend"][0]["signature"] == "shm: tm: h_table.c: build_cell" and s["trend_notes"]
    assert s["findings"][0]["dir"] == "finding-1" and (out / "finding-1" / "flow.json").is_file()
    assert {p.name for p in out.iterdir()} == {"summary.json", "finding-1", "index.html", "junit.xml"}


def test_index_html_is_self_contained_escaped_and_links_only_files_that_exist(tmp_path):
    out = campaign_dir(tmp_path, "s1", [finding(["invite:answer", "rst", "pbx_bye"]),
                                        finding(["invite:answer", "fin", "pbx_bye"], "tm cell: BYE/out1/ref2/t0x40",
                                                confirmed=2)])
    html = (out / "index.html").read_text()
    p = page(out / "index.html")
    assert "script" not in p.tags and "link" not in p.tags and "img" not in p.tags
    assert "&lt;ref_count 1 &amp; no outgoing&gt;" in html and "<ref_count" not in html
    text = " ".join(p.text)
    for expected in ("debian-6.0.1", "variant uac_req_send", "120 run, 118 judged", "a finding", "(shard 1/2)",
                     "120 flows/min", "LEAK", "FLAKY 2/3", BYE, "ws: invite:answer, rst, pbx_bye",
                     "-> got rst",                                    # the emitted ladder, with what each step got
                     "kamleak explore --kamailio-version 6.0.1 --variant uac_req_send --replay "
                     f"{out}/finding-1/flow.json",
                     "shm: tm: h_table.c: build_cell", "5 needed", "t_relay_to@0x02"):
        assert expected in text, expected
    assert p.links and all(not link.startswith(("http:", "https:", "/")) for link in p.links)
    assert all((out / unquote(link)).is_file() for link in p.links), p.links
    assert "finding-2/test_explore_finding_2.py" in p.links


def replayed(f: Finding, pcap: bytes | str, replay: int = 1) -> Finding:
    """F with the files a confirming replay records (record.Recording.finish's names)."""
    f.files = {"kamailio.log": "0(12) ERROR: {1 BYE abc@ua} tm [t_fwd.c:1753]: branch 0 failed\n",
               "asterisk.log": "<--- Transmitting SIP request (BYE) --->\n", "kamailio.cfg": "#!KAMAILIO\n",
               "sip-trace.txt": "# ladder\n", **({"capture.pcap": pcap} if isinstance(pcap, bytes)
                                                 else {"capture.txt": pcap})}
    f.files_replay = replay
    return f


def test_a_findings_logs_and_pcap_are_written_and_linked_from_its_section(tmp_path):
    pcap = b"\xd4\xc3\xb2\xa1" + bytes(20)
    out = campaign_dir(tmp_path, "s1", [replayed(finding(["invite:answer", "rst", "pbx_bye"]), pcap, replay=2)])
    d = out / "finding-1"
    assert (d / "capture.pcap").read_bytes() == pcap and "branch 0 failed" in (d / "kamailio.log").read_text()
    files = json.loads((out / "summary.json").read_text())["findings"][0]["replay_files"]
    assert files == {"replay": 2, "pcap": "capture.pcap", "files": ["asterisk.log", "capture.pcap", "kamailio.cfg",
                                                                     "kamailio.log", "sip-trace.txt"]}
    assert json.loads((d / "finding.json").read_text())["replay_files"] == files
    assert (d / "ladder.txt").read_text().splitlines()[-1] == (
        "files of replay 2 of 3 (a fresh Kamailio): asterisk.log, capture.pcap, kamailio.cfg, kamailio.log, "
        "sip-trace.txt; pcap: capture.pcap")
    html = (out / "index.html").read_text()
    section = html[html.index("<h4>Logs and pcap</h4>"):html.index("<h4>Files</h4>")]
    p = Page()
    p.feed(section)
    for name in ("kamailio.log", "asterisk.log", "sip-trace.txt", "kamailio.cfg", "capture.pcap"):
        assert f'href="finding-1/{name}"' in section, name
    assert "replay 2 of 3 on a fresh Kamailio (it leaked the same way)" in section
    assert all((out / unquote(link)).is_file() for link in p.links), p.links


@pytest.mark.parametrize("confirmed, pcap, said", [
    (3, "no pcap: tcpdump could not capture (You don't have permission to capture on that device)",
     "pcap: not captured (tcpdump could not capture (You don&#x27;t have permission to capture on that device))"),
    (0, None, "pcap: not captured (no replay leaked the same way)"),
])
def test_a_pcap_not_captured_says_why_never_a_silent_omission(tmp_path, confirmed, pcap, said):
    f = finding(["invite:answer", "rst", "pbx_bye"], confirmed=confirmed)
    out = campaign_dir(tmp_path, "s1", [replayed(f, pcap) if pcap else f])
    html = (out / "index.html").read_text()
    section = html[html.index("<h4>Logs and pcap</h4>"):]
    assert said in section.split("</p>")[0] and "capture.pcap" not in html
    assert said.replace("&#x27;", "'") in (out / "finding-1" / "ladder.txt").read_text()
    assert (pcap is None) == (not (out / "finding-1" / "kamailio.log").exists())


def test_a_merged_reports_finding_keeps_its_linked_files(tmp_path):
    s1 = campaign_dir(tmp_path, "s1", [replayed(finding(["invite:answer", "rst", "pbx_bye"]), b"pcap")])
    out = tmp_path / "merged"
    report.merge([str(s1)], out)
    p = page(out / "index.html")
    assert "finding-1/capture.pcap" in p.links and "finding-1/kamailio.log" in p.links
    assert all((out / unquote(link)).is_file() for link in p.links), p.links


def test_junit_has_a_failure_per_finding_a_flaky_one_with_its_rate(tmp_path):
    out = campaign_dir(tmp_path, "s1", [finding(["invite:answer", "rst", "pbx_bye"]),
                                        finding(["invite:answer", "fin", "pbx_bye"], "tm cell: BYE/out1/ref2/t0x40",
                                                confirmed=1)])
    (suite,) = JUnitXml.fromfile(str(out / "junit.xml"))
    assert suite.name == "explore debian-6.0.1, variant uac_req_send (shard 1/2)"
    assert (suite.tests, suite.failures, suite.errors) == (2, 2, 0)
    cases = list(suite)
    assert [c.name for c in cases] == ["finding-1: ws: invite:answer, rst, pbx_bye",
                                       "finding-2: ws: invite:answer, fin, pbx_bye"]
    sure, flaky = (c.result[0] for c in cases)
    assert isinstance(sure, Failure) and sure.type == "LEAK" and sure.message == f"LEAK: {BYE}"
    assert flaky.type == "FLAKY" and flaky.message.endswith("(1 of 3 replays leaked)")
    assert "replay: kamleak explore --kamailio-version 6.0.1" in sure.text
    assert report.exit_code(report.load(out)) == 1


def test_a_campaign_without_a_finding_is_one_passing_testcase(tmp_path):
    out = campaign_dir(tmp_path, "s1", [])
    (suite,) = JUnitXml.fromfile(str(out / "junit.xml"))
    (case,) = suite
    assert case.name == "no leak in 118 flows judged" and case.is_passed
    assert "No finding in 118 flows judged." in " ".join(page(out / "index.html").text)
    assert report.exit_code(report.load(out)) == 0


def test_merge_dedupes_findings_by_signature_and_mutation_sums_counts_and_keeps_the_shards(tmp_path):
    leak = ["invite:answer", "rst", "pbx_bye"]
    s1 = campaign_dir(tmp_path, "s1", [finding(leak)], "1/3")
    s2 = campaign_dir(tmp_path, "s2", [finding(["invite:answer", "fin", "pbx_bye"]),       # same signature
                                       finding(leak, mutation="uac_req_send@request:BYE")], "2/3")
    s3 = campaign_dir(tmp_path, "s3", [], "3/3")
    merged = tmp_path / "merged"
    (c,) = report.merge([str(s1), str(s2), str(s3)], merged)
    assert (c["flows"], c["batches"], c["harness_errors"], c["rate_per_min"]) == (360, 18, 6, 360.0)
    assert [s["shard"] for s in c["shards"]] == ["1/3", "2/3", "3/3"]
    assert [(f["dir"], f["config_mutation"], f["shards"]) for f in c["findings"]] == [
        ("finding-1", "none", ["1/3", "2/3"]), ("finding-2", "uac_req_send@request:BYE", ["2/3"])]
    # Each finding's files come along: the first shard's that found it.
    assert json.loads((merged / "finding-1" / "flow.json").read_text())["steps"] == leak
    assert json.loads((merged / "finding-2" / "flow.json").read_text())["config_mutation"] == \
        "uac_req_send@request:BYE"
    (suite,) = JUnitXml.fromfile(str(merged / "junit.xml"))
    assert (suite.tests, suite.failures) == (2, 2) and "shards 1/3, 2/3, 3/3" in suite.name
    assert "found by shard 2/3" in list(suite)[0].result[0].text
    assert "found by shards" in " ".join(page(merged / "index.html").text)
    assert report.exit_code(report.load(merged)) == 1
    # A merged report merges again (a matrix of matrices): nothing counted twice.
    (again,) = report.merge([str(merged)], tmp_path / "again")
    assert again["flows"] == 360 and [f["shards"] for f in again["findings"]] == [["1/3", "2/3"], ["2/3"]]


def test_merge_keeps_campaigns_of_other_builds_apart(tmp_path):
    s1 = campaign_dir(tmp_path, "s1", [finding(["invite:answer", "rst", "pbx_bye"])])
    s2 = campaign_dir(tmp_path, "s2", [finding(["invite:answer", "rst", "pbx_bye"])], "2/2")
    summary = json.loads((s2 / "summary.json").read_text())
    (s2 / "summary.json").write_text(json.dumps({**summary, "kamailio": "debian-6.1.5"}))
    campaigns = report.merge([str(s1), str(s2)], tmp_path / "m")
    assert [(c["kamailio"], len(c["findings"])) for c in campaigns] == [("debian-6.0.1", 1), ("debian-6.1.5", 1)]
    assert len(JUnitXml.fromfile(str(tmp_path / "m" / "junit.xml"))) == 2


@pytest.mark.parametrize("make, message", [
    (lambda d: d.mkdir(), "has no summary.json"),
    (lambda d: (d.mkdir(), (d / "summary.json").write_text("{not json")), "cannot read"),
    (lambda d: (d.mkdir(), (d / "summary.json").write_text("[1, 2]")), "is not explore's summary"),
])
def test_merge_of_a_directory_that_is_not_a_report_is_one_line_and_writes_nothing(tmp_path, make, message):
    good = campaign_dir(tmp_path, "s1", [])
    make(tmp_path / "bad")
    with pytest.raises(UsageError) as exc:
        report.merge([str(good), str(tmp_path / "bad")], tmp_path / "merged")
    assert message in exc.value.line() and "\n" not in exc.value.line()
    assert not (tmp_path / "merged").exists()


def test_merge_refuses_an_out_that_is_an_input_or_holds_files(tmp_path):
    good = campaign_dir(tmp_path, "s1", [])
    with pytest.raises(UsageError, match="is one of the directories merged"):
        report.merge([str(good)], good)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UsageError, match="is not empty"):
        report.merge([str(good)], tmp_path / "full")


def test_an_interrupted_shrinks_leak_is_unconfirmed_never_a_sure_finding(tmp_path):
    out = campaign_dir(tmp_path, "s1", [finding(["invite:answer", "rst", "pbx_bye"], confirmed=0, replays=0)])
    (suite,) = JUnitXml.fromfile(str(out / "junit.xml"))
    assert list(suite)[0].result[0].type == "UNCONFIRMED"
    assert report.exit_code(report.load(out)) == 0


def test_the_progress_line_says_flows_judged_findings_rate_and_time_left():
    assert cli.progress_line(240, 236, 0, False, 120.0, 600.0) == (
        "explore: 240 run, 236 judged, 0 findings, 120/min, 8:00 left")
    assert cli.progress_line(61, 61, 0, True, 30.5, 30.0).endswith(
        "0 findings, shrinking, 120/min, 0:00 left")
    assert len(cli.progress_line(99999, 99990, 0, True, 999.0, 36000.0)) < 80
    assert "1 finding," in cli.progress_line(10, 10, 1, False, 60.0, 600.0)


LIVE = """
import time
from kamleak.harness import progress
n = [0]
def status():
    n[0] += 1
    return f"live {n[0]}"
with progress.Ticker("x", status=status):
    time.sleep(1.3)
    progress.say("a batch ended", "kamleak explore")
    time.sleep(0.7)
print("done", flush=True)
"""


def _run_on(stderr_tty: bool) -> bytes:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "KAMLEAK_PROGRESS")}
    if not stderr_tty:
        return subprocess.run([sys.executable, "-c", LIVE], cwd=ROOT, env=env, capture_output=True,
                              timeout=30).stderr
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", LIVE], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=secondary, stderr=secondary)
    os.close(secondary)
    got, deadline = b"", time.monotonic() + 30
    while b"done" not in got and time.monotonic() < deadline:
        if select.select([primary], [], [], 0.5)[0]:
            try:
                got += os.read(primary, 4096)
            except OSError:             # the child closed the terminal
                break
    proc.wait(timeout=30)
    os.close(primary)
    return got


def test_the_live_line_is_drawn_on_a_real_terminal_and_cleared_for_other_lines():
    got = _run_on(stderr_tty=True)
    assert b"\rlive 1\x1b[K" in got and b"\rlive 2\x1b[K" in got, got
    # A line printed meanwhile clears the live one first and stands on its own line.
    assert b"\r\x1b[Kkamleak explore: a batch ended\r\n" in got, got
    assert got.index(b"a batch ended") < got.rindex(b"\rlive ")          # drawn again below it


def test_no_live_line_on_a_pipe():
    assert _run_on(stderr_tty=False) == b"kamleak explore: a batch ended\n"


def test_a_host_without_tcpdump_gets_its_reason_in_the_findings_pcap_line(monkeypatch):
    from kamleak.harness.probes.capture import Capture
    from kamleak.harness.tools.explore import record

    monkeypatch.setenv("PATH", "/nonexistent")          # the capture tool is looked up on PATH
    note = Capture([5060]).start().finish()
    described = record.describe({"kamailio.log": "", record.NOTE: note}, 1, "")
    assert described["pcap"] == "not captured (neither tcpdump nor tshark is installed (apt-get install tcpdump))"
    assert record.line(described, "replay 1 of 3").endswith("; pcap: " + described["pcap"])
