"""`kamleak reduce`: the command (cli.Command) over removal, search and probe."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kamleak.harness.errors import KamleakError, UsageError

NAME = "reduce"
HELP = "shrink your leaking kamailio.cfg to the statements the leak needs"
DESCRIPTION = ("Run the gate on your config, keep its leak (method, Kamailio's reply, the stuck cell) and "
               "remove route blocks, statements, modparams, modules and defines while the leak stays: "
               "each candidate checked by the real `kamailio -c` first, then gated, several at once. "
               "Prints the reduced config's size and the cause: each statement left whose removal "
               "makes the leak go away, with its line in your file. Exit 0 reduced (written to --out), "
               "1 no leak to keep (the first run is clean, leaks otherwise than --keep, or the leak "
               "does not keep when re-run), 125 cannot test, 128 bad input; Ctrl-C writes the "
               "smallest config found so far (exit 130).")
USAGE_EXIT = 128
EXIT_REDUCED, EXIT_NO_LEAK, EXIT_CANNOT_TEST = 0, 1, 125


def add_arguments(p: argparse.ArgumentParser) -> None:
    from kamleak.harness.stack.targets import add_one_target_options

    p.add_argument("cfg", metavar="CFG", help="your kamailio.cfg (docs/config.md: the gate's contract)")
    add_one_target_options(p)
    p.add_argument("--keep", default=None, metavar="SIGNATURE",
                   help="the leak to keep, as the first run prints it (e.g. 'BYE 500/SL; tm cell: "
                        "BYE/out0/ref1'); default: the first run's")
    p.add_argument("--jobs", type=int, default=4, metavar="N",
                   help="gates at once, each on a Kamailio of its own (default 4: what 2 cores "
                        "sustain, docs/reduce.md)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="where the reduced config goes (default: CFG's directory, NAME.reduced.cfg, "
                        "so its includes resolve as CFG's)")
    p.add_argument("--budget", default="15m", help="how long to search: 90s, 15m, 1h (default 15m); "
                                                    "the result is re-verified past it")
    p.add_argument("--log", default=None, metavar="FILE",
                   help="one JSON line a gate: the lines its candidate removed, its outcome, signature, "
                        "seconds and note (what the search saw, to audit or to tune --jobs)")
    p.add_argument("--transport", default="ws", choices=("ws", "wss"))
    p.add_argument("--disconnect", default="rst", choices=("rst", "fin", "close", "rst+advertise"))


def out_path(cfg: str, out: str | None) -> Path:
    if out:
        return Path(out)
    p = Path(cfg)
    return p.with_name(p.stem + ".reduced" + (p.suffix or ".cfg"))


def _is_a_config(path: str) -> None:
    """A text that is no kamailio.cfg at all is one line, not the contract's list of what it lacks."""
    from kamleak.harness.stack.kamailio import cfg
    from kamleak.harness.stack.kamailio.user_config import HARNESS_DEFINES, read_config

    parsed, _ = cfg.parse(read_config(path), defines=HARNESS_DEFINES, path=path)
    if not parsed.modules and not parsed.routes:
        raise UsageError(f"{path} is not a Kamailio config: it loads no module and has no route block",
                         "pass the path of your kamailio.cfg")


def _writable(path: Path, option: str) -> None:
    """OPTION's FILE could be written (nothing is left there until there is something to write)."""
    if path.is_dir() or not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: {'a directory' if path.is_dir() else 'no such directory'}",
                         f"pass {option} FILE in a directory that exists")
    existed = path.exists()
    try:
        with path.open("a"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}", f"pass {option} FILE where you can write") from None
    if not existed:
        path.unlink()


def _say(m: str) -> None:
    from kamleak.harness import progress

    progress.say(m, "kamleak reduce")


