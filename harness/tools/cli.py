"""`kamleak`: the command line.

Every failure the user can act on ends as one line on stderr and a non-zero
exit; no traceback reaches the user (KAMLEAK_DEBUG=1 shows it).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Protocol

from kamleak.harness import progress
from kamleak.harness.errors import KamleakError, UsageError
from kamleak.harness.judging.verdict import TransactionVerdict, timers_text
from kamleak.harness.reporting import summary as summary_cmd
from kamleak.harness.reporting.artifacts import check_writable, save_logs
from kamleak.harness.stack import containers, engine, images, source_build
from kamleak.harness.stack.runner import Stack
from kamleak.harness.stack.targets import Target, add_option, add_source_option, parse_targets
from kamleak.harness.tools import bench as bench_cmd
from kamleak.harness.tools import lint as lint_cmd
from kamleak.harness.tools import watch as watch_cmd
from kamleak.harness.tools.explore import cli as explore_cmd
from kamleak.harness.tools.reduce import cli as reduce_cmd
from kamleak.harness.tools.soak import cli as soak_cmd

_say = progress.say


def cmd_setup(args) -> int:
    """Engine up, leftovers reaped, images built: everything a run needs."""
    t0 = time.monotonic()
    client = engine.client(start=args.start_engine or None)
    _say(f"engine: {engine.engine_summary(client)}")
    containers.reap_leftovers(client, log=_say)
    versions = args.version or list(images.KAMAILIO_SUITES)
    specs = [images.asterisk_spec()] + [images.kamailio_spec(v) for v in versions]
    tags = images.build_all(client, specs)
    _say(f"ready in {time.monotonic() - t0:.0f} s: {', '.join(tags)}")
    return 0


def cmd_cleanup(args) -> int:
    """Remove containers of kamleak runs that are gone; --check: fail if any were left."""
    client = engine.client(start=False)
    if args.check:
        left = containers.left_behind(client)
        # A live run's containers (another suite on a shared engine) are not left behind.
        live = len(containers.listing(client, containers.LABEL_RUN)) - len(left)
        others = f" ({live} more of live runs or other hosts: not counted)" if live > 0 else ""
        if left:
            _say(f"{len(left)} kamleak container(s) were left behind by runs that are gone: "
                 + ", ".join(c.name for c in left[:5]) + others)
            containers.reap_leftovers(client, log=_say)
            return 1
        _say(f"no kamleak containers left behind{others}")
        return 0
    containers.reap_leftovers(client, log=_say)
    return 0


def cmd_images(args) -> int:
    client = engine.client()
    for spec in [images.asterisk_spec()] + [images.kamailio_spec(v) for v in images.KAMAILIO_SUITES]:
        state = "up to date" if images.is_current(client, spec) else "needs a build"
        print(f"{spec.tag:28} {spec.base:22} {state}")
    return 0


def _target_from(args, default_version: str | None = "6.0.1") -> Target:
    ref = getattr(args, "kamailio_ref", None)
    targets = parse_targets([args.version] if args.version else [],
                            [args.image] if args.image else [],
                            [args.kamailio_bin] if getattr(args, "kamailio_bin", None) else [],
                            getattr(args, "kamailio_modules", None),
                            refs=[ref] if ref else [], source=getattr(args, "kamailio_source", None),
                            config=getattr(args, "config", None))
    given = sum(bool(x) for x in (args.version, args.image, getattr(args, "kamailio_bin", None), ref))
    if given > 1:
        raise UsageError("give one of --kamailio-version, --kamailio-ref, --kamailio-image, "
                         "--kamailio-bin",
                         "pick the Kamailio to run")
    if given == 0:
        if default_version is None:
            raise UsageError("no Kamailio given",
                             "pass --kamailio-version, --kamailio-image or --kamailio-bin")
        return Target("version", images.canonical_version(default_version))
    return targets[0]


def _rule(title: str) -> None:
    print(f"\n── {title} " + "─" * max(4, 76 - len(title)), flush=True)


def _save_run(directory: Path, verdict, kam, bench, log_start: int) -> Path:
    """One repro run's evidence: verdict, timeline plot, SIP trace, logs, config."""
    from kamleak.harness.reporting import plot
    from kamleak.harness.reporting import text as report

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "verdict.json").write_text(verdict.dumps())
    plot.render_timeline(verdict.to_json(), directory / "timeline.png")
    pbx_log = bench.pbx.log()[log_start:]
    (directory / "sip-trace.txt").write_text(report.sip_trace([bench.uas[-1].trace], pbx_log))
    return save_logs(directory, kam, pbx_log)


# The report the repro exists for (Kamailio issue 4140): its version, client and failure path.
REPORT_REF = "5.8.5"
REPORT_TRANSPORT = "wss"
REPORT_DISCONNECT = "rst+advertise"      # via_builder() skips the lookup, the send fails: 477 (477/SL)
# Measured here (docs/repro.md, "Cold and warm"): the first run's source build of 5.8.5.
REPORT_BUILD_COST = "3-4 min on 2 busy cores (about 1 min with a warm compiler cache)"


def _report_defaults(args) -> None:
    """What the user left unsaid is the report's: 5.8.5 from upstream source (no target given),
    a WSS client, the `advertise` + stock-relay failure path, Asterisk hanging up on command
    (--faithful: its own session timer, as the report's PBX did)."""
    if not any(getattr(args, k, None) for k in ("version", "image", "kamailio_bin", "kamailio_ref")):
        args.kamailio_ref = REPORT_REF
    args.transport = args.transport or REPORT_TRANSPORT
    args.disconnect = args.disconnect or REPORT_DISCONNECT
    args.hangup = args.hangup or ("session-timer" if args.faithful else "command")


