"""The gate as the reduce search's oracle: candidate configs (states of a
Reduction) run as `kamleak gate` runs the user's config, several at once on one
Stack (one Asterisk, a Kamailio of its own for each, on its own ports).

A run's verdict becomes the search's Outcome: KEEPS when it leaks with the kept
signature, CLEAN when the gate says clean, OTHER for another leak or no verdict
(the call could not be set up, Kamailio did not start...).  What Kamailio would
refuse never runs: `loadable` asks the real `kamailio -c` (cfgcheck.Checker,
one container for a whole round) and the gate's contract first.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from dataclasses import dataclass

from kamleak.harness.errors import ImageError, NotApplicable, RPCError, ScenarioError, ServerError
from kamleak.harness.stack.kamailio.cfgcheck import Checker, config_for_check
from kamleak.harness.stack.runner import Stack
from kamleak.harness.tools.reduce.search import Outcome

# What ends a gate run without a verdict (as the gate's CANNOT_TEST_ERRORS): no pass, no fail.
_NO_VERDICT = (ServerError, ImageError, ScenarioError, RPCError, NotApplicable)

# tm's wait timer the search's candidates run with when the user's is longer (see paced()).
PACE_WT_MS = 1000


def paced(user_config, wt_ms: int):
    """USER_CONFIG with tm's wt_timer at WT_MS: a modparam appended after everything (Kamailio
    takes the last value a parameter is given), so no line of the user's moves.

    Why: a healthy cell leaves tm.list one wt_timer after its final reply, and a leak is
    proven once the call's other cells are gone (the count proof, orphan.py): with tm's
    5 s default every gate waits 5 s for either, and the trigger's own local request (a
    MESSAGE on the wait timer) keeps the count from deciding sooner.  The wait timer only
    says how long a finished cell stays; the leak is a cell never put on it.  reduce checks
    that on the original (paced, it must keep the same leak) and re-verifies the reduced
    config at the user's own timers."""
    text = user_config.text.rstrip("\n") + (
        "\n\n# kamleak reduce: tm's wait timer for the search's candidates (your config is "
        f"verified at your own)\nmodparam(\"tm\", \"wt_timer\", {int(wt_ms)})\n")
    return dataclasses.replace(user_config, text=text)


def signature(verdict) -> str:
    """What a leak is kept by: the request, Kamailio's replies to it, the stuck cell's shape
    (explore's `tm cell: ...` without the t flags: those record which t_on_* routes and tm
    options the config set, which removing unrelated lines changes while the leak stays)."""
    if not verdict.leaked:
        return ""
    mark = {True: "/SL", False: "/TM", None: ""}
    replies = ",".join(f"{r.code}{mark[r.stateless]}" for r in verdict.replies) or "no reply"
    cells = ",".join(sorted({f"{c.method}/out{c.outgoings}/ref{c.ref_count}" for c in verdict.cells}))
    return f"{verdict.method} {replies}; tm cell: {cells}"


def same_signature(a: str, b: str) -> bool:
    """--keep as the user may type it: case and spacing do not matter."""
    def norm(s: str) -> str:
        return re.sub(r"\s+", " ", s.strip().lower()).replace("; ", ";")
    return norm(a) == norm(b)


@dataclass
class Probed:
    """One gate run of one candidate: its outcome ("leak", "clean", "skip") and why."""

    outcome: str
    note: str
    signature: str = ""
    verdict: object = None
    seconds: float = 0.0               # the gate's wall time, Kamailio's start included
    started: float = 0.0               # when it started, seconds after the Probe was made


class _Slot(Stack):
    """One candidate's view of the shared Stack: its Kamailio runs the candidate's config,
    the Asterisk is the Stack's.  release() stops what the slot started, never the PBX."""

    def __init__(self, stack: Stack, user_config):
        super().__init__(stack.target, workdir=str(stack.workdir), log=stack.log, user_config=user_config)
        self.client, self.pbx = stack.client, stack.pbx