def run(args) -> int:
    from kamleak.harness.stack.kamailio.user_config import UserConfig
    from kamleak.harness.tools.explore.cli import parse_budget
    from kamleak.harness.tools.reduce.probe import same_signature

    budget = parse_budget(args.budget)
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs} runs nothing", "give 1 or more")
    if args.keep is not None and ("tm cell:" not in args.keep.lower() or not args.keep.split()):
        raise UsageError(f"not a signature: '{args.keep}'",
                         "copy it from the first run's 'signature:' line, e.g. 'BYE 500/SL; tm cell: "
                         "BYE/out0/ref1'")
    args.config = args.cfg           # one_target builds a source target with the config's modules
    _is_a_config(args.cfg)
    user_config = UserConfig.load(args.cfg)
    out = out_path(args.cfg, args.out)
    if out.resolve() == Path(args.cfg).resolve():
        raise UsageError(f"--out {out} is your config", "give another file")
    for path, option in ((out, "--out"), (Path(args.log) if args.log else None, "--log")):
        if path is not None:
            _writable(path, option)
    try:
        return _reduce(args, user_config, out, budget, same_signature)
    except KamleakError as exc:
        if isinstance(exc, UsageError):
            raise
        _say(f"cannot test: {exc.line()}")
        return EXIT_CANNOT_TEST


def _reduce(args, user_config, out: Path, budget: float, same_signature) -> int:
    import contextlib
    import os

    from kamleak.harness import progress, registry
    from kamleak.harness.stack.kamailio.cfgcheck import config_for_check, your_line
    from kamleak.harness.stack.runner import Stack
    from kamleak.harness.stack.targets import one_target
    from kamleak.harness.tools.reduce.probe import Probe
    from kamleak.harness.tools.reduce.removal import Reduction
    from kamleak.harness.tools.reduce.search import Outcome, Search

    t0 = time.monotonic()
    target = one_target(args)
    red = Reduction.of(user_config)
    sc = registry.scenario(registry.DEFAULT)
    with contextlib.ExitStack() as held:
        stack = held.enter_context(Stack(target, log=_say, user_config=user_config))
        probe = Probe(stack, red, sc, sc.parse_variant("none"), transport=args.transport,
                      disconnect=args.disconnect)
        if args.log:
            probe.log = held.enter_context(open(args.log, "w", encoding="utf-8"))
        checked = config_for_check(user_config=user_config)
        why = probe.checker.refusal(checked)
        if why:
            raise UsageError(f"{args.cfg} cannot run on {target.id}: kamailio -c: {why}"
                             + your_line(why, checked, user_config), "fix your config there")
        # 1. The leak to keep: the gate on your config as it is.
        first = probe.run([user_config])[0]
        if first.outcome == "skip":
            _say(f"your config as it is: {first.note}")
            return EXIT_CANNOT_TEST
        if first.outcome == "clean":
            print(f"kamleak reduce: no leak to keep: the gate on {args.cfg} is CLEAN on {target.id}: "
                  f"{first.note}")
            return EXIT_NO_LEAK
        if args.keep and not same_signature(first.signature, args.keep):
            print(f"kamleak reduce: no leak to keep: the first run leaks '{first.signature}', "
                  f"not --keep '{args.keep}'")
            return EXIT_NO_LEAK
        probe.keep = args.keep or first.signature
        probe.pace(first)
        print(f"kamleak reduce: LEAK on {target.id}: {first.note}\n  signature: {first.signature}",
              flush=True)
        observed = [Outcome.KEEPS]
        yours = pace_wait_timer(probe, user_config, observed)
        # 2. The search, the config written at each step it takes (Ctrl-C or a kill keep it).
        def write(state) -> None:
            text = red.text(state)
            out.write_text(text if text.endswith("\n") else text + "\n", encoding=user_config.encoding)
            write.done = True

        search = Search(probe.oracle, red.tiers, last=red.last, loadable=probe.loadable, key=red.key, jobs=args.jobs,
                        budget_s=max(1.0, budget - (time.monotonic() - t0)),
                        on_step=lambda s: write(s.best))
        for o in observed:
            search.observe(frozenset(), o)
        search.result.runs += len(observed)
        _say(f"{red.original_size} lines, {len(red.units)} removable units "
             f"({red.original_size - red.size()} comment, blank and unused lines go first); "
             f"{args.jobs} gates at once, budget {budget:.0f} s")

        def status() -> str:
            r, left = search.result, max(0.0, budget - (time.monotonic() - t0))
            return (f"reduce: {red.size(search.best)}/{red.original_size} lines, {r.runs} runs "
                    f"({probe.running} now), {r.refused} refused, {int(left // 60)}:{int(left % 60):02d} left")

        live = progress.interactive()
        try:
            with progress.Ticker("reduce", status=status):
                if live:
                    # The gates' own countdowns would fight the one live line.
                    os.environ["KAMLEAK_PROGRESS"] = "0"
                try:
                    result = search.run()
                finally:
                    if live:
                        os.environ.pop("KAMLEAK_PROGRESS", None)
        except KeyboardInterrupt:
            result = search.interrupt()
            write(result.removed)
            _say(f"interrupted after {result.runs} runs: the smallest config so far "
                 f"({red.size(result.removed)} of {red.original_size} lines, "
                 f"{'verified' if result.verified else 'not re-verified'}): {out}")
            raise
        at_yours = verify_at_your_timers(probe, red, result, yours, search.verify_runs)
    return _report(args, red, result, out, write, time.monotonic() - t0, probe, at_yours)


