"""The verdict: leaked or not, and the evidence a Kamailio engineer accepts."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from kamleak.harness.probes.rpc import TmCell


@dataclass
class Reply:
    """A final reply Kamailio sent upstream (to the PBX) for the watched request."""

    code: int
    reason: str
    at: float                 # seconds after the request reached Kamailio's peer log
    stateless: bool | None    # from the reason's "(N/SL)" / "(N/TM)" mark, if any

    def describe(self) -> str:
        """`500 (1/SL) statelessly`: the code and Kamailio's mark, as engineers quote it."""
        how = {True: " statelessly", False: " statefully", None: ""}[self.stateless]
        mark = re.search(r"\(\d+/(SL|TM)\)\s*$", self.reason)
        return f"{self.code} {mark.group(0).strip() if mark else self.reason}{how}"


def classify_reason(reason: str) -> bool | None:
    """Kamailio marks error replies with "(<internal error code>/<SL|TM>)"
    (core/error.c err2reason_phrase(): -ser_error, e.g. 477 = E_SEND)."""
    if reason.rstrip().endswith("/SL)"):
        return True
    if reason.rstrip().endswith("/TM)"):
        return False
    return None


@dataclass(kw_only=True)
class Verdict:
    """What every verdict has, and what reporting reads: leaked or not, on
    which Kamailio, the steps, the counters sampled and the RPC snapshots."""

    leaked: bool
    stats_before: dict                  # tm.stats before the story
    stats_after: dict                   # ... and after it settled
    target: str = ""
    kamailio_version: str = ""
    build_id: str = ""                  # image ID or binary sha256
    variant: str = ""
    transport: str = ""
    timeline: list[tuple[float, str]] = field(default_factory=list)
    started_at: float = 0.0             # epoch of timeline's 0
    stats_samples: list[dict] = field(default_factory=list)   # counters sampled for the plot
    snapshots: dict = field(default_factory=dict)             # RPC answers at the key moments
    # What kamleak added to or substituted in a user's config (Kamailio.provided)
    provided: list[str] = field(default_factory=list)
    # "transaction": a cell watched in tm.list; "memory": shm allocation
    # sites (and counters) compared around the story, for leaks without a cell.
    kind: ClassVar[str] = ""

    @property
    def outcome(self) -> str:
        return "leak" if self.leaked else "clean"

    def sentence(self) -> str:
        raise NotImplementedError

    def _details(self) -> list[str]:
        return []

    def _where(self) -> str:
        return (f"  Kamailio: {self.kamailio_version} [{self.target}], variant {self.variant}, "
                f"{self.transport.upper()}")

    def report(self) -> str:
        """The sentence plus the evidence, for a failure message."""
        return "\n".join([self.sentence(), *self._details()])

    def to_json(self) -> dict:
        d = asdict(self)
        d["kind"] = self.kind
        d["outcome"] = self.outcome
        d["sentence"] = self.sentence()
        return d

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, default=str)


@dataclass(kw_only=True)
class TransactionVerdict(Verdict):
    """A request's transaction watched in tm.list until it left or its deadline."""

    method: str
    call_id: str
    cells: list[TmCell]                 # the watched transaction(s) still in tm.list
    replies: list[Reply]
    watched_for: float                  # seconds polled after the request
    deadline: float                     # the limit derived from tm timers
    gone_after: float | None            # when the cell left tm.list (None: never seen / still there)
    seen: bool                          # the cell was seen in tm.list at least once
    stats_consistent: bool
    stats_note: str
    timers: dict
    samples: list[dict] = field(default_factory=list)
    # The early verdict (kamleak.harness.judging.orphan): when and how the cell
    # was proven orphaned ({"at", "rule", "evidence", "cell"}), None if it was not;
    # `early` says how the verdict was reached, or why the bound was waited out.
    orphan: dict | None = None
    early: str = ""
    confirmed: bool = False             # the bound was waited out too, and agreed
    kind: ClassVar[str] = "transaction"

    def orphan_after_reply(self) -> float | None:
        """Seconds from Kamailio's first reply to the orphan proof (both on the request's clock)."""
        if not self.orphan or not self.replies:
            return None
        return self.orphan["at"] - self.replies[0].at

    def sentence(self) -> str:
        replied = "; Kamailio replied " + ", then ".join(r.describe() for r in self.replies) \
            if self.replies else "; no reply from Kamailio was seen"
        if self.replies and all(200 <= r.code < 300 for r in self.replies):
            replied = f"; delivered: the client answered {self.replies[0].describe()}"
        short = self.call_id if len(self.call_id) <= 24 else self.call_id[:20] + "…"
        if self.leaked:
            cell = self.cells[0]
            state = f"outgoings {cell.outgoings}, ref_count {cell.ref_count}"
            if self.orphan and not self.confirmed:
                after = self.orphan_after_reply()
                when = f", {after:.1f} s after the reply" if after is not None and after >= 0 else ""
                return (f"{self.method} Call-ID {short} orphaned in tm.list {self.orphan['at']:.1f} s "
                        f"after the {self.method} ({state}; still in tm.list, no timer or process "
                        f"left to free it{when}){replied}")
            proven = (f"; orphan proven at {self.orphan['at']:.1f} s, the bound agrees"
                      if self.orphan else "")
            return (f"{self.method} Call-ID {short} still in tm.list {self.watched_for:.1f} s after "
                    f"the {self.method} ({state}{proven}){replied}")
        gone = f"left tm.list {self.gone_after:.1f} s after the {self.method}" \
            if self.gone_after is not None else "never lingered in tm.list"
        return f"{self.method} Call-ID {short} {gone}{replied}"

    def _details(self) -> list[str]:
        early = [f"  early verdict: {self.early}"] if self.early and (self.leaked or self.orphan) else []
        return ([f"  leaked: {c.describe()}" for c in self.cells] + early
                + [f"  tm.stats: {self.stats_note}",
                   f"{self._where()}; deadline {self.deadline:.1f} s from tm timers "
                   f"({timers_text(self.timers, self.method)})"])

    def to_json(self) -> dict:
        d = super().to_json()
        # Keep only the points where the cell count changed: the shape of the drain.
        d["samples"] = [s for i, s in enumerate(self.samples)
                        if i in (0, len(self.samples) - 1) or s["cells"] != self.samples[i - 1]["cells"]]
        d["cells"] = [{**{k: v for k, v in asdict(c).items() if k != "raw"}} for c in self.cells]
        return d


