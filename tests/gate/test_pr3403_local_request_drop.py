"""Kamailio PR 3403 across the versions kamleak builds (see the scenario module).

No cell is left behind: the oracle compares Kamailio's per-site shm
accounting around three batches of requests.
"""

from __future__ import annotations

import pytest

from kamleak.scenarios import pr3403_local_request_drop as pr3403
from tests.gate.matrix import assert_expected

MATRIX = ["t_uac_send+drop", "uac_req_send+drop", "t_uac_send", "uac_req_send"]


@pytest.mark.known_versions
@pytest.mark.parametrize("variant_name", MATRIX)
def test_pr3403_verdict_matches_real_kamailio(kamailio_factory, kamailio_target, variant_name,
                                              record_verdict):
    variant = pr3403.parse_variant(variant_name)
    kamailio = pr3403.start_kamailio(kamailio_factory, variant)
    verdict = pr3403.run(kamailio=kamailio, variant=variant, target=kamailio_target.id)
    record_verdict(verdict, pr3403.PLOT_HINTS)
    assert_expected(verdict, pr3403.expected(kamailio_target, variant))
    # No cell either way: created == freed after every batch.
    assert verdict.stats_after["created"] - verdict.stats_after["freed"] == \
        verdict.stats_before["created"] - verdict.stats_before["freed"]
    if verdict.leaked:
        # The PR's site: tm's build_uac_req, a few hundred bytes a request.
        assert any(s.startswith("tm: build_uac_req(") for s in verdict.memory["leaked_sites"]), \
            verdict.report()


def test_variants_name_the_trigger_and_the_drop():
    assert pr3403.parse_variant("uac_req_send+drop").defines == (
        "WITH_TRIGGER_UAC_REQ_SEND", "WITH_LOCAL_REQUEST_ROUTE", "WITH_LOCAL_REQUEST_DROP")
    with pytest.raises(Exception, match="unknown variant"):
        pr3403.parse_variant("pua_dialoginfo+drop")