def _build_notice(target: Target) -> None:
    """Say up front what a first run costs: a source build nobody has made yet."""
    if target.kind != "source":
        return
    commit = target.provenance.commit       # resolves the ref: an unknown one is refused first
    if engine.client().images.list(filters={"label": f"{source_build.LABEL_COMMIT}={commit}"}):
        return
    _say(f"first run: Kamailio {target.ref} is built from upstream source "
         f"({source_build.source_location(target.source)}): {REPORT_BUILD_COST}, then reused; "
         "the quick path on Debian's package: make repro VERSION=6.0.1")


def _report_steps(v, kam, idle: dict, trace, hangup: str) -> None:
    """The report's steps, each beside what this Kamailio did (the evidence)."""
    from kamleak.harness.reporting import text as report

    at = {label: t for t, label in v.timeline}

    def t(prefix):
        return next((f"t={tt:7.3f} s" for label, tt in at.items() if label.startswith(prefix)), "")
    invite = next((e.message for e in trace if e.direction == "out" and e.message is not None
                   and e.message.is_request and e.message.method == "INVITE"
                   and e.message.call_id == v.call_id), None)
    se = invite.header("Session-Expires") if invite is not None else None
    # The report's lines, as it quotes them: level and source, without the
    # process number and the {cseq method call-id} log prefix.
    fail = [re.sub(r"^.*?\b(WARNING|ERROR|NOTICE|INFO|DEBUG):\s*(\{[^}]*\}\s*)?", r"\1: ", ln)
            for ln in report.kamailio_lines(kam.log(), v.call_id)
            if "could not be found" in ln or "branch 0 failed" in ln]
    dump = v.snapshots.get("ws.dump before disconnect") or {}
    gone = next((label for label in at if label.startswith("disconnect")), "disconnect")
    who = "Asterisk's session timer expired" if hangup == "session-timer" else "Asterisk hangs up on command"
    steps = [
        ("Kamailio idle", f"{kam.version.strip()}; tm.stats current {idle.get('current')}"),
        (f"one {v.transport.upper()} client", f"ws.dump: {len(dump.get('connections') or [])} connection(s)"),
        ("INVITE with session timers", f"{t('200 OK')}  relayed to Asterisk, 200 back"
         + (f" (Session-Expires: {se})" if se else "")),
        ("re-INVITE (refresh)", f"{t('re-INVITE 200')}  relayed, 200 back"),
        ("client killed, then wait", f"{t('disconnect')}  {gone}; {t('ws.dump')} ws.dump: gone"),
        ("the PBX sends BYE", f"{t('BYE')}  {who}"),
        ("Kamailio replies", "; ".join(f"{r.code} {r.reason}" for r in v.replies) or "no reply"),
        ("Kamailio's log", (progress.clip(fail[0], 130) if fail else "(no failure line)")),
    ]
    print(f"  {'report step':<40}| what Kamailio did")
    for i, (step, did) in enumerate(steps, 1):
        print(f"  {i}. {step:<36} | {did}")
    for ln in fail[1:]:
        print(f"     {'':<36} | {progress.clip(ln, 130)}")
    print(f"  9. {'tm.list':<36} | {len(v.cells)} BYE cell(s) after {v.watched_for:.1f} s "
          f"(deadline {v.deadline:.1f} s)")
    for c in v.cells:
        print(f"     {'':<36} |   {c.describe()}")
    for line in report.early_lines(v):
        print(f"     {'':<36} | {line}")


