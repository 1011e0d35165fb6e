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
    assert_expected(verdict, expect, kamailio_target)
    assert verdict.stats_consistent, verdict.stats_note
    assert verdict.replies and all(r.code >= 400 for r in verdict.replies)
    return verdict


def assert_expected(verdict, expect: str, target=None) -> None:
    """The verdict is the expected one; where kamleak cannot know what to expect
    ("unknown"), only that a verdict was reached - never a pass on nothing.
    With TARGET, the early verdict is held to it too (`assert_early`)."""
    if expect == "unknown":
        assert verdict.outcome in ("leak", "clean"), verdict.report()
    else:
        assert verdict.outcome == expect, verdict.report()
    if target is not None:
        assert_early(verdict, target)


def assert_early(verdict, target) -> None:
    """A leaked non-INVITE cell on a build kamleak knows must have been proven
    orphaned (harness/judging/orphan.py), and, where the suite waits out the
    bound as well (--kamleak-confirm, its default), the bound agreed.  A clean
    verdict has no orphan proof: had there been one, the watch would have
    ended in a disagreement error instead."""
    from kamleak.harness import knowledge
    from kamleak.harness.judging import oracle

    if getattr(verdict, "kind", "") != "transaction":
        return
    if not verdict.leaked:
        assert verdict.orphan is None, verdict.report()
        return
    if not oracle.POLICY.early or verdict.method == "INVITE" or \
            knowledge.provenance(target).kind == "unknown":
        assert verdict.orphan is None, verdict.report()
        return
    assert verdict.orphan is not None, f"no orphan proof for a leaked {verdict.method}: {verdict.early}"
    if oracle.POLICY.confirm:
        assert verdict.confirmed, verdict.report()
