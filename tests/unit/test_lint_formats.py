"""`kamleak lint` as a linter: one short line a finding, rule codes, --explain,
--format text|json|sarif|github, ruff's exit codes, the pre-commit hook.

Run on upstream's stock configs (tests/configs/stock), the hand-written
deployment-shaped configs (tests/configs/*.cfg) and the harness's own config
in every variant of the 4140 matrix (the risky ones and their mitigations)."""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import jsonschema
import pytest

from kamleak.harness import knowledge
from kamleak.harness.stack.kamailio import KamailioConfig
from kamleak.harness.tools import lint_rules
from kamleak.harness.tools.lint import RULES, lint, main
from kamleak.scenarios.triggers import REPLY_STYLES, TRIGGERS, Variant

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "configs"
SCHEMA = ROOT / "tests" / "data" / "sarif-schema-2.1.0.json"
WIDTH = 120

# (directory, file name, defines): each linted from its own directory, as a
# user lints /etc/kamailio/kamailio.cfg.
FILES = [(p.parent, p.name, ()) for d in ("stock", "kemi") for p in sorted((CONFIGS / d).glob("*.cfg"))] + [
    (CONFIGS, "default_blf.cfg", ()), (CONFIGS, "default_blf.cfg", ("WITH_BLF", "WITH_WEBSOCKETS")),
    (CONFIGS, "mitigated_send_reply_error.cfg", ()), (CONFIGS, "unreachable_trigger.cfg", ()),
    (CONFIGS, "unreachable_trigger.cfg", ("WITH_HANGUP_NOTIFY",)), (CONFIGS, "include_main.cfg", ())]
VARIANTS = [Variant(t, r, off) for t, r, off in
            itertools.product(TRIGGERS, REPLY_STYLES, (False, True))]
BUILDS = ([], ["--kamailio-version", "5.6.3"], ["--kamailio-version", "6.0.1"],
          ["--kamailio-version", "6.1.5"], ["--kamailio-version", "5.8.5"],
          ["--kamailio-image", "ghcr.io/kamailio/kamailio:5.8.5-bookworm"])