def cmd_repro(args) -> int:
    """The report of Kamailio issue 4140, step by step beside the evidence, then the
    mitigation it recommends beside it."""
    from kamleak.harness import registry
    from kamleak.harness.errors import NotApplicable
    from kamleak.harness.probes.pbx_trace import parse_pjsip_log
    from kamleak.harness.reporting import text as report

    gh4140 = registry.scenario("gh4140")
    check_writable(args.artifacts, "--artifacts")       # now, not after the runs
    _report_defaults(args)
    target = _target_from(args)
    _build_notice(target)
    variant = gh4140.Variant.parse(args.variant or gh4140.DEFAULT_VARIANT)
    extra = gh4140.disconnect_defines(args.disconnect)

    def mitigated_variant(name: str):
        return gh4140.Variant(variant.trigger, "sl_reply_error", True) if name == "delayed_reply_off" \
            else gh4140.Variant(variant.trigger, name, False)

    # The contrast run takes the first mitigation this Kamailio accepts (the
    # one asked for, or else the next that runs); refusals are kept to say why.
    candidates = [args.mitigation] if args.mitigation else list(MITIGATIONS)
    has: dict = {}
    if not args.mitigation:
        # kamleak.harness.knowledge first: the mitigations this build has (git for source
        # builds, observations for Debian's), in order; unknown: try them all.
        from kamleak.harness import knowledge
        known = {m: knowledge.has("delayed_reply" if m == "delayed_reply_off" else m, target)
                 for m in MITIGATIONS}
        has = {m: k.value for m, k in known.items()}
        if any(has.values()):
            candidates = [m for m in MITIGATIONS if has[m]] + [m for m in MITIGATIONS if has[m] is None]
            _say(f"mitigation: {candidates[0]} (kamleak.harness.knowledge: {target.id} has it)")
    refused: dict[str, str] = {}
    accepted: list[str] = []
    mitigated = mitigated_variant(candidates[0])
    runs = [(f"as deployed: {variant.name} with {variant.reply}()", variant),
            ("mitigated", None)]
    results = []
    who = ("Asterisk's session timer (Session-Expires 90: about a minute a run)"
           if args.hangup == "session-timer" else "Asterisk on command (FAITHFUL=1: its session timer)")
    with Stack(target, log=_say) as bench:
        print(f"kamleak repro: Kamailio issue 4140 ({gh4140.TITLE})", flush=True)
        print(f"  target {target.id}, {args.transport.upper()} client, gone by "
              f"{args.disconnect.upper()}; BYE from {who}; Asterisk 22 at {bench.pbx.address}",
              flush=True)
        for title, v in runs:
            kam = None
            if v is None:
                for name in candidates:
                    mitigated = mitigated_variant(name)
                    try:
                        kam = gh4140.start_kamailio(bench.kamailio, mitigated, extra_defines=extra)
                        break
                    except NotApplicable as exc:
                        refused[name] = str(exc)
                if kam is None and args.mitigation:
                    # Asked for one this Kamailio refuses: find one it accepts, for the hint.
                    for name in (m for m in MITIGATIONS if m not in refused):
                        try:
                            gh4140.start_kamailio(bench.kamailio, mitigated_variant(name),
                                                  extra_defines=extra).stop()
                            accepted.append(name)
                            break
                        except NotApplicable as exc:
                            refused[name] = str(exc)
                title, v = f"mitigated: {mitigated.name if kam else 'no mitigation runs here'}", mitigated
                _rule(title)
                for name, why in refused.items():
                    print(f"  {name}: not applicable on this Kamailio: {why}")
                if kam is None:
                    results.append(None)
                    continue
                if mitigated.reply == "send_reply_error":
                    print(f"  send_reply_error() in place of {variant.reply}(): the report's recommended "
                          "mitigation (the relay's error, replied statefully)")
                if has.get(mitigated.reply):
                    print(f"  {target.id} has it: {known[mitigated.reply].why}")
            else:
                _rule(title)
                try:
                    kam = gh4140.start_kamailio(bench.kamailio, v, extra_defines=extra)
                except NotApplicable as exc:
                    print(f"  not applicable on this Kamailio: {exc}")
                    results.append(None)
                    continue
            print(f"  {kam.describe()} ready in {kam.ready_after:.2f} s; calling ...", flush=True)
            idle = kam.rpc.tm_stats()
            log_start = len(bench.pbx.log())
            verdict = gh4140.run(kamailio=kam, pbx=bench.pbx, ua_factory=bench.ua,
                                 transport=args.transport, variant=v, disconnect=args.disconnect,
                                 hangup=args.hangup,
                                 target=target.id)
            results.append(verdict)
            _report_steps(verdict, kam, idle, bench.uas[-1].trace, args.hangup)
            pbx_msgs = parse_pjsip_log(bench.pbx.log()[log_start:])
            print("\n  Call ladder (the client's leg as it saw it, the UDP leg from Asterisk's log):")
            events = [(verdict.started_at + t, label) for t, label in verdict.timeline
                      if label.startswith(("disconnect", "ws.dump", "deadline", "BYE cell"))]
            for line in report.ladder(bench.uas[-1].trace, pbx_msgs, verdict.call_id, events):
                print("   " + line)
            print(f"  tm.list deadline {verdict.deadline:.1f} s from {timers_text(verdict.timers, 'BYE')}")
            print(f"  tm.stats before → after: {report.stats_delta(verdict.stats_before, verdict.stats_after)}")
            print(f"    {verdict.stats_note}")
            print(f"\n  Verdict: {verdict.outcome.upper()}: {verdict.sentence()}", flush=True)
            if args.artifacts:
                where = _save_run(Path(args.artifacts) / ("leaking" if v is variant else "mitigated"),
                                  verdict, kam, bench, log_start)
                print(f"  Evidence: {where}", flush=True)
            kam.stop()
        runs[1] = (f"mitigated: {mitigated.name}", mitigated)
    _rule("side by side")
    first, second = results
    if first is not None and second is not None:
        for line in report.side_by_side(runs[0][0].split(":")[0], first,
                                        runs[1][0].split(":")[0], second):
            print(line)
    if first is None or not first.leaked:
        _say(f"the leak did NOT reproduce on {target.id} with {variant.name}"
             + ("" if first is None else f": {first.sentence()}"))
        return 1
    if second is None:
        # The leak alone is not the repro: without the contrast it shows nothing fixed.
        print("  (no mitigated run: nothing to compare)")

        def short(why: str) -> str:  # Kamailio's own words, without the file position
            m = re.search(r"column \d+: ([^\[]+)", why)
            return (m.group(1) if m else why[-80:]).strip()

        _say(f"the leak reproduced on {target.id}, but the mitigation could not run: Kamailio refused "
             + ", ".join(f"{m} ({short(why)})" for m, why in refused.items())
             + (f"; pick --mitigation {accepted[0]}, which it accepts" if accepted else
                "; it accepts none of them, so test a build that has one "
                "(--kamailio-version/--kamailio-image)"))
        return 1
    if second.leaked:
        _say(f"the mitigation {mitigated.name} did not help: {second.sentence()}")
        return 1
    print(f"\nkamleak: reproduced: {first.sentence()}")
    print(f"kamleak: with {mitigated.name}: {second.sentence()}")
    return 0


MITIGATIONS = ("send_reply_error", "t_reply_error", "delayed_reply_off")
DISCONNECT_CHOICES = ("rst", "fin", "close", "rst+advertise")     # gh4140.DISCONNECTS


def _add_target_args(p, config: str | None = None) -> None:
    """--kamailio-version/-image/-bin/-modules (and --kamailio-config: "optional",
    "required" or None); `required` is checked after parsing so the alias counts."""
    add_option(p, ("--kamailio-version", "--version"), dest="version", default=None, metavar="V",
               help=f"a Kamailio version kamleak builds: {', '.join(images.KAMAILIO_SUITES)}")
    add_option(p, ("--kamailio-image", "--image"), dest="image", default=None, metavar="IMAGE",
               help="any image containing a kamailio binary")
    p.add_argument("--kamailio-bin", default=None, metavar="PATH", help="a local kamailio binary")
    p.add_argument("--kamailio-modules", default=None, metavar="DIR",
                   help="module directory for --kamailio-bin")
    _add_source_args(p)
    if config:
        add_option(p, ("--kamailio-config", "--config"), dest="config", default=None,
                   metavar="KAMAILIO_CFG",
                   help="your kamailio.cfg (README: the contract)" + (" (required)" if config ==
                                                                      "required" else ""))
        p.set_defaults(config_required=config == "required")


