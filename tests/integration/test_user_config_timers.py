"""Issue 12: the oracle's deadline follows the user's own tm timers.

tests/configs/wt8000/kamailio.cfg is tests/configs/user/deployment.cfg (which
does not leak on Debian's 6.1.5) with `modparam("tm", "wt_timer", 8000)` and
tm's own fr_timer.  On a real 6.1.5 the BYE cell leaves ~8 s after its reply:
past the 7 s kamleak's own timers would give, within the config's.  The
verdict must be CLEAN and cite the config line for wt.
"""

from __future__ import annotations

from pathlib import Path

from kamleak.harness.stack import images, ports
from kamleak.harness.stack.kamailio.user_config import UserConfig
from kamleak.harness.stack.runner import launch_kamailio
from kamleak.harness.stack.targets import Target
from kamleak.scenarios import gh4140_bye_to_closed_ws as gh4140

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "tests/configs/wt8000/kamailio.cfg"
VERSION = "6.1.5"


def test_wt_timer_8000_in_the_users_config_is_clean_on_6_1_5(docker_client, kamleak_images, pbx,
                                                              ua_factory, tmp_path):
    images.build_all(docker_client, [images.kamailio_spec(VERSION)])   # whatever --kamailio-version
    user = UserConfig.load(str(CONFIG))
    kam = launch_kamailio(Target("version", VERSION), docker_client, pbx.sip_port, tmp_path,
                          user_config=user)
    try:
        verdict = gh4140.run(kamailio=kam, pbx=pbx, ua_factory=ua_factory, transport="ws",
                             variant=gh4140.Variant.parse("none"))
    finally:
        kam.stop()
        c = kam.config
        ports.release(c.udp_port, c.ws_port, c.wss_port, c.rpc_port)
    line = CONFIG.read_text().split("\n").index('modparam("tm", "wt_timer", 8000)') + 1
    assert verdict.outcome == "clean", verdict.report()
    assert verdict.timers["wt_timer"] == {"ms": 8000, "source": f"kamailio.cfg:{line} modparam"}
    assert verdict.timers["fr_timer"] == {"ms": 30000, "source": "tm default (src/modules/tm/config.h)"}
    assert f"wt 8000 ms kamailio.cfg:{line}" in verdict.report()
    assert verdict.deadline > verdict.gone_after > 7.0, verdict.report()   # the old deadline was 7 s
    assert verdict.to_json()["timers"]["deadline_rule"].startswith("max_noninv_lifetime + wt_timer")
