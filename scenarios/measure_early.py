"""Measure the early verdict against the lifetime bound: do they ever disagree?

Not a test: the batch behind docs' agreement table (`make agreement`).  For
each target, variant, transport and disconnect mode, RUNS gate runs of the
issue-4140 ladder, each on a fresh Kamailio, with the bound waited out after
every orphan proof (`oracle.configure(confirm=True)`).  A run where the two
disagree ends in the watch's ScenarioError and is counted as a disagreement;
any other error is counted apart (no verdict, so nothing to compare).

    .venv/bin/python -m kamleak.scenarios.measure_early --table artifacts/agreement*.json
    .venv/bin/python -m kamleak.scenarios.measure_early --target debian:6.0.1 \\
        --variant pua_dialoginfo,pua_dialoginfo+send_reply_error --transport ws,wss \\
        --disconnect rst,fin,close,rst+advertise --runs 20 --out artifacts/agreement.json

`--config PATH` gates a user config instead (variant `none`: its own triggers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from kamleak.harness.errors import KamleakError, NotApplicable
from kamleak.harness.judging import oracle
from kamleak.harness.stack.runner import Stack
from kamleak.harness.stack.targets import Target
from kamleak.scenarios import gh4140_bye_to_closed_ws as gh4140


def target_of(spec: str) -> Target:
    kind, _, ref = spec.partition(":")
    return Target("version" if kind == "debian" else "source", ref)


def one(bench, variant, transport: str, disconnect: str) -> dict:
    """One confirmed gate run: what the early verdict said, what the bound said."""
    t0 = time.monotonic()
    try:
        v = gh4140.gate(bench, variant, transport=transport, disconnect=disconnect)
    except NotApplicable as exc:
        return {"result": "n/a", "why": str(exc)[:160]}
    except KamleakError as exc:
        kind = "disagree" if "disagree" in exc.cause else "error"
        return {"result": kind, "why": exc.line()[:300], "wall": round(time.monotonic() - t0, 2)}
    finally:
        bench.release()          # this run's Kamailio: hundreds of runs share one Stack
    reply_at = v.replies[0].at if v.replies else None
    return {"result": v.outcome, "orphan_rule": (v.orphan or {}).get("rule"),
            "orphan_at": round(v.orphan["at"], 3) if v.orphan else None,
            "reply_at": reply_at, "gone_after": v.gone_after, "deadline": v.deadline,
            "confirmed": v.confirmed, "replies": [r.describe() for r in v.replies],
            "early": v.early, "wall": round(time.monotonic() - t0, 2)}


def row_of(runs: list[dict]) -> dict:
    """Counts and the orphan proof's times after the request (median, max)."""
    results = [r["result"] for r in runs]
    proven = [r["orphan_at"] for r in runs if r.get("orphan_at") is not None]
    leaks = results.count("leak")
    return {"runs": len(runs), "leak": leaks, "clean": results.count("clean"),
            "proven_early": len(proven), "not_proven": leaks - len(proven),
            "disagree": results.count("disagree"), "error": results.count("error"),
            "n/a": results.count("n/a"),
            "rules": sorted({r["orphan_rule"] for r in runs if r.get("orphan_rule")}),
            "orphan_at_median": round(statistics.median(proven), 2) if proven else None,
            "orphan_at_max": round(max(proven), 2) if proven else None}


def markdown(rows: list[dict]) -> str:
    """The agreement table, one line per target x variant x transport x disconnect mode."""
    out = ["| build | config, variant | transport | disconnect | runs | LEAK | CLEAN | proven early "
           "(rule) | early LEAK after the BYE, median / max | disagreements | errors |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["n/a"]:
            out.append(f"| {r['target']} | {r['config']}, {r['variant']} | {r['transport']} | "
                       f"{r['disconnect']} | n/a: the build refuses it | | | | | | |")
            continue
        rules = "/".join(r["rules"]) or "-"
        times = (f"{r['orphan_at_median']:.2f} / {r['orphan_at_max']:.2f} s"
                 if r["orphan_at_median"] is not None else "-")
        out.append(f"| {r['target']} | {r['config']}, {r['variant']} | {r['transport']} | "
                   f"{r['disconnect']} | {r['runs']} | {r['leak']} | {r['clean']} | "
                   f"{r['proven_early']} ({rules}) | {times} | {r['disagree']} | {r['error']} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kamleak.scenarios.measure_early",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--target", action="append", required=True,
                   help="debian:5.6.3 | debian:6.0.1 | debian:6.1.5 | src:REF (repeatable)")
    p.add_argument("--variant", default="pua_dialoginfo,pua_dialoginfo+send_reply_error")
    p.add_argument("--transport", default="ws,wss")
    p.add_argument("--disconnect", default="rst")
    p.add_argument("--config", default=None, help="a user kamailio.cfg (README contract)")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--out", default="artifacts/agreement.json")
    p.add_argument("--table", nargs="+", metavar="JSON", default=None,
                   help="print the markdown table of earlier --out files and exit")
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--table":
        rows = [r for f in argv[1:] for r in json.loads(Path(f).read_text())]
        print(markdown(rows))
        print(f"\n{len(rows)} rows, {sum(r['runs'] for r in rows)} runs, "
              f"{sum(r['disagree'] for r in rows)} disagreements")
        return 0
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be 1 or more")
    oracle.configure(early=True, confirm=True)
    user_config = None
    if args.config:
        from kamleak.harness.stack.kamailio.user_config import UserConfig
        user_config = UserConfig.load(args.config)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = []
    for spec in args.target:
        target = target_of(spec)
        with Stack(target, log=lambda *a: None, user_config=user_config) as bench:
            for vname in args.variant.split(","):
                variant = gh4140.parse_variant(vname)
                for transport in args.transport.split(","):
                    for disconnect in args.disconnect.split(","):
                        runs = []
                        for _ in range(args.runs):
                            runs.append(one(bench, variant, transport, disconnect))
                            if runs[-1]["result"] == "n/a":
                                break
                        row = {"target": target.id, "config": args.config or "kamleak",
                               "variant": vname, "transport": transport,
                               "disconnect": disconnect, **row_of(runs), "detail": runs}
                        table.append(row)
                        print(f"{target.id:14} {vname:32} {transport:3} {disconnect:13} "
                              f"leak {row['leak']:2} clean {row['clean']:2} early {row['proven_early']:2} "
                              f"disagree {row['disagree']} error {row['error']} n/a {row['n/a']} "
                              f"{'/'.join(row['rules'])} {row['orphan_at_median']} {row['orphan_at_max']}",
                              flush=True)
                        out.write_text(json.dumps(table, indent=1))
    bad = sum(r["disagree"] for r in table)
    print(f"{len(table)} rows, {sum(r['runs'] for r in table)} runs, {bad} disagreements -> {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
