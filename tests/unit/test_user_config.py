"""The user-config contract: what a kamailio.cfg needs, said before any run, all at once."""
from __future__ import annotations

from pathlib import Path

import pytest

from kamleak.harness.errors import UsageError
from kamleak.harness.stack.kamailio import KamailioConfig
from kamleak.harness.stack.kamailio.server import rpc_fatal, rpc_reason
from kamleak.harness.stack.kamailio.user_config import ContractError, UserConfig, check
from kamleak.harness.tools.lint import main as lint_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEPLOYMENT = CONFIGS / "user" / "deployment.cfg"
STOCK = CONFIGS / "stock"


def test_the_deployment_config_meets_the_contract():
    assert check(DEPLOYMENT.read_text(), str(DEPLOYMENT)) == []
    user = UserConfig.load(str(DEPLOYMENT))
    text = KamailioConfig(5060, 8080, 4443, 5080, rpc_port=8081, user_config=user).render()
    assert text.startswith("#!KAMAILIO\n") and text.count("#!KAMAILIO") == 1
    assert "#!define KAMLEAK\n" in text and "listen=tls:127.0.0.1:4443" in text
    assert "route[TOPBX]" in text, "the user's routing is kept as it is"


def test_the_header_makes_127_0_0_1_5060_kamailios_own():
    user = UserConfig.load(str(DEPLOYMENT))
    header = KamailioConfig(5070, 8080, 4443, 5080, rpc_port=8081, user_config=user).header()
    assert "\nalias=127.0.0.1:5060\n" in header, "unquoted: a quoted alias is a host name, port 0"
    # The harness's own config does not get it; Kamailio on 5060 needs none.
    assert "alias=" not in KamailioConfig(5070, 8080, 4443, 5080).header()
    assert "alias=" not in KamailioConfig(5060, 8080, 4443, 5080, user_config=user).header()


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("#!ifndef KAMLEAK\nlisten=udp:127.0.10.10:5060", "listen=udp:127.0.10.10:5060\n#!ifndef KAMLEAK"),
     "declares its own socket (listen=udp:127.0.10.10:5060) while KAMLEAK is defined; add: #!ifndef KAMLEAK"),
    (lambda t: t.replace('loadmodule "websocket.so"', ""), 'does not load websocket.so; add: loadmodule "websocket.so"'),
    (lambda t: t.replace('loadmodule "jsonrpcs.so"', ""), 'does not load jsonrpcs.so; add: loadmodule "jsonrpcs.so"'),
    (lambda t: t.replace('modparam("jsonrpcs", "transport", 1)', ""),
     'leaves jsonrpcs\'s transport at its default (6: FIFO and datagram, no HTTP), so Kamailio answers no '
     'JSON-RPC over HTTP; add: modparam("jsonrpcs", "transport", 7)'),
    (lambda t: t.replace("jsonrpc_dispatch();", ""), "does not serve JSON-RPC; add: if ($hu =~ \"^/RPC\")"),
    (lambda t: t.replace('"KAMLEAK_PBX_HOSTPORT"', '"127.0.10.20:5060"'), "never sends calls to the harness's PBX"),
    (lambda t: t.replace('modparam("tls", "config", "KAMLEAK_DIR/tls.cfg")', ""), "loads tls.so but not the harness's TLS config"),
    (lambda t: t.replace("tcp_accept_no_cl=yes", ""), "tcp_accept_no_cl=yes"),
    (lambda t: t.replace('modparam("jsonrpcs", "transport", 1)', 'modparam("jsonrpcs", "transport", 6)'),
     'sets modparam("jsonrpcs", "transport", 6), which has no JSON-RPC over HTTP'),
])
def test_a_broken_config_is_refused_with_what_to_add(tmp_path, edit, expected):
    broken = tmp_path / "kamailio.cfg"
    broken.write_text(edit(DEPLOYMENT.read_text()))
    with pytest.raises(ContractError) as exc:
        UserConfig.load(str(broken))
    first, *rest = exc.value.line().split("\n")
    assert first.startswith(f"{broken}: 1 thing to change before kamleak can run it; add what")
    assert len(rest) == 1 and rest[0].startswith(f"  {broken}") and expected in rest[0]


@pytest.mark.parametrize("transport, refused", [("0", False), ("1", False), ("7", False), ("6", True),
                                                 ("2", True), ("4", True)])
def test_the_jsonrpcs_transport_needs_its_http_bit(transport, refused):
    text = DEPLOYMENT.read_text().replace(
        'modparam("jsonrpcs", "transport", 1)', f'modparam("jsonrpcs", "transport", {transport})')
    assert f'"transport", {transport})' in text
    assert bool(check(text, str(DEPLOYMENT))) is refused


