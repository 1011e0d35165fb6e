"""The user-config contract: what a kamailio.cfg needs, said before any run, all at once."""
from __future__ import annotations

from pathlib import Path

import pytest

from kamleak.harness.errors import UsageError
from kamleak.harness.stack.kamailio import KamailioConfig
from kamleak.harness.stack.kamailio.server import rpc_fatal, rpc_reason
from kamleak.harness.stack.kamailio.user_config import PASTE_INDENT, ContractError, UserConfig, check, pasted
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


NO_RPC = ("offers kamleak no RPC: no JSON-RPC over HTTP ({}) and no ctl.so, which kamleak would "
          'read over BINRPC on a socket of its own; add: loadmodule "ctl.so"')


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("#!ifndef KAMLEAK\nlisten=udp:127.0.10.10:5060", "listen=udp:127.0.10.10:5060\n#!ifndef KAMLEAK"),
     "declares its own socket (listen=udp:127.0.10.10:5060) while KAMLEAK is defined"),
    (lambda t: t.replace('loadmodule "websocket.so"', ""), 'does not load websocket.so; add: loadmodule "websocket.so"'),
    (lambda t: t.replace('loadmodule "jsonrpcs.so"', ""), NO_RPC.format("it does not load jsonrpcs")),
    (lambda t: t.replace('modparam("jsonrpcs", "transport", 1)', ""),
     NO_RPC.format("jsonrpcs has no HTTP transport")),
    (lambda t: t.replace("jsonrpc_dispatch();", ""),
     NO_RPC.format("event_route[xhttp:request] calls no jsonrpc_dispatch()")),
    (lambda t: t.replace('"KAMLEAK_PBX_HOSTPORT"', '"127.0.10.20:5060"'), "never sends calls to the harness's PBX"),
    (lambda t: t.replace('modparam("tls", "config", "KAMLEAK_DIR/tls.cfg")', "")
     .replace('modparam("tls", "config", "/etc/kamailio/tls.cfg")', ""),
     "loads tls.so but names no TLS config file for kamleak to provide"),
    (lambda t: t.replace("tcp_accept_no_cl=yes", ""), "tcp_accept_no_cl=yes"),
    (lambda t: t.replace('modparam("jsonrpcs", "transport", 1)', 'modparam("jsonrpcs", "transport", 6)'),
     NO_RPC.format("jsonrpcs has no HTTP transport")),
])
def test_a_broken_config_is_refused_with_what_to_add(tmp_path, edit, expected):
    broken = tmp_path / "kamailio.cfg"
    broken.write_text(edit(DEPLOYMENT.read_text()))
    with pytest.raises(ContractError) as exc:
        UserConfig.load(str(broken))
    first, *rest = exc.value.line().split("\n")
    assert first.startswith(f"{broken}: 1 thing to change before kamleak can run it; add what")
    assert rest[0].startswith(f"  {broken}") and expected in rest[0], rest
    # Advice of several lines: one line each, as they are pasted.
    assert all(ln.startswith("  " + PASTE_INDENT) for ln in rest[1:]), rest


@pytest.mark.parametrize("edit", [
    # a socket outside #!ifndef KAMLEAK, a config without a registrar or KAMLEAK_PBX_HOSTPORT
    lambda t: t.replace("#!ifndef KAMLEAK\nlisten=udp:127.0.10.10:5060\n", "listen=udp:127.0.10.10:5060\n#!ifndef KAMLEAK\n"),
    lambda t: t.replace('"KAMLEAK_PBX_HOSTPORT"', '"127.0.10.20:5060"'),
], ids=["socket", "pbx"])
def test_advice_of_several_lines_pasted_as_printed_meets_the_contract(tmp_path, edit):
    """What the user copies out of the report, pasted at the line it names (in place
    of that line where the advice wraps it), is a config kamleak accepts."""
    text = edit(DEPLOYMENT.read_text())
    (problem,) = check(text, "my.cfg")
    block = pasted(problem.line_text("my.cfg"))
    assert "\n" in block and all(ln.startswith("#!") for ln in (block.split("\n")[0], block.split("\n")[-1]))
    lines = text.split("\n")
    if problem.line:        # wraps the line it names: the block replaces it
        lines[problem.line - 1:problem.line] = [block]
    else:                   # where your config picks the PBX: its TOPBX route
        at = next(i for i, ln in enumerate(lines) if ln.startswith("route[TOPBX]"))
        lines[at + 1:at + 1] = [block]
    assert check("\n".join(lines), "my.cfg") == []
    # The one-line form printed before (the directives joined on one line) does not do it.
    one_line = " ".join(block.split("\n"))
    if problem.line:
        lines = text.split("\n")
        lines[problem.line - 1:problem.line] = [one_line]
        assert check("\n".join(lines), "my.cfg") != []


