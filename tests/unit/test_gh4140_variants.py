"""The issue-4140 scenario's variants, applicability and expectations."""
from __future__ import annotations

import pytest

from kamleak.harness.errors import UsageError
from kamleak.harness.stack.kamailio import KamailioConfig
from kamleak.harness.stack.kamailio.server import refusal_line
from kamleak.scenarios.gh4140_bye_to_closed_ws import Variant, applicable, expected


@pytest.mark.parametrize("name, defines", [
    ("none", ()),
    ("pua_dialoginfo", ("WITH_TRIGGER_PUA_DIALOGINFO",)),
    ("uac_req_send+t_reply_error", ("WITH_TRIGGER_UAC_REQ_SEND", "WITH_REPLY_T_REPLY_ERROR")),
    ("t_uac_send+delayed_reply_off", ("WITH_TRIGGER_T_UAC_SEND", "WITH_DELAYED_REPLY_OFF")),
])
def test_variant_round_trip(name, defines):
    v = Variant.parse(name)
    assert v.name == name and v.defines == defines


@pytest.mark.parametrize("bad", ["", "nope", "uac_req_send+sl_reply_warning"])
def test_unknown_variants_are_usage_errors(bad):
    with pytest.raises(UsageError):
        Variant.parse(bad)


def test_expectations_follow_the_mechanism():
    leak, clean = "leak", "clean"
    assert expected("5.6.3", Variant.parse("pua_dialoginfo")) == leak
    assert expected("6.0.1", Variant.parse("uac_req_send")) == leak
    assert expected("6.1.5", Variant.parse("uac_req_send")) == clean
    assert expected("5.6.3", Variant.parse("none")) == clean
    assert expected("5.6.3", Variant.parse("dialog")) == clean
    assert expected("6.0.1", Variant.parse("t_uac_send+send_reply_error")) == clean
    assert expected("5.6.3", Variant.parse("t_uac_send+send_reply_error")) == "n/a"
    assert expected("6.0.1", Variant.parse("t_uac_send+delayed_reply_off")) == "n/a"
    assert applicable("6.1.5", Variant.parse("t_uac_send+delayed_reply_off")) is None


def test_config_header_carries_ports_defines_and_timers():
    cfg = KamailioConfig(5060, 8080, 4443, 5080, defines=("WITH_TRIGGER_UAC_REQ_SEND",))
    text = cfg.render()
    assert text.startswith("#!KAMAILIO\n")
    for needle in ("listen=udp:127.0.0.1:5060", "listen=tcp:127.0.0.1:8080",
                   "listen=tls:127.0.0.1:4443", '#!substdef "!KAMLEAK_PBX_HOSTPORT!127.0.0.1:5080!g"',
                   "#!define WITH_TRIGGER_UAC_REQ_SEND", "#!define KAMLEAK_WT_TIMER 1000"):
        assert needle in text
    with pytest.raises(UsageError):
        KamailioConfig(1, 2, 3, 4, defines=("WITH_NOTHING",))


def test_refusal_line_prefers_kamailios_reason():
    log = (" 0(7) INFO: <core> starting\n"
           " 0(7) ERROR: <core> [core/tcp_main.c:3042]: tcp_init(): could not get TCP protocol number\n"
           " 0(7) CRITICAL: <core> [core/cfg.y:3790]: yyerror_at(): parse error in config file "
           "/etc/kamleak/kamailio.cfg, line 280, column 17: unknown command, missing loadmodule?\n")
    assert refusal_line(log).startswith("CRITICAL: <core> [core/cfg.y:3790]: yyerror_at(): parse error")
    assert refusal_line("all fine\n") is None


def test_explore_defines_are_the_switches_kamleaks_config_tests():
    from kamleak.harness.errors import UsageError
    from kamleak.harness.stack.kamailio.variants import check_defines, config_switches
    assert {"WITH_RELAY_NOCONNECT", "WITH_BRANCH_DROP", "WITH_LISTEN_ADVERTISE"} <= config_switches()
    assert check_defines(["WITH_RELAY_NOCONNECT", " KAMLEAK_WT_TIMER=500"]) == (
        "WITH_RELAY_NOCONNECT", "KAMLEAK_WT_TIMER=500")
    with pytest.raises(UsageError, match="no switch 'WITH_MOONWALK'"):
        check_defines(["WITH_MOONWALK"])
