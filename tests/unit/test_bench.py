"""`kamleak bench`'s arithmetic and tables, without containers (the figures come from `make bench`)."""
from __future__ import annotations

from pathlib import Path

import pytest

from kamleak.harness.errors import UsageError
from kamleak.harness.tools import bench

ROOT = Path(__file__).resolve().parents[2]

FLOOR = {"kamailio container": 0.4, "asterisk container": 0.5, "docker api": 0.01,
         "remove running": 0.2, "wt_timer": 1.0, "leak_deadline": 7.0}


def _msg(stamp: str, head: str, first: str, cseq: str) -> str:
    return (f"[{stamp}] VERBOSE[52] res_pjsip_logger.c: <--- {head} --->\n{first}\n"
            "Via: SIP/2.0/UDP 127.0.0.1:31246;branch=z9hG4bKPj1\nFrom: <sip:a@127.0.0.1>;tag=1\n"
            f"To: <sip:b@127.0.0.1>\nCall-ID: call-1\nCSeq: {cseq}\nContent-Length:  0\n\n\n")


def test_asterisk_answer_time_sums_each_invite_to_its_final_response():
    log = (_msg("2026-11-23 21:40:52.100", "Received SIP request (1 bytes) from UDP:127.0.0.1:1",
                "INVITE sip:b@127.0.0.1 SIP/2.0", "1 INVITE")
           + _msg("2026-11-23 21:40:52.102", "Transmitting SIP response (1 bytes) to UDP:127.0.0.1:1",
                  "SIP/2.0 100 Trying", "1 INVITE")
           + _msg("2026-11-23 21:40:52.110", "Transmitting SIP response (1 bytes) to UDP:127.0.0.1:1",
                  "SIP/2.0 200 OK", "1 INVITE")
           + _msg("2026-11-23 21:40:52.300", "Received SIP request (1 bytes) from UDP:127.0.0.1:1",
                  "INVITE sip:b@127.0.0.1 SIP/2.0", "2 INVITE")
           + _msg("2026-11-23 21:40:52.305", "Transmitting SIP response (1 bytes) to UDP:127.0.0.1:1",
                  "SIP/2.0 200 OK", "2 INVITE"))
    assert bench._asterisk_answer_s(log, "call-1") == pytest.approx(0.015, abs=1e-6)
    assert bench._asterisk_answer_s(log, "another-call") is None


def test_a_phase_floor_is_the_runs_own_else_the_benchs_and_total_sums_them():
    rows = [{"floor": {"BYE": 0.05, "verdict": 1.0}}, {"floor": {"BYE": 0.07, "verdict": 1.2}}]
    assert bench.phase_floor(FLOOR, rows, "BYE") == pytest.approx(0.06)
    assert bench.phase_floor(FLOOR, rows, "Kamailio ready") == 0.4
    assert bench.phase_floor(FLOOR, rows, "call setup") is None        # not measured: left out
    assert bench.phase_floor(FLOOR, rows, "total") == pytest.approx(0.01 + 0.5 + 0.4 + 0.06 + 1.1 + 0.2)


def test_the_targets_are_figures_against_the_issues_bounds():
    cases = {"a": {"median": {"leak, early": {"verdict_after_reply": 0.9, "x_clean": 1.1}}},
             "b": {"median": {"leak, early": {"verdict_after_reply": 8.0, "x_clean": None}}}}
    t = bench.targets(cases)
    assert t["verdict_after_reply_s"] == 1.5 and t["leak_vs_clean"] == 1.5
    assert t["cases"]["a"] == {"verdict_after_reply": 0.9, "verdict_met": True, "leak_vs_clean": 1.1,
                               "ratio_met": True}
    assert t["cases"]["b"]["verdict_met"] is False and t["cases"]["b"]["ratio_met"] is False


def test_the_stock_timer_config_is_the_checkouts_and_its_clean_copy_is_mitigated(tmp_path):
    path = bench._stock_timer_path(None)
    assert path == ROOT / bench.STOCK_TIMER_CONFIG
    copy = bench._mitigated_copy(path, tmp_path)
    text = copy.read_text()
    assert "sl_reply_error();" not in text and text.count("send_reply_error();") == 1
    none = tmp_path / "none.cfg"
    none.write_text("request_route { exit; }\n")
    assert bench._mitigated_copy(none, tmp_path / "none") is None


def test_a_missing_stock_timer_config_is_said_and_only_kamleaks_case_runs(tmp_path):
    cases, missing = bench.early_cases(str(tmp_path / "absent.cfg"), tmp_path)
    assert [c["name"] for c in cases] == ["kamleak's kamailio.cfg"]
    assert len(missing) == 1 and "absent.cfg not found" in missing[0] and "--early-config" in missing[0]


