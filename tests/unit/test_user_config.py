"""The user-config contract: what a kamailio.cfg needs, said before any run."""

from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.kamailio import KamailioConfig
from harness.kamailio.user_config import UserConfig, check

DEPLOYMENT = Path(__file__).resolve().parents[1] / "configs" / "user" / "deployment.cfg"


def test_the_deployment_config_meets_the_contract():
    assert check(DEPLOYMENT.read_text(), str(DEPLOYMENT)) == []
    user = UserConfig.load(str(DEPLOYMENT))
    text = KamailioConfig(5060, 8080, 4443, 5080, rpc_port=8081, user_config=user).render()
    assert text.startswith("#!KAMAILIO\n") and text.count("#!KAMAILIO") == 1
    assert "#!define KAMLEAK\n" in text and "listen=tls:127.0.0.1:4443" in text
    assert "route[TOPBX]" in text, "the user's routing is kept as it is"


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("#!ifndef KAMLEAK\nlisten=udp:127.0.10.10:5060", "listen=udp:127.0.10.10:5060\n#!ifndef KAMLEAK"),
     "declares its own socket (listen=udp:127.0.10.10:5060) while KAMLEAK is defined; add: #!ifndef KAMLEAK"),
    (lambda t: t.replace('loadmodule "jsonrpcs.so"', ""), 'does not load jsonrpcs.so; add: loadmodule "jsonrpcs.so"'),
    (lambda t: t.replace("jsonrpc_dispatch();", ""), "does not serve JSON-RPC; add: if ($hu =~ \"^/RPC\")"),
    (lambda t: t.replace('"KAMLEAK_PBX_HOSTPORT"', '"127.0.10.20:5060"'), "never sends calls to the harness's PBX"),
    (lambda t: t.replace('modparam("tls", "config", "KAMLEAK_DIR/tls.cfg")', ""), "loads tls.so but not the harness's TLS config"),
    (lambda t: t.replace("tcp_accept_no_cl=yes", ""), "tcp_accept_no_cl=yes"),
])
def test_a_broken_config_is_refused_with_what_to_add(tmp_path, edit, expected):
    broken = tmp_path / "kamailio.cfg"
    broken.write_text(edit(DEPLOYMENT.read_text()))
    with pytest.raises(UsageError) as exc:
        UserConfig.load(str(broken))
    assert expected in str(exc.value) and "\n" not in str(exc.value)
    assert str(exc.value).startswith(str(broken))


def test_a_missing_config_is_one_line(tmp_path):
    with pytest.raises(UsageError) as exc:
        UserConfig.load(str(tmp_path / "nope.cfg"))
    assert str(exc.value).startswith(f"cannot read the Kamailio config {tmp_path / 'nope.cfg'}: ")
