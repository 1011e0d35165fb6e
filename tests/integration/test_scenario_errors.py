"""When the scenario cannot reach a verdict, it says why: an error, never "clean".

Each test breaks one link of the chain for real (Kamailio killed, a PBX that
does not hang up, a client that does not go away) and expects a
ScenarioError naming it.
"""

from __future__ import annotations

import time

import pytest

from kamleak.harness.errors import ScenarioError
from kamleak.harness.judging import oracle
from kamleak.scenarios import gh4140_bye_to_closed_ws as gh4140

VARIANT = gh4140.Variant.parse("uac_req_send")


pytestmark = pytest.mark.single_target


@pytest.fixture
def target_version(kamailio_target, pbx):
    yield kamailio_target
    pbx.cli("channel request hangup all")  # calls these tests leave up on purpose


def test_kamailio_dying_while_watched_is_an_error(kamailio_factory, target_version):
    kamailio = kamailio_factory()
    kamailio.running.container.kill()
    with pytest.raises(ScenarioError) as exc:
        oracle.watch_transaction(kamailio.rpc, "no-such-call", "BYE", deadline=5,
                                 started=time.monotonic(), alive=kamailio.death)
    assert str(exc.value).startswith("Kamailio died while the BYE was watched: the Kamailio "
                                     "container exited with code")


class SilentPBX:
    """Asterisk that is asked to hang up and does not."""

    def __init__(self, pbx):
        self._pbx = pbx

    def __getattr__(self, name):
        return getattr(self._pbx, name)

    def hangup(self, extension, timeout=10.0):
        return self._pbx.channel_for(extension, timeout)


def test_asterisk_never_sending_the_bye_is_an_error(kamailio_factory, pbx, ua_factory,
                                                    target_version):
    kamailio = kamailio_factory(defines=VARIANT.defines)
    with pytest.raises(ScenarioError) as exc:
        gh4140.run(kamailio=kamailio, pbx=SilentPBX(pbx), ua_factory=ua_factory, transport="ws",
                   variant=VARIANT)
    assert str(exc.value).startswith("Asterisk's BYE never reached Kamailio")


def test_a_client_that_does_not_go_away_is_an_error(kamailio_factory, pbx, ua_factory,
                                                    target_version):
    def stubborn_ua(url, **kw):
        ua = ua_factory(url, **kw)
        ua.disconnect = lambda mode="rst", timeout=2.0: None
        return ua

    kamailio = kamailio_factory(defines=VARIANT.defines)
    with pytest.raises(ScenarioError) as exc:
        gh4140.run(kamailio=kamailio, pbx=pbx, ua_factory=stubborn_ua, transport="ws",
                   variant=VARIANT)
    assert "still lists the WebSocket connection" in str(exc.value)
    assert "the disconnect did not take effect" in str(exc.value)
