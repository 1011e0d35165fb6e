"""`make bench`'s reduce figures: a real reduction, its time against its floor.

`kamleak reduce` runs as a user runs it (the CLI, Debian 6.0.1, `--jobs 4`), on
the small fixture by default and on upstream's WebRTC example with the trigger
when asked (about 4 minutes); its `--log` gives every gate's start and time.
The floor is the gates' own time packed into the slots with none idle (the sum
of gate seconds / jobs): every second above it is the search's (a round waiting
for the gate it needs, `kamailio -c` checks, the final verification).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = {"small": ROOT / "tests/configs/reduce/small_trigger.cfg",
           "stock": ROOT / "tests/configs/stock/kamailio-default-websocket.trigger.cfg"}
VERSION, JOBS = "6.0.1", 4


def reduce_once(name: str, say=lambda m: None) -> dict:
    """One reduction of CONFIGS[NAME]: its result line and the gates' figures."""
    cfg = CONFIGS[name]
    with tempfile.TemporaryDirectory(prefix="kamleak-bench-reduce-") as tmp:
        out, log = Path(tmp) / "reduced.cfg", Path(tmp) / "gates.jsonl"
        say(f"reduce {cfg.name} on {VERSION}, --jobs {JOBS}")
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "kamleak.harness.tools.cli", "reduce", str(cfg),
                               "--kamailio-version", VERSION, "--jobs", str(JOBS), "--out", str(out),
                               "--log", str(log)], cwd=ROOT, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, env={**os.environ, "KAMLEAK_PROGRESS": "0"})
        wall = time.monotonic() - t0
        gates = [json.loads(ln) for ln in log.read_text().splitlines()] if log.exists() else []
    row = {"config": name, "version": VERSION, "jobs": JOBS, "exit": proc.returncode, "wall_s": round(wall, 1)}
    m = re.search(r": (\d+) lines of (\d+) still leak .*stopped: (\w+)\)", proc.stdout)
    if proc.returncode != 0 or not m or not gates:
        row["error"] = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
        return row
    busy = sum(g["seconds"] for g in gates)
    span = max(g["started"] + g["seconds"] for g in gates) - min(g["started"] for g in gates)
    by: dict[str, list[float]] = {}
    for g in gates:
        by.setdefault(g["outcome"], []).append(g["seconds"])
    row.update({"lines": int(m.group(1)), "of": int(m.group(2)), "stopped": m.group(3), "gates": len(gates),
                "search_s": round(span, 1), "floor_s": round(busy / JOBS, 1),
                "gates_at_once": round(busy / span, 2) if span else None,
                "mean_gate_s": {o: round(sum(t) / len(t), 2) for o, t in sorted(by.items())}})
    return row


def measure(*, stock: bool = False, say=lambda m: None) -> dict:
    return {"runs": [reduce_once(n, say) for n in (("small", "stock") if stock else ("small",))]}


def table(m: dict) -> list[str]:
    lines = [f"reduce (Debian {VERSION}, --jobs {JOBS})"]
    for r in m["runs"]:
        if "error" in r:
            lines.append(f"  {r['config']}: not measured (exit {r['exit']}: {r['error'][0][:100]})")
            continue
        means = ", ".join(f"{o} {s} s" for o, s in r["mean_gate_s"].items())
        lines.append(f"  {r['config']}: {r['lines']} of {r['of']} lines ({r['stopped']}) in {r['wall_s']} s; "
                     f"{r['gates']} gates, {r['gates_at_once']} at once; search {r['search_s']} s against its "
                     f"floor {r['floor_s']} s (gates' time / jobs): {r['search_s'] / r['floor_s']:.2f}x; "
                     f"mean gate {means}")
    return lines
