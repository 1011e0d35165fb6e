"""`kamleak explore`: the command (cli.Command) over campaign, flow and run."""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import time
from pathlib import Path

from kamleak.harness.errors import KamleakError, NotApplicable, UsageError

NAME = "explore"
HELP = "generate call flows, run them on real Kamailio and Asterisk, report the leaks they find"
DESCRIPTION = ("Generate call flows (Hypothesis), run them in batches through a fresh real Kamailio to "
               "a real Asterisk, judge each flow's cells by its Call-IDs, shrink a leaking flow to "
               "its minimal steps and replay it to confirm. Exit 0 nothing found within the budget, "
               "1 a confirmed finding, 125 cannot test, 128 bad input.")
USAGE_EXIT = 128
EXIT_NONE, EXIT_FOUND, EXIT_CANNOT_TEST = 0, 1, 125


def add_arguments(p: argparse.ArgumentParser) -> None:
    from kamleak.harness.stack.targets import add_one_target_options, add_option

    add_one_target_options(p)
    add_option(p, ("--kamailio-config", "--config"), dest="config", default=None, metavar="KAMAILIO_CFG",
               help="your kamailio.cfg (README: the contract) instead of kamleak's with a variant")
    p.add_argument("--variant", default=None,
                   help="kamleak's config variant (default: none, the plain config)")
    p.add_argument("--define", action="append", default=[], metavar="NAME[=VALUE]",
                   help="a switch of kamleak's config on top of the variant (its `#!ifdef`s, e.g. "
                        "WITH_RELAY_NOCONNECT, WITH_BRANCH_DROP, WITH_LISTEN_ADVERTISE); repeatable")
    p.add_argument("--mutate-config", action="store_true",
                   help="also vary what kamleak's config does around the flows: local requests in "
                        "other routes, drop, error replies, t_relay() flags (explore/mutate.py); each "
                        "drawn mutation is checked with the build's `kamailio -c` first")
    p.add_argument("--budget", default="10m", help="how long to generate flows: 90s, 10m, 1h (default 10m)")
    p.add_argument("--max-flows", type=int, default=None, metavar="N", help="stop after N flows")
    p.add_argument("--seed", type=int, default=None, help="Hypothesis's seed (a rerun draws the same flows)")
    p.add_argument("--jobs", type=int, default=60, metavar="N",
                   help="a batch's slots: at most N flows at once through one Kamailio (Hypothesis "
                        "fills about 4 in 10 with flows not judged before; default 60: 115-200 "
                        "flows judged a minute on 2 cores, docs/explore.md)")
    p.add_argument("--steps", default=None, metavar="A,B,...",
                   help="the steps flows may take (default: all; see `flow.STEPS`)")
    p.add_argument("--answers", default=None, metavar="A,B,...",
                   help="how Asterisk may answer: answer, ring_answer, busy, no_answer (default: all)")
    p.add_argument("--transport", default="ws,wss",
                   help="client transports, comma-separated: ws, wss, tcp, udp (default ws,wss)")
    p.add_argument("--tm-timers", default=None, metavar="NAME=MS,...",
                   help="tm timers of kamleak's config, e.g. fr_inv_timer=3000,max_inv_lifetime=3000 (names: "
                        "fr_timer, fr_inv_timer, wt_timer, max_inv_lifetime, max_noninv_lifetime); an INVITE "
                        "cell is judged only after max_inv_lifetime + fr + wt, Kamailio's default 180 s")
    p.add_argument("--max-steps", type=int, default=8, help="steps in a flow at most (default 8)")
    p.add_argument("--replays", type=int, default=3, help="replays that confirm a finding (default 3)")
    p.add_argument("--db", default=None, metavar="DIR|redis://HOST:PORT[/DB]",
                   help="where Hypothesis's examples and the findings are kept: a directory (default: "
                        "under --out) or a Redis server the shards of a campaign share; a rerun with it "
                        "starts from the earlier findings of the same campaign (Kamailio, config, steps)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run shard I of N of one campaign (CI jobs): its Hypothesis seed is derived from "
                        "--seed (or a random base seed, printed) and I, so shards draw other flows; give "
                        "them one --db (docs/explore.md: Beyond one machine)")
    p.add_argument("--out", default=None, metavar="DIR", help="default artifacts/explore-<time>")
    p.add_argument("--replay", default=None, metavar="FLOW_JSON",
                   help="run one flow.json that explore wrote, judged, and exit 1 if it leaks")
    p.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                   help="merge the --out directories of several runs (the shards of a campaign) into one "
                        "report under --out (summary.json, index.html, junit.xml): findings deduplicated, "
                        "counts summed; exit 1 if any has a sure finding; starts no container")


