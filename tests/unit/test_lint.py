"""`kamleak lint`: the static issue-4140 advisor (harness/tools/lint.py)."""
from __future__ import annotations

import itertools
import re
from functools import cache
from pathlib import Path

import pytest

from kamleak.harness import knowledge
from kamleak.harness.stack.kamailio import KamailioConfig
from kamleak.harness.tools.lint import Finding, lint, lint_file, main, parse_version, resolve_build
from kamleak.scenarios.triggers import REPLY_STYLES, TRIGGERS, Variant, expected

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Debian's builds (observed) and upstream releases (answered from the first tags
# kamleak records, or from git when a source is at hand: the same answers).
VERSIONS = ("5.6.3", "6.0.1", "6.1.5", "5.8.1", "5.8.5", "5.8.8", "6.0.7", "6.1.4")
VARIANTS = [Variant(t, r, off) for t, r, off in
            itertools.product(TRIGGERS, REPLY_STYLES, (False, True))]


@cache
def rendered(variant: Variant) -> str:
    return KamailioConfig(udp_port=5060, ws_port=8080, wss_port=4443, pbx_port=5080,
                          defines=variant.defines).render()


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the NTH line containing NEEDLE (outside comments)."""
    hits = [k for k, line in enumerate(text.split("\n"), 1)
            if needle in line and not line.lstrip().startswith("#")]
    return hits[nth - 1]


def levels(findings: list[Finding]) -> set[str]:
    return {f.level for f in findings}


def said(f: Finding) -> str:
    """A finding's line and its notes, as one string."""
    return " ".join([f.message, *f.advice])


# ---------------------------------------------------------------------------
# The harness's own config, every variant of the 4140 matrix

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_matrix_matches_expected(variant, version):
    text = rendered(variant)
    build = resolve_build(version=version)
    findings = lint(text, build=build)
    want = expected(build.prov, variant)
    assert want != "unknown"
    leaks = [f for f in findings if f.level == "leak"]
    if want == "leak":
        assert len(leaks) == 1, findings
        leak = leaks[0]
        assert leak.code == "KL4140"
        assert leak.line == line_of(text, "sl_reply_error();")
        assert f"t_relay() at line {line_of(text, 't_relay()')}" in said(leak)
        # The trigger lines are cited.
        if variant.trigger == "uac_req_send":
            assert f"uac_req_send() at line {line_of(text, 'uac_req_send();')}" in said(leak)
        elif variant.trigger == "t_uac_send":
            assert f"t_uac_send() at line {line_of(text, 't_uac_send(')}" in said(leak)
        else:
            assert f"pua_dialoginfo.so at line {line_of(text, 'pua_dialoginfo.so')}" in said(leak)
            assert f"dlg_manage() at line {line_of(text, 'dlg_manage();')}" in said(leak)
    else:
        assert not leaks, findings
    if want == "n/a":
        errors = [f for f in findings if f.level == "error"]
        assert errors, findings
        for e in errors:
            # The error names the fix's commit and first tag from knowledge.
            key = "delayed_reply" if e.code == "KL102" else variant.reply
            if e.code == "KL102":
                assert e.line == line_of(text, 'modparam("tm", "delayed_reply", 0)')
            else:
                assert e.code == "KL101"
                assert e.line == line_of(text, f"{variant.reply}();")
            fix = knowledge.FIXES[key]
            assert f"lacks {fix.commit} (upstream: {fix.first_tag}" in said(e)
    else:
        assert levels(findings) <= ({"leak"} if want == "leak" else {"info"}), findings
    if version == "6.1.5":
        assert levels(findings) <= {"info"}
    # Every 4140 finding names the build and what it has, once; no note repeats
    # what the run says once (how the build is answered, distributions' backports).
    for f in findings:
        assert f.code == "KL4142" and "_error" not in f.anchor or \
            any(a.startswith(build.prov.label) for a in f.advice), f
        assert not any("backport" in a or build.how in a for a in f.advice), f


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_upstream_refs_answered_from_git(variant, offline_source):
    """--kamailio-ref builds: lint agrees with the scenario's expectation, both
    answered from git (ancestry) in the offline history."""
    text = rendered(variant)
    for ref in ("5.8.5", "6.1.4", "master"):
        build = resolve_build(ref=ref, source=offline_source)
        assert build.prov.kind == "upstream" and "answered from git" in build.how
        want = expected(build.prov, variant)
        found = lint(text, build=build)
        got = ("n/a" if any(f.level == "error" for f in found) else
               "leak" if any(f.level == "leak" for f in found) else "clean")
        assert got == want, (ref, found)


