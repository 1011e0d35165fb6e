"""`make bench`: how long the gate takes, what it cannot go below, and soak throughput.

Three measurements, all in one run so the floor and the numbers share the
machine's state:

* **floor**: a bare container start of each image with a trivial command
  (`true`: create, start, exit, remove), and the configured tm timers: a
  clean verdict cannot come before the BYE cell's wt_timer has run out; a
  leak verdict not before the oracle's deadline, (fr_timer + wt_timer) x
  1.25 + 2 s;
* **gate, warm** (images built): the real issue-4140 scenario run as
  `kamleak check` runs it (a fresh `Stack`: Asterisk, Kamailio, the call, the
  verdict, teardown), RUNS times for a clean variant (`none` on 6.1.5) and a
  leaking one (`uac_req_send` on 6.0.1), split into phases: harness setup,
  Asterisk ready, Kamailio ready, call setup (INVITE .. re-INVITE ACK),
  disconnect (RST .. ws.dump drops it), BYE (Asterisk's hangup: two docker
  execs), verdict (BYE .. oracle done), teardown; median of the runs, and
  the ratio to the floor;
* **soak throughput**: sustained calls/s through Kamailio over WebSocket with
  the built-in peer, with the harness's own CPU share (getrusage over the
  call phases) beside Kamailio's (its container's cgroup), and a cProfile of
  the harness in that path.

* **source build, one bisect step**: `kamleak bisect`'s cost per probe
  once the compiler cache is warm: a commit built right after its parent.

Cold time (images built from nothing: debootstrap + apt) is not measured:
it takes minutes and depends on the Debian mirror, not on kamleak.

Results: a table on stdout, `artifacts/bench.json`, and the profile in
`artifacts/bench-profile.txt`.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import time
from pathlib import Path

from kamleak.harness.errors import KamleakError
from kamleak.harness.stack import containers, engine, images
from kamleak.harness.stack.kamailio import TmTimers

GATE_CASES = (("6.1.5", "none"), ("6.0.1", "uac_req_send"))
PHASES = ("harness setup", "Asterisk ready", "Kamailio ready", "call setup", "disconnect", "BYE",
          "verdict", "teardown", "total")


def _say(msg: str) -> None:
    print(f"kamleak bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# The floor


def bare_start(client, image: str) -> float:
    """Seconds for a container of IMAGE running `true`: create, start, exit, remove."""
    t0 = time.monotonic()
    c = containers.run(client, image, role="bench", name_hint="floor", entrypoint=["true"],
                       command=[])
    try:
        c.wait(timeout=60)
    finally:
        containers.remove(c)
    return time.monotonic() - t0


def floors(client, runs: int) -> dict:
    timers = TmTimers()
    from kamleak.harness.judging.oracle import read_timers
    t = read_timers(None, timers)
    out = {"wt_timer": timers.wt_timer / 1000.0, "fr_timer": timers.fr_timer / 1000.0,
           "leak_deadline": t.deadline_for("BYE")}
    for name, image in (("kamailio container", images.kamailio_spec("6.1.5").tag),
                        ("asterisk container", images.asterisk_spec().tag)):
        values = [bare_start(client, image) for _ in range(runs)]
        out[name] = statistics.median(values)
        out[name + " runs"] = [round(v, 3) for v in values]
    return out


# ---------------------------------------------------------------------------
# Gate runs


def _mark(timeline, label: str) -> float | None:
    for t, lab in timeline:
        if lab == label:
            return float(t)
    return None


def gate_run(version: str, variant_name: str) -> dict:
    """One warm gate run, as `kamleak check` does it, timed by phase."""
    from kamleak.harness import registry
    from kamleak.harness.stack.runner import Stack
    from kamleak.harness.stack.targets import Target

    gh4140 = registry.scenario("gh4140")
    variant = gh4140.parse_variant(variant_name)
    t0 = time.monotonic()
    bench = Stack(Target("version", version), log=lambda m: None)
    bench.__enter__()
    try:
        t_entered = time.monotonic()
        ast_ready = bench.pbx.ready_after
        k0 = time.monotonic()
        kam = gh4140.start_kamailio(bench.kamailio, variant)
        t_kam = time.monotonic() - k0
        r0 = time.monotonic()
        verdict = gh4140.run(kamailio=kam, pbx=bench.pbx, ua_factory=bench.ua, transport="ws",
                             variant=variant, target=version)
        t_run = time.monotonic() - r0
    finally:
        c0 = time.monotonic()
        bench.close()
        t_close = time.monotonic() - c0
    tl = verdict.timeline
    setup_done = _mark(tl, "re-INVITE 200 OK + ACK")
    gone = _mark(tl, "ws.dump: connection gone")
    bye = _mark(tl, "BYE (Asterisk hangs up)")
    return {
        "version": version, "variant": variant.name, "outcome": verdict.outcome,
        "harness setup": (t_entered - t0) - ast_ready, "Asterisk ready": ast_ready,
        "Kamailio ready": t_kam, "call setup": setup_done, "disconnect": gone - setup_done,
        "BYE": bye - gone, "verdict": t_run - bye, "teardown": t_close,
        "total": time.monotonic() - t0,
    }


# ---------------------------------------------------------------------------
# Soak throughput


def soak_throughput(client, *, version: str, calls: int, concurrency: int, transport: str,
                    rate: float, mix: float = 0.0, variant: str = "none",
                    profile_path: Path | None = None) -> dict:
    from kamleak.harness import registry
    from kamleak.harness.sip.peer import UdpPeer
    from kamleak.harness.stack.runner import launch_kamailio
    from kamleak.harness.stack.targets import Target
    from kamleak.harness.tools.soak import run_soak

    workdir = containers.workdir()
    peer = UdpPeer().start()
    kam = None
    try:
        kam = launch_kamailio(Target("version", version), client, peer.sip_port, workdir,
                              registry.scenario("gh4140").parse_variant(variant).defines, TmTimers())
        prof = cProfile.Profile() if profile_path else None
        if prof:
            prof.enable()
        res = run_soak(kam, peer, calls=calls, concurrency=concurrency, rate=rate, mix=mix,
                       transport=transport, seed=1, checkpoints=1, variant=variant)
        if prof:
            prof.disable()
            buf = io.StringIO()
            st = pstats.Stats(prof, stream=buf)
            st.sort_stats("tottime").print_stats(30)
            st.sort_stats("cumulative").print_stats(25)
            profile_path.write_text(buf.getvalue())
    finally:
        if kam is not None:
            kam.stop()
        peer.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    kam_share = (res.kamailio_cpu_s / res.calls_phase_s) if res.kamailio_cpu_s is not None \
        and res.calls_phase_s else None
    during = [x for x in res.samples if x.get("phase") == "run"]
    return {"version": version, "variant": variant, "transport": transport, "calls": calls,
            "concurrency": concurrency, "rate_cap": rate, "mix": mix, "profiled": bool(profile_path),
            "max_tm_current": max((x["current"] for x in during), default=None),
            "max_shm_real_used": max((x["shm_real_used"] for x in during), default=None),
            "calls_per_s": res.calls_per_s, "failed": res.failed,
            "harness_cpu_share": res.harness_cpu_share,
            "harness_cpu_ms_per_call": round(res.harness_cpu_s / max(1, res.completed) * 1000, 3),
            "kamailio_cpu_share": round(kam_share, 3) if kam_share is not None else None,
            "kamailio_cpu_ms_per_call": round(res.kamailio_cpu_s / max(1, res.completed) * 1000, 3)
            if res.kamailio_cpu_s is not None else None,
            "setup_ms_median": res.setup_ms_median, "setup_ms_p95": res.setup_ms_p95,
            "leaked_cells": res.leaked_cells, "summary": res.summary_line()}


# ---------------------------------------------------------------------------


def build_step(client) -> dict:
    """One `kamleak bisect` step's build: a commit whose parent is built, with
    the compiler cache warm (knowledge's t_unref() fix after its parent: a
    one-file change).  The child's image is removed first, so this is a build."""
    from kamleak.harness import knowledge
    from kamleak.harness.stack import source_build

    child = knowledge.FIXES["t_unref_orphans"].commit
    src = source_build.Source()
    mods = source_build.modules_for()
    parent = source_build.build(client, f"{child}~1", source=src, modules=mods)
    res = src.resolve(child)
    tag = source_build.image_tag(res, [m for m in mods if m in src.modules_in_tree(res.commit)])
    try:
        client.images.remove(tag, force=True)
    except Exception:  # noqa: BLE001 - absent: nothing to remove
        pass
    t0 = time.monotonic()
    built = source_build.build(client, child, source=src, modules=mods)
    return {"parent": parent.commit[:10], "commit": built.commit[:10], "seconds": time.monotonic() - t0,
            "reused": built.reused, "source": src.location}


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def table(floor: dict, gate: dict, soak: list[dict], build: dict | None = None) -> str:
    kam_f, ast_f = floor["kamailio container"], floor["asterisk container"]
    floor_of = {"Kamailio ready": kam_f, "Asterisk ready": ast_f}
    lines = [f"floor: bare container start+exit kamailio {kam_f:.2f} s, asterisk {ast_f:.2f} s; "
             f"wt_timer {floor['wt_timer']:.2f} s; leak deadline {floor['leak_deadline']:.2f} s", ""]
    head = f"{'phase (median s)':18}"
    for case in gate:
        head += f" {case:>22} {'x floor':>8}"
    lines.append(head + f" {'floor':>7}")
    for phase in PHASES:
        line = f"{phase:18}"
        fl = None
        for rows in gate.values():
            med = _median(rows, phase)
            if phase == "verdict":
                fl = floor["leak_deadline"] if "leak" in {r["outcome"] for r in rows} else floor["wt_timer"]
            elif phase == "total":
                verdict_floor = floor["leak_deadline"] if "leak" in {r["outcome"] for r in rows} \
                    else floor["wt_timer"]
                fl = kam_f + ast_f + verdict_floor
            else:
                fl = floor_of.get(phase)
            ratio = f"{med / fl:.1f}x" if fl else ""
            line += f" {med:22.2f} {ratio:>8}"
        lines.append(line + f" {_fmt(fl) if phase not in ('verdict', 'total') else '':>7}")
    lines.append("")
    lines.append(f"{'soak (built-in peer)':34} {'calls/s':>8} {'harness CPU':>12} {'ms/call':>8} "
                 f"{'Kamailio CPU':>13} {'ms/call':>8} {'setup p50/p95 ms':>17} {'max cells':>9} "
                 f"{'max shm MB':>10}")
    for s in soak:
        name = f"{s['version']} {s['variant']} {s['transport'].upper()} c={s['concurrency']}" + \
            (" (cProfile)" if s["profiled"] else "")
        kshare = f"{s['kamailio_cpu_share'] * 100:.0f}%" if s["kamailio_cpu_share"] is not None else "-"
        lines.append(f"{name:34} {s['calls_per_s']:8.0f} {s['harness_cpu_share'] * 100:11.0f}% "
                     f"{s['harness_cpu_ms_per_call']:8.2f} {kshare:>13} "
                     f"{_fmt(s['kamailio_cpu_ms_per_call']):>8} "
                     f"{_fmt(s['setup_ms_median'])}/{_fmt(s['setup_ms_p95']):>8} "
                     f"{s['max_tm_current'] or 0:9d} {(s['max_shm_real_used'] or 0) / 1e6:10.1f}")
    if build:
        lines.append("")
        lines.append(f"source build, one bisect step (commit {build['commit']} after its parent "
                     f"{build['parent']}, ccache warm): {build['seconds']:.1f} s" if "seconds" in build
                     else f"source build, one bisect step: not measured ({build['error']})")
    return "\n".join(lines)


