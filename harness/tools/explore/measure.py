"""`make bench`'s explore figures: flows judged a minute against their floor,
time to the first finding, the shrink's replays.

The floor of a campaign's rate is one batch of the plainest flow
(`invite:answer, bye`): JOBS copies at once, driven and judged on a warm
Kamailio, so every second above it is the campaign's own (odd steps, slow
answers, Hypothesis, the verdict cache's misses).  The finding's figures come
from a real campaign on a leaking build: the 4140 shape must be found,
shrunk and confirmed, with the batches the shrink ran counted.
"""

from __future__ import annotations

import time

from kamleak.harness.judging import oracle
from kamleak.harness.stack.kamailio.variants import Variant
from kamleak.harness.stack.runner import Stack
from kamleak.harness.stack.targets import Target
from kamleak.harness.tools.explore import flow as fl
from kamleak.harness.tools.explore.campaign import Campaign
from kamleak.harness.tools.explore.mutate import with_base
from kamleak.harness.tools.explore.run import run_batch

CLEAN = ("6.1.5", "pua_dialoginfo")          # frees the orphan: a campaign's rate, nothing found
LEAKING = ("6.0.1", "pua_dialoginfo")        # the 4140 leak: time to the first finding


def _floor(bench: Stack, defines, jobs: int) -> float:
    """Seconds for JOBS plain flows at once on a warm Kamailio (median of three)."""
    kam = bench.kamailio(defines)
    try:
        timers = oracle.read_timers(kam.rpc, kam.config, kam.version)
        plain = fl.parse("ws", ["invite:answer", "bye"])
        times = []
        for _ in range(3):
            t0 = time.monotonic()
            judged = run_batch(kam, bench.pbx, [plain] * jobs, timers)
            times.append(time.monotonic() - t0)
            if any(j.leaked or j.run.error for j in judged):
                raise RuntimeError(f"the floor's plain flows did not come out clean: "
                                   f"{[j.run.error or j.proofs for j in judged][:2]}")
        return sorted(times)[1]
    finally:
        kam.stop()


def _campaign(version: str, variant: str, *, jobs: int, budget_s: float, seed: int,
              max_flows: int | None = None, floor: bool = False, say=lambda m: None) -> dict:
    defines = Variant.parse(variant).defines
    with Stack(Target("version", version), log=say) as bench:
        floor_s = _floor(bench, defines, jobs) if floor else None
        campaign = Campaign(lambda mutation: bench.kamailio(with_base(defines, mutation)), bench.pbx,
                            fl.flows(), batch=jobs,
                            budget_s=budget_s, max_flows=max_flows, seed=seed, database=None,
                            say=say)
        r = campaign.run()
    row = {"version": version, "variant": variant, "jobs": jobs, "seed": seed, "flows": r.flows,
           "batches": r.batches, "elapsed_s": round(r.elapsed, 1), "stopped": r.stopped,
           "harness_errors": r.harness_errors,
           "flows_per_min": round(r.flows / max(r.elapsed, 1e-9) * 60, 1)}
    if floor_s is not None:
        row["floor_batch_s"] = round(floor_s, 2)
        row["floor_flows_per_min"] = round(jobs / floor_s * 60, 1)
    for f in r.findings:
        row.setdefault("findings", []).append({
            "flow": f.flow.text(), "signature": f.signature, "confirmed": f"{f.confirmed}/{f.replays}",
            "found_after_flows": f.found_after_flows, "found_after_s": round(f.found_after_s, 1),
            "shrink_runs": f.shrink_runs, "steps": len(f.flow.steps)})
    return row


def measure(*, jobs: int = 20, budget_s: float = 120.0, seed: int = 1, say=lambda m: None) -> dict:
    say(f"explore: a {budget_s:.0f} s campaign on {CLEAN[0]} (rate against one batch of plain flows)")
    clean = _campaign(*CLEAN, jobs=jobs, budget_s=budget_s, seed=seed, floor=True, say=say)
    say(f"explore: a campaign on {LEAKING[0]} until the 4140 finding is confirmed")
    leak = _campaign(*LEAKING, jobs=jobs, budget_s=max(budget_s, 600.0), seed=seed, say=say)
    return {"clean": clean, "leaking": leak}


def table(m: dict) -> list[str]:
    c, k = m["clean"], m["leaking"]
    ratio = c["flows_per_min"] / c["floor_flows_per_min"] if c.get("floor_flows_per_min") else None
    lines = [f"explore (jobs {c['jobs']}, seed {c['seed']})",
             f"  {c['version']} {c['variant']}: {c['flows']} flows in {c['elapsed_s']} s, "
             f"{c['flows_per_min']} flows/min; floor {c.get('floor_flows_per_min')} flows/min "
             f"(one batch of plain flows in {c.get('floor_batch_s')} s): "
             + (f"{ratio:.2f} of the floor" if ratio is not None else "no floor") +
             f"; findings {len(c.get('findings', []))} (must be 0)"]
    for f in k.get("findings", []) or [None]:
        if f is None:
            lines.append(f"  {k['version']} {k['variant']}: NO finding in {k['elapsed_s']} s "
                         f"({k['flows']} flows): the 4140 leak was missed")
            continue
        lines.append(f"  {k['version']} {k['variant']}: first leak after {f['found_after_flows']} flows, "
                     f"{f['found_after_s']} s; shrunk to {f['steps']} steps ({f['flow']}) in "
                     f"{f['shrink_runs']} batches run; confirmed {f['confirmed']}; whole campaign "
                     f"{k['elapsed_s']} s")
    return lines