def parse_timers(text: str | None):
    """--tm-timers NAME=MS,... as TmTimers over kamleak's defaults (None: the defaults)."""
    import dataclasses

    from kamleak.harness.stack.kamailio.config import TmTimers

    if not text:
        return None
    names = [f.name for f in dataclasses.fields(TmTimers)]
    values = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        name, eq, ms = item.partition("=")
        if name not in names or not eq or not ms.isdigit():
            raise UsageError(f"bad --tm-timers item '{item}'", f"give NAME=MS with NAME one of {', '.join(names)}")
        values[name] = int(ms)
    return dataclasses.replace(TmTimers(), **values)


def parse_budget(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*", text or "")
    if not m:
        raise UsageError(f"not a budget: '{text}'", "write e.g. 90s, 10m or 1h")
    secs = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    if secs <= 0:
        raise UsageError(f"a budget of {text} explores nothing", "give a budget above 0, e.g. 10m")
    return secs


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'I/N' -> (I, N), 1 <= I <= N; None without --shard."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise UsageError(f"not a shard: '{text}'", "write I/N with 1 <= I <= N, e.g. --shard 2/4")
    return int(m.group(1)), int(m.group(2))


def shard_seed(base: int, index: int) -> int:
    """Shard INDEX's Hypothesis seed: one per (base seed, shard), so shards draw other flows
    (docs/explore.md: two shards share 25-32 % of their distinct flows, the short ones)."""
    return int.from_bytes(hashlib.sha256(f"{base}/{index}".encode()).digest()[:8], "big")


def run(args) -> int:
    from kamleak.harness.tools.explore import flow as fl
    from kamleak.harness.tools.explore.db import open_database
    from kamleak.harness.tools.explore.mutate import Mutation

    if args.merge:
        return _merge(args)
    if args.mutate_config and args.config:
        raise UsageError("--mutate-config mutates kamleak's own config, not --kamailio-config",
                         "drop one of them")
    budget = parse_budget(args.budget)
    if args.max_flows is not None and args.max_flows < 1:
        raise UsageError(f"--max-flows {args.max_flows} explores nothing", "give 1 or more")
    if args.jobs < 1 or args.replays < 1 or args.max_steps < 1:
        raise UsageError("--jobs, --replays and --max-steps must be 1 or more")
    transports = tuple(t.strip() for t in args.transport.split(",") if t.strip())
    bad = [t for t in transports if t not in fl.TRANSPORTS]
    if bad or not transports:
        raise UsageError(f"unknown transport '{','.join(bad) or '(none)'}'",
                         f"use {', '.join(fl.TRANSPORTS)} or a comma list of them, e.g. ws,udp")
    parse_timers(args.tm_timers)
    if args.tm_timers and args.config:
        raise UsageError("--tm-timers sets kamleak's own config's timers", "set them in your --kamailio-config")
    steps = [s.strip() for s in args.steps.split(",")] if args.steps else None
    answers = [a.strip() for a in args.answers.split(",")] if args.answers else None
    fl.check_vocabulary(steps, answers)
    replay_flow, replay_mutation = None, Mutation()
    if args.replay:
        try:
            data = json.loads(Path(args.replay).read_text())
            replay_flow = fl.Flow.from_json(data)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read the flow {args.replay}: {exc}",
                             "pass the flow.json of a finding") from None
        # A finding of --mutate-config replays on the config it leaked with.
        replay_mutation = Mutation.parse(data.get("config_mutation", "none"))
    shard = parse_shard(args.shard)
    # Checked before anything is written or started: an unreachable server is bad input.
    database = open_database(args.db) if args.db and not args.replay else None
    out = Path(args.out or Path("artifacts") / time.strftime("explore-%Y%m%d-%H%M%S"))
    fresh = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".writable").write_text("")
        (out / ".writable").unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to {out}: {exc.strerror}", "pass --out DIR where you can write") from None
    try:
        return _explore(args, out, budget, transports, steps, answers, replay_flow, replay_mutation,
                        database=database, shard=shard)
    finally:
        # Nothing written (a config the Kamailio refuses, a Kamailio that cannot start): no directory.
        if fresh and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def _merge(args) -> int:
    from kamleak.harness.tools.explore import report

    if args.replay:
        raise UsageError("--merge and --replay are two commands", "give one of them")
    out = Path(args.out or Path("artifacts") / time.strftime("explore-merged-%Y%m%d-%H%M%S"))
    campaigns = report.merge(args.merge, out)
    for c in campaigns:
        print(f"kamleak explore: {report.title(c)}: {c['flows']} flows, {len(c['findings'])} finding(s)")
        for f in c["findings"]:
            print(f"  {report.kind(f)}: {report.flow_text(f)}  [{f['signature']}]  found by {', '.join(f['shards'])}")
    print(f"  report: {out / report.INDEX}, {out / report.JUNIT}")
    return report.exit_code(campaigns)


