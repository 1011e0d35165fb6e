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
from kamleak.harness.stack import netdrop

# The client's transport: WebSocket (ws, wss), or plain SIP over TCP (on the WS
# port's listener) or UDP (Kamailio's UDP socket, the one facing the PBX).
TRANSPORTS = ("ws", "wss", "tcp", "udp")

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
    # The client vanishes without a word: its connection's packets dropped both
    # ways (netdrop; needs root), a UDP client stops answering.  Reset at the flow's end.
    "drop":         {"idle": "ended", "early": "gone", "confirmed": "gone", "ended": "ended"},
    "pause":        {"idle": "idle", "early": "early", "confirmed": "confirmed", "gone": "gone",
                     "ended": "ended"},             # arg: milliseconds (timing jitter)
    # An out-of-dialog MESSAGE (issue 4919's request over UDP with WITH_RELAY_NOCONNECT).
    "message_ood":  {"idle": "idle"},
    # The alias takeover: a newcomer from the client's own ip:port to the other
    # WebSocket listener, handshake, close; the client's connection stays up.
    "reconnect":    {"idle": "idle", "early": "early", "confirmed": "confirmed"},
    # Asterisk's session timer ends the call (no refresh: its BYE ~60 s after the
    # last one); needs the call placed with invite_se.  Opt-in (OPT_IN): minutes a flow.
    "st_expire":    {"confirmed": "ended", "gone": "ended"},
}
DISCONNECTS = ("rst", "fin", "close", "drop")
# Steps drawn only when --steps names them: st_expire waits a minute or more.
OPT_IN = frozenset({"st_expire"})
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
            who = ("PBX" if step.name in ("pbx_bye", "st_expire") else
                   "net" if step.name in DISCONNECTS + ("pause", "reconnect") else "UA")
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
        if not on_transport(transport, name):
            raise UsageError(f"step '{name}' cannot be taken over {transport} (step {i})",
                             f"over {transport} a flow may not take: {', '.join(sorted(NOT_ON[transport]))}")
        if state not in STEPS[name]:
            raise UsageError(f"step '{step.text()}' cannot come in state '{state}' (step {i})",
                             f"in '{state}' a flow may take: {', '.join(allowed(state))}")
        if not _needs_met(name, parsed):
            raise UsageError(f"step '{name}' needs {NEEDS[name][1]} (step {i})", NEEDS[name][2])
        state = _after(state, step)
        parsed.append(step)
    return Flow(transport, tuple(parsed))


def allowed(state: str) -> list[str]:
    return [name for name, moves in STEPS.items() if state in moves]


# Steps that need the call placed a certain way: that INVITE step, what, and the fix.
NEEDS = {"st_expire": ("invite_se", "a call placed with invite_se (Asterisk's session timer)",
                       "place the call with invite_se, e.g. invite_se:answer, st_expire")}


def _needs_met(name: str, earlier) -> bool:
    if name not in NEEDS:
        return True
    calls = [s.name for s in earlier if s.name in ("invite", "invite_se")]
    return bool(calls) and calls[-1] == NEEDS[name][0]


def steps_for(transport: str, state: str, earlier=()) -> list[str]:
    """The steps a flow over TRANSPORT may take next, in STATE, after the steps
    EARLIER (Step objects): the state machine, the transport (NOT_ON) and what a
    step needs from earlier ones (NEEDS).  What parse accepts, and all a generator
    may draw."""
    return [n for n in allowed(state) if on_transport(transport, n) and _needs_met(n, earlier)]


# ---------------------------------------------------------------------------
# The generator: Hypothesis draws each step among those the state allows.