def test_explain_advice_is_build_aware():
    from kamleak.harness.tools.lint_rules import explain
    old = explain("KL4140", resolve_build(version="5.6.3"))
    assert 'send_reply("500"' in old
    assert "130dc00c17: send_reply_error() in the sl module; first tag: 5.8.0" in old
    assert "Debian's Kamailio 5.6.3 lacks 130dc00c17" in old
    six0 = explain("KL4140", resolve_build(version="6.0.1")).split("Fix")[1]
    assert "send_reply_error()" in six0 and "t_reply_error()" in six0
    assert 'modparam("tm", "delayed_reply", 0) also' not in six0    # Debian's 6.0.1 refuses it
    assert 'modparam("tm", "delayed_reply", 0) also' in \
        explain("KL4140", resolve_build(version="6.1.5")).split("Fix")[1]
    six1 = lint(rendered(Variant.parse("uac_req_send")), version="6.1.5")
    assert [(f.level, f.code) for f in six1] == [("info", "KL4144")]
    assert "Debian's Kamailio 6.1.5 has bd0aaf89b8" in said(six1[0])


def test_upstream_releases_without_the_t_unref_change_leak(monkeypatch, tmp_path):
    """Issue 13: upstream 6.1.4 lacks bd0aaf89b8 (master only): a leak, not the
    'tm frees such orphaned transactions' note generalised from Debian's 6.1.5.
    Without a source repository lint says it answers from the recorded tags."""
    monkeypatch.delenv("KAMLEAK_KAMAILIO_SOURCE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    text = rendered(Variant.parse("uac_req_send"))
    for v in ("5.8.5", "5.8.8", "6.0.7", "6.1.4"):
        (f,) = lint(text, version=v)
        assert (f.level, f.code) == ("leak", "KL4140"), f
        assert f"upstream Kamailio {v} lacks bd0aaf89b8 (upstream: no release, master only; " \
               "recorded tags)" in f.advice
        assert "not from git" in resolve_build(version=v).how
    # send_reply_error()/t_reply_error() exist since 5.8.0: 5.8.x accepts and is mitigated.
    for reply in ("send_reply_error", "t_reply_error"):
        (f,) = lint(rendered(Variant.parse(f"uac_req_send+{reply}")), version="5.8.5")
        assert (f.level, f.code) == ("info", "KL4142"), f
    # delayed_reply: 6.1.0.
    assert "KL102" in {f.code for f in lint(rendered(Variant.parse(
        "uac_req_send+delayed_reply_off")), version="6.0.7")}
    assert {f.code for f in lint(rendered(Variant.parse("uac_req_send+delayed_reply_off")),
                                 version="6.1.4")} == {"KL4143"}


def test_image_of_unknown_provenance_says_what_it_cannot_know():
    build = resolve_build(image="ghcr.io/kamailio/kamailio:5.8.5-bookworm")
    (f,) = lint(rendered(Variant.parse("uac_req_send")), build=build)
    assert f.level == "leak" and "kamleak check" in said(f)
    found = lint(rendered(Variant.parse("uac_req_send+send_reply_error")), build=build)
    assert {f.code for f in found} == {"KL4142", "KL104"}
    assert all("kamleak check" in said(f) for f in found if f.code == "KL104")


def test_matrix_without_version_flags_the_leak_for_older_kamailio():
    text = rendered(Variant.parse("pua_dialoginfo"))
    (f,) = lint(text)
    assert f.level == "leak" and "bd0aaf89b8" in said(f)
    assert lint(rendered(Variant.parse("pua_dialoginfo+delayed_reply_off")))[0].level == "info"
    assert levels(lint(rendered(Variant.parse("t_uac_send+t_reply_error")))) == {"info"}


def test_matrix_defines_can_come_from_the_command_line_style_defines():
    # The same body with the variant passed as -A instead of the rendered header.
    plain = KamailioConfig(udp_port=5060, ws_port=8080, wss_port=4443, pbx_port=5080).render()
    assert not lint(plain, version="5.6.3")
    (f,) = lint(plain, version="5.6.3", defines={"WITH_TRIGGER_T_UAC_SEND"})
    assert f.level == "leak" and f.line == line_of(plain, "sl_reply_error();")


# ---------------------------------------------------------------------------
# Hand-written configs shaped like deployments

def test_default_config_with_blf_block():
    path = CONFIGS / "default_blf.cfg"
    text = path.read_text()
    assert lint_file(str(path), version="5.8.5") == []          # BLF off: stock config, no leak
    findings = lint_file(str(path), defines={"WITH_BLF", "WITH_WEBSOCKETS"}, version="5.8.5")
    (leak,) = findings
    assert leak.level == "leak" and leak.path is None
    assert leak.line == line_of(text, "sl_reply_error();") == 176   # in route[RELAY], not REGISTRAR
    assert leak.col == text.split("\n")[175].index("sl_reply_error") + 1
    assert "t_relay() at line 175" in said(leak)
    assert "pua_dialoginfo.so at line 72" in said(leak)
    # FLT_DIALOG is a #!define used by modparam("dialog", "dlg_flag") and setflag().
    assert "setflag(4) (dialog's dlg_flag) at line 142" in said(leak)
    assert [f.level for f in lint_file(str(path), defines={"WITH_BLF"}, version="6.1.5")] == ["info"]


def test_default_config_blf_needs_tracked_dialogs():
    text = (CONFIGS / "default_blf.cfg").read_text().replace("setflag(FLT_DIALOG);", "")
    findings = lint(text, defines={"WITH_BLF"}, version="6.0.1")
    assert not [f for f in findings if f.level == "leak"]
    (note,) = findings
    assert note.level == "info" and note.line == 72 and "no dialog is tracked" in note.message
    assert note.code == "KL4146"


def test_trigger_in_unreachable_route_does_not_count():
    path = CONFIGS / "unreachable_trigger.cfg"
    text = path.read_text()
    findings = lint_file(str(path), version="6.0.1")
    assert "leak" not in levels(findings)
    by_line = {f.line: f for f in findings}
    uac = by_line[line_of(text, "uac_req_send();")]
    assert uac.level == "info" and "route[NOTIFY_HANGUP] is not reached" in uac.message
    tuac = by_line[line_of(text, "t_uac_send(")]
    assert tuac.level == "info" and "failure_route[MISSED]" in tuac.message
    assert uac.code == tuac.code == "KL4145"
    # Wired in through the #!ifdef (not through the commented-out calls): it leaks.
    findings = lint_file(str(path), defines={"WITH_HANGUP_NOTIFY"}, version="6.0.1")
    (leak,) = [f for f in findings if f.level == "leak"]
    assert leak.line == line_of(text, "sl_reply_error();")
    assert f"uac_req_send() at line {line_of(text, 'uac_req_send();')}" in said(leak)
    assert "request_route -> route[NOTIFY_HANGUP]" in said(leak)


def test_mitigated_config_with_send_reply_error():
    path = CONFIGS / "mitigated_send_reply_error.cfg"
    text = path.read_text()
    reply = line_of(text, "send_reply_error();")
    for version in ("6.0.1", "6.1.5", None):
        (f,) = lint_file(str(path), version=version)
        assert (f.level, f.code, f.line) == ("info", "KL4142", reply)
        assert f"t_uac_send() at line {line_of(text, 't_uac_send(')}" in said(f)
    # Debian's 5.6.3 lacks the function (upstream 5.8.0): Kamailio refuses the config.
    (f,) = lint_file(str(path), version="5.6.3")
    assert (f.level, f.code, f.line) == ("error", "KL101", reply)
    assert "upstream: 5.8.0" in said(f) and "130dc00c17" in said(f)
    # Upstream 5.8.5 has it (lint once said 'does not exist before 6.0').
    (f,) = lint_file(str(path), version="5.8.5")
    assert (f.level, f.code) == ("info", "KL4142")


def test_trigger_in_included_file_and_reply_in_called_route():
    path = CONFIGS / "include_main.cfg"
    text = path.read_text()
    inc = CONFIGS / "include" / "withindlg.cfg"
    findings = lint_file(str(path), version="5.6.3")
    (leak,) = [f for f in findings if f.level == "leak"]
    assert leak.path is None and leak.line == line_of(text, "sl_reply_error();")
    assert "sl_reply_error() in route[RELAY_ERROR]" in said(leak)
    assert f"{inc}:{line_of(inc.read_text(), 'uac_req_send();')}" in said(leak)
    (missing,) = [f for f in findings if f.code == "KL003"]
    assert missing.level == "info" and missing.line == line_of(text, "import_file")


def test_missing_include_file_is_a_warning(tmp_path):
    cfg = tmp_path / "k.cfg"
    cfg.write_text('loadmodule "tm.so"\ninclude_file "nope.cfg"\nrequest_route { exit; }\n')
    (f,) = lint_file(str(cfg))
    assert (f.level, f.code, f.line, f.col) == ("warning", "KL003", 2, 1)


# ---------------------------------------------------------------------------
# The language: small configs

HEAD = 'loadmodule "tm.so"\nloadmodule "sl.so"\nloadmodule "uac.so"\nloadmodule "dialog.so"\n'
RELAY = 'route[RELAY] {\n\tif (!t_relay()) {\n\t\tsl_reply_error();\n\t}\n\texit;\n}\n'


def leaks(text, **kw):
    return [f for f in lint(text, version="6.0.1", **kw) if f.level == "leak"]


def test_comments_strings_and_directives():
    text = HEAD + (
        'request_route {\n'
        '\txlog("L_INFO", "# not a comment; uac_req_send(); // neither\\n");\n'
        "\t# uac_req_send();\n"
        "\t// uac_req_send();\n"
        "\t/* uac_req_send();\n"
        "\t#!define WITH_X\n"                    # inside a comment: no directive
        "\t*/\n"
        "#!ifdef WITH_X\n"
        "\tuac_req_send();\n"
        "#!endif\n"
        "\troute(RELAY);\n"
        "}\n") + RELAY
    assert not leaks(text)
    (f,) = leaks(text, defines={"WITH_X"})
    assert "uac_req_send() at line 13" in said(f) and f.line == 19


def test_multiline_string_hides_calls():
    text = HEAD + 'request_route {\n\txlog("L_INFO", "a\nroute(TRIG);\nb");\n\troute(RELAY);\n}\n' \
        + 'route[TRIG] {\n\tuac_req_send();\n}\n' + RELAY
    assert not leaks(text)


def test_ifndef_else_nesting_and_trydef():
    text = HEAD + (
        "#!trydef MODE 1\n#!trydef MODE 2\n"
        "request_route {\n"
        "#!ifndef WITH_QUIET\n"
        "#!ifdef WITH_OTHER\n\tsl_send_reply(\"403\", \"x\");\n#!else\n"
        "\tt_uac_send(\"MESSAGE\", \"sip:a@b\", \"\", \"\", \"\", \"\");\n#!endif\n"
        "#!endif\n"
        "\troute(RELAY);\n}\n") + RELAY
    assert len(leaks(text)) == 1
    assert not leaks(text, defines={"WITH_QUIET"})
    assert not leaks(text, defines={"WITH_OTHER"})


def test_define_values_are_substituted_in_code():
    text = HEAD + ("#!define NOTIFY_ROUTE NOTIFY\n"
                   "request_route {\n\troute(NOTIFY_ROUTE);\n\troute(RELAY);\n}\n"
                   "route[NOTIFY] {\n\tuac_req_send();\n}\n") + RELAY
    assert len(leaks(text)) == 1
    # -A NAME=VALUE works the same way.
    text2 = text.replace("#!define NOTIFY_ROUTE NOTIFY\n", "")
    assert len(leaks(text2, defines={"NOTIFY_ROUTE=NOTIFY"})) == 1


def test_positive_relay_with_else_branch_and_not_keyword():
    body = 'request_route {\n\tuac_req_send();\n\tif (t_relay()) {\n\t\texit;\n\t} else {\n' \
           '\t\tsl_reply_error();\n\t}\n}\n'
    (f,) = leaks(HEAD + body)
    assert f.line == 10
    body2 = 'request_route {\n\tuac_req_send();\n\tif (not t_relay())\n\t\tsl_reply_error();\n}\n'
    assert [f.line for f in leaks(HEAD + body2)] == [8]


def test_stateless_or_missing_reply_is_a_warning_not_a_leak():
    for failure in ('sl_send_reply("500", "Relay failed");', 'xlog("relay failed\\n");'):
        text = HEAD + 'request_route {\n\tuac_req_send();\n\tif (!t_relay()) {\n\t\t' + failure \
            + '\n\t}\n}\n'
        findings = lint(text, version="5.6.3")
        assert [f.level for f in findings] == ["warning"] and findings[0].code == "KL4141"
    # t_relay() under t_check_trans() (ACK/CANCEL idiom) is not a site.
    text = HEAD + 'request_route {\n\tuac_req_send();\n\tif (t_check_trans()) {\n\t\tt_relay();\n\t}\n}\n'
    assert lint(text, version="5.6.3") == []


def test_stateful_reply_on_failure_branch_is_mitigated():
    text = HEAD + 'request_route {\n\tuac_req_send();\n\tif (!t_relay()) {\n' \
        '\t\tsend_reply("500", "Server Error");\n\t}\n}\n'
    (f,) = lint(text, version="5.6.3")
    assert (f.level, f.code) == ("info", "KL4142")


def test_branch_route_and_dialog_end_event_route_count():
    branch = HEAD + 'request_route {\n\tt_on_branch("B");\n\troute(RELAY);\n}\n' \
        'branch_route[B] {\n\tuac_req_send();\n}\n' + RELAY
    assert len(leaks(branch)) == 1
    dlg = HEAD + 'request_route {\n\tif (is_method("INVITE")) dlg_manage();\n\troute(RELAY);\n}\n' \
        'event_route[dialog:end] {\n\tuac_req_send();\n}\n' + RELAY
    (f,) = leaks(dlg)
    assert "event_route[dialog:end]" in said(f)
    # Without tracked dialogs the event route never runs.
    assert not leaks(dlg.replace("dlg_manage();", "xlog(\"x\");"))


def test_pua_dialoginfo_send_publish_flag():
    text = HEAD + 'loadmodule "pua.so"\nloadmodule "pua_dialoginfo.so"\n' \
        'modparam("pua_dialoginfo", "send_publish_flag", 9)\n' \
        'request_route {\n\tdlg_manage();\n\troute(RELAY);\n}\n' + RELAY
    findings = lint(text, version="6.0.1")
    assert "leak" not in levels(findings)
    assert any("send_publish_flag" in f.message for f in findings)
    flagged = text.replace("\tdlg_manage();\n", "\tdlg_manage();\n\tsetflag(9);\n")
    assert len(leaks(flagged)) == 1


def test_dynamic_route_calls_make_unreached_triggers_warnings():
    text = HEAD + 'request_route {\n\troute($var(next));\n\troute(RELAY);\n}\n' \
        'route[MAYBE] {\n\tuac_req_send();\n}\n' + RELAY
    findings = lint(text, version="6.0.1")
    (f,) = [f for f in findings if f.code == "KL4145"]
    assert f.level == "warning" and "dynamic" in f.message and "line 6" in said(f)
    assert "leak" not in levels(findings)


def test_kemi_says_lint_reads_native_routing_only_and_points_to_the_gate():
    text = HEAD + 'loadmodule "app_lua.so"\ncfgengine "lua"\n'
    (f,) = lint(text)
    assert (f.level, f.code, f.line, f.col) == ("warning", "KL001", 6, 1)
    assert f.message == 'cfgengine "lua": lint reads native routing only; run kamleak gate'
    assert "kamleak gate --kamailio-config" in f.rule.advice


def test_unbalanced_ifdef_is_reported():
    text = HEAD + "#!ifdef X\nrequest_route { exit; }\n"
    assert any(f.code == "KL004" for f in lint(text, defines={"X"}))


def test_parse_version():
    assert parse_version("kamailio 5.8.5 (x86_64/linux) ") == (5, 8, 5)
    assert parse_version("6.1") == (6, 1, 0)
    assert parse_version(None) is None
    with pytest.raises(ValueError):
        parse_version("latest")


# ---------------------------------------------------------------------------
# CLI

LINE = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<code>KL\d+) \S")


