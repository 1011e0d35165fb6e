"""The issue-4140 gate: a BYE towards a dead WebSocket client must not leak.

This is the test users run against their Kamailio (`--kamailio-image`,
`--kamailio-version`, `--kamailio-bin`); it fails on a leak with a message
that names the cell.  `--variant` picks the config variant (default: the
realistic pua_dialoginfo trigger with the stock sl_reply_error()),
`--disconnect` how the client goes away (rst, fin, close).

kamleak's own suite (`make test`) deselects it (`-m "not gate"`) and runs it
as users do, in a subprocess, in `test_gate_as_ci.py`.

The scenario runs in the `gh4140_verdict` fixture: a harness problem is a
test *error*; only a leak fails the test.
"""
from __future__ import annotations

import pytest

from kamleak.harness.judging.verdict import assert_no_leak


@pytest.mark.gate
def test_gh4140_bye_to_closed_ws(gh4140_verdict):
    assert_no_leak(gh4140_verdict)
