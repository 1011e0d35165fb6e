"""`kamleak summary merge`: one table from the verdict summaries of several runs.

A long matrix spreads over CI jobs (pytest `--kamleak-shard I/N`); each job
writes its verdicts with `--kamleak-summary PATH`.  `merge` reads them all,
refuses a test that two shards both ran with different verdicts, and prints
one table: a row per (scenario, variant, transport), a column per Kamailio.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from kamleak.harness.errors import UsageError


def load(paths: list[str]) -> list[dict]:
    records: list[dict] = []
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except OSError as exc:
            raise UsageError(f"cannot read the summary {path}: {exc.strerror or exc}",
                             "pass the files written by pytest --kamleak-summary") from None
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} is not a kamleak summary (JSON: {exc.msg}, line {exc.lineno})",
                             "pass the files written by pytest --kamleak-summary") from None
        if not isinstance(data, list) or any(not isinstance(r, dict) or "outcome" not in r for r in data):
            raise UsageError(f"{path} is not a kamleak summary (no list of verdicts)",
                             "pass the files written by pytest --kamleak-summary")
        records += data
    return records


def early_fields(record: dict) -> dict:
    """A summary line's early verdict, flat for dashboards: when the orphan was
    proven (seconds after the request; None: not proven), by which rule, and
    the lifetime bound (seconds after the request) it did not have to wait out."""
    o = record.get("orphan") if isinstance(record.get("orphan"), dict) else None
    at = o.get("at") if o else None
    return {"orphan_at": round(at, 3) if isinstance(at, (int, float)) else None,
            "orphan_rule": o.get("rule") if o else None,
            "deadline": record.get("deadline")}


def _scenario(test: str) -> str:
    m = re.search(r"test_(gh\d+|pr\d+|ws_alias_takeover|verdict_matrix)", test)
    name = m.group(1) if m else test.split("::")[0]
    return "gh4140" if name == "verdict_matrix" else name


def _target(test: str, rec: dict) -> str:
    m = re.search(r"\[(?:[^\]]*-)?(debian-[\d.]+|src:[\w.]+)", test)
    return m.group(1) if m else rec.get("kamailio_version", "?")


def table(records: list[dict]) -> str:
    """Markdown: scenario | variant | transport | one column per Kamailio."""
    cells: dict[tuple, dict[str, set]] = {}
    targets: list[str] = []
    for r in records:
        t = _target(r.get("test", ""), r)
        if t not in targets:
            targets.append(t)
        key = (_scenario(r.get("test", "")), r.get("variant", ""), r.get("transport", "") or "-")
        cells.setdefault(key, {}).setdefault(t, set()).add(r["outcome"].upper())
    out = ["| scenario | variant | tr | " + " | ".join(targets) + " |",
           "|---|---|---|" + "---|" * len(targets)]
    for key in sorted(cells):
        row = cells[key]
        out.append("| " + " | ".join(key) + " | " +
                   " | ".join("/".join(sorted(row.get(t, {"-"}))) for t in targets) + " |")
    return "\n".join(out)


NAME = "summary"
HELP = "merge the verdict summaries of sharded runs into one table"
DESCRIPTION = "kamleak summary merge SUMMARY.json...: one verdict table from sharded runs."


def add_arguments(p: argparse.ArgumentParser) -> None:
    ssub = p.add_subparsers(dest="summary_cmd", required=True, metavar="merge")
    m = ssub.add_parser("merge", help="merge --kamleak-summary files (one per shard)")
    m.add_argument("summaries", nargs="+", metavar="SUMMARY.json")
    m.add_argument("--out", default=None, metavar="PATH", help="also write the merged JSON there")
    m.add_argument("--table", action="store_true", help="print the Markdown table (default: yes)")


def run(args) -> int:
    """`merge`, the one subcommand."""
    try:
        records = load(args.summaries)
    except UsageError as exc:
        print(f"kamleak summary: {exc.line()}", file=sys.stderr)
        return 2
    if args.out:
        with open(args.out, "w") as f:
            json.dump(records, f, indent=1)
    print(table(records))
    return 0
