"""The checks the catalogue's gate tests share, version by version."""

from __future__ import annotations

import pytest

from kamleak.harness.errors import NotApplicable


def start_unless_refused(scenario, kamailio_factory, build, variant):
    """Kamailio started with VARIANT, or None where the variant is n/a on BUILD
    (a Target: kamleak.harness.knowledge answers for it).

    An n/a variant must be refused by Kamailio itself (the function or
    parameter does not exist there), not skipped by us.
    """
    if scenario.expected(build, variant) == "n/a":
        with pytest.raises(NotApplicable):
            scenario.start_kamailio(kamailio_factory, variant)
        return None
    return scenario.start_kamailio(kamailio_factory, variant)


def run_and_check(scenario, kamailio_factory, kamailio_target, variant_name, record_verdict):
    """Run the variant and assert the expected verdict; a skip where it is n/a on this version."""
    variant = scenario.parse_variant(variant_name)
    expect = scenario.expected(kamailio_target, variant)
    kamailio = start_unless_refused(scenario, kamailio_factory, kamailio_target, variant)
    if kamailio is None:
        pytest.skip(f"n/a: {kamailio_target.id} refuses {variant_name}; no call to judge")
    verdict = scenario.run(kamailio=kamailio, variant=variant, target=kamailio_target.id)
    record_verdict(verdict)
    assert_expected(verdict, expect)
    assert verdict.stats_consistent, verdict.stats_note
    assert verdict.replies and all(r.code >= 400 for r in verdict.replies)
    return verdict


def assert_expected(verdict, expect: str) -> None:
    """The verdict is the expected one; where kamleak cannot know what to expect
    ("unknown"), only that a verdict was reached - never a pass on nothing."""
    if expect == "unknown":
        assert verdict.outcome in ("leak", "clean"), verdict.report()
    else:
        assert verdict.outcome == expect, verdict.report()