@pytest.fixture(autouse=True)
def no_source(monkeypatch, tmp_path):
    """Upstream releases answered from the recorded first tags (no repository)."""
    monkeypatch.delenv("KAMLEAK_KAMAILIO_SOURCE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def rendered(variant: Variant) -> str:
    return KamailioConfig(udp_port=5060, ws_port=8080, wss_port=4443, pbx_port=5080,
                          defines=variant.defines).render()


def cases(tmp_path):
    """(directory, name, defines) for every config above, the variants written out."""
    out = list(FILES)
    for v in VARIANTS:
        d = tmp_path / v.name
        d.mkdir()
        (d / "kamailio.cfg").write_text(rendered(v))
        out.append((d, "kamailio.cfg", ()))
    return out


def run(capsys, monkeypatch, directory, name, *args) -> tuple[int, str, str]:
    monkeypatch.chdir(directory)
    rc = main([name, *args])
    got = capsys.readouterr()
    return rc, got.out, got.err


def test_every_line_is_under_120_characters(capsys, monkeypatch, tmp_path):
    seen = set()
    for (d, name, defines), build in itertools.product(cases(tmp_path), BUILDS):
        flags = [x for n in defines for x in ("-A", n)]
        rc, out, err = run(capsys, monkeypatch, d, name, *flags, *build)
        lines = (out + err).splitlines()
        assert lines and rc in (0, 1), (name, build, err)
        long = [ln for ln in lines if len(ln) >= WIDTH]
        assert not long, (name, defines, build, long)
        seen |= {m[1] for m in re.finditer(r"^\S+:\d+:\d+: (KL\d+) ", out, re.M)}
    # The fixtures reach the rules that matter (the risky and the safe alike).
    assert {"KL003", "KL101", "KL102", "KL104", "KL4140", "KL4142", "KL4143", "KL4144",
            "KL4145"} <= seen, seen


def test_a_finding_is_one_line_path_line_col_code_message(capsys, monkeypatch):
    rc, out, _ = run(capsys, monkeypatch, CONFIGS / "stock", "kamailio-default-websocket.trigger.cfg",
                     "--kamailio-version", "6.0.1")
    assert rc == 1
    text = (CONFIGS / "stock" / "kamailio-default-websocket.trigger.cfg").read_text().split("\n")
    line = next(k for k, ln in enumerate(text, 1) if ln.strip() == "sl_reply_error();"
                and "t_relay()" in text[k - 2])
    col = text[line - 1].index("sl_reply_error") + 1
    head = [ln for ln in out.splitlines() if " KL4140 " in ln]
    assert head == [f"kamailio-default-websocket.trigger.cfg:{line}:{col}: KL4140 sl_reply_error() on "
                    "t_relay() failure leaks the transaction"]
    assert f"    t_relay() at line {line - 1} in route[RELAY]" in out
    # What the run says once is said once: the mechanism is behind --explain,
    # how the build is answered is on stderr.
    assert out.count("t_unref") == 0 and out.count("bd0aaf89b8") == 1
    assert "--explain" in out.splitlines()[-1]


def test_no_source_repository_is_said_once_a_run(capsys, monkeypatch, tmp_path):
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text(rendered(Variant.parse("t_uac_send")))
    rc, out, err = run(capsys, monkeypatch, tmp_path, "kamailio.cfg", "--kamailio-version", "5.8.5")
    assert rc == 1
    assert err.count("not from git") == 1 and err.count("--kamailio-source") == 1
    assert "not from git" not in out and "--kamailio-source" not in out
    # No test file of kamleak's is cited to a user.
    assert "tests/" not in out + err


@pytest.mark.parametrize("code", list(RULES))
def test_explain_prints_the_mechanism_once(capsys, code):
    assert main(["--explain", code.lower()]) == 0
    out = capsys.readouterr().out
    rule = RULES[code]
    flat = " ".join(out.split())
    assert flat.count(" ".join(rule.mechanism.split())) == 1
    assert out.startswith(f"{code} ({rule.name}, {rule.level}): ")
    for key in rule.fixes:
        fix = knowledge.FIXES[key]
        assert flat.count(f"- {fix.commit}") == 1          # each commit once, with its first tag
        assert f"first tag: {', '.join(fix.first_tags()) or 'none yet (master only)'}" in flat
    assert all(len(ln) < WIDTH for ln in out.splitlines())


def test_explain_for_a_build_says_what_it_has(capsys):
    assert main(["--explain", "KL4140", "--kamailio-version", "6.0.1"]) == 0
    out = capsys.readouterr().out
    assert "Debian's Kamailio 6.0.1 lacks bd0aaf89b8" in out
    assert "Debian's Kamailio 6.0.1 has 130dc00c17" in out
    assert 'delayed_reply", 0) also avoids' not in out.split("Fix")[1]   # 6.0.1 refuses it


def test_json_is_the_findings(capsys, monkeypatch):
    rc, out, _ = run(capsys, monkeypatch, CONFIGS, "default_blf.cfg", "-A", "WITH_BLF",
                     "--kamailio-version", "5.6.3", "--format", "json")
    assert rc == 1
    got = json.loads(out)
    want = lint((CONFIGS / "default_blf.cfg").read_text(), defines={"WITH_BLF"}, version="5.6.3",
                path="default_blf.cfg")
    assert [(r["code"], r["line"], r["column"], r["message"], r["notes"]) for r in got] == \
        [(f.code, f.line, f.col, f.message, list(f.advice)) for f in want]
    assert got[0]["name"] == "relay-failure-stateless-reply" and got[0]["level"] == "leak"


def test_sarif_validates_against_the_sarif_2_1_0_schema(capsys, monkeypatch, tmp_path):
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())
    results = 0
    for d, name, defines in cases(tmp_path)[::3] + FILES:
        flags = [x for n in defines for x in ("-A", n)]
        rc, out, _ = run(capsys, monkeypatch, d, name, *flags, "--kamailio-version", "5.6.3",
                         "--format", "sarif")
        log = json.loads(out)
        validator.validate(log)
        run_ = log["runs"][0]
        rules = [r["id"] for r in run_["tool"]["driver"]["rules"]]
        for r in run_["results"]:
            assert rules[r["ruleIndex"]] == r["ruleId"]
            assert r["locations"][0]["physicalLocation"]["region"]["startColumn"] >= 1
        results += len(run_["results"])
    assert results
    # The schema rejects what is not SARIF: the validation can fail.
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"version": "2.1.0", "runs": [{"results": []}]})


def test_github_annotations(capsys, monkeypatch, tmp_path):
    d = tmp_path / "a,b:c"
    d.mkdir()
    (d / "kamailio.cfg").write_text(rendered(Variant.parse("uac_req_send")))
    rc, out, _ = run(capsys, monkeypatch, tmp_path, "a,b:c/kamailio.cfg", "--kamailio-version", "6.0.1",
                     "--format", "github")
    assert rc == 1
    (line,) = out.splitlines()
    m = re.fullmatch(r"::error file=([^,]+),line=(\d+),col=(\d+),title=KL4140::(.+)", line)
    assert m and m[1] == "a%2Cb%3Ac/kamailio.cfg"
    assert m[4].startswith("sl_reply_error() on t_relay() failure leaks the transaction%0A")


