"""explore --mutate-config: the mutation points load in the real `kamailio -c`, the
strategy shrinks toward no mutation, and the text form round-trips."""

from __future__ import annotations

import pytest
from hypothesis import find, given, settings

from kamleak.harness.errors import UsageError
from kamleak.harness.stack.kamailio.config import VARIANT_DEFINES
from kamleak.harness.stack.kamailio.variants import config_switches
from kamleak.harness.tools.explore import mutate as mu


@pytest.fixture(scope="module")
def checker_601(debian_601):
    return mu.Checker(*debian_601)


def test_every_point_is_a_switch_the_config_tests_and_renders():
    for p in mu.POINTS:
        assert p.define in config_switches() and p.define in VARIANT_DEFINES, p


def test_every_point_and_a_sample_of_combinations_load_in_the_real_kamailio_c(checker_601):
    singles = [(p.define,) for p in mu.POINTS]
    combos = [mu.Mutation.parse(t).defines for t in (
        "uac_req_send@request:BYE+reply:t_reply+relay:t_relay_to:0x02",
        "t_uac_send@dialog:end+pua_dialoginfo+drop@failure",
        "uac_req_send@request:INVITE+uac_req_send@failure+t_uac_send@branch",
        "t_uac_send@request:BYE+drop@branch:BYE+t_set_disable_internal_reply")]
    verdicts = dict(zip(singles + combos, checker_601.refusals(singles + combos)))
    refused = {d for d, why in verdicts.items() if why}
    # 6.0.1's tm has no delayed_reply parameter: the check can and does refuse.
    assert refused == {("WITH_DELAYED_REPLY_OFF",)}, verdicts
    assert "Can't set module parameter" in verdicts[("WITH_DELAYED_REPLY_OFF",)]


@settings(max_examples=200, deadline=None)
@given(mu.mutations())
def test_the_text_form_round_trips_and_groups_exclude(m):
    assert mu.Mutation.parse(m.text()) == m
    groups = [p.group for p in m.points if p.group]
    assert len(groups) == len(set(groups)) and len(m.points) <= mu.MAX_POINTS


def test_the_strategy_shrinks_toward_no_mutation():
    assert find(mu.mutations(), lambda m: True) == mu.NONE
    # A condition on one point shrinks to that point alone.
    one = find(mu.mutations(), lambda m: any(p.group == "reply" for p in m.points))
    assert one.text() == "reply:send_reply_error"


def test_a_bad_mutation_text_is_one_line():
    with pytest.raises(UsageError, match="unknown config mutation point 'moonwalk'"):
        mu.Mutation.parse("moonwalk")
    with pytest.raises(UsageError, match="two points of one group"):
        mu.Mutation.parse("reply:t_reply+reply:sl_send_reply")
    assert mu.with_base(("WITH_TRIGGER_UAC_REQ_SEND",), mu.Mutation.parse("uac_req_send@request:BYE")) \
        == ("WITH_TRIGGER_UAC_REQ_SEND",)
