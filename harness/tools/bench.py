"""`make bench`: how long the gate takes, what it cannot go below, how soon a
LEAK is declared, and soak throughput.

The measurements, all in one run so the floor and the numbers share the
machine's state:

* **floor**: a bare container start of each image with a trivial command
  (`true`: create, start, exit, remove), the Docker API calls a stack makes
  before it starts anything, the removal of two running containers, and the
  configured tm timers.  Phases measured on the run's own stack, after its
  verdict and outside the phases' clocks: Asterisk answering the call's
  INVITEs (its log's clock), one ws.dump round trip, one Asterisk CLI exec.
  A clean verdict cannot come before the BYE cell's wt_timer has run out
  after Kamailio's reply; an early LEAK not before that reply; a LEAK
  without the early verdict not before the oracle's bound,
  (max_noninv_lifetime + wt_timer) x 1.25 + 2 s;
* **gate, warm** (images built): the real issue-4140 scenario run as
  `kamleak check` runs it (a fresh `Stack`: Asterisk, Kamailio, the call, the
  verdict, teardown), RUNS times for a clean variant (`none` on 6.1.5) and a
  leaking one (`uac_req_send` on 6.0.1), split into phases: harness setup,
  Asterisk ready, Kamailio ready, call setup (INVITE .. re-INVITE ACK),
  disconnect (RST .. ws.dump drops it), BYE (Asterisk's hangup: two docker
  execs), verdict (BYE .. oracle done), teardown; median of the runs, each
  phase against its floor;
* **early verdict** (Debian 6.0.1): the leaking gate with the orphan proof
  (`oracle.configure(early=True)`, the default) and without it (`--no-early`)
  and the clean gate beside it, on kamleak's config (pua_dialoginfo, clean:
  pua_dialoginfo+send_reply_error) and on a user config with tm's stock
  fr_timer/max_noninv_lifetime (tests/configs/wt8000/kamailio.cfg from the
  checkout: its BLF trigger; clean: the same config with send_reply_error(),
  written to a scratch copy); the gate's wall time, the time from Kamailio's
  reply to the BYE to the verdict, the ratios to the clean gate, the issue's
  targets (figures, not assertions), and the clean gate's phases against
  their floors;
* **soak throughput**: sustained calls/s through Kamailio over WebSocket with
  the built-in peer, with the harness's own CPU share (getrusage over the
  call phases) beside Kamailio's (its container's cgroup), and a cProfile of
  the harness in that path.

* **source build, one bisect step**: `kamleak bisect`'s cost per probe
  once the compiler cache is warm: a commit built right after its parent.

* **reduce**: a real `kamleak reduce` of the small fixture on Debian 6.0.1
  (and of upstream's WebRTC example with `--reduce-stock`), its search time
  against its floor, the gates' own time packed into the `--jobs` slots
  (harness/tools/reduce/measure.py).

Cold time (images built from nothing: debootstrap + apt) is not measured:
it takes minutes and depends on the Debian mirror, not on kamleak.

Results: a table on stdout, `artifacts/bench.json` (the early-verdict
figures under "early_verdict"), and the profile in `artifacts/bench-profile.txt`.
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
import socket
import statistics
import sys
import time
from pathlib import Path

from kamleak.harness.errors import KamleakError, UsageError
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


def docker_round_trips(client) -> float:
    """Seconds for the Docker API calls a Stack makes before Asterisk starts:
    ping, the leftover containers' list, the two images' inspection."""
    t0 = time.monotonic()
    client.ping()
    containers.listing(client, containers.LABEL_RUN, f"{containers.LABEL_HOST}={socket.gethostname()}")
    client.images.get(images.kamailio_spec("6.1.5").tag)
    client.images.get(images.asterisk_spec().tag)
    return time.monotonic() - t0


def remove_running(client) -> float:
    """Seconds to remove a running container of each image (a stack's teardown
    removes Kamailio's and Asterisk's)."""
    started = [containers.run(client, image, role="bench", name_hint="floor",
                              entrypoint=["sleep"], command=["60"])
               for image in (images.kamailio_spec("6.1.5").tag, images.asterisk_spec().tag)]
    t0 = time.monotonic()
    for c in started:
        containers.remove(c)
    return time.monotonic() - t0


# What each floor is, as the tables print it.
FLOOR_NOTES = {
    "harness setup": "Docker API: ping, container list, 2 image inspections",
    "Asterisk ready": "bare container start+exit (`true`) of the Asterisk image",
    "Kamailio ready": "bare container start+exit (`true`) of the Kamailio image",
    "call setup": "Asterisk answering the INVITE and the re-INVITE (its log's clock)",
    "disconnect": "one ws.dump RPC round trip",
    "BYE": "one Asterisk CLI exec (the hangup; the harness makes 2)",
    "verdict": "clean: Kamailio's reply + wt_timer; leak: Kamailio's reply (early) "
               "or the lifetime bound (--no-early)",
    "teardown": "removing a running Kamailio and Asterisk container",
    "total": "the sum of the phases' floors",
}


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
    values = [docker_round_trips(client) for _ in range(runs)]
    out["docker api"], out["docker api runs"] = statistics.median(values), [round(v, 4) for v in values]
    values = [remove_running(client) for _ in range(min(runs, 3))]
    out["remove running"] = statistics.median(values)
    out["remove running runs"] = [round(v, 3) for v in values]
    return out


def phase_floor(floor: dict, rows: list[dict], phase: str) -> float | None:
    """The floor of PHASE: measured on the run's own stack (the median over
    ROWS) where it is the stack's, else the bench's own measurement."""
    if phase == "total":
        parts = [phase_floor(floor, rows, p) for p in PHASES if p != "total"]
        return sum(p for p in parts if p is not None)
    own = [r["floor"][phase] for r in rows if r.get("floor", {}).get(phase) is not None]
    if own:
        return statistics.median(own)
    return {"harness setup": floor.get("docker api"), "Asterisk ready": floor["asterisk container"],
            "Kamailio ready": floor["kamailio container"],
            "teardown": floor.get("remove running")}.get(phase)


# ---------------------------------------------------------------------------
# Gate runs


def _mark(timeline, label: str) -> float | None:
    for t, lab in timeline:
        if lab == label:
            return float(t)
    return None


def _timed(fn, n: int = 3) -> float:
    """Median seconds of N calls of FN."""
    values = []
    for _ in range(n):
        t0 = time.monotonic()
        fn()
        values.append(time.monotonic() - t0)
    return statistics.median(values)


def _asterisk_answer_s(pbx_log: str, call_id: str) -> float | None:
    """Seconds Asterisk itself took to answer the call's INVITEs (each INVITE it
    received to the final response it sent, on its log's clock): what the call
    setup cannot go below, whatever the harness does."""
    from kamleak.harness.probes.pbx_trace import parse_pjsip_log, stamp_seconds

    received: dict[int, float] = {}
    total, n = 0.0, 0
    for pm in parse_pjsip_log(pbx_log):
        msg = pm.message
        cseq = msg.cseq if msg is not None and msg.call_id == call_id else None
        if cseq is None or cseq[1] != "INVITE":
            continue
        t = stamp_seconds(pm.stamp)
        if t is None:
            return None
        if pm.direction == "in" and msg.is_request:
            received[cseq[0]] = t
        elif pm.direction == "out" and not msg.is_request and msg.status >= 200 \
                and cseq[0] in received:
            total += t - received.pop(cseq[0])
            n += 1
    return total if n else None


def gate_run(version: str, variant_name: str, user_config=None) -> dict:
    """One warm gate run, as `kamleak check` does it, timed by phase.

    USER_CONFIG (a `UserConfig`) runs the user's config instead of kamleak's,
    as `kamleak check --kamailio-config` does.  Besides the phases the row
    has when the verdict came (`reply_at`: Kamailio's first reply to the BYE;
    `verdict_at`: the orphan proof, the cell leaving, or the watch's end; all
    seconds after the BYE) and the floors measured on the live stack after
    the verdict, outside the phases' clocks (`floor`: phase -> seconds)."""
    from kamleak.harness import registry
    from kamleak.harness.stack.runner import Stack
    from kamleak.harness.stack.targets import Target

    gh4140 = registry.scenario("gh4140")
    variant = gh4140.parse_variant(variant_name)
    t0 = time.monotonic()
    bench = Stack(Target("version", version), log=lambda m: None, user_config=user_config)
    bench.__enter__()
    t_floor = 0.0
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
        f0 = time.monotonic()
        floor = {"disconnect": _timed(kam.rpc.ws_dump),
                 "BYE": _timed(lambda: bench.pbx.cli("core show uptime"), 2),
                 "call setup": _asterisk_answer_s(bench.pbx.log(), verdict.call_id)}
        t_floor = time.monotonic() - f0
    finally:
        c0 = time.monotonic()
        bench.close()
        t_close = time.monotonic() - c0
    tl = verdict.timeline
    setup_done = _mark(tl, "re-INVITE 200 OK + ACK")
    gone = _mark(tl, "ws.dump: connection gone")
    bye = _mark(tl, "BYE (Asterisk hangs up)")
    reply_at = verdict.replies[0].at if verdict.replies else None
    orphan = verdict.orphan or {}
    if orphan:
        verdict_at = orphan["at"]
    elif verdict.gone_after is not None:
        verdict_at = verdict.gone_after
    else:
        verdict_at = verdict.watched_for
    wt_s = verdict.timers["wt_timer"]["ms"] / 1000.0
    # What the verdict phase cannot go below: a clean cell leaves wt_timer after
    # its reply; a leak is proven no earlier than Kamailio's reply (early) or
    # at the bound (--no-early).
    if verdict.outcome == "clean":
        floor["verdict"] = (reply_at or 0.0) + wt_s
    elif orphan:
        floor["verdict"] = reply_at
    else:
        floor["verdict"] = verdict.deadline
    return {
        "version": version, "variant": variant.name, "outcome": verdict.outcome,
        "config": str(user_config.path) if user_config is not None else "kamleak's kamailio.cfg",
        "harness setup": (t_entered - t0) - ast_ready, "Asterisk ready": ast_ready,
        "Kamailio ready": t_kam, "call setup": setup_done, "disconnect": gone - setup_done,
        "BYE": bye - gone, "verdict": t_run - bye, "teardown": t_close,
        "total": time.monotonic() - t0 - t_floor,
        "reply_at": reply_at, "verdict_at": verdict_at,
        "verdict_after_reply": verdict_at - reply_at if reply_at is not None else None,
        "watched_for": verdict.watched_for,
        # BYE .. oracle done, less the watch: the replies read and tm.stats settling
        # (the trigger's own cells leaving: wt_timer after their replies).
        "after_watch": (t_run - bye) - verdict.watched_for,
        "orphan_rule": orphan.get("rule"), "early": verdict.early, "gone_after": verdict.gone_after,
        "deadline": verdict.deadline, "wt_timer": wt_s, "floor": floor,
    }