def test_cli_leak_exit_1_and_format(capsys):
    path = str(CONFIGS / "default_blf.cfg")
    rc = main([path, "--define", "WITH_BLF", "-A", "WITH_NAT", "--kamailio-version", "5.6.3"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1
    m = LINE.match(out[0])
    assert m and m["path"] == path and m["line"] == "176" and m["code"] == "KL4140"
    assert all(line.startswith("    ") for line in out[1:-1]) and len(out) > 2
    assert "kamleak lint --explain CODE" in out[-1]


def test_cli_clean_exit_0(capsys):
    path = str(CONFIGS / "default_blf.cfg")
    assert main([path]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: ok: no issue-4140 pattern found"
    # Notes alone (info) do not fail the run.
    assert main([path, "--define", "WITH_BLF", "--kamailio-version", "6.1.5"]) == 0
    assert LINE.match(capsys.readouterr().out.splitlines()[0])["code"] == "KL4144"


def test_cli_errors_exit_1_as_any_finding(capsys):
    path = str(CONFIGS / "mitigated_send_reply_error.cfg")
    assert main([path, "--kamailio-version", "5.6.3"]) == 1
    assert LINE.match(capsys.readouterr().out.splitlines()[0])["code"] == "KL101"


@pytest.mark.parametrize("target", ["missing.cfg", "."])
def test_cli_unreadable_file_one_line_exit_2(capsys, tmp_path, target):
    rc = main([str(tmp_path / target)])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "cannot read" in lines[0]


def test_cli_bad_version_exit_2(capsys):
    assert main([str(CONFIGS / "default_blf.cfg"), "--kamailio-version", "latest"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


# ---------------------------------------------------------------------------
# PR 3403: drop in event_route[tm:local-request], on the harness's own variants

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ["t_uac_send+drop", "uac_req_send+drop", "t_uac_send",
                                  "uac_req_send"])
def test_local_request_drop_flagged_exactly_where_pr3403_measures_a_leak(name, version):
    from kamleak.scenarios import pr3403_local_request_drop as pr3403

    variant = pr3403.parse_variant(name)
    text = KamailioConfig(udp_port=5060, ws_port=8080, wss_port=4443, pbx_port=5080,
                          defines=variant.defines).render()
    build = resolve_build(version=version)
    found = [f for f in lint(text, build=build) if f.code == "KL3403"]
    want = pr3403.expected(build.prov, variant)
    if not variant.drop:
        assert found == []
    elif want == "leak":
        drop_line = line_of(text, "dropping local") + 1
        assert [(f.level, f.line) for f in found] == [("leak", drop_line)]
        assert "PR 3403" in found[0].message and found[0].advice
        assert found[0].col == text.split("\n")[drop_line - 1].index("drop") + 1
    else:
        assert [f.level for f in found] == ["info"]


def test_a_non_ascii_letter_in_config_code_is_no_crash():
    """Kamailio's names are ASCII; an 'é' outside comments and strings (a typo,
    a Latin-1 byte read back) must not crash the preprocessor."""
    from kamleak.harness.tools.lint import lint
    text = ('#!KAMAILIO\nloadmodule "tm.so"\nrequest_route {\n  $var(x) = 1; é\n'
            '  if (!t_relay()) sl_reply_error();\n}\n')
    assert isinstance(lint(text), list)


@pytest.fixture
def offline_source():
    import os
    env = os.environ.get("KAMLEAK_KAMAILIO_SOURCE")
    offline = Path(__file__).resolve().parents[3] / "shared" / "kamailio-src" / "kamailio.git.tar.gz"
    loc = env if env and os.path.exists(env) else str(offline) if offline.exists() else None
    if not loc:
        pytest.skip("no offline Kamailio history (../shared/kamailio-src or KAMLEAK_KAMAILIO_SOURCE)")
    return loc


@pytest.mark.parametrize("version,want", [("5.8.1", "leak"), ("5.8.2", "info"),
                                          ("6.0.0", "info"), ("5.6.3", "leak")])
def test_pr3403_fixed_in_5_8_2_and_6_0_0(version, want, monkeypatch, tmp_path):
    monkeypatch.delenv("KAMLEAK_KAMAILIO_SOURCE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from kamleak.scenarios import pr3403_local_request_drop as pr3403
    text = KamailioConfig(udp_port=5060, ws_port=8080, wss_port=4443, pbx_port=5080,
                          defines=pr3403.parse_variant("t_uac_send+drop").defines).render()
    (f,) = [f for f in lint(text, version=version) if f.code == "KL3403"]
    assert f.level == want and "fc54fdcd67" in said(f)


def test_cli_upstream_6_1_4_leaks_exit_1(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("KAMLEAK_KAMAILIO_SOURCE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = tmp_path / "k.cfg"
    path.write_text(rendered(Variant.parse("uac_req_send")))
    assert main([str(path), "--kamailio-version", "6.1.4"]) == 1
    err = capsys.readouterr().err
    assert "about upstream Kamailio 6.1.4" in err and "not from git" in err
    assert main([str(path), "--kamailio-version", "6.1.4", "--kamailio-image", "x"]) == 2