def _add_verdict_args(p) -> None:
    """--confirm/--no-early: how a transaction verdict ends (harness/judging/orphan.py)."""
    p.add_argument("--confirm", action="store_true",
                   help="after the early LEAK (the cell proven orphaned) also wait out tm's "
                        "lifetime bound; the two must agree, else exit 125")
    p.add_argument("--no-early", dest="no_early", action="store_true",
                   help="no early verdict: a LEAK only once the cell outlived its lifetime bound")


def _add_source_args(p) -> None:
    """--kamailio-ref/--kamailio-source: Kamailio built from upstream source."""
    p.add_argument("--kamailio-ref", default=None, metavar="REF",
                   help="build Kamailio from source at a tag, branch or commit (e.g. 5.8.5, master)")
    add_source_option(p.add_argument)


def _add_scenario_arg(p) -> None:
    from kamleak.harness import registry

    p.add_argument("--scenario", default=registry.DEFAULT, metavar="NAME",
                   help=f"the catalogue's scenario: {', '.join(registry.names())} "
                        f"(default: {registry.DEFAULT}; README: Scenario catalogue)")


# `git bisect run` reads exit codes: 0 good, 1-127 bad except 125 (skip),
# >= 128 aborts the bisection.  `check`, `gate` and `repro` keep to that contract.
EXIT_CLEAN, EXIT_LEAK, EXIT_CANNOT_TEST, EXIT_ABORT = 0, 1, 125, 128
EXIT_INTERRUPTED, EXIT_INTERNAL = 130, 3

# The one exit-code table of check, gate and repro: each --help prints it.
EXIT_CODES = f"""exit codes (check, gate, repro):
  {EXIT_CLEAN:<4} CLEAN (repro: the leak reproduced and the mitigation cleared it)
  {EXIT_LEAK:<4} LEAK (repro: the leak did not reproduce, or no mitigation cleared it)
  {EXIT_CANNOT_TEST:<4} cannot test, no verdict: an image missing, Kamailio or Asterisk did not
       start or refused the config, the call failed (`git bisect run` skips)
  {EXIT_ABORT:<4} bad input: an option, a path, your config, no Docker engine; one line
       on stderr names cause and fix (`git bisect run` aborts)
  {EXIT_INTERRUPTED:<4} interrupted (Ctrl-C, SIGTERM): the containers were removed
  {EXIT_INTERNAL:<4} internal error, a bug in kamleak (KAMLEAK_DEBUG=1 shows the traceback)
check --invert swaps 0 and 1."""


def _cannot_test_errors() -> tuple[type[BaseException], ...]:
    from kamleak.harness.errors import ImageError, RPCError, ScenarioError, ServerError
    return ServerError, ImageError, ScenarioError, RPCError


# What ends a gate run without a verdict: "cannot test" (125), never LEAK or CLEAN.
CANNOT_TEST_ERRORS = _cannot_test_errors()


def gate_once(target: Target, variant, transport: str = "ws", disconnect: str = "rst",
              user_config=None, scenario=None, artifacts: str | None = None):
    """One gate run: ("leak" | "clean" | "skip", note, verdict or None); ARTIFACTS: a
    directory for its evidence, written whatever the outcome (the logs alone without a verdict)."""
    from kamleak.harness import registry
    from kamleak.harness.errors import NotApplicable
    from kamleak.harness.reporting.text import run_label
    from kamleak.harness.stack.kamailio.server import provided

    sc = scenario or registry.scenario(registry.DEFAULT)
    try:
        with Stack(target, log=_say, user_config=user_config) as bench:
            log_start = len(bench.pbx.log())
            try:
                verdict = sc.gate(bench, variant, transport=transport, disconnect=disconnect,
                                  target=target.id)
            except NotApplicable as exc:
                return "skip", f"not applicable: {exc}", None
            except CANNOT_TEST_ERRORS:
                if artifacts:
                    save_logs(Path(artifacts), (bench.kamailios or [None])[-1],
                              bench.pbx.log()[log_start:])
                raise
            verdict.variant = run_label(verdict.variant, user_config)
            verdict.provided = provided(bench.kamailios)
            if artifacts and bench.uas:
                _save_run(Path(artifacts), verdict, bench.kamailios[-1], bench, log_start)
            elif artifacts:         # a story without a WebSocket UA (check --scenario pr3403)
                save_logs(Path(artifacts), bench.kamailios[-1], bench.pbx.log()[log_start:])
                (Path(artifacts) / "verdict.json").write_text(verdict.dumps())
            return verdict.outcome, verdict.sentence(), verdict
    except CANNOT_TEST_ERRORS as exc:
        return "skip", f"cannot test: {exc.line()}", None


def cmd_check(args) -> int:
    """Exit 0 clean, 1 leak, 125 cannot test: a `git bisect run` step."""
    from kamleak.harness.stack.targets import check_binary

    if getattr(args, "config_required", False) and not args.config:
        raise UsageError(f"{args.command} needs your config", "pass --kamailio-config KAMAILIO_CFG")
    sc, variant = _scenario_variant(args)
    user_config = _user_config_for(args, sc)
    if getattr(args, "kamailio_tree", None):
        target = _tree_target(args)
        if target is None:
            return EXIT_CANNOT_TEST
    else:
        target = _target_from(args, default_version=None if args.command == "check" else "6.1.5")
    if target.kind == "binary" and not os.path.exists(target.ref):
        _say(f"cannot test: Kamailio binary {target.ref} not found (did the build fail?)")
        return EXIT_CANNOT_TEST
    if target.kind == "binary":
        check_binary(target.ref)
    artifacts = getattr(args, "artifacts", None)
    check_writable(artifacts, "--artifacts")
    what = f"{target.id}" + (f", {user_config.path.name}" if user_config else "") + \
        f", {args.transport.upper()}"
    t0 = time.monotonic()

    def status() -> str:        # the elapsed time first: a narrow terminal cuts the end
        return (f"kamleak {args.command}: {time.monotonic() - t0:3.0f} s; waiting for Kamailio, a "
                f"call, the client gone, the BYE cell's deadline ({what})")

    with progress.Ticker(args.command, status=status):
        outcome, note, verdict = gate_once(target, variant, args.transport, args.disconnect,
                                           user_config, scenario=sc, artifacts=artifacts)
    print(f"kamleak {args.command}: {outcome.upper()}: {note}", flush=True)
    print(f"kamleak {args.command}: {_run_facts(args.transport, verdict, artifacts)}", flush=True)
    codes = {"clean": EXIT_CLEAN, "leak": EXIT_LEAK}
    if args.invert:  # searching for the fix: the old (leaking) side must exit 0
        codes = {"clean": EXIT_LEAK, "leak": EXIT_CLEAN}
    return codes.get(outcome, EXIT_CANNOT_TEST)