def test_every_problem_of_a_stock_config_in_one_report_and_the_same_from_lint(capsys):
    orig = STOCK / "kamailio-default-websocket.orig.cfg"
    with pytest.raises(ContractError) as exc:
        UserConfig.load(str(orig))
    lines = exc.value.line().split("\n")
    assert lines[0].startswith(f"{orig}: 3 things to change before kamleak can run it")
    assert [ln.strip() for ln in lines[1:]] == [
        f"{orig}:235: leaves jsonrpcs's transport at its default (6: FIFO and datagram, no HTTP), so Kamailio "
        'answers no JSON-RPC over HTTP; add: modparam("jsonrpcs", "transport", 7)',
        f'{orig}:445: loads tls.so but not the harness\'s TLS config; add: #!ifdef KAMLEAK modparam("tls", '
        '"config", "KAMLEAK_DIR/tls.cfg") #!else … #!endif',
        f'{orig}:997: event_route[xhttp:request] does not serve JSON-RPC; add: if ($hu =~ "^/RPC") '
        "{ jsonrpc_dispatch(); exit; } at its start",
    ]
    # `kamleak lint --contract` (or -A KAMLEAK): the same check, the same lines.
    for flags in (["--contract"], ["-A", "KAMLEAK"]):
        assert lint_main([str(orig), *flags]) == 1    # findings, as ruff's exit 1 (docs/lint.md)
        out = capsys.readouterr().out.splitlines()
        assert [ln.replace("contract: ", "") for ln in out if ": contract: " in ln] == \
            [ln.strip() for ln in lines[1:]]
    # Without the flag lint stays a 4140 advisor.
    assert lint_main([str(orig)]) == 0
    assert "contract" not in capsys.readouterr().out


@pytest.mark.parametrize("name, count", [("kamailio-default-websocket", 3), ("kamailio", 5)])
def test_the_stock_configs_as_edited_meet_the_contract(name, count):
    assert len(check((STOCK / f"{name}.orig.cfg").read_text(), name)) == count
    assert check((STOCK / f"{name}.cfg").read_text(), name) == []
    assert lint_main([str(STOCK / f"{name}.cfg"), "--contract"]) == 0


def test_a_latin1_config_is_read_by_gate_and_lint_alike(tmp_path, capsys):
    latin1 = tmp_path / "kamailio.cfg"
    latin1.write_bytes(DEPLOYMENT.read_bytes().replace(b"#!KAMAILIO\n", b"#!KAMAILIO\n# r\xe9seau\n", 1))
    user = UserConfig.load(str(latin1))
    assert "# réseau" in user.text
    assert lint_main([str(latin1), "--contract"]) in (0, 1)
    assert "meets kamleak's contract" in capsys.readouterr().out
    # What Kamailio reads is the user's bytes: the comment stays Latin-1.
    from kamleak.harness.stack.kamailio.config import KamailioConfig
    cfg = KamailioConfig(udp_port=1, ws_port=2, wss_port=3, pbx_port=4, user_config=user)
    rendered = cfg.write(tmp_path / "run").read_bytes()
    assert b"# r\xe9seau\n" in rendered


def test_a_binary_is_refused_in_one_line(tmp_path, capsys):
    binary = tmp_path / "kamailio"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)))
    with pytest.raises(UsageError) as exc:
        UserConfig.load(str(binary))
    assert exc.value.line() == (f"{binary} is not a Kamailio config (a binary file: it contains NUL "
                                "bytes); pass the path of your kamailio.cfg")
    assert lint_main([str(binary)]) == 2
    err = capsys.readouterr().err
    assert err == f"kamleak lint: {exc.value.line()}\n"


def test_a_missing_config_is_one_line(tmp_path):
    with pytest.raises(UsageError) as exc:
        UserConfig.load(str(tmp_path / "nope.cfg"))
    assert str(exc.value).startswith(f"cannot read the Kamailio config {tmp_path / 'nope.cfg'}: ")


LOG = """\
 0(1) INFO: <core> [core/sctp_core.c:53]: sctp_core_check_support(): SCTP API not enabled
 0(1) WARNING: <core> [core/sr_module.c:613]: ksr_load_module(): attempting to load the same module twice (/usr/lib/x86_64-linux-gnu/kamailio/modules/jsonrpcs.so)
27(41) ERROR: jsonrpcs [jsonrpcs_mod.c:1371]: jsonrpc_dispatch(): jsonrpc over http not initialized - check transport param
27(41) ERROR: jsonrpcs [jsonrpcs_mod.c:1371]: jsonrpc_dispatch(): jsonrpc over http not initialized - check transport param
"""


def test_kamailios_reason_for_not_answering_json_rpc_is_read_from_its_log():
    line = "ERROR: jsonrpcs [jsonrpcs_mod.c:1371]: jsonrpc_dispatch(): jsonrpc over http not initialized - check transport param"
    assert rpc_fatal(LOG) == line
    assert rpc_reason(LOG) == line, "repeated lines are quoted once"
    assert rpc_fatal(LOG.replace("jsonrpc over http not initialized", "x")) is None
    assert rpc_reason(" 0(1) INFO: fine\n") is None


def test_a_config_without_registrar_or_pbx_destination_is_told_both_ways():
    """Calls reach the PBX through KAMLEAK_PBX_HOSTPORT or through the config's
    registrar (kamleak registers the PBX); with neither, one line says so."""
    from kamleak.harness.stack.kamailio.cfg import parse
    from kamleak.harness.stack.kamailio.user_config import has_registrar
    stock = (STOCK / "kamailio-default-websocket.cfg").read_text()
    cfg, _ = parse(stock, defines={"KAMLEAK": ""})
    assert has_registrar(cfg)
    no_lookup = stock.replace('if (!lookup("location")) {', 'if (!lookup("other")) {')
    assert no_lookup != stock
    problems = [p.what for p in check(no_lookup, "x.cfg")]
    assert any(p.startswith("never sends calls to the harness's PBX") for p in problems)
    assert not any("PBX" in p for p in check(no_lookup.replace(
        'route(LOCATION);', '$du = "sip:KAMLEAK_PBX_HOSTPORT"; route(LOCATION);', 1), "x.cfg"))