def progress_line(flows: int, judged: int, findings: int, shrinking: bool, elapsed: float,
                  budget: float) -> str:
    """The live line of a campaign on a terminal."""
    left = max(0.0, budget - elapsed)
    found = f"{findings} finding{'s' * (findings != 1)}" + (", shrinking" if shrinking else "")
    # Under 80 columns: a line wider than the terminal cannot be redrawn in place.
    return (f"explore: {flows} run, {judged} judged, {found}, "
            f"{flows / max(elapsed, 1e-9) * 60:.0f}/min, {int(left // 60)}:{int(left % 60):02d} left")


def _say(m: str) -> None:
    from kamleak.harness import progress

    progress.say(m, "kamleak explore")


def _replay_args(args) -> list[str]:
    """The options that start the Kamailio and config a finding replays on (flow.json has the rest)."""
    if args.image:
        picked = ["--kamailio-image", args.image]
    elif args.kamailio_ref:
        picked = ["--kamailio-ref", args.kamailio_ref] + \
            (["--kamailio-source", args.kamailio_source] if args.kamailio_source else [])
    else:
        picked = ["--kamailio-version", args.version or "6.0.1"]
    if args.config:
        return picked + ["--kamailio-config", args.config]
    return picked + (["--variant", args.variant] if args.variant else []) + \
        [a for d in args.define for a in ("--define", d)] + \
        (["--tm-timers", args.tm_timers] if args.tm_timers else [])


