"""Scenarios: each module drives user agents through one upstream bug's story.

A scenario module states its issue number, tells the story, lists its
config variants and the verdicts expected on the versions kamleak builds,
and has a `run(...)` that returns a `harness.verdict.Verdict`.
"""

from . import gh4140_bye_to_closed_ws, gh4919_relay_failure_udp

SCENARIOS = {"gh4140": gh4140_bye_to_closed_ws, "gh4919": gh4919_relay_failure_udp}

__all__ = ["SCENARIOS", "gh4140_bye_to_closed_ws", "gh4919_relay_failure_udp"]
