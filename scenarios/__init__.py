"""Scenarios: each module drives user agents through one upstream bug's story.

A scenario module states its issue number, tells the story, lists its
config variants and the verdicts expected on the versions kamleak builds,
and has a `run(...)` (plus `gate(stack, variant, ...)` for the CLI) that
returns a verdict: a "transaction" one (a cell watched in tm.list) or a
"memory" one (shm allocation sites compared around batches of requests,
for leaks that leave no cell).  What a story offers the harness is
`kamleak.scenarios.story.Story`; the harness finds stories through
`kamleak.harness.registry` (pyproject's `kamleak.scenarios` entry points).
"""
