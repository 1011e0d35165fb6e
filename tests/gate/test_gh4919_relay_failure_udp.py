"""Kamailio issue 4919 across the versions kamleak builds (see the scenario module).

Over plain UDP, no WebSocket: a local request, then t_relay() failing under
set_forward_no_connect().  Leaks exactly where the 4140 mechanism says:
a trigger and the stateless reply, before 6.1.
"""

from __future__ import annotations

import pytest

from kamleak.scenarios import gh4919_relay_failure_udp as gh4919
from tests.gate.matrix import run_and_check

MATRIX = ["none", "uac_req_send", "t_uac_send", "uac_req_send+send_reply_error",
          "t_uac_send+t_reply_error", "uac_req_send+delayed_reply_off"]


@pytest.mark.known_versions
@pytest.mark.parametrize("variant_name", MATRIX)
def test_gh4919_verdict_matches_real_kamailio(kamailio_factory, kamailio_target, variant_name,
                                              record_verdict):
    verdict = run_and_check(gh4919, kamailio_factory, kamailio_target, variant_name, record_verdict)
    if verdict is not None and verdict.leaked:
        # Unlike 4140 (Via building fails: outgoings 0) the branch is built
        # here and only sending fails: outgoings 1.  Nobody holds a reference.
        assert (verdict.cells[0].outgoings, verdict.cells[0].ref_count) == (1, 1)
        assert [r.stateless for r in verdict.replies] == [True]


def test_a_trigger_without_a_dialog_is_refused():
    with pytest.raises(Exception) as exc:
        gh4919.parse_variant("pua_dialoginfo")
    assert "does not apply to issue 4919" in str(exc.value)