@pytest.mark.parametrize("transport, refused", [("0", False), ("1", False), ("7", False), ("6", True),
                                                 ("2", True), ("4", True)])
def test_the_jsonrpcs_transport_needs_its_http_bit(transport, refused):
    text = DEPLOYMENT.read_text().replace(
        'modparam("jsonrpcs", "transport", 1)', f'modparam("jsonrpcs", "transport", {transport})')
    assert f'"transport", {transport})' in text
    assert bool(check(text, str(DEPLOYMENT))) is refused


def test_every_problem_of_a_stock_config_in_one_report_and_the_same_from_lint(capsys):
    # etc/kamailio.cfg (5.8.5) has no WebSocket: that is what is left to add.
    orig = STOCK / "kamailio.orig.cfg"
    with pytest.raises(ContractError) as exc:
        UserConfig.load(str(orig))
    lines = exc.value.line().split("\n")
    assert lines[0].startswith(f"{orig}: 4 things to change before kamleak can run it")
    assert [ln.strip() for ln in lines[1:]] == [
        f'{orig}: does not load websocket.so; add: loadmodule "websocket.so"',
        f'{orig}: does not load xhttp.so; add: loadmodule "xhttp.so"',
        f"{orig}: does not accept HTTP without Content-Length (WebSocket); add: tcp_accept_no_cl=yes",
        f"{orig}: has no event_route[xhttp:request]; add these lines:",
        "| event_route[xhttp:request] {",
        "| \tif (ws_handle_handshake()) exit;",
        "| }",
    ]
    # `kamleak lint --contract` (or -A KAMLEAK): the same check, the same lines.
    for flags in (["--contract"], ["-A", "KAMLEAK"]):
        assert lint_main([str(orig), *flags]) != 0    # 1: lint also finds a 4140 pattern there
        out = capsys.readouterr().out.splitlines()
        start = next(i for i, ln in enumerate(out) if ": contract: " in ln)
        assert [ln.replace("contract: ", "").strip() for ln in out[start:start + len(lines) - 1]] == \
            [ln.strip() for ln in lines[1:]]
    # Without the flag lint stays a 4140 advisor.
    lint_main([str(orig)])
    assert "contract" not in capsys.readouterr().out


@pytest.mark.parametrize("name, count", [("kamailio-default-websocket", 0), ("kamailio", 4)])
def test_the_stock_configs_as_edited_meet_the_contract(name, count):
    assert len(check((STOCK / f"{name}.orig.cfg").read_text(), name)) == count
    assert check((STOCK / f"{name}.cfg").read_text(), name) == []
    assert lint_main([str(STOCK / f"{name}.cfg"), "--contract"]) == 0