def _explore(args, out: Path, budget, transports, steps, answers, replay_flow, replay_mutation, *,
             database=None, shard=None) -> int:
    from kamleak.harness import progress
    from kamleak.harness.stack.kamailio.user_config import UserConfig
    from kamleak.harness.stack.kamailio.variants import Variant, check_defines
    from kamleak.harness.stack.runner import Stack
    from kamleak.harness.stack.targets import one_target
    from kamleak.harness.tools.explore import flow as fl
    from kamleak.harness.tools.explore import mutate, record, report
    from kamleak.harness.tools.explore.campaign import Campaign, Finding
    from kamleak.harness.tools.explore.db import Store, open_database
    from kamleak.harness.tools.explore.run import replay

    target = one_target(args)
    user_config = UserConfig.load(args.config) if args.config else None
    defines: tuple[str, ...] = ()
    if args.variant and args.variant != "none":
        if user_config is not None:
            raise UsageError("--variant is for kamleak's own config", "drop it with --kamailio-config")
        defines = Variant.parse(args.variant).defines
    if args.define:
        if user_config is not None:
            raise UsageError("--define is for kamleak's own config", "drop it with --kamailio-config")
        defines += check_defines(args.define)
    label = f"config {Path(args.config).name}" if args.config else f"variant {args.variant or 'none'}"
    if args.define:
        label += " + " + " + ".join(args.define)
    if args.mutate_config:
        label += " + --mutate-config"
    try:
        with Stack(target, log=_say, user_config=user_config) as bench:
            timers = parse_timers(args.tm_timers)

            def start(mutation=mutate.NONE):
                return bench.kamailio(mutate.with_base(defines, mutation), timers)

            if user_config is not None:
                # Your config's own error (a syntax error, a module the build lacks) is bad input.
                from kamleak.harness.stack.kamailio.cfgcheck import Checker, config_for_check, your_line

                checked = config_for_check(user_config=user_config)
                why = Checker(bench.target, bench.client).refusal(checked)
                if why:
                    raise UsageError(f"{args.config} cannot run on {target.id}: kamailio -c: {why}"
                                     + your_line(why, checked, user_config), "fix your config there")
            try:
                probe = start()
            except NotApplicable as exc:
                raise UsageError(f"{label} cannot run on {target.id}: {exc}") from None
            version = probe.version or target.id
            probe.stop()
            if replay_flow is not None:
                if replay_mutation:
                    label += f" + config mutation {replay_mutation.text()}"
                kam = start(replay_mutation)
                judged = []
                try:
                    recording = record.Recording(kam, bench.pbx)
                    try:
                        judged.append(replay(kam, bench.pbx, replay_flow, trace=True))
                    finally:
                        files = recording.finish(judged)
                finally:
                    kam.stop()
                j = judged[0]
                record.write(out, files)
                # CLEAN is about what the oracle could decide; what the flow still holds
                # within its bound (no verdict yet) is said beneath, never left out.
                verdict = "LEAK" if j.leaked else ("CLEAN (no tm cell left; held objects within their bounds, "
                                                   "below)" if j.held else "CLEAN")
                print(f"kamleak explore: {verdict}: {replay_flow.text()} on {version}, {label}")
                for line in j.evidence():
                    print(f"  {line}")
                print(f"  {record.line(record.describe(files, 1, ''), f'this replay in {out}')}")
                if j.run.error:
                    print(f"  the flow could not be driven to its end: {j.run.error}")
                    return EXIT_CANNOT_TEST
                return EXIT_FOUND if j.leaked else EXIT_NONE
            strategy = fl.flows(max_steps=args.max_steps, transports=transports, steps=steps,
                                answers=answers)
            # One campaign's examples and findings: what gives its choices their meaning.
            names, pbx_answers = fl.check_vocabulary(steps, answers)
            store = Store(database or open_database(str(out / "examples")),
                          {"kamailio": target.id, "version": version, "config": label,
                           "transports": list(transports), "steps": list(names), "answers": list(pbx_answers),
                           "max_steps": args.max_steps, "jobs": args.jobs}
                          | ({"tm_timers": args.tm_timers} if args.tm_timers else {}))
            seed = args.seed
            if shard:
                if args.seed is None:
                    args.seed = random.randrange(2**32)
                seed = shard_seed(args.seed, shard[0])
                _say(f"shard {shard[0]}/{shard[1]}: base seed {args.seed} (repeat it with --seed {args.seed} "
                     f"--shard {shard[0]}/{shard[1]}), Hypothesis seed {seed}")
            mutating = {}
            if args.mutate_config:
                checker = mutate.Checker(bench.target, bench.client)
                mutating = dict(mutations=mutate.mutations(exclude=defines),
                                refusal=lambda m: checker.refusal(mutate.with_base(defines, m)))
            # On a terminal one live line holds the batches' counts; a log keeps a line a batch.
            live = progress.interactive()
            campaign = Campaign(start, bench.pbx, strategy, batch=args.jobs, budget_s=budget,
                                max_flows=args.max_flows, seed=seed, database=store.examples,
                                replays=args.replays, say=_say, **mutating,
                                batch_say=(lambda m: None) if live else None)
            _say(f"{version}, {label}, {'/'.join(transports).upper()}: batches of {args.jobs} flows, "
                 f"budget {budget:.0f} s" + (f", at most {args.max_flows} flows" if args.max_flows else ""))

            def status() -> str:
                r = campaign.result
                return progress_line(r.flows, r.flows - r.harness_errors, len(r.findings),
                                     campaign.best is not None and not r.findings,
                                     time.monotonic() - campaign.t0, budget)

            try:
                with progress.Ticker("explore", status=status):
                    result = campaign.run()
            except KeyboardInterrupt:
                result = campaign.result
                result.stopped = "Ctrl-C"
                result.elapsed = time.monotonic() - campaign.t0
                best = campaign.best
                if best is not None and not result.findings:
                    # Interrupted while shrinking: the smallest leak so far, written as never replayed.
                    at_flows, at_s = campaign.first_failure or (result.flows, result.elapsed)
                    result.findings.append(Finding(best.run.flow, best.signature(), best.evidence(),
                                                   best.run.steps, found_after_flows=at_flows,
                                                   found_after_s=at_s, shrink_runs=campaign.shrink_runs,
                                                   mutation=campaign.best_mutation))
                _write(out, result, version, label, defines, args, transports, budget)
                _say(f"interrupted after {result.flows} flows; what it found so far: {out / 'index.html'}")
                raise
    except KamleakError as exc:
        if isinstance(exc, UsageError):
            raise
        _say(f"cannot test: {exc.line()}")
        return EXIT_CANNOT_TEST
    _write(out, result, version, label, defines, args, transports, budget)
    for f in result.findings:       # for the other shards and the merge of their reports
        store.publish({**f.as_dict(), "kamailio": version, "config": label, "shard": args.shard,
                       "seed": args.seed})
    rate = result.flows / max(result.elapsed, 1e-9) * 60
    print(f"kamleak explore: {result.flows} flows in {result.batches} batches, {result.elapsed:.0f} s "
          f"({rate:.0f} flows/min), {result.harness_errors} not driven to their end; stopped: "
          f"{result.stopped}")
    summary = report.load(out)[0]
    for i, f in enumerate(result.findings, 1):
        kind = "LEAK" if f.sure else f"FLAKY ({f.confirmed}/{f.replays} replays)"
        print(f"  {kind}: {f.text()}  [{f.signature}]\n    "
              + "\n    ".join([*f.evidence, f.files_line()])
              + f"\n    replay: {report.replay_command(summary, summary['findings'][i - 1], out)}")
    print(f"  evidence: {out} (report: {out / report.INDEX}, {out / report.JUNIT})")
    return EXIT_FOUND if any(f.sure for f in result.findings) else EXIT_NONE