@dataclass(kw_only=True)
class MemoryVerdict(Verdict):
    """shm allocation sites (and counters) compared around batches of requests,
    or until state that must drain has drained (a deadline)."""

    memory: dict                        # per batch: requests, sites' growth, leaked sites, ...
    watched_for: float                  # seconds the story ran (drain: since the peers fell silent)
    deadline: float | None = None       # a drain's limit; None: batches, no deadline
    kind: ClassVar[str] = "memory"

    def sentence(self) -> str:
        return memory_sentence(self.memory)

    def _details(self) -> list[str]:
        lines = [f"  shm {site}: +{' B, +'.join(str(b) for b in per_batch)} B per batch"
                 for site, per_batch in (self.memory.get("sites") or {}).items()]
        lines += [f"  {name}: {' -> '.join(str(v) for v in values)}"
                  for name, values in (self.memory.get("counters") or {}).items()]
        lines += [f"  tm.stats: {note}" for note in sorted(set(self.memory.get("tm_stats_notes") or []))]
        dl = f"; deadline {self.deadline:.1f} s" if self.deadline is not None else ""
        return lines + [self._where() + dl]


_SHORT = {"fr_timer": "fr", "fr_inv_timer": "fr_inv", "wt_timer": "wt",
          "max_inv_lifetime": "max_inv_lifetime", "max_noninv_lifetime": "max_noninv_lifetime"}


def timers_text(timers: dict, method: str = "") -> str:
    """`fr 30000 ms tm default, wt 8000 ms my.cfg:42`: the timers METHOD's deadline
    rests on (kamleak.harness.judging.oracle.Timers.lifetime_ms), each with its source."""
    names = ["fr_timer", "wt_timer"]
    names.insert(0 if method == "INVITE" else 1,
                 "max_inv_lifetime" if method == "INVITE" else "max_noninv_lifetime")
    out = []
    for name in names:
        t = timers.get(name)
        if isinstance(t, dict):
            src = t.get("source", "")
            src = "tm default" if src.startswith("tm default") else src.replace(" modparam", "")
            out.append(f"{_SHORT[name]} {t.get('ms')} ms {src}".rstrip())
        elif t is not None:
            out.append(f"{_SHORT[name]} {t} ms")
    return ", ".join(out) or "none read"


def leaked_bytes(m: dict) -> tuple[int, float]:
    """A memory verdict's bytes at its leaking sites: in all, and per request (or peer)."""
    total = sum(sum(m["sites"][s]) for s in m.get("leaked_sites") or [])
    return total, total / max(1, m.get("requests", 0) * m.get("batches", 0))


def memory_sentence(m: dict) -> str:
    """`2 × 40 MESSAGEs: shm at tm: build_uac_req(1618) grew 17280 B (216 B a request)`."""
    n, batches = m.get("requests", 0), m.get("batches", 0)
    unit = m.get("unit", "request")
    what = f"{batches} × {n} {m.get('what', 'requests')}" if batches > 1 else \
        f"{n} {m.get('what', 'requests')}"
    leaked = m.get("leaked_sites") or []
    counters = "; ".join(f"{k} {' -> '.join(str(x) for x in v)}"
                         for k, v in (m.get("counters") or {}).items())
    tail = f"; {counters}" if counters else ""
    total, per = leaked_bytes(m)
    if "drained_after" in m:          # a drain: state that must go away after a while
        if m["drained_after"] is not None:
            return (f"{what}: their state drained {m['drained_after']:.1f} s after they fell "
                    f"silent ({m.get('bytes_per_peer', 0)} B shm a {unit} released){tail}")
        held = f"shm at {', '.join(leaked)} holds {total} B ({per:.0f} B a {unit})" if leaked \
            else "counters still up"
        return f"{what}: still held at the deadline: {held}{tail}"
    if not leaked:
        return f"{what}: no shm allocation site kept growing{tail}"
    return f"{what}: shm at {', '.join(leaked)} grew {total} B ({per:.0f} B a {unit}){tail}"


def assert_no_leak(verdict: Verdict) -> None:
    """Fail the current pytest test with the verdict's report if it leaked."""
    if verdict.leaked:
        import pytest
        pytest.fail(verdict.report(), pytrace=False)