def _row(outcome, total, after, rule=None):
    return {"outcome": outcome, "total": total, "verdict_after_reply": after, "verdict_at": after,
            "reply_at": 0.0, "after_watch": 0.02, "orphan_rule": rule, "deadline": 7.0, "wt_timer": 1.0,
            "floor": {"verdict": 1.0}, **{p: 0.1 for p in bench.PHASES if p != "total"}}


def test_the_early_table_names_the_modes_ratios_targets_and_what_was_not_run():
    modes = {"clean": [_row("clean", 2.0, 1.0)], "leak, --no-early": [_row("leak", 8.0, 7.0)],
             "leak, early": [_row("leak", 2.2, 1.0, "count")]}
    summary = {m: {"outcomes": [r["outcome"] for r in rows], "total": rows[0]["total"],
                   "verdict_after_reply": rows[0]["verdict_after_reply"],
                   "verdict_at": rows[0]["verdict_at"], "reply_at": 0.0, "after_watch": 0.02,
                   "rules": [rows[0]["orphan_rule"] or ("gone" if m == "clean" else "bound")],
                   "deadline": 7.0, "wt_timer": 1.0} for m, rows in modes.items()}
    summary["leak, early"]["x_clean"], summary["leak, --no-early"]["x_clean"] = 1.1, 4.0
    cases = {"kamleak's kamailio.cfg": {"short": "kamleak.cfg", "leak": "pua_dialoginfo",
                                        "clean": "variant pua_dialoginfo+send_reply_error",
                                        "runs": modes, "median": summary}}
    ev = {"version": "6.0.1", "runs_each": 1, "loadavg_before": (0.5, 0, 0),
          "loadavg_after": (0.7, 0, 0), "cases": cases, "targets": bench.targets(cases)}
    text = "\n".join(bench.early_table(FLOOR, ev, ["stock-timer user config: x not found"]))
    assert "leak, --no-early (pua_dialoginfo)" in text and "4.00x" in text and "count" in text
    assert "after Kamailio's reply: 1.00 s (met)" in text and "1.10x (met)" in text
    assert "not run: stock-timer user config: x not found" in text
    assert "clean gate, each phase against its floor:" in text and "load 0.50 -> 0.70" in text


def test_only_and_none_of_the_early_verdict_section_is_a_usage_error():
    import argparse

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args(["--early-verdict-only", "--no-early-verdict"])
    with pytest.raises(UsageError):
        bench._main(args)
    args = p.parse_args([])
    assert (args.no_early_verdict, args.early_verdict_only, args.early_runs) == (False, False, 3)


def test_explore_figures_read_against_their_floor_and_say_a_miss():
    from kamleak.harness.tools.explore.measure import table
    clean = {"version": "6.1.5", "variant": "pua_dialoginfo", "jobs": 20, "seed": 1, "flows": 300,
             "elapsed_s": 120.0, "flows_per_min": 150.0, "floor_flows_per_min": 300.0,
             "floor_batch_s": 4.0}
    found = {"version": "6.0.1", "variant": "pua_dialoginfo", "elapsed_s": 80.0, "flows": 60,
             "findings": [{"flow": "ws: invite:answer, rst, pbx_bye", "confirmed": "3/3", "steps": 3,
                           "found_after_flows": 41, "found_after_s": 52.0, "shrink_runs": 4}]}
    text = "\n".join(table({"clean": clean, "leaking": found}))
    assert "150.0 flows/min; floor 300.0 flows/min" in text and "0.50 of the floor" in text
    assert "first leak after 41 flows, 52.0 s; shrunk to 3 steps" in text
    missed = "\n".join(table({"clean": clean, "leaking": dict(found, findings=[])}))
    assert "NO finding" in missed


def test_reduce_figures_read_against_their_floor_and_say_a_failed_run():
    from kamleak.harness.tools.reduce.measure import table
    ok = {"config": "small", "exit": 0, "wall_s": 106.3, "lines": 36, "of": 75, "stopped": "done",
          "gates": 123, "gates_at_once": 3.15, "search_s": 96.3, "floor_s": 75.7,
          "mean_gate_s": {"clean": 2.09, "leak": 2.22}}
    failed = {"config": "stock", "exit": 125, "wall_s": 3.0, "error": ["kamleak reduce: cannot test: no engine"]}
    lines = table({"runs": [ok, failed]})
    assert "small: 36 of 75 lines (done) in 106.3 s; 123 gates, 3.15 at once" in lines[1]
    assert "search 96.3 s against its floor 75.7 s (gates' time / jobs): 1.27x" in lines[1]
    assert lines[2] == "  stock: not measured (exit 125: kamleak reduce: cannot test: no engine)"


def test_only_and_none_of_the_reduce_section_is_a_usage_error():
    import argparse

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    with pytest.raises(UsageError):
        bench._main(p.parse_args(["--reduce-only", "--no-reduce"]))