def _run_facts(transport: str, verdict, artifacts: str | None) -> str:
    """What a verdict line leaves out: the transport (the story's own, e.g. pr3403's UDP),
    where the deadline came from, where the evidence is."""
    transport = getattr(verdict, "transport", None) or transport
    deadline = "no verdict, no deadline; " if verdict is None else ""
    if isinstance(verdict, TransactionVerdict):
        deadline = (f"deadline {verdict.deadline:.1f} s for the {verdict.method} from "
                    f"{timers_text(verdict.timers, verdict.method)}; ")
    kept = (f"evidence in {artifacts}" if artifacts and Path(artifacts).is_dir() else
            "no evidence: nothing ran" if artifacts else "evidence not kept (--artifacts DIR keeps it)")
    provided = f"kamleak provided: {'; '.join(verdict.provided)}; " \
        if verdict is not None and verdict.provided else ""
    return f"over {transport.upper()}; {provided}{deadline}{kept}"


def _tree_target(args) -> Target | None:
    """--kamailio-tree: build the checkout's working tree as it is (None: it does not build)."""
    from kamleak.harness.stack import source_build

    if any(getattr(args, k, None) for k in ("version", "image", "kamailio_bin", "kamailio_ref")):
        raise UsageError("--kamailio-tree builds the checkout itself; it takes no other Kamailio",
                         "drop --kamailio-version/-ref/-image/-bin")
    wt = source_build.WorkTree(args.kamailio_tree)
    if wt.dirty:
        _say(f"{wt.location} has uncommitted changes ({len(wt.changes)} path(s), git status): "
             f"building the working tree as it is, not HEAD {wt.head[:10]}")
    try:
        built, _ = source_build.build_tree(engine.client(), wt.location,
                                           modules=source_build.modules_for(args.config))
    except source_build.BuildError as exc:
        _say(f"cannot test: {exc.cause}")
        return None
    _say(f"{wt.location}: {'cached' if built.reused else 'built'} {built.tag} "
         f"(kamailio {built.version})")
    return Target("image", built.tag)


def _scenario_variant(args):
    """The scenario module `--scenario` names and its parsed `--variant` (or its default)."""
    from kamleak.harness import registry

    sc = registry.scenario(args.scenario)
    return sc, sc.parse_variant(args.variant or sc.DEFAULT_VARIANT)


def _bisect_target(item: str, source: str | None = None) -> Target:
    if item.startswith("src:"):          # upstream source: src:5.8.5, src:master, src:<commit>
        return Target("source", item[len("src:"):], source=source)
    if item.startswith("debian-"):
        item = item[len("debian-"):]
    if item in images.KAMAILIO_SUITES or item in ("5.6", "6.0", "6.1"):
        return Target("version", images.canonical_version(item))
    if re.fullmatch(r"\d+\.\d+(\.\d+)?", item):
        images.canonical_version(item)   # raises: an unknown version, not an image name
    if os.path.sep in item and os.path.isfile(item):
        return Target("binary", item)
    return Target("image", item)


def _user_config_for(args, sc):
    """--kamailio-config loaded for a scenario that takes one (check, bisect)."""
    if not getattr(args, "config", None):
        return None
    if not sc.USER_CONFIG:
        raise UsageError(f"scenario {args.scenario} runs on the harness's own config only "
                         f"(its story is built from the harness's defines)",
                         "use --scenario gh4140 or takeover with --kamailio-config")
    from kamleak.harness.stack.kamailio.user_config import UserConfig
    user_config = UserConfig.load(args.config)
    if args.transport == "wss" and not user_config.uses_tls:
        raise UsageError(f"{args.config} loads no tls.so, so there is no WSS to test",
                         "use --transport ws")
    return user_config


def _is_commit_range(args, items: list[str]) -> bool:
    """A..B, or two refs with --kamailio-source: commits; anything else: a list of builds."""
    if any(".." in x for x in items):
        return True
    return bool(args.kamailio_source) and len(items) == 2 and \
        not any(x.startswith(("src:", "debian-")) for x in items)