# ---------------------------------------------------------------------------
# Early verdict: how soon after Kamailio's reply a LEAK is declared, with the
# orphan proof (oracle.configure(early=True), the default) and without it
# (--no-early: once the cell outlived its lifetime bound).

EARLY_VERSION = "6.0.1"
# The stock-timer user config: tests/configs/user/deployment.cfg (BLF with
# pua_dialoginfo and the stock sl_reply_error(): the 4140 trigger) with tm's
# own fr_timer and max_noninv_lifetime and wt_timer 8000 ms, so a bound of
# (32 + 8) s x 1.25 + 2 s = 52 s.  Read from the checkout: `make bench` runs there.
CHECKOUT = Path(__file__).resolve().parents[2]
STOCK_TIMER_CONFIG = "tests/configs/wt8000/kamailio.cfg"
# The targets: figures to report, not assertions.
TARGET_AFTER_REPLY_S = 1.5          # a LEAK verdict this soon after Kamailio's reply to the BYE
TARGET_LEAK_VS_CLEAN = 1.5          # a whole leaking gate within this many times a clean one
EARLY_MODES = ("clean", "leak, --no-early", "leak, early")


def _stock_timer_path(given: str | None) -> Path | None:
    if given:
        return Path(given)
    for base in (CHECKOUT, Path.cwd()):
        if (base / STOCK_TIMER_CONFIG).is_file():
            return base / STOCK_TIMER_CONFIG
    return None