def _write(out: Path, result, version: str, label: str, defines, args, transports, budget) -> None:
    """OUT/summary.json, a finding-N/ per finding, and the report of them (index.html, junit.xml)."""
    from kamleak.harness.tools.explore import report
    from kamleak.harness.tools.explore.emit import write_finding

    summary = {"kamailio": version, "config": label, "flows": result.flows, "batches": result.batches,
               "elapsed_s": round(result.elapsed, 1),
               "rate_per_min": round(result.flows / max(result.elapsed, 1e-9) * 60, 1),
               "stopped": result.stopped, "harness_errors": result.harness_errors, "seed": args.seed,
               "shard": args.shard, "budget_s": budget, "jobs": args.jobs, "transports": list(transports),
               "replay_args": _replay_args(args), "refused_config_mutations": result.refused,
               "trend": [t.as_dict() for t in result.trend], "trend_notes": result.trend_notes,
               "findings": [{**f.as_dict(), "dir": f"finding-{i}"} for i, f in enumerate(result.findings, 1)]}
    (out / report.SUMMARY).write_text(json.dumps(summary, indent=1))
    for i, f in enumerate(result.findings, 1):
        write_finding(out / f"finding-{i}", f, version=version, label=label, defines=defines,
                      config=args.config, timers=parse_timers(args.tm_timers))
    report.write(out, [summary])