def cmd_bisect(args) -> int:
    """Run the gate on as few builds as needed to find where the verdict flips."""
    from kamleak.harness.tools.bisection import bisect, counted, known_between, need_two, table

    items = [x.strip() for raw in args.builds for x in raw.split(",") if x.strip()]
    if _is_commit_range(args, items):
        return _bisect_commits(args, items)
    if getattr(args, "config", None):
        raise UsageError("--kamailio-config is for a commit range (A..B)",
                         "for a list of builds run `kamleak check --kamailio-config` on each")
    need_two(items)
    targets = {item: _bisect_target(item, getattr(args, "kamailio_source", None)) for item in items}
    sc, variant = _scenario_variant(args)
    _say(f"bisecting {counted(len(items), 'build')}: scenario {args.scenario}, variant "
         f"{variant.name} over {args.transport.upper()}")

    def check(item: str):
        _say(f"gate on {item} ...")
        outcome, note, _ = gate_once(targets[item], variant, args.transport, args.disconnect,
                                     scenario=sc)
        _say(f"  {item}: {outcome}")
        return outcome, ("" if outcome != "skip" else note)

    result = bisect(items, check)
    for line in table(result):
        print(line)
    first = result.items[result.first_other]
    before = result.items[result.last_same]
    v_first = result.verdict_of(result.first_other)
    untested = result.first_other - result.last_same - 1
    if untested:
        print(f"kamleak bisect: the verdict flips somewhere after {before} and by {first} "
              f"(the {counted(untested, 'build')} between could not be tested)")
    else:
        print(f"kamleak bisect: {first} is the first build with verdict {v_first.upper()} "
              f"({before} and earlier: {result.verdict_of(result.last_same).upper()})")
    fixes, backports = known_between(targets[before], targets[first])
    if fixes:
        print(f"kamleak bisect: kamleak.harness.knowledge records between {before} and {first}:")
        for line in fixes:
            print(f"  {line}")
    for line in backports:
        print(f"kamleak bisect: {line}")
    print(f"kamleak bisect: {counted(result.runs, 'gate run')} "
          f"({result.search_runs} between the ends)")
    return 0


def _known_in(mirror: str, after: str, upto: str) -> None:
    """The fixes kamleak.harness.knowledge records whose commit lies in after..upto (git ancestry)."""
    from kamleak.harness import knowledge
    from kamleak.harness.tools.bisection import is_ancestor

    for fix in knowledge.FIXES.values():
        for commit in [fix.commit, *(c for c, _ in fix.backports)]:
            full = source_build._git(Path(mirror), "rev-parse", "--verify", "--quiet",
                                     f"{commit}^{{commit}}", check=False)
            if full and is_ancestor(mirror, full, upto) and not is_ancestor(mirror, full, after):
                print(f"  kamleak.harness.knowledge records in this range: {commit} {fix.what}")


def _bisect_commits(args, items: list[str]) -> int:
    """Bisect the commits of a git range: build each probed commit, gate it."""
    from kamleak.harness.tools.bisection import (
        SKIP,
        bisect_commits,
        commit_info,
        commit_range,
        counted,
        split_range,
    )

    a, b = split_range(items)
    sc, variant = _scenario_variant(args)
    user_config = _user_config_for(args, sc)
    src = source_build.Source(args.kamailio_source)
    ra, rb = src.resolve(a), src.resolve(b)
    mirror = str(src.mirror)
    rng = commit_range(mirror, a, ra.commit, b, rb.commit)
    modules = source_build.modules_for(getattr(args, "config", None))
    client = engine.client()
    t_all = time.monotonic()
    if rng.merge_base:
        print(f"kamleak bisect: {a} and {b} are on diverging lines (merge base "
              f"{rng.merge_base[:10]}); scenario {args.scenario}, variant {variant.name} over "
              f"{args.transport.upper()}", flush=True)
    else:
        print(f"kamleak bisect: {counted(len(rng.commits) - 1, 'commit')} from {rng.given[0]} ({rng.ends[0][:10]}) "
              f"to {rng.given[1]} ({rng.ends[1][:10]}); scenario {args.scenario}, variant "
              f"{variant.name} over {args.transport.upper()}; at most {rng.max_runs} gate runs "
              f"plus skips", flush=True)
    probed: list[dict] = []

    def check(commit: str):
        n = len(probed) + 1
        info = commit_info(mirror, commit)
        row = {"n": n, "commit": commit, "subject": info["subject"], "verdict": SKIP, "note": ""}
        probed.append(row)
        print(f"[{n}] {commit[:10]} {info['subject'][:70]}", flush=True)
        t0 = time.monotonic()
        try:
            built = source_build.build(client, commit, source=src, modules=modules)
        except source_build.BuildError as exc:
            row["note"] = f"does not build: {exc.cause}"
            print(f"[{n}]   does not build ({time.monotonic() - t0:.0f} s): {exc.cause}; skipped",
                  flush=True)
            return SKIP, row["note"]
        row["build"] = f"{'cached' if built.reused else 'built'} {time.monotonic() - t0:.0f} s"
        print(f"[{n}]   {'cached' if built.reused else 'built'} in {time.monotonic() - t0:.0f} s "
              f"({built.tag}); gate ...", flush=True)
        target = Target("source", commit, source=src.location, config=getattr(args, "config", None))
        t1 = time.monotonic()
        outcome, note, verdict = gate_once(target, variant, args.transport, args.disconnect,
                                           user_config, scenario=sc)
        replies = ", ".join(r.describe() for r in verdict.replies) \
            if isinstance(verdict, TransactionVerdict) else ""     # memory verdicts have none
        row.update(verdict=outcome, note=note if outcome == SKIP else "",
                   reply=replies or (note.split(": ", 1)[-1] if verdict else ""))
        said = f"{outcome.upper()}" + ((f" ({replies})" if replies else "") if verdict
                                       else f": {note}; skipped")
        print(f"[{n}]   {said} in {time.monotonic() - t1:.0f} s", flush=True)
        return outcome, row["note"]

    try:
        result, rng = bisect_commits(mirror, rng, check, say=lambda m: print(f"kamleak bisect: {m}",
                                                                              flush=True))
    except KeyboardInterrupt:
        done = [r for r in probed if r.get("build")]
        _say(f"interrupted after {counted(len(probed), 'probe')}; {counted(len(done), 'build')} "
             f"kept as images ({source_build.REPO}:*): a rerun reuses them")
        raise
    by_commit = {r["commit"]: r for r in probed}
    print("\nprobed commits, in history order:")
    for i, c in enumerate(rng.commits):
        r = by_commit.get(c)
        if r is None:
            continue
        mark = "  <- first with the other verdict" if i == result.first_other else ""
        what = r.get("reply") if r["verdict"] != SKIP else r["note"]
        print(f"  {i:>4}  {c[:10]}  {r['verdict']:5}  {(what or '')[:60]:60}  {r['subject'][:50]}{mark}")
    first, last_same = rng.commits[result.first_other], rng.commits[result.last_same]
    v_old = result.verdict_of(result.last_same)
    v_new = result.verdict_of(result.first_other)
    kind = "fix" if (v_old, v_new) == ("leak", "clean") else "regression"
    elapsed = time.monotonic() - t_all
    builds = len([r for r in probed if r.get("build", "").startswith("built")])
    if result.first_other - result.last_same > 1:
        between = rng.commits[result.last_same + 1:result.first_other]
        tried = len([c for c in between if c in by_commit])
        print(f"\nkamleak bisect: the answer is a range: the verdict flips from {v_old.upper()} to "
              f"{v_new.upper()} in {last_same[:10]}..{first[:10]}, at one of these "
              f"{len(between) + 1} commits. The {len(between)} before {first[:10]} cannot be tested: "
              f"{tried} {'was' if tried == 1 else 'were'} tried and skipped, the others lie between skipped ones "
              f"(presumed alike, as a build break or a module that will not load lasts):")
        shown = between + [first]
        for c in shown[:6] + (["..."] if len(shown) > 12 else shown[6:12]) + \
                (shown[-6:] if len(shown) > 12 else []):
            if c == "...":
                print(f"  ... {len(shown) - 12} more: git -C {mirror} log --oneline "
                      f"{last_same[:10]}..{first[:10]}")
                continue
            inf = commit_info(mirror, c)
            v = by_commit[c]["verdict"] if c in by_commit else ""
            print(f"  {c[:10]}  {v:5} {inf['subject'][:70]}")
        _known_in(mirror, last_same, first)
    else:
        inf = commit_info(mirror, first)
        print(f"\nkamleak bisect: {first} is the first commit with verdict {v_new.upper()} "
              f"({kind}; {last_same[:10]} before it: {v_old.upper()})")
        print(f"  subject: {inf['subject']}\n  author:  {inf['author']}\n  date:    {inf['date']}")
        print("  files:\n" + "\n".join(f"    {f}" for f in inf["files"]))
        if len(source_build._git(Path(mirror), "rev-list", "--parents", "-n1", first).split()) > 2:
            print(f"  {first[:10]} is a merge: the change came in on its side branch; bisect "
                  f"{first[:10]}^1..{first[:10]}^2 to name the commit there")
    skipped = len([r for r in probed if r["verdict"] == SKIP])
    print(f"kamleak bisect: {counted(len(probed), 'commit')} probed: {len(probed) - skipped} gated to a "
          f"verdict, {skipped} skipped (bound {rng.max_runs} plus skips), {builds} built, "
          f"{len(probed) - builds - len([r for r in probed if r['note'].startswith('does not')])} "
          f"cached, {elapsed / 60:.1f} min", flush=True)
    return 0


