"""What `kamleak reduce` prints at the end, from a search's result on the real removal units of
tests/configs/reduce/small_trigger.cfg (the verdicts are the search's inputs here, as a run on
Debian 6.0.1 gave them: tests/integration/test_reduce.py runs the real thing)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kamleak.harness.stack.kamailio.user_config import UserConfig
from kamleak.harness.tools.reduce import cli
from kamleak.harness.tools.reduce.probe import Probed
from kamleak.harness.tools.reduce.removal import Reduction
from kamleak.harness.tools.reduce.search import Outcome, Result

SMALL = Path(__file__).resolve().parents[1] / "configs" / "reduce" / "small_trigger.cfg"


class _Probe:
    keep = "BYE 478/SL; tm cell: BYE/out0/ref1"

    def __init__(self):
        self.last: dict = {}

    def timing(self) -> str:
        return "leak 3x 2.0 s"


def unit(red: Reduction, text: str):
    line = next(k for k, t in enumerate(red.lines, 1) if t.strip() == text)
    return next(u for u in red.units if u.line == line and u.kind in ("stmt", "noop"))


def test_the_report_names_the_calls_the_way_there_and_what_leaks_otherwise(tmp_path, capsys):
    red = Reduction.of(UserConfig.load(str(SMALL)))
    send, reply, rr = unit(red, "uac_req_send();"), unit(red, "sl_reply_error();"), unit(red, "record_route();")
    call = unit(red, "route(CALL_ENDED);")
    probe = _Probe()
    probe.last[red.key(frozenset({reply.id}))] = Probed("leak", "…", "BYE no reply; tm cell: BYE/out0/ref1")
    probe.last[red.key(frozenset({rr.id}))] = Probed("skip", "cannot test: the call could not be set up")
    result = Result(frozenset(), verified=True, runs=12, cached=3, refused=1,
                    cause={send.id: Outcome.CLEAN, call.id: Outcome.CLEAN, reply.id: Outcome.OTHER,
                           rr.id: Outcome.OTHER})
    out = tmp_path / "r.cfg"

    def write(state):
        out.write_text(red.text(state))

    args = argparse.Namespace(cfg=str(SMALL))
    assert cli._report(args, red, result, out, write, 61.0, probe) == cli.EXIT_REDUCED
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].endswith("still leak 'BYE 478/SL; tm cell: BYE/out0/ref1' (re-verified: every run kept "
                             "the leak; stopped: done)")
    cause = lines.index("  cause: removing any one of these alone makes the leak go away:")
    assert lines[cause + 1] == f"    line {send.line}: uac_req_send();  [route[CALL_ENDED]]"
    assert lines[cause + 2].startswith("  and what leads there")
    assert lines[cause + 3] == f"    line {call.line}: route(CALL_ENDED);  [request_route]"
    at = lines.index(f"  without line {reply.line}: sl_reply_error();  [route[RELAY]]")
    assert lines[at + 1] == "    it leaks otherwise: BYE no reply; tm cell: BYE/out0/ref1"
    assert f"kept for the call or the contract (1 line; removing one loses the verdict): line {rr.line}" in text
    assert "runs: 12 gates, 3 answered from the cache, 1 candidates" in text
    assert out.read_text() == red.text(frozenset())


def test_a_unit_partly_removed_is_cited_by_the_lines_left_of_it():
    red = Reduction.of(UserConfig.load(str(SMALL)))
    route = next(u for u in red.units if u.kind == "route" and "CALL_ENDED" in u.label)
    xlog = unit(red, 'xlog("L_INFO", "BYE $ci\\n");')
    furi = next(u for u in red.units if u.kind == "stmt" and "$uac_req(furi)" in u.label)
    text = cli.describe(red, route, frozenset({xlog.id, furi.id}))
    call = next(k for k, t in enumerate(red.lines, 1) if t.strip() == "route(CALL_ENDED);")
    assert text.startswith(f"lines {call}, ") and f", {furi.line}," not in text and text.endswith(
        "  [route[CALL_ENDED]]")


def test_what_leaks_otherwise_is_grouped_by_the_leak_and_names_the_innermost_lines(tmp_path, capsys):
    """The stock example's NAT handling: without the route, its call, or the statement in it,
    the BYE gets another reply (478, not 500): one group, the statements that matter."""
    red = Reduction.of(UserConfig.load(str(SMALL)))
    route = next(u for u in red.units if u.kind == "route" and "CALL_ENDED" in u.label)
    call, send = unit(red, "route(CALL_ENDED);"), unit(red, "uac_req_send();")
    rr = unit(red, "record_route();")
    probe = _Probe()
    other = "BYE 500/SL; tm cell: BYE/out0/ref1"
    for u in (route, call, send):
        probe.last[red.key(frozenset({u.id}))] = Probed("leak", "…", other)
    probe.last[red.key(frozenset({rr.id}))] = Probed("leak", "…", "BYE no reply; tm cell: BYE/out0/ref1")
    result = Result(frozenset(), verified=True, runs=5,
                    cause={route.id: Outcome.OTHER, call.id: Outcome.OTHER, send.id: Outcome.OTHER,
                           rr.id: Outcome.OTHER})
    out = tmp_path / "r.cfg"
    cli._report(argparse.Namespace(cfg=str(SMALL)), red, result, out, lambda s: out.write_text(red.text(s)),
                1.0, probe)
    lines = capsys.readouterr().out.splitlines()
    at = lines.index(f"  without any one of these it leaks otherwise ({other}):")
    # The route holds both the call and uac_req_send(): it is not listed, they are.
    assert lines[at + 1:at + 3] == [f"    line {call.line}: route(CALL_ENDED);  [request_route]",
                                    f"    line {send.line}: uac_req_send();  [route[CALL_ENDED]]"]
    assert lines[at + 3] == f"  without line {rr.line}: record_route();  [request_route]"