NAME = "bench"
HELP = "gate time by phase vs its floor, soak throughput"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=5, help="gate runs per case (median; default 5)")
    p.add_argument("--soak-calls", type=int, default=3000)
    p.add_argument("--soak-concurrency", type=int, default=50)
    p.add_argument("--soak-rate", type=float, default=1000.0,
                   help="calls/s cap (default 1000: at ~1400/s the cells waiting out wt_timer "
                        "fill Kamailio's 64 MB shm)")
    p.add_argument("--no-gate", action="store_true", help="skip the gate runs")
    p.add_argument("--no-soak", action="store_true", help="skip the soak throughput")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile'd soak")
    p.add_argument("--no-build", action="store_true",
                   help="skip the source build of one bisect step (a commit after its parent)")
    p.add_argument("--out", default="artifacts", help="directory for bench.json (default artifacts)")


DESCRIPTION = "Gate time by phase against its floor, and soak throughput (make bench)."


def run(args) -> int:
    try:
        return _main(args)
    finally:
        containers.remove_all_live()


def _main(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    client = engine.client()
    containers.reap_leftovers(client, log=_say)
    images.build_all(client, [images.asterisk_spec()] +
                     [images.kamailio_spec(v) for v in sorted({v for v, _ in GATE_CASES} | {"6.1.5"})])
    record: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": {
        "cpus": os.cpu_count(), "loadavg": os.getloadavg(), "python": platform.python_version(),
        "docker": engine.engine_summary(client)}, "cold": "not measured (image builds: minutes, "
        "bound by the Debian mirror)"}
    _say(f"floor: {args.runs} bare starts of each image")
    floor = floors(client, args.runs)
    record["floor"] = floor
    gate: dict[str, list[dict]] = {}
    if not args.no_gate:
        for version, variant in GATE_CASES:
            case = f"{variant}@{version}"
            rows = []
            for i in range(args.runs):
                row = gate_run(version, variant)
                _say(f"gate {case} run {i + 1}/{args.runs}: {row['outcome']} in {row['total']:.1f} s")
                rows.append(row)
            gate[case] = rows
        record["gate_runs"] = gate
        record["gate_median"] = {case: {p: round(_median(rows, p), 3) for p in PHASES}
                                 for case, rows in gate.items()}
    soak: list[dict] = []
    if not args.no_soak:
        for transport in ("ws", "wss"):
            _say(f"soak throughput {transport.upper()}: {args.soak_calls} calls, "
                 f"concurrency {args.soak_concurrency}, at most {args.soak_rate:g}/s")
            soak.append(soak_throughput(client, version="6.1.5", calls=args.soak_calls,
                                        concurrency=args.soak_concurrency, transport=transport,
                                        rate=args.soak_rate))
        if not args.no_profile:
            prof = out / "bench-profile.txt"
            _say(f"soak under cProfile -> {prof}")
            soak.append(soak_throughput(client, version="6.1.5", calls=min(2000, args.soak_calls),
                                        concurrency=args.soak_concurrency, transport="ws",
                                        rate=args.soak_rate, profile_path=prof))
            record["profile"] = str(prof)
        record["soak"] = soak
    build = None
    if not args.no_build:
        _say("source build: one commit after its parent, compiler cache warm")
        try:
            build = build_step(client)
        except KamleakError as exc:
            build = {"error": exc.line()}
        record["build_step"] = build
    record["loadavg_after"] = os.getloadavg()
    text = table(floor, gate, soak, build) if gate else table(floor, {}, soak, build)
    print(text)
    (out / "bench.json").write_text(json.dumps(record, indent=1, default=str))
    print(f"kamleak bench: results in {out / 'bench.json'}")
    return 0