class Probe:
    """ORACLE and LOADABLE of search.Search for REDUCTION's states, on STACK."""

    def __init__(self, stack: Stack, reduction, scenario, variant, *, transport: str = "ws",
                 disconnect: str = "rst", keep: str = ""):
        self.stack, self.reduction = stack, reduction
        self.scenario, self.variant = scenario, variant
        self.transport, self.disconnect, self.keep = transport, disconnect, keep
        self.checker = Checker(stack.target, stack.client)
        self.running = 0                   # gates running now (the progress line)
        self.last: dict = {}               # Reduction.key -> its latest run (what the report cites)
        self.runs: list[Probed] = []       # every gate run, in order (the report's timing)
        self.log = None                    # a text file: one JSON line a gate (--log)
        self.ladder: dict = {}             # the gate's own knobs (call_timeout: see pace())
        self.wt_ms: int | None = None      # tm's wt_timer for the runs (paced()); None: the config's
        self.t0 = time.monotonic()
        self._lock = threading.Lock()

    def gate(self, user_config, pace: bool = True) -> Probed:
        """One gate run; PACE (default): with wt_ms appended (paced()), if set."""
        if pace and self.wt_ms is not None:
            user_config = paced(user_config, self.wt_ms)
        slot = _Slot(self.stack, user_config)
        t0 = time.monotonic()
        try:
            verdict = self.scenario.gate(slot, self.variant, transport=self.transport,
                                         disconnect=self.disconnect, target=self.stack.target.id,
                                         **self.ladder)
        except _NO_VERDICT as exc:
            probed = Probed("skip", f"cannot test: {getattr(exc, 'cause', exc)}")
        else:
            probed = Probed(verdict.outcome, verdict.sentence(), signature(verdict), verdict)
        finally:
            slot.release()
        probed.seconds = time.monotonic() - t0
        probed.started = t0 - self.t0
        self.runs.append(probed)
        return probed

    def pace(self, first: Probed) -> None:
        """After the original's run (FIRST, as the candidates run): a candidate whose INVITE
        or re-INVITE waits three times as long as the original's did (3 s at least), or whose
        verdict after the BYE does (5 s at least), gives up then rather than at the gate's
        15 s or the timers' bound (measured on 6.0.1: a third of a small reduction's gates
        were lost calls, 15.6 s each).  Giving up early only ever loses a removal: a
        candidate that would have kept the leak counts as no verdict, never as a leak."""
        marks = {label: t for t, label in getattr(first.verdict, "timeline", None) or []}
        waits = [marks[b] - marks[a] for a, b in (("INVITE", "200 OK + ACK"),
                                                  ("re-INVITE", "re-INVITE 200 OK + ACK"))
                 if a in marks and b in marks]
        if waits:
            self.ladder["call_timeout"] = max(3.0, 3 * max(waits))
        # Likewise the verdict after the BYE: a candidate whose local request now waits out
        # fr_timer unanswered keeps the cell from being proven for 30 s and more (measured
        # on the stock example: 35 s gates), and one whose BYE never comes waits the bound.
        watched = getattr(first.verdict, "watched_for", None)
        if watched:
            self.ladder["verdict_within"] = max(5.0, 3 * watched)

    @staticmethod
    def wt_of(probed: Probed) -> int | None:
        """tm's wt_timer (ms) the run's Kamailio had, as its verdict read it."""
        try:
            return int(probed.verdict.timers["wt_timer"]["ms"])
        except (AttributeError, KeyError, TypeError, ValueError):
            return None

    def timing(self) -> str:
        """`leak 4.1 s, clean 3.2 s, no verdict 11.0 s` (each outcome's mean gate time)."""
        by: dict[str, list[float]] = {}
        for p in self.runs:
            by.setdefault({"skip": "no verdict"}.get(p.outcome, p.outcome), []).append(p.seconds)
        return ", ".join(f"{o} {len(t)}x {sum(t) / len(t):.1f} s" for o, t in sorted(by.items()))

    def outcome(self, probed: Probed) -> Outcome:
        if probed.outcome == "clean":
            return Outcome.CLEAN
        if probed.outcome == "leak" and same_signature(probed.signature, self.keep):
            return Outcome.KEEPS
        return Outcome.OTHER

    def run(self, user_configs: list, pace: bool = True) -> list[Probed]:
        """The gate on each config at once, each in a thread of its own (daemon: after
        Ctrl-C the CLI removes the containers and a thread still in a gate must not hold
        the exit); PACE as gate()'s."""
        out: list[Probed | None] = [None] * len(user_configs)

        def one(i: int, uc) -> None:
            try:
                out[i] = self.gate(uc, pace)
            except Exception as exc:  # noqa: BLE001 - one probe's failure is its own verdict
                out[i] = Probed("skip", f"cannot test: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=one, args=(i, uc), daemon=True)
                   for i, uc in enumerate(user_configs)]
        with self._lock:
            self.running += len(threads)
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            with self._lock:
                self.running -= len(threads)
        return [p for p in out if p is not None]

    def oracle(self, states: list) -> list[Outcome]:
        probed = self.run([self.reduction.candidate(s) for s in states])
        for s, p in zip(states, probed):
            self.last[self.reduction.key(s)] = p
            if self.log is not None:
                self._log(s, p)
        return [self.outcome(p) for p in probed]

    def _log(self, s, p: Probed) -> None:
        """--log's line for one gate (the search calls the oracle from several threads)."""
        gone = sorted(self.reduction.removed_lines(s) - self.reduction.free)
        line = json.dumps({"removed_lines": gone, "outcome": p.outcome, "signature": p.signature,
                           "started": round(p.started, 2), "seconds": round(p.seconds, 2),
                           "wt_timer_ms": self.wt_ms, "note": p.note})
        with self._lock:
            self.log.write(line + "\n")
            self.log.flush()

    def loadable(self, states: list) -> list[str | None]:
        """None where the candidate keeps the gate's contract and `kamailio -c` takes it."""
        out: list[str | None] = [None] * len(states)
        todo = []
        for i, s in enumerate(states):
            problems = self.reduction.contract(s)
            if problems:
                out[i] = f"the gate's contract: it {problems[0].what}"
            else:
                todo.append(i)
        configs = [config_for_check(user_config=self.reduction.candidate(states[i])) for i in todo]
        for i, why in zip(todo, self.checker.refusals(configs)):
            out[i] = why
        return out