def check_vocabulary(steps=None, answers=None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The step names and PBX answers a campaign may draw, checked: one line per mistake."""
    names = tuple(steps) if steps else default_steps()
    for n in names:
        if n not in STEPS:
            raise UsageError(f"unknown step '{n}'", f"use some of {', '.join(STEPS)}")
    if not ({"invite", "invite_se", "cancel_race", "message_ood"} & set(names)):
        raise UsageError("the steps place no call and send no request", "include invite, invite_se "
                         "or message_ood")
    if "drop" in names and steps:
        if why := netdrop.available():
            raise UsageError(f"step 'drop' cannot run here: {why}", "run as root, or leave drop out")
    pbx = tuple(answers) if answers else PBX_ANSWERS
    for a in pbx:
        if a not in PBX_ANSWERS:
            raise UsageError(f"unknown PBX answer '{a}'", f"use some of {', '.join(PBX_ANSWERS)}")
    return names, pbx


def default_steps() -> tuple[str, ...]:
    """The vocabulary without --steps: all but OPT_IN, and drop only where it can run (root, iptables)."""
    return tuple(n for n in STEPS if n not in OPT_IN and (n != "drop" or netdrop.available() is None))


def flows(max_steps: int = 8, transports: tuple[str, ...] = TRANSPORTS, steps=None, answers=None):
    """A Hypothesis strategy of Flows that end with the call over (when the
    vocabulary STEPS has a step that ends it); ANSWERS: how the PBX may answer.

    A flow is drawn as a list of choices, one a step: (which of the steps the
    state allows, which argument).  Hypothesis's shrinker deletes list elements
    outright, so a shrunk flow loses whole steps (a run of re-INVITEs goes in
    one pass, the steps after it keep their meaning where the state allows),
    and each index shrinks toward 0: the plainest step the state allows
    (`_DRAW`).  Measured against drawing a count and then that many steps,
    which shrank the 5.8.5 finding only to 7 steps before Hypothesis's
    shrinking time ran out."""
    from hypothesis import strategies as st

    names, pbx = check_vocabulary(steps, answers)
    index = st.integers(min_value=0, max_value=len(_DRAW) - 1)

    @st.composite
    def flow(draw) -> Flow:
        transport = draw(st.sampled_from(transports))
        choices = draw(st.lists(st.tuples(index, index), min_size=1, max_size=max_steps))
        return build(transport, choices, draw(index), names=names, answers=pbx)

    return flow()


def build(transport: str, choices, ender: int = 0, *, names=None, answers=PBX_ANSWERS) -> Flow:
    """The flow a list of (step, argument) indices stands for: each step index
    names a step (below), the argument index picks modulo the arguments; a
    choice past the call's end is ignored; ENDER picks the step that ends a call
    still up."""
    names = tuple(names or STEPS)
    state, out = "idle", []
    for which, arg_index in choices:
        if state == "ended" and out:
            break
        options = set(steps_for(transport, state, out)) & set(names)
        if not options:
            break
        # An index names a step, not a position among the state's choices: the
        # first step the state allows at or after it in _DRAW.  So a shrink that
        # changes an earlier step (no_answer to answer) leaves a later `rst` an
        # `rst`, where a position would have turned it into something else.
        at = which % len(_DRAW)
        name = next(n for n in _DRAW[at:] + _DRAW[:at] if n in options)
        arg: str | int | None = None
        if name in ("invite", "invite_se"):
            arg = answers[arg_index % len(answers)]
        elif name == "pause":
            arg = PAUSES_MS[arg_index % len(PAUSES_MS)]
        step = Step(name, arg)
        state = _after(state, step)
        out.append(step)
    end = [n for n in ENDERS[state] if n in names and on_transport(transport, n)]
    if end:
        out.append(Step(end[ender % len(end)]))
    return Flow(transport, tuple(out))


# Steps a transport cannot take: drawn never, refused by parse.  A close frame is
# WebSocket's; UDP has no connection to reset, close or take over (its drop is silence).
NOT_ON: dict[str, frozenset[str]] = {
    "tcp": frozenset({"close"}),
    "udp": frozenset({"rst", "fin", "close", "reconnect"}),
}


def on_transport(transport: str, name: str) -> bool:
    return name not in NOT_ON.get(transport, frozenset())


# The draw order per state: what a plain call does first, the odd moves after.
_ORDER = {
    "idle": ["invite", "invite_se", "register", "unregister", "cancel_race", "pause", *DISCONNECTS,
             "message_ood", "reconnect"],
    "early": ["cancel", "pause", *DISCONNECTS, "reconnect"],
    "confirmed": ["pbx_bye", "bye", "reinvite", "update", "message", "info", "options", "pause",
                  *DISCONNECTS, "reconnect", "st_expire"],
    "gone": ["pbx_bye", "pause", "st_expire"],
    "ended": ["pause", *DISCONNECTS],
}
assert all(sorted(v) == sorted(allowed(k)) for k, v in _ORDER.items()), "every allowed step is drawn"
# One order of all steps for the generator's indices: by how late a step comes in
# any state's order (ties: STEPS order), so index 0 is the plain move in every
# state (invite, cancel, pbx_bye) and the odd moves are the high indices.
_DRAW = sorted(STEPS, key=lambda n: (max(v.index(n) for v in _ORDER.values() if n in v), list(STEPS).index(n)))

