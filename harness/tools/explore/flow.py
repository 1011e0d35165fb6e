"""Call flows for `kamleak explore`: one call's life as a sequence of steps.

A flow is what a property-based engine generates and shrinks: the transport
the client uses, then steps on the client's side (REGISTER, INVITE, CANCEL,
re-INVITE, UPDATE, in-dialog requests, BYE), on the PBX's side (how Asterisk
answers, its BYE) and on the client's transport (RST, FIN, a close frame, a
silent vanish), with pauses between them.

Which step may come next depends on the call's state (`NEXT`): a CANCEL only
while the INVITE has no final response, in-dialog requests only in a
confirmed dialog, nothing from the client once its connection is gone.  The
Hypothesis strategy `flows()` draws each step among those the state allows,
so every flow it yields, and every flow its shrinker tries (shrinking works
on the recorded choices, never on the flow itself), is one a client could
really drive.  Every flow ends with the call over: a BYE from either side, a
CANCEL, or a final error response.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from kamleak.harness.errors import UsageError

TRANSPORTS = ("ws", "wss")

# How the PBX (Asterisk's dialplan, docker/asterisk/etc/extensions.conf) treats an INVITE.
PBX_ANSWERS = ("answer", "ring_answer", "busy", "no_answer")

# Step -> the call states it may be taken in and the state it leads to.
#   idle       connected, no call yet           early      INVITE sent, 180 only
#   confirmed  dialog up                        gone       client's connection dead, call up
#   ended      the call is over (connected or not: see Flow.connected)
STEPS: dict[str, dict[str, str]] = {
    "register":     {"idle": "idle"},
    "unregister":   {"idle": "idle"},
    "invite":       {"idle": "confirmed"},          # arg: PBX_ANSWERS; busy -> ended, no_answer -> early
    "invite_se":    {"idle": "confirmed"},          # ... with Session-Expires (RFC 4028, refresher=uac)
    "cancel":       {"early": "ended"},
    "cancel_race":  {"idle": "ended"},              # INVITE and CANCEL at once: the CANCEL/200 race
    "reinvite":     {"confirmed": "confirmed"},
    "update":       {"confirmed": "confirmed"},
    "message":      {"confirmed": "confirmed"},
    "info":         {"confirmed": "confirmed"},
    "options":      {"confirmed": "confirmed"},
    "bye":          {"confirmed": "ended"},
    "pbx_bye":      {"confirmed": "ended", "gone": "ended"},
    "rst":          {"idle": "ended", "early": "gone", "confirmed": "gone", "ended": "ended"},
    "fin":          {"idle": "ended", "early": "gone", "confirmed": "gone", "ended": "ended"},
    "close":        {"idle": "ended", "early": "gone", "confirmed": "gone", "ended": "ended"},
    "pause":        {"idle": "idle", "early": "early", "confirmed": "confirmed", "gone": "gone",
                     "ended": "ended"},             # arg: milliseconds (timing jitter)
}
DISCONNECTS = ("rst", "fin", "close")
# A call that is still up when the flow must end: the steps that end it.
ENDERS = {"idle": (), "early": ("cancel",), "confirmed": ("bye", "pbx_bye"), "gone": ("pbx_bye",),
          "ended": ()}
PAUSES_MS = (0, 10, 50, 200)


@dataclass(frozen=True)
class Step:
    name: str
    arg: str | int | None = None

    def text(self) -> str:
        return self.name if self.arg is None else f"{self.name}:{self.arg}"


def _after(state: str, step: Step) -> str:
    nxt = STEPS[step.name][state]
    if step.name in ("invite", "invite_se"):
        return {"busy": "ended", "no_answer": "early"}.get(str(step.arg), "confirmed")
    return nxt


@dataclass(frozen=True)
class Flow:
    """One call's life: the client's transport and the steps, in order."""

    transport: str
    steps: tuple[Step, ...] = field(default_factory=tuple)

    def states(self) -> list[str]:
        """The call's state before each step, then after the last one."""
        state, out = "idle", ["idle"]
        for step in self.steps:
            state = _after(state, step)
            out.append(state)
        return out

    @property
    def connected(self) -> bool:
        """Whether the client's connection is still up after the last step."""
        return not any(s.name in DISCONNECTS for s in self.steps)

    def text(self) -> str:
        return f"{self.transport}: " + ", ".join(s.text() for s in self.steps)

    def to_json(self) -> dict:
        return {"transport": self.transport, "steps": [s.text() for s in self.steps]}

    def dumps(self) -> str:
        return json.dumps(self.to_json())

    @classmethod
    def from_json(cls, data: dict) -> Flow:
        if not isinstance(data, dict) or "steps" not in data:
            raise UsageError("not a kamleak flow (no 'steps')", "pass a flow.json that explore wrote")
        return parse(data.get("transport", "ws"), data["steps"])

    def ladder(self) -> str:
        """The flow as the three parties see it, one line a step."""
        rows = []
        for state, step in zip(self.states(), self.steps):
            who = ("PBX" if step.name == "pbx_bye" else "net" if step.name in DISCONNECTS + ("pause",)
                   else "UA")
            rows.append(f"  [{state:9}] {who:3} {step.text()}")
        return "\n".join([f"flow over {self.transport.upper()}", *rows,
                          f"  [{self.states()[-1]:9}]"])