def test_exit_codes_as_ruffs(capsys, monkeypatch, tmp_path):
    def rc(*args):
        monkeypatch.chdir(tmp_path)
        code = main(list(args))
        capsys.readouterr()
        return code

    (tmp_path / "leak.cfg").write_text(rendered(Variant.parse("uac_req_send")))
    (tmp_path / "safe.cfg").write_text(rendered(Variant.parse("uac_req_send+send_reply_error")))
    (tmp_path / "plain.cfg").write_text(rendered(Variant.parse("none")))
    (tmp_path / "lua.cfg").write_text('loadmodule "app_lua.so"\ncfgengine "lua"\n')
    assert rc("plain.cfg") == 0                                      # no finding
    assert rc("safe.cfg", "--kamailio-version", "6.0.1") == 0        # a note (KL4142) only
    assert rc("leak.cfg") == 1
    assert rc("leak.cfg", "--format", "sarif") == 1
    assert rc("safe.cfg", "--kamailio-version", "5.6.3") == 1        # KL101: Kamailio refuses it
    assert rc("lua.cfg") == 1                                        # KL001: lint cannot read it
    assert rc("missing.cfg") == 2
    assert rc("leak.cfg", "--kamailio-version", "6.0.1", "--kamailio-image", "x") == 2
    assert rc() == 2
    assert rc("--explain", "KL9999") == 2


def test_kamailio_version_master_points_to_kamailio_ref(capsys):
    assert main([str(CONFIGS / "default_blf.cfg"), "--kamailio-version", "master"]) == 2
    err = capsys.readouterr().err
    assert err == ("kamleak lint: --kamailio-version 'master' is not a release number like 5.8.5; "
                   "for a git ref: --kamailio-ref master\n")


def test_the_kamleak_command_exits_2_on_bad_usage(capsys):
    from kamleak.harness.tools.cli import main as kamleak
    with pytest.raises(SystemExit) as exc:
        kamleak(["lint", "x.cfg", "--format", "xml"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_the_pre_commit_hook_runs_kamleak_lint_on_kamailio_configs():
    yaml = pytest.importorskip("yaml")
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert (hook["id"], hook["entry"], hook["language"]) == ("kamleak-lint", "kamleak lint", "python")
    files, exclude = re.compile(hook["files"]), re.compile(hook["exclude"])

    def linted(path):
        return bool(files.search(path)) and not exclude.search(path)

    assert all(linted(p) for p in ("kamailio.cfg", "etc/kamailio-local.cfg", "x/router.cfg"))
    assert not any(linted(p) for p in ("kamailio.cfg.orig", "setup.py", "setup.cfg", "a/tox.cfg"))
    # pre-commit passes the files it matched as arguments: lint takes several.
    assert hook["pass_filenames"] is True
    assert 'kamleak = "kamleak.harness.tools.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_several_configs_in_one_run_as_pre_commit_passes_them(capsys, monkeypatch):
    # An included fragment alone has no request_route: a note, not a failure.
    rc, out, _ = run(capsys, monkeypatch, CONFIGS, "include_main.cfg", "include/withindlg.cfg",
                     "default_blf.cfg")
    assert rc == 1
    lines = out.splitlines()
    assert any(ln.startswith("include_main.cfg:") and " KL4140 " in ln for ln in lines)
    assert "include/withindlg.cfg:1:1: KL002 no request_route: nothing to check" in lines
    assert "default_blf.cfg: ok: no issue-4140 pattern found" in lines
    assert sum("--explain" in ln for ln in lines) == 1
    rc, out, _ = run(capsys, monkeypatch, CONFIGS, "include/withindlg.cfg", "default_blf.cfg")
    assert rc == 0


def test_every_rule_is_in_the_docs_table():
    page = (ROOT / "docs" / "lint.md").read_text()
    for code, rule in RULES.items():
        assert re.search(rf"^\| `{code}` \| {re.escape(rule.name)} \| {rule.level} \|", page, re.M), code
    assert lint_rules.BY_NAME["relay-failure-stateless-reply"].code == "KL4140"


def test_contract_problems_are_kl201_findings_outside_text(capsys, monkeypatch):
    from kamleak.harness.stack.kamailio.user_config import check
    stock = CONFIGS / "stock"
    want = check((stock / "kamailio.orig.cfg").read_text(), "kamailio.orig.cfg")
    assert want
    rc, out, _ = run(capsys, monkeypatch, stock, "kamailio.orig.cfg", "--contract", "--format", "json")
    got = [r for r in json.loads(out) if r["code"] == "KL201"]
    assert rc == 1 and [r["message"] for r in got] == [p.what for p in want]
    assert all(r["level"] == "error" and r["notes"][0].startswith("add: ") for r in got)
    rc, out, _ = run(capsys, monkeypatch, stock, "kamailio.cfg", "--contract", "--format", "json")
    assert rc == 0 and not [r for r in json.loads(out) if r["code"] == "KL201"]
