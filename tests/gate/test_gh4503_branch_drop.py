"""Kamailio issue 4503 across the versions kamleak builds (see the scenario module).

An INVITE over UDP whose only branch branch_route drops, after a local
request (pua_dialoginfo's "Trying" PUBLISH, or an explicit one).
"""

from __future__ import annotations

import pytest

from kamleak.scenarios import gh4503_branch_drop as gh4503
from tests.gate.matrix import run_and_check

MATRIX = ["none", "dialog", "pua_dialoginfo", "uac_req_send", "t_uac_send",
          "pua_dialoginfo+no_internal_reply", "none+no_internal_reply",
          "pua_dialoginfo+send_reply_error", "pua_dialoginfo+t_reply_error",
          "pua_dialoginfo+t_reply_error+no_internal_reply",
          "pua_dialoginfo+delayed_reply_off"]


@pytest.mark.known_versions
@pytest.mark.parametrize("variant_name", MATRIX)
def test_gh4503_verdict_matches_real_kamailio(kamailio_factory, kamailio_target, variant_name,
                                              record_verdict):
    verdict = run_and_check(gh4503, kamailio_factory, kamailio_target, variant_name, record_verdict)
    if verdict is not None and verdict.leaked:
        # The report's signature: no branch, nobody holding a reference.
        assert (verdict.cells[0].outgoings, verdict.cells[0].ref_count) == (0, 1)
        assert [(r.code, r.stateless) for r in verdict.replies] == [(500, True)]


def test_path_b_is_a_variant_flag_of_its_own():
    v = gh4503.parse_variant("pua_dialoginfo+t_reply_error+no_internal_reply")
    assert (v.trigger, v.reply, v.no_internal_reply) == ("pua_dialoginfo", "t_reply_error", True)
    assert v.name == "pua_dialoginfo+t_reply_error+no_internal_reply"
    assert "WITH_NO_INTERNAL_REPLY" in v.defines and "WITH_REPLY_T_REPLY_ERROR" in v.defines
    with pytest.raises(Exception, match="names no trigger"):
        gh4503.parse_variant("no_internal_reply")
