"""The plan: which call is which (the 4140 ladders spread evenly among healthy calls)."""

from __future__ import annotations

import math
import random

from kamleak.harness.errors import UsageError

KINDS = ("client_bye", "peer_bye", "4140")


def check_plan(calls: int, mix: float, concurrency: int = 1, rate: float = 0.0) -> None:
    """The soak's numbers, refused before anything starts (not after Kamailio is up)."""
    if calls < 1:
        raise UsageError(f"--calls {calls}: nothing to do", "give 1 or more")
    if not 0.0 <= mix <= 1.0:
        raise UsageError(f"--mix {mix:g} is not a fraction", "give a value from 0 to 1, e.g. 0.001")
    if concurrency < 1:
        raise UsageError(f"--concurrency {concurrency}: no call could run", "give 1 or more")
    if not rate >= 0:
        raise UsageError(f"--rate {rate:g} is no rate", "give calls per second, 0 for no limit")


def plan_kinds(calls: int, mix: float, seed: int | None = None,
               peer_bye_share: float = 0.5) -> list[str]:
    """Kinds of CALLS calls: exactly floor(calls*mix) "4140" calls, spread evenly.

    Call i is a 4140 call when floor((i+1)*mix) > floor(i*mix) (error
    diffusion, so 0.001 is 1 in 1000 and 300 x 0.01 is 3); the healthy ones
    are split between client and peer hangups by SEED.
    """
    check_plan(max(calls, 1), mix)
    rng = random.Random(seed)
    kinds = []
    for i in range(calls):
        if math.floor((i + 1) * mix + 1e-9) > math.floor(i * mix + 1e-9):
            kinds.append("4140")
        else:
            kinds.append("peer_bye" if rng.random() < peer_bye_share else "client_bye")
    return kinds


def dead_path_reply(code: int, reason: str) -> bool:
    """Kamailio's own error reply to a BYE it could not forward to the gone client.

    500 "(1/SL)" with a leaking trigger, 478 "Unresolvable destination
    (478/TM)" or 500 "(1/TM)" without one: Kamailio marks the error replies it
    makes with "(<internal error code>/<SL|TM>)" (-ser_error, e.g. 477 =
    E_SEND).  200 or 481 came from a live client (the port was reused by
    another connection: the call missed the path).
    """
    from kamleak.harness.judging.verdict import classify_reason
    return code >= 300 and (classify_reason(reason) is not None or code in (477, 478, 500, 503))