def _mitigated_copy(path: Path, scratch: Path) -> Path | None:
    """PATH with its stock `sl_reply_error();` answered through the transaction
    (`send_reply_error();`, 6.0+): the same trigger, mitigated.  None when the
    config has not exactly one such line."""
    text = path.read_text()
    if text.count("sl_reply_error();") != 1:
        return None
    out = scratch / path.name
    out.write_text(text.replace("sl_reply_error();", "send_reply_error();  # kamleak bench: mitigated"))
    return out


def early_cases(stock_config: str | None, scratch: Path) -> tuple[list[dict], list[str]]:
    """The cases of the early-verdict section, and why any is left out."""
    from kamleak.harness.stack.kamailio.user_config import UserConfig

    cases = [{"name": "kamleak's kamailio.cfg", "short": "kamleak.cfg", "version": EARLY_VERSION,
              "leak": ("pua_dialoginfo", None), "clean": ("pua_dialoginfo+send_reply_error", None),
              "clean_is": "variant pua_dialoginfo+send_reply_error"}]
    missing = []
    path = _stock_timer_path(stock_config)
    if path is None or not path.is_file():
        missing.append(f"stock-timer user config: {stock_config or STOCK_TIMER_CONFIG} not found "
                       "(bench reads it from kamleak's checkout: run `make bench` there, or pass "
                       "--early-config)")
        return cases, missing
    leak_cfg = UserConfig.load(str(path))
    clean_path = _mitigated_copy(path, scratch)
    short = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    case = {"name": f"user config {short}", "short": short, "path": str(path),
            "version": EARLY_VERSION, "leak": ("none", leak_cfg), "leak_is": "its BLF trigger",
            "clean": None,
            "clean_is": "the same config, sl_reply_error() -> send_reply_error()"}
    if clean_path is None:
        missing.append(f"{path}: no clean counterpart (not exactly one `sl_reply_error();` to "
                       "mitigate): its clean gate is not run")
    else:
        case["clean"] = ("none", UserConfig.load(str(clean_path)))
    cases.append(case)
    return cases, missing


