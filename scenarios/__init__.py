"""Scenarios: each module drives user agents through one upstream bug's story.

A scenario module states its issue number, tells the story, lists its
config variants and the verdicts expected on the versions kamleak builds,
and has a `run(...)` (plus `gate(bench, variant, ...)` for the CLI) that
returns a `kamleak.harness.judging.verdict.Verdict`: a "transaction"
verdict (a cell watched in tm.list) or a "memory" one (shm allocation sites
compared around batches of requests, for leaks that leave no cell).
"""

from kamleak.scenarios import (gh3236_silent_ws_peer, gh4140_bye_to_closed_ws, gh4503_branch_drop,
    gh4919_relay_failure_udp, pr3403_local_request_drop, ws_alias_takeover)

SCENARIOS = {
    "gh3236": gh3236_silent_ws_peer,
    "gh4140": gh4140_bye_to_closed_ws,
    "gh4503": gh4503_branch_drop,
    "gh4919": gh4919_relay_failure_udp,
    "pr3403": pr3403_local_request_drop,
    "takeover": ws_alias_takeover,
}

DEFAULT_SCENARIO = "gh4140"


def scenario(name: str):
    """The scenario module for NAME (`gh4503`), or a UsageError naming the choices."""
    from kamleak.harness.errors import UsageError

    if name not in SCENARIOS:
        raise UsageError(f"unknown scenario '{name}'", f"use one of {', '.join(sorted(SCENARIOS))}")
    return SCENARIOS[name]


__all__ = ["DEFAULT_SCENARIO", "scenario", "SCENARIOS", "gh3236_silent_ws_peer", "gh4140_bye_to_closed_ws", "gh4503_branch_drop", "gh4919_relay_failure_udp",
           "pr3403_local_request_drop", "ws_alias_takeover"]