def pace_wait_timer(probe, user_config, observed: list) -> int | None:
    """The search's candidates run with tm's wt_timer at the config's own or probe.PACE_WT_MS,
    the shorter (probe.paced), whatever they remove: a candidate without the config's wt_timer
    modparam would otherwise wait tm's 5 s default on every gate.  Shorter than the config's,
    the original must keep its leak so first (its run is appended to OBSERVED).  Returns the
    config's wt_timer when the runs are paced, else None."""
    from kamleak.harness.tools.reduce.probe import PACE_WT_MS
    from kamleak.harness.tools.reduce.search import Outcome

    yours = probe.wt_of(probe.runs[0]) if probe.runs else None
    if yours is None:
        return None
    probe.wt_ms = min(yours, PACE_WT_MS)
    if probe.wt_ms == yours:
        return yours
    check = probe.run([user_config])[0]
    if probe.outcome(check) is not Outcome.KEEPS:
        probe.wt_ms = None
        _say(f"with tm's wt_timer at {PACE_WT_MS} ms your config does not keep its leak "
             f"({check.signature or check.note}): candidates run at your {yours} ms")
        return None
    observed.append(Outcome.KEEPS)
    probe.pace(check)                   # the candidates' give-up times from a run like theirs
    _say(f"candidates run with tm's wt_timer at {PACE_WT_MS} ms, not your {yours} ms (a finished cell "
         "leaves sooner, a leaked one is proven sooner; your config keeps its leak so): the reduced "
         "config is verified as written")
    return yours


def verify_at_your_timers(probe, red, result, yours: int | None, runs: int):
    """The reduced config as written (its own tm timers, where the search's runs had
    probe.wt_ms appended), RUNS gates at once: (kept, runs, the search's wt_timer), or None
    when the search did not pace its runs (or ended without a result to stand by)."""
    from kamleak.harness.tools.reduce.search import Outcome

    if yours is None or result.flaky:
        return None
    _say(f"the reduced config as written (its own tm timers): {runs} gates")
    outcomes = [probe.outcome(p) for p in probe.run([red.candidate(result.removed)] * runs, pace=False)]
    kept = sum(o is Outcome.KEEPS for o in outcomes)
    result.runs += runs
    return kept, runs, probe.wt_ms


