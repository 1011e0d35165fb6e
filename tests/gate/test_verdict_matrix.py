"""The harness proves its own verdicts against real Kamailio.

For every Kamailio version kamleak builds, every config variant of the
issue-4140 scenario, over WS and WSS: the verdict observed must be the one
the scenario expects (`gh4140.expected`).  A leak must be *detected* where
Kamailio leaks (trigger + stateless error reply before 6.1) and *not*
reported where it does not (no trigger, the mitigations, 6.1.5).  A harness
that can only say "clean", or only "leak", fails here.
"""

from __future__ import annotations

import pytest

from kamleak.scenarios import gh4140_bye_to_closed_ws as gh4140
from kamleak.scenarios.gh4140_bye_to_closed_ws import Variant
from tests.gate.matrix import assert_expected, start_unless_refused

TRIGGERS = ["none", "dialog", "uac_req_send", "t_uac_send", "pua_dialoginfo"]
MITIGATIONS = ["send_reply_error", "t_reply_error", "delayed_reply_off"]
MATRIX = [Variant.parse(t) for t in TRIGGERS] + [
    Variant.parse(f"{t}+{m}") for t in ("uac_req_send", "t_uac_send", "pua_dialoginfo")
    for m in MITIGATIONS]


def lint_verdict(kamailio, build) -> str:
    """What `kamleak lint` says about the config Kamailio runs, for BUILD:
    "n/a" (the build refuses it), "leak" or "clean"."""
    from kamleak.harness.tools.lint import lint
    found = lint(kamailio.config.render(), build=build)
    return ("n/a" if any(f.level == "error" for f in found) else
            "leak" if any(f.level == "leak" for f in found) else "clean")


@pytest.mark.known_versions
@pytest.mark.parametrize("gate_variant", MATRIX, ids=[v.name for v in MATRIX], indirect=True)
def test_verdict_matches_real_kamailio(kamailio_factory, pbx, ua_factory, transport,
                                       kamailio_target, gate_variant, record_verdict):
    expect = gh4140.expected(kamailio_target, gate_variant)
    # n/a: Kamailio itself must refuse the config, the feature does not exist.
    kamailio = start_unless_refused(gh4140, kamailio_factory, kamailio_target, gate_variant)
    if kamailio is None:
        # lint must say so too: the build refuses it (checked against the same render).
        from kamleak.harness.stack.kamailio import KamailioConfig
        from kamleak.harness.tools.lint import lint
        cfg = KamailioConfig(udp_port=5060, ws_port=8080, wss_port=4443, pbx_port=5080,
                             defines=gate_variant.defines).render()
        assert any(f.level == "error" for f in lint(cfg, build=kamailio_target))
        pytest.skip(f"n/a: {kamailio_target.id} refuses {gate_variant.name} (lint agrees); "
                    "no call to judge")
    verdict = gh4140.run(kamailio=kamailio, pbx=pbx, ua_factory=ua_factory, transport=transport,
                         variant=gate_variant, target=kamailio_target.id)
    record_verdict(verdict)

    assert_expected(verdict, expect, kamailio_target)
    # lint is checked against the gate: its static verdict for this build is
    # the one real Kamailio just gave (issue 13).
    assert lint_verdict(kamailio, kamailio_target) == verdict.outcome, verdict.report()
    assert verdict.stats_consistent, verdict.stats_note
    assert verdict.replies, "Kamailio's reply to the BYE must be on record"
    assert all(r.code >= 400 for r in verdict.replies), verdict.report()
    if verdict.leaked:
        # The 4140 signature: a stateless error and a cell nobody releases.
        cell = verdict.cells[0]
        assert (cell.outgoings, cell.ref_count) == (0, 1), cell.describe()
        assert verdict.replies[0].stateless is True, verdict.report()
    else:
        assert verdict.gone_after is not None and verdict.gone_after < verdict.deadline


@pytest.mark.known_versions
@pytest.mark.parametrize("disconnect", ["fin", "close"])
@pytest.mark.parametrize("gate_variant", [Variant.parse("uac_req_send")], ids=["uac_req_send"],
                         indirect=True)
def test_every_disconnect_mode_reaches_the_dead_connection_path(
        kamailio_factory, pbx, ua_factory, kamailio_target, gate_variant, disconnect,
        record_verdict):
    """FIN without a close frame and a clean close end where RST does."""
    kamailio = gh4140.start_kamailio(kamailio_factory, gate_variant)
    verdict = gh4140.run(kamailio=kamailio, pbx=pbx, ua_factory=ua_factory, transport="ws",
                         variant=gate_variant, disconnect=disconnect, target=kamailio_target.id)
    record_verdict(verdict)
    assert_expected(verdict, gh4140.expected(kamailio_target, gate_variant), kamailio_target)