def _one(version: str, variant: str, user_config, *, early: bool) -> dict:
    from kamleak.harness.judging import oracle

    before = oracle.POLICY.early
    oracle.configure(early=early)
    try:
        return gate_run(version, variant, user_config)
    except KamleakError as exc:
        return {"version": version, "variant": variant, "outcome": "error", "error": exc.line()}
    finally:
        oracle.configure(early=before)


def _med(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def early_verdict(cases: list[dict], runs: int, floor: dict) -> dict:
    """Each case's clean gate, leaking gate without and with the early verdict,
    RUNS times each (interleaved, so all three share the machine's state)."""
    out: dict = {"version": EARLY_VERSION, "runs_each": runs, "loadavg_before": os.getloadavg(),
                 "cases": {}}
    for case in cases:
        plan = [("leak, --no-early", case["leak"], False), ("leak, early", case["leak"], True)]
        if case["clean"] is not None:
            plan.insert(0, ("clean", case["clean"], True))
        rows: dict[str, list[dict]] = {mode: [] for mode, _, _ in plan}
        for i in range(runs):
            for mode, (variant, user_config), early in plan:
                row = _one(case["version"], variant, user_config, early=early)
                rows[mode].append(row)
                after = row.get("verdict_after_reply")
                _say(f"early verdict, {case['name']}, {mode} run {i + 1}/{runs}: "
                     f"{row['outcome']}" + (f" in {row['total']:.1f} s, verdict "
                     f"{after:.2f} s after Kamailio's reply" if after is not None else "")
                     + (f" ({row['error']})" if "error" in row else ""))
        summary = {}
        for mode, mrows in rows.items():
            ok = [r for r in mrows if "error" not in r]
            summary[mode] = {
                "outcomes": [r["outcome"] for r in mrows], "total": _med(ok, "total"),
                "verdict_after_reply": _med(ok, "verdict_after_reply"),
                "verdict_at": _med(ok, "verdict_at"), "reply_at": _med(ok, "reply_at"),
                "after_watch": _med(ok, "after_watch"),
                "rules": sorted({r["orphan_rule"] or ("gone" if r["outcome"] == "clean" else "bound")
                                 for r in ok}),
                "deadline": _med(ok, "deadline"), "wt_timer": _med(ok, "wt_timer")}
        clean_total = summary.get("clean", {}).get("total")
        for mode in ("leak, --no-early", "leak, early"):
            t = summary[mode]["total"]
            summary[mode]["x_clean"] = t / clean_total if t and clean_total else None
        phases = None
        clean_ok = [r for r in rows.get("clean", []) if "error" not in r]
        if clean_ok:
            phases = {p: {"median": _med(clean_ok, p), "floor": phase_floor(floor, clean_ok, p)}
                      for p in PHASES}
        out["cases"][case["name"]] = {
            "config": case.get("path", "kamleak's kamailio.cfg"), "short": case["short"],
            "leak": case.get("leak_is", case["leak"][0]),
            "clean": case["clean_is"] if case["clean"] is not None else None,
            "runs": rows, "median": summary, "clean_phases": phases}
    out["targets"] = targets(out["cases"])
    out["loadavg_after"] = os.getloadavg()
    return out


def targets(cases: dict) -> dict:
    """The issue's two targets against each case's medians (figures, not assertions)."""
    out = {"verdict_after_reply_s": TARGET_AFTER_REPLY_S, "leak_vs_clean": TARGET_LEAK_VS_CLEAN,
           "cases": {}}
    for name, case in cases.items():
        early = case["median"]["leak, early"]
        after, ratio = early["verdict_after_reply"], early.get("x_clean")
        out["cases"][name] = {
            "verdict_after_reply": after,
            "verdict_met": after is not None and after <= TARGET_AFTER_REPLY_S,
            "leak_vs_clean": ratio,
            "ratio_met": ratio is not None and ratio <= TARGET_LEAK_VS_CLEAN}
    return out


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


def _fmt(v, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _ratio(value, fl, digits: int = 1) -> str:
    return f"{value / fl:.{digits}f}x" if value is not None and fl else ""


def phase_table(floor: dict, gate: dict[str, list[dict]]) -> list[str]:
    """Each case's median phases, each against its floor (phase_floor)."""
    lines = []
    head = f"{'phase (median s)':18}"
    for case in gate:
        head += f" {case:>24} {'x floor':>8} {'floor':>6}"
    lines.append(head)
    for phase in PHASES:
        line = f"{phase:18}"
        for rows in gate.values():
            ok = [r for r in rows if "error" not in r]
            med, fl = _med(ok, phase), phase_floor(floor, ok, phase) if ok else None
            line += f" {_fmt(med):>24} {_ratio(med, fl):>8} {_fmt(fl, 3):>6}"
        lines.append(line)
    lines.append("floors:")
    lines += [f"  {p:16} {FLOOR_NOTES[p]}" for p in PHASES]
    return lines


def early_table(floor: dict, ev: dict, missing: list[str]) -> list[str]:
    """The early-verdict section: gate wall time and the verdict's delay after
    Kamailio's reply, clean / leaking without / with the early verdict."""
    load = ev["loadavg_before"], ev["loadavg_after"]
    lines = [f"early verdict (Debian {ev['version']}, median of {ev['runs_each']} runs each; load "
             f"{load[0][0]:.2f} -> {load[1][0]:.2f}; times after Asterisk's BYE, on its log's clock "
             "for the reply)",
             f"  {'gate':40} {'outcomes':18} {'wall s':>7} {'x clean':>8} {'reply':>6} "
             f"{'verdict':>8} {'after reply':>11} {'by':>6} {'settle':>7}"]
    for name, case in ev["cases"].items():
        med = case["median"]
        any_mode = next(iter(med.values()))
        lines.append(f"  {name}: wt_timer {_fmt(any_mode['wt_timer'])} s, lifetime bound "
                     f"{_fmt(any_mode['deadline'])} s; clean = {case['clean'] or 'not run'}")
        for mode in EARLY_MODES:
            if mode not in med:
                continue
            m = med[mode]
            label = f"{mode} ({case['leak'] if mode != 'clean' else 'mitigated'})"
            outs = ",".join(sorted(set(m["outcomes"])))
            lines.append(f"    {label:38} {outs:18} {_fmt(m['total']):>7} "
                         f"{_ratio(m['total'], med.get('clean', {}).get('total'), 2):>8} "
                         f"{_fmt(m['reply_at']):>6} {_fmt(m['verdict_at']):>8} "
                         f"{_fmt(m['verdict_after_reply']):>11} {'/'.join(m['rules']):>6} "
                         f"{_fmt(m['after_watch']):>7}")
    lines.append("  (verdict: the orphan proof, the bound, or the clean cell leaving; settle: the "
                 "oracle's work after the watch, tm.stats back to baseline + the cells left)")
    t = ev["targets"]
    for name, c in t["cases"].items():
        lines.append(
            f"  target, {name}: LEAK verdict <= {t['verdict_after_reply_s']:g} s after Kamailio's "
            f"reply: {_fmt(c['verdict_after_reply'])} s ({'met' if c['verdict_met'] else 'NOT met'}); "
            f"leaking gate <= {t['leak_vs_clean']:g}x a clean one: "
            + (f"{c['leak_vs_clean']:.2f}x ({'met' if c['ratio_met'] else 'NOT met'})"
               if c["leak_vs_clean"] is not None else "no clean gate"))
    for m in missing:
        lines.append(f"  not run: {m}")
    clean = {f"clean, {case['short']}"[:24]: [r for r in case["runs"].get("clean", [])
                                              if "error" not in r]
             for case in ev["cases"].values()}
    clean = {k: v for k, v in clean.items() if v}
    if clean:
        lines.append("")
        lines.append("clean gate, each phase against its floor:")
        lines += phase_table(floor, clean)
    return lines


def table(floor: dict, gate: dict, soak: list[dict], build: dict | None = None,
          early: dict | None = None, early_missing: list[str] = ()) -> str:
    kam_f, ast_f = floor["kamailio container"], floor["asterisk container"]
    lines = [f"floor: bare container start+exit kamailio {kam_f:.2f} s, asterisk {ast_f:.2f} s; "
             f"Docker API round trips {floor['docker api']:.3f} s; removing 2 running containers "
             f"{floor['remove running']:.2f} s; kamleak's wt_timer {floor['wt_timer']:.2f} s, "
             f"leak bound {floor['leak_deadline']:.2f} s", ""]
    if gate:
        lines += phase_table(floor, gate)
    if early is not None:
        lines.append("")
        lines += early_table(floor, early, list(early_missing))
    if soak:
        lines.append("")
        lines.append(f"{'soak (built-in peer)':34} {'calls/s':>8} {'harness CPU':>12} "
                     f"{'ms/call':>8} {'Kamailio CPU':>13} {'ms/call':>8} {'setup p50/p95 ms':>17} "
                     f"{'max cells':>9} {'max shm MB':>10}")
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
HELP = ("gate time by phase vs its floor, how soon a LEAK is declared, soak and explore throughput, "
        "a reduction's time vs its floor")


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
    p.add_argument("--no-early-verdict", action="store_true",
                   help="skip the early-verdict runs (a leaking gate with and without the "
                        "orphan proof, and the clean gate, on Debian 6.0.1)")
    p.add_argument("--early-verdict-only", action="store_true",
                   help="only the floor and the early-verdict runs (no gate, soak or build)")
    p.add_argument("--early-runs", type=int, default=3,
                   help="early-verdict runs per case and mode (median; default 3)")
    p.add_argument("--early-config", default=None, metavar="KAMAILIO_CFG",
                   help=f"the stock-timer user config with a 4140 trigger (default: the "
                        f"checkout's {STOCK_TIMER_CONFIG})")
    p.add_argument("--no-explore", action="store_true",
                   help="skip explore's figures (a campaign's flows/min against its floor on 6.1.5, "
                        "the time to the first finding and its shrink on 6.0.1)")
    p.add_argument("--explore-only", action="store_true", help="only the floor and explore's figures")
    p.add_argument("--explore-budget", type=float, default=120.0, metavar="S",
                   help="seconds of the clean explore campaign (default 120)")
    p.add_argument("--no-reduce", action="store_true",
                   help="skip reduce's figures (a real reduction of the small fixture on 6.0.1, its time "
                        "against its floor)")
    p.add_argument("--reduce-stock", action="store_true",
                   help="reduce upstream's WebRTC example with the trigger too (about 4 minutes)")
    p.add_argument("--reduce-only", action="store_true", help="only the floor and reduce's figures")
    p.add_argument("--out", default="artifacts", help="directory for bench.json (default artifacts)")


DESCRIPTION = ("Gate time by phase against its floor, how soon after Kamailio's reply a LEAK is "
               "declared (early verdict on and off), and soak throughput (make bench).")


def run(args) -> int:
    try:
        return _main(args)
    finally:
        containers.remove_all_live()


def _main(args) -> int:
    if args.early_verdict_only:
        if args.no_early_verdict:
            raise UsageError("--early-verdict-only and --no-early-verdict leave nothing to run",
                             "drop one of them")
        args.no_gate = args.no_soak = args.no_profile = args.no_build = True
    if args.explore_only:
        if args.no_explore:
            raise UsageError("--explore-only and --no-explore leave nothing to run", "drop one of them")
        args.no_gate = args.no_soak = args.no_profile = args.no_build = args.no_early_verdict = True
        args.no_reduce = True
    if args.reduce_only:
        if args.no_reduce:
            raise UsageError("--reduce-only and --no-reduce leave nothing to run", "drop one of them")
        args.no_gate = args.no_soak = args.no_profile = args.no_build = args.no_early_verdict = True
        args.no_explore = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    client = engine.client()
    containers.reap_leftovers(client, log=_say)
    versions = {v for v, _ in GATE_CASES} | {"6.1.5", EARLY_VERSION}
    images.build_all(client, [images.asterisk_spec()] +
                     [images.kamailio_spec(v) for v in sorted(versions)])
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
    early, early_missing = None, []
    if not args.no_early_verdict:
        scratch = Path(containers.workdir())
        try:
            cases, early_missing = early_cases(args.early_config, scratch)
            for m in early_missing:
                _say(f"early verdict: {m}")
            _say(f"early verdict: {args.early_runs} runs each of the clean gate and the leaking one "
                 f"without and with the early verdict, for {len(cases)} config(s)")
            early = early_verdict(cases, args.early_runs, floor)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        early["not_run"] = early_missing
        record["early_verdict"] = early
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
    explore_lines: list[str] = []
    if not args.no_explore:
        from kamleak.harness.tools.explore import measure as explore_measure
        record["explore"] = explore_measure.measure(budget_s=args.explore_budget, say=_say)
        explore_lines = ["", *explore_measure.table(record["explore"])]
    reduce_lines: list[str] = []
    if not args.no_reduce:
        from kamleak.harness.tools.reduce import measure as reduce_measure
        record["reduce"] = reduce_measure.measure(stock=args.reduce_stock, say=_say)
        reduce_lines = ["", *reduce_measure.table(record["reduce"])]
    record["loadavg_after"] = os.getloadavg()
    text = "\n".join([table(floor, gate, soak, build, early, early_missing), *explore_lines, *reduce_lines])
    print(text)
    (out / "bench.json").write_text(json.dumps(record, indent=1, default=str))
    print(f"kamleak bench: results in {out / 'bench.json'}")
    return 0