def _with_exit_codes(p: argparse.ArgumentParser) -> None:
    """check, gate, repro: EXIT_CODES in their --help, and the codes they exit with."""
    p.usage_exit = EXIT_ABORT
    p.epilog = EXIT_CODES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.set_defaults(usage_exit=EXIT_ABORT, exit_codes=True)


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors and their exit code chosen per
    command: `check` (and `bisect`, its driver) exit 128, which aborts
    `git bisect run`, where argparse's 2 would mark the commit bad."""

    def __init__(self, *a, usage_exit: int = 2, **kw):
        super().__init__(*a, **kw)
        self.usage_exit = usage_exit
        self.usage_status = None      # a Command's usage_status(given, message), if it has one
        self.given: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self.given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message):
        # One line, like every other bad input (argparse prints the usage too).
        line = f"{message}; see `{self.prog} --help`"
        status = self.usage_status(self.given, line) if self.usage_status else None
        if status:                    # a monitoring plugin's status line, on stdout
            print(status, flush=True)
        self.exit(self.usage_exit, f"{self.prog}: {line}\n")



class Command(Protocol):
    """A subcommand kept in a module of its own (lint, summary, soak, bench, watch):
    what `kamleak` asks of it.  A module may also set USAGE_EXIT, its exit code
    for bad usage, and usage_status(given, message), a line for stdout too."""

    NAME: str
    HELP: str
    DESCRIPTION: str

    def add_arguments(self, p: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


COMMANDS: tuple[Command, ...] = (lint_cmd, summary_cmd, soak_cmd, bench_cmd, watch_cmd, explore_cmd,
                                  reduce_cmd)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="kamleak",
                                description="Leak-detection harness for real Kamailio: tm issue 4140 and a "
                                            "catalogue of leak scenarios.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    s = sub.add_parser("setup", help="start/find the Docker engine and build the images")
    add_option(s, ("--kamailio-version", "--version"), dest="version", action="append",
               metavar="V", help="Kamailio version(s) to build (default: all)")
    s.add_argument("--start-engine", action="store_true", default=None,
                   help="start a private dockerd if none answers (needs root)")
    s.set_defaults(func=cmd_setup)
    r = sub.add_parser("repro", help="show the issue-4140 report step by step beside the evidence, "
                                     "then its mitigation beside it (default: upstream 5.8.5 from source)")
    _add_target_args(r)
    r.add_argument("--variant", default=None,
                   help="config variant (default: pua_dialoginfo, the realistic trigger)")
    r.add_argument("--mitigation", default=None, choices=MITIGATIONS,
                   help="what the contrast run changes (default: the first of "
                        f"{', '.join(MITIGATIONS)} this Kamailio accepts)")
    r.add_argument("--transport", default=None, choices=("ws", "wss"),
                   help=f"the client's transport (default: {REPORT_TRANSPORT}, the report's)")
    r.add_argument("--disconnect", default=None, choices=DISCONNECT_CHOICES,
                   help=f"how the client goes away (default: {REPORT_DISCONNECT}, the report's 477 path; "
                        "rst: via_builder()'s 500)")
    r.add_argument("--hangup", default=None, choices=("command", "session-timer"),
                   help="who ends the call: Asterisk on a CLI command (default) or its session "
                        "timer (~1 min a run; --faithful)")
    r.add_argument("--faithful", action="store_true",
                   help="the report's BYE literally: wait for Asterisk's session timer "
                        "(--hangup session-timer)")
    r.add_argument("--artifacts", default=None, metavar="DIR",
                   help="also save each run's evidence (verdict, timeline.png, SIP trace, logs) in DIR")
    _add_verdict_args(r)
    r.set_defaults(func=cmd_repro)
    _with_exit_codes(r)
    c = sub.add_parser("check", help="one gate run; exit 0 clean, 1 leak, 125 cannot test, "
                                     "128 bad input (for `git bisect run`)", usage_exit=EXIT_ABORT)
    _add_target_args(c, config="optional")
    c.add_argument("--kamailio-tree", default=None, metavar="DIR",
                   help="build the working tree of this Kamailio checkout as it is and test it "
                        "(`git bisect run kamleak check --kamailio-tree .`)")
    _add_scenario_arg(c)
    c.add_argument("--variant", default=None,
                   help="config variant (default: the scenario's; gh4140: pua_dialoginfo)")
    c.add_argument("--transport", default="ws", choices=("ws", "wss"))
    c.add_argument("--disconnect", default="rst", choices=DISCONNECT_CHOICES)
    c.add_argument("--invert", action="store_true",
                   help="exit 0 on a leak and 1 when clean: for bisecting the commit that FIXED it")
    c.add_argument("--artifacts", default=None, metavar="DIR",
                   help="also save the run's evidence (verdict, timeline.png, SIP trace, logs, "
                        "the config as run) in DIR, whatever the verdict")
    _add_verdict_args(c)
    c.set_defaults(func=cmd_check)
    _with_exit_codes(c)
    g = sub.add_parser("gate", help="the issue-4140 gate on your own kamailio.cfg: exit 0 clean, "
                                    "1 leak, 125 cannot test, 128 bad input")
    _add_target_args(g, config="required")
    g.add_argument("--variant", default="none",
                   help="extra harness defines (default: none; your config decides)")
    g.add_argument("--transport", default="ws", choices=("ws", "wss"))
    g.add_argument("--disconnect", default="rst", choices=DISCONNECT_CHOICES)
    g.add_argument("--invert", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--artifacts", default=None, metavar="DIR",
                   help="also save the run's evidence (verdict, timeline.png, SIP trace, logs, "
                        "the config as run) in DIR, whatever the verdict")
    _add_verdict_args(g)
    g.set_defaults(scenario="gh4140")
    g.set_defaults(func=cmd_check)
    _with_exit_codes(g)
    b = sub.add_parser("bisect", help="find the first build in an ordered list where the verdict flips",
                       usage_exit=EXIT_ABORT)
    b.add_argument("builds", nargs="*",
                   help="a commit range A..B (or two refs with --kamailio-source: tags, branches, "
                        "commits, either order): each probed commit is built from source; or a "
                        "list of builds oldest first: versions (5.6.3 6.0.1 6.1.5), src:REF, "
                        "images, binaries. The two ends must disagree")
    _add_scenario_arg(b)
    add_source_option(b.add_argument, "the git source of a range and of src:REF builds")
    add_option(b, ("--kamailio-config", "--config"), dest="config", default=None,
               metavar="KAMAILIO_CFG", help="your kamailio.cfg (a commit range only; its modules "
                                            "are built too)")
    b.add_argument("--disconnect", default="rst", choices=DISCONNECT_CHOICES)
    b.add_argument("--variant", default=None,
                   help="config variant (default: the scenario's; gh4140: pua_dialoginfo)")
    b.add_argument("--transport", default="ws", choices=("ws", "wss"))
    _add_verdict_args(b)
    b.set_defaults(func=cmd_bisect, usage_exit=EXIT_ABORT)
    for command in COMMANDS:
        usage_exit = getattr(command, "USAGE_EXIT", None)
        extra = {"usage_exit": usage_exit} if usage_exit is not None else {}
        p_cmd = sub.add_parser(command.NAME, help=command.HELP, description=command.DESCRIPTION, **extra)
        command.add_arguments(p_cmd)
        p_cmd.usage_status = getattr(command, "usage_status", None)
        p_cmd.set_defaults(func=command.run, **extra)
    k = sub.add_parser("cleanup", help="remove containers left by killed runs")
    k.add_argument("--check", action="store_true",
                   help="exit 1 if a kamleak run that is gone left containers (run after a "
                        "test suite; a live run's are not counted)")
    k.set_defaults(func=cmd_cleanup)
    i = sub.add_parser("images", help="list the images kamleak builds and whether they are current")
    i.set_defaults(func=cmd_images)
    return p


def main(argv=None) -> int:
    # SIGTERM ends a run like Ctrl-C: containers removed, exit 130.
    import signal
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse reports a subcommand's unknown options from the top parser:
        # report them from the subcommand's, with its exit code.
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        (commands.choices.get(args.command) or parser).error(
            f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if hasattr(args, "confirm"):
        from kamleak.harness.judging import oracle
        oracle.configure(early=not args.no_early, confirm=args.confirm)
    try:
        return args.func(args)
    except KamleakError as exc:
        if os.environ.get("KAMLEAK_DEBUG"):
            raise
        _say(exc.line())
        if getattr(args, "exit_codes", None) and isinstance(exc, CANNOT_TEST_ERRORS):
            return EXIT_CANNOT_TEST                 # check, gate, repro: EXIT_CODES
        return getattr(args, "usage_exit", None) or exc.exit_code
    except KeyboardInterrupt:
        containers.remove_all_live()
        _say("interrupted; our containers were removed")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("KAMLEAK_DEBUG"):
            raise
        containers.remove_all_live()
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        _say(f"internal error: {type(exc).__name__}: {first} (KAMLEAK_DEBUG=1 shows the traceback)")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