def test_the_unedited_webrtc_example_is_read_over_ctl_with_kamleaks_tls_cfg():
    """JSON-RPC first; a config that serves none but loads ctl.so is read over ctl, on a
    BINRPC socket kamleak adds after the config; a TLS config path that does not exist
    where Kamailio runs is pointed at kamleak's tls.cfg.  Both are listed for the report."""
    user = UserConfig.load(str(STOCK / "kamailio-default-websocket.orig.cfg"))
    assert (user.rpc.over, user.rpc.why) == ("ctl", "jsonrpcs has no HTTP transport")
    assert user.tls_config == "/usr/local/etc/kamailio/tls.cfg"
    assert UserConfig.load(str(STOCK / "kamailio-default-websocket.cfg")).rpc.over == "jsonrpc"
    assert UserConfig.load(str(DEPLOYMENT)).rpc.over == "jsonrpc"
    assert UserConfig.load(str(DEPLOYMENT)).tls_config is None, "KAMLEAK_DIR/tls.cfg is kamleak's"
    cfg = KamailioConfig(5070, 8080, 4443, 5080, rpc_port=8081, ctl_port=8082, user_config=user,
                         provisions=user.provisions)
    text = cfg.render()
    assert cfg.ctl_socket == "tcp:127.0.0.1:8082"
    assert text.endswith('\nmodparam("ctl", "binrpc", "tcp:127.0.0.1:8082")\n')
    assert '\n#!subst "!/usr/local/etc/kamailio/tls\\.cfg!/etc/kamleak/tls.cfg!g"\n' in cfg.header()
    assert cfg.provided() == [
        "tls.cfg at /usr/local/etc/kamailio/tls.cfg (absent where Kamailio runs: kamleak's, with "
        "a throwaway certificate)",
        "RPC over ctl: jsonrpcs has no HTTP transport (kamleak's BINRPC socket tcp:127.0.0.1:8082)"]
    # Over JSON-RPC, nothing is added: the config as it was.
    json_cfg = KamailioConfig(5070, 8080, 4443, 5080, rpc_port=8081, ctl_port=8082,
                              user_config=UserConfig.load(str(DEPLOYMENT)))
    assert json_cfg.ctl_socket is None and json_cfg.trailer() == "" and json_cfg.provided() == []


def test_kamailios_line_numbers_are_cited_as_lines_of_your_file():
    """One mapping for gate, check and explore: Kamailio numbers the rendered config's
    lines (the header above yours, less the #!KAMAILIO line it replaces)."""
    path = STOCK / "kamailio-default-websocket.orig.cfg"
    user = UserConfig.load(str(path))
    cfg = KamailioConfig(5070, 8080, 4443, 5080, rpc_port=8081, ctl_port=8082, user_config=user,
                         provisions=user.provisions)
    rendered, yours = cfg.render().split("\n"), path.read_text().split("\n")
    n = next(i for i, ln in enumerate(yours, 1) if ln.startswith("event_route[xhttp:request]"))
    m = next(i for i, ln in enumerate(rendered, 1) if ln.startswith("event_route[xhttp:request]"))
    assert m > n + 20, "the header moves your lines"
    assert cfg.cite(m) == f" (your line {n}: event_route[xhttp:request] {{)"
    assert cfg.cite(1) == " (kamleak's header, line 1: #!KAMAILIO)"
    assert cfg.cite(len(rendered) - 1).startswith(" (kamleak's trailer: modparam(\"ctl\"")
    assert cfg.cite(len(rendered) + 5) == ""
    # kamleak's own config: its rendered line, as it is.
    own = KamailioConfig(5070, 8080, 4443, 5080)
    assert own.cite(3) == f" [line 3: {own.render().split(chr(10))[2].strip()}]"
    # explore's and reduce's your_line reads the same mapping.
    from kamleak.harness.stack.kamailio.cfgcheck import your_line
    error = f"ERROR: <core> [core/cfg.y:3745]: yyerror_at(): parse error in config file x, line {m}, column 2"
    assert your_line(error, cfg, user) == cfg.cite(m)


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


def test_kamailio_reads_the_pasted_block_and_refuses_it_joined_on_one_line(debian_601):
    """The paper cut: advice printed on one line (`#!ifndef KAMLEAK listen=… #!endif`), pasted
    as printed, is a config Kamailio 6.0.1's `kamailio -c` refuses; the lines as printed now
    are one it reads."""
    from kamleak.harness.stack.kamailio.cfgcheck import Checker, config_for_check
    text = DEPLOYMENT.read_text().replace("#!ifndef KAMLEAK\nlisten=udp:127.0.10.10:5060\n",
                                          "listen=udp:127.0.10.10:5060\n#!ifndef KAMLEAK\n")
    (problem,) = check(text, "my.cfg")
    block = pasted(problem.line_text("my.cfg"))
    lines = text.split("\n")

    def with_line(replacement: str) -> KamailioConfig:
        edited = "\n".join(lines[:problem.line - 1] + [replacement] + lines[problem.line:])
        return config_for_check(user_config=UserConfig(DEPLOYMENT.resolve(), edited, True))
    as_pasted, joined = Checker(*debian_601).refusals([with_line(block), with_line(" ".join(block.split("\n")))])
    assert as_pasted is None
    assert joined is not None and "bad config file" in joined, joined