def _report(args, red, result, out: Path, write, elapsed: float, probe, at_yours=None) -> int:
    from kamleak.harness.tools.reduce.search import Outcome

    if at_yours is not None and at_yours[0] < at_yours[1]:
        kept_n, runs_n, wt = at_yours
        print(f"kamleak reduce: no leak to keep as written: the reduced config kept '{probe.keep}' "
              f"with tm's wt_timer at {wt} ms but in {kept_n} of {runs_n} runs with its "
              f"own timers; run kamleak reduce again (the paced search cannot stand by it); "
              f"{result.runs} runs, {elapsed:.0f} s")
        if getattr(write, "done", False):
            out.unlink(missing_ok=True)
        return EXIT_NO_LEAK
    if result.flaky:
        print(f"kamleak reduce: no leak to keep: re-run, {args.cfg} does not keep '{probe.keep}' "
              f"every time (a flaky leak is not reduced); {result.runs} runs, {elapsed:.0f} s")
        if getattr(write, "done", False):
            out.unlink(missing_ok=True)     # a step the re-verification took back
        return EXIT_NO_LEAK
    write(result.removed)
    kept = red.size(result.removed)
    verified = "re-verified: every run kept the leak" if result.verified else "NOT re-verified"
    if at_yours is not None:
        verified += ", and as written (its own tm timers) too"
    print(f"kamleak reduce: {out}: {kept} lines of {red.original_size} still leak '{probe.keep}' "
          f"({verified}; stopped: {result.stopped})")
    units = {u.id: u for u in red.units}

    def without(u):
        return probe.last.get(red.key(result.removed | {u.id}))

    clean = sorted((units[u] for u, o in result.cause.items() if o is Outcome.CLEAN), key=lambda u: u.line)
    others = sorted((units[u] for u, o in result.cause.items() if o is not Outcome.CLEAN),
                    key=lambda u: u.line)
    if result.stopped != "done":
        print(f"  cause: not determined: the search stopped ({result.stopped}) before every statement "
              f"left was tried alone; run kamleak reduce on {out} with a larger --budget")
    clean = sorted(innermost(red, clean, result.removed), key=lambda u: u.line)
    calls = [u for u in clean if u.role == "call"]
    if at_yours is not None and clean:
        print(f"  (the cause was gated with tm's wt_timer at {at_yours[2]} ms)")
    if calls:
        print("  cause: removing any one of these alone makes the leak go away:")
        for u in calls:
            print(f"    {describe(red, u, result.removed)}")
    ways = [u for u in clean if u.role != "call"]
    if ways:
        print(f"  {'and' if calls else 'cause:'} what leads there (removing any one alone makes it go too):")
        for u in ways:
            print(f"    {describe(red, u, result.removed)}")
    doubted = [u for u in others if result.cause[u.id] is Outcome.KEEPS]
    if doubted:
        print("  kept the leak once removed, not on the run that was to confirm it (left in): "
              + ", ".join(f"line {u.line}" for u in doubted))
    others = [u for u in others if u not in doubted]
    changed = [(u, p) for u in others if (p := without(u)) is not None and p.outcome == "leak"]
    by_leak: dict[str, list] = {}
    for u, p in changed:
        by_leak.setdefault(p.signature, []).append(u)
    for leak, group in by_leak.items():
        group = innermost(red, group, result.removed)
        if len(group) == 1:
            print(f"  without {describe(red, group[0], result.removed)}\n    it leaks otherwise: {leak}")
            continue
        print(f"  without any one of these it leaks otherwise ({leak}):")
        for u in group:
            print(f"    {describe(red, u, result.removed)}")
    lost = [u for u in others if u not in {c for c, _ in changed}]
    if lost:
        where = sorted({u.line for u in lost})
        count = f"{len(where)} line{'s' * (len(where) != 1)}"
        print(f"  kept for the call or the contract ({count}; removing one loses the verdict): "
              + ", ".join(f"line {k}" for k in where))
    print(f"  runs: {result.runs} gates, {result.cached} answered from the cache, {result.refused} "
          f"candidates kamailio -c or the contract refused, {len(result.unknown)} flipped; {elapsed:.0f} s")
    print(f"  gates (mean time each): {probe.timing()}")
    return EXIT_REDUCED


def innermost(red, group: list, removed=frozenset()) -> list:
    """GROUP less each unit that holds another of it (a route and the call in it, an `else` and
    its statement), by the lines left of each, and of units left with the same lines the one
    that was the smallest: the innermost names the line that matters."""
    gone = red.removed_lines(removed)
    left = {u.id: frozenset(u.lines) - gone for u in group}
    out, seen = [], set()
    for u in sorted(group, key=lambda u: len(u.lines)):
        if left[u.id] in seen or any(left[v.id] < left[u.id] for v in group):
            continue
        seen.add(left[u.id])
        out.append(u)
    return sorted(out, key=lambda u: group.index(u))


def describe(red, unit, removed=frozenset()) -> str:
    """`lines 51, 66-69: TEXT`: the unit's lines still in the reduced config (REMOVED: its
    state), by their numbers in your file; TEXT the first of them as you wrote it, in full
    when the unit is short."""
    gone = red.removed_lines(removed)
    lines = sorted(k for k in unit.lines if k not in gone and red.lines[k - 1].strip()) or sorted(unit.lines)
    runs: list[list[int]] = []
    for k in lines:
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    where = ", ".join(f"{r[0]}" if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
    where = ("line " if len(lines) == 1 else "lines ") + where
    text = " ".join(red.lines[k - 1].strip() for k in lines)
    if len(lines) > 4 or len(text) > 100:
        text = red.lines[lines[0] - 1].strip()[:100] + " …"
    return f"{where}: {text}" + (f"  [{unit.where}]" if unit.where else "")