def parse(transport: str, steps) -> Flow:
    """A flow from its text form (`["invite:answer", "rst", "pbx_bye"]`), checked
    against the state machine: one line of error for a step that does not exist
    or cannot come where it is."""
    if transport not in TRANSPORTS:
        raise UsageError(f"unknown transport '{transport}' in a flow", f"use one of {', '.join(TRANSPORTS)}")
    parsed, state = [], "idle"
    for i, raw in enumerate(steps, 1):
        name, _, arg = str(raw).partition(":")
        if name not in STEPS:
            raise UsageError(f"unknown step '{name}' (step {i})", f"use one of {', '.join(STEPS)}")
        value: str | int | None = arg or None
        if name in ("invite", "invite_se"):
            value = arg or "answer"
            if value not in PBX_ANSWERS:
                raise UsageError(f"unknown PBX answer '{value}' for {name} (step {i})",
                                 f"use one of {', '.join(PBX_ANSWERS)}")
        elif name == "pause":
            try:
                value = int(arg or 0)
            except ValueError:
                raise UsageError(f"pause takes milliseconds, not '{arg}' (step {i})",
                                 "write e.g. pause:50") from None
        elif arg:
            raise UsageError(f"step '{name}' takes no argument (step {i}: '{raw}')", f"write '{name}'")
        step = Step(name, value)
        if state not in STEPS[name]:
            raise UsageError(f"step '{step.text()}' cannot come in state '{state}' (step {i})",
                             f"in '{state}' a flow may take: {', '.join(allowed(state))}")
        state = _after(state, step)
        parsed.append(step)
    return Flow(transport, tuple(parsed))


def allowed(state: str) -> list[str]:
    return [name for name, moves in STEPS.items() if state in moves]


# ---------------------------------------------------------------------------
# The generator: Hypothesis draws each step among those the state allows.

def check_vocabulary(steps=None, answers=None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The step names and PBX answers a campaign may draw, checked: one line per mistake."""
    names = tuple(steps) if steps else tuple(STEPS)
    for n in names:
        if n not in STEPS:
            raise UsageError(f"unknown step '{n}'", f"use some of {', '.join(STEPS)}")
    if not ({"invite", "invite_se", "cancel_race"} & set(names)):
        raise UsageError("the steps place no call", "include invite or invite_se")
    pbx = tuple(answers) if answers else PBX_ANSWERS
    for a in pbx:
        if a not in PBX_ANSWERS:
            raise UsageError(f"unknown PBX answer '{a}'", f"use some of {', '.join(PBX_ANSWERS)}")
    return names, pbx


def flows(max_steps: int = 8, transports: tuple[str, ...] = TRANSPORTS, steps=None, answers=None):
    """A Hypothesis strategy of Flows that end with the call over (when the
    vocabulary STEPS has a step that ends it); ANSWERS: how the PBX may answer."""
    from hypothesis import strategies as st

    names, pbx = check_vocabulary(steps, answers)
    order = {state: [n for n in choices if n in names] for state, choices in _ORDER.items()}
    enders = {state: tuple(n for n in e if n in names) for state, e in ENDERS.items()}

    @st.composite
    def flow(draw) -> Flow:
        transport = draw(st.sampled_from(transports))
        state, steps = "idle", []
        # Shrinking moves toward fewer steps and the first choice of each
        # sampled_from: the order below puts the plain call first.
        n = draw(st.integers(min_value=1, max_value=max_steps))
        for _ in range(n):
            if (state == "ended" and steps) or not order[state]:
                break
            name = draw(st.sampled_from(order[state]))
            arg: str | int | None = None
            if name in ("invite", "invite_se"):
                arg = draw(st.sampled_from(pbx))
            elif name == "pause":
                arg = draw(st.sampled_from(PAUSES_MS))
            step = Step(name, arg)
            state = _after(state, step)
            steps.append(step)
        if enders[state]:
            steps.append(Step(draw(st.sampled_from(enders[state]))))
        return Flow(transport, tuple(steps))

    return flow()


# The draw order per state: what a plain call does first, the odd moves after.
_ORDER = {
    "idle": ["invite", "invite_se", "register", "unregister", "cancel_race", "pause", *DISCONNECTS],
    "early": ["cancel", "pause", *DISCONNECTS],
    "confirmed": ["pbx_bye", "bye", "reinvite", "update", "message", "info", "options", "pause",
                  *DISCONNECTS],
    "gone": ["pbx_bye", "pause"],
    "ended": ["pause", *DISCONNECTS],
}
assert all(sorted(v) == sorted(allowed(k)) for k, v in _ORDER.items()), "every allowed step is drawn"
