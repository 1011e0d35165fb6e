"""`kamleak soak`: the options, and a stack (Kamailio, the far end) around run_soak."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from kamleak.harness.errors import NotApplicable, ScenarioError, UsageError
from kamleak.harness.reporting.artifacts import check_writable
from kamleak.harness.sip.peer import UdpPeer
from kamleak.harness.tools.soak.plan import check_plan
from kamleak.harness.tools.soak.run import run_soak

NAME = "soak"
HELP = "many calls through one Kamailio: leaked cells and shm per call"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from kamleak.harness.stack.targets import add_one_target_options

    add_one_target_options(p)
    p.add_argument("--variant", default=None, help="config variant (default: the gate's, pua_dialoginfo)")
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=50, help="calls in flight at most (and clients)")
    p.add_argument("--rate", type=float, default=100.0, help="new calls per second at most (0: no limit)")
    p.add_argument("--mix", type=float, default=0.001, help="fraction of issue-4140 calls (0.001: 1 in 1000)")
    p.add_argument("--hold", type=float, default=0.0, help="seconds a healthy call stays up")
    p.add_argument("--transport", choices=("ws", "wss"), default="ws")
    p.add_argument("--pbx", choices=("builtin", "asterisk"), default="builtin")
    p.add_argument("--checkpoints", type=int, default=5, help="drained checkpoints for the fit")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default=None, help="directory for soak.json and soak.png "
                                               "(default: artifacts/soak-<time>)")


DESCRIPTION = ("Drive many calls through one Kamailio (a fraction of them the issue-4140 ladder) and "
               "measure the tm cells and shm each leaves: exit 0 clean, 1 leak, 2 could not run.")


def run(args) -> int:
    from kamleak.harness import registry
    from kamleak.harness.stack import containers, engine, images
    from kamleak.harness.stack.asterisk import AsteriskPBX
    from kamleak.harness.stack.kamailio import TmTimers
    from kamleak.harness.stack.runner import launch_kamailio
    from kamleak.harness.stack.targets import one_target

    story = registry.scenario("gh4140")

    check_plan(args.calls, args.mix, args.concurrency, args.rate)
    check_writable(args.out, "--out")
    target = one_target(args)
    variant = story.parse_variant(args.variant or story.DEFAULT_VARIANT)
    if target.kind in ("version", "source"):
        why = story.applicable(target, variant)
        if why:
            raise UsageError(f"variant {variant.name} cannot run on {target.ref}: {why}")
    out = Path(args.out or Path("artifacts") / time.strftime("soak-%Y%m%d-%H%M%S"))
    workdir = containers.workdir()
    far = kam = None

    def say(m: str) -> None:
        print(f"kamleak soak: {m}", file=sys.stderr, flush=True)

    try:
        client = engine.client()
        containers.reap_leftovers(client, log=say)
        specs = [images.kamailio_spec(target.ref)] if target.kind == "version" else []
        if args.pbx == "asterisk":
            specs.append(images.asterisk_spec())
        if specs:
            images.build_all(client, specs)
        target.prepare(client)
        if args.pbx == "asterisk":
            far = AsteriskPBX(client, Path(workdir) / "asterisk").start()
        else:
            far = UdpPeer().start()

        def factory(defines=(), timers=None):
            return launch_kamailio(target, client, far.sip_port, workdir, defines, timers or TmTimers())

        try:
            kam = story.start_kamailio(factory, variant)
        except NotApplicable as exc:
            raise UsageError(str(exc)) from None
        say(f"{kam.describe()}, variant {variant.name}, {args.transport.upper()}, "
            f"{'built-in peer' if args.pbx == 'builtin' else 'Asterisk'} at {far.address}: "
            f"{args.calls} calls, concurrency {args.concurrency}, rate {args.rate:g}/s, mix {args.mix:g}")

        def progress(s):
            print(f"  {s['done']:>7}/{args.calls} done  {s['inflight']:>4} in flight  "
                  f"{s['failed']} failed  {s['hits']} hit", file=sys.stderr, flush=True)

        res = run_soak(kam, far, calls=args.calls, concurrency=args.concurrency, rate=args.rate,
                       mix=args.mix, transport=args.transport, seed=args.seed, progress=progress,
                       hold=args.hold, checkpoints=args.checkpoints, variant=variant.name)
        jp, png = res.write(out)
        print(res.summary_line())
        for f in res.flags:
            print(f"  flag: {f}")
        for o in res.orphaned[:10]:
            if o.get("proven_at") is None:
                print(f"  BYE of {o['call_id']}: not proven orphaned ({o['why_not']})")
            else:
                after = "" if o["after_bye"] is None else \
                    f", {o['after_bye']:.1f} s after Kamailio answered the BYE"
                print(f"  BYE of {o['call_id']}: proven orphaned at {o['proven_at']:.1f} s{after} "
                      f"({o['evidence']})")
        if len(res.orphaned) > 10:
            print(f"  ... {len(res.orphaned) - 10} more in the record")
        print(f"  record: {jp}" + (f"  plot: {png}" if png else ""))
        if res.leaked:
            return 1
        if res.failed:
            for e in res.errors[:5]:
                print(f"  error: {e}", file=sys.stderr)
            raise ScenarioError(f"{res.failed} of {res.calls} calls failed: no cell was left, "
                                "but the soak cannot vouch for calls that did not run",
                                f"see {jp}")
        return 0
    finally:
        if kam is not None:
            kam.stop()
        if far is not None:
            far.stop()
        containers.remove_all_live()
        shutil.rmtree(workdir, ignore_errors=True)
