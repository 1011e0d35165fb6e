"""Source builds without Docker: ref resolution, the module list, the knowledge table.

Git questions are asked of upstream's real history (the offline copy beside
the checkout, or $KAMLEAK_KAMAILIO_SOURCE when it is a local path); without
it those tests skip.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kamleak.harness import knowledge
from kamleak.harness.errors import UsageError
from kamleak.harness.stack import source_build

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = ROOT.parent / "shared" / "kamailio-src" / "kamailio.git.tar.gz"


def offline_source() -> str | None:
    env = os.environ.get(source_build.SOURCE_ENV)
    if env and os.path.exists(env):
        return env
    return str(OFFLINE) if OFFLINE.exists() else None


@pytest.fixture
def source(tmp_path, monkeypatch):
    loc = offline_source()
    if not loc:
        pytest.skip("no offline Kamailio history (../shared/kamailio-src or KAMLEAK_KAMAILIO_SOURCE)")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return source_build.Source(loc)


def test_refs_resolve_to_commits(source):
    tag = source.resolve("5.8.5")
    assert (tag.tag, tag.name, tag.describe) == ("5.8.5", "5.8.5", "5.8.5")
    assert len(tag.commit) == 40
    master = source.resolve("master")
    assert master.tag is None and master.name == master.commit[:10]
    assert source.resolve(master.commit[:10]).commit == master.commit
    branch = source.resolve("5.8")
    assert branch.describe.startswith("5.8.")
    parent = source.resolve("5.8~1")
    assert parent.commit != branch.commit


@pytest.mark.parametrize("ref", ["9.9.9", "deadbeefdeadbeef", "no-such-branch"])
def test_unknown_ref_is_one_line(source, ref):
    with pytest.raises(UsageError) as exc:
        source.resolve(ref)
    assert f"unknown Kamailio ref '{ref}'" in exc.value.line() and "\n" not in exc.value.line()


def test_source_that_is_not_kamailio(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(UsageError, match="is not a git repository"):
        source_build.Source(str(plain)).resolve("master")
    repo = tmp_path / "other"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "README").write_text("not kamailio\n")
    subprocess.run(["git", "-C", str(repo), "add", "README"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-q", "-m", "x"], check=True)
    with pytest.raises(UsageError, match=r"is not a Kamailio tree \(no src/Makefile.defs\)"):
        source_build.Source(str(repo)).resolve("main")
    with pytest.raises(UsageError, match="does not exist"):
        source_build.Source(str(tmp_path / "nowhere")).resolve("main")


def test_unreachable_url_says_how_to_use_a_local_clone(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # Loopback, nothing listening: refused at once, like a box without network.
    with pytest.raises(UsageError) as exc:
        source_build.Source("https://127.0.0.1:9/kamailio.git").resolve("5.8.5")
    line = exc.value.line()
    assert "cannot reach the Kamailio source https://127.0.0.1:9/kamailio.git" in line
    assert "--kamailio-source PATH" in line and "\n" not in line
    assert not list((tmp_path / "cache" / "kamleak" / "sources").glob("*.git"))


def test_source_location_default_and_env(monkeypatch):
    monkeypatch.delenv(source_build.SOURCE_ENV, raising=False)
    assert source_build.source_location() == "https://github.com/kamailio/kamailio.git"
    monkeypatch.setenv(source_build.SOURCE_ENV, "/x/kamailio")
    assert source_build.source_location() == "/x/kamailio"
    assert source_build.source_location("/y") == "/y"


def test_modules_of_the_harness_config_across_all_branches():
    mods = source_build.modules_for()
    # Unconditional ones, and those only some variants load (#!ifdef branches).
    for m in ("tm", "sl", "websocket", "tls", "jsonrpcs", "xhttp"):
        assert m in mods
    for m in ("uac", "dialog", "db_text", "pua", "pua_dialoginfo"):
        assert m in mods
    assert mods == sorted(set(mods))


def test_a_users_config_adds_the_modules_of_the_branches_it_takes():
    """The stock config names db_mysql under WITH_MYSQL, which it does not define: no MySQL build."""
    stock = Path(__file__).resolve().parents[1] / "configs/stock/kamailio-default-websocket.trigger.cfg"
    mods = source_build.modules_for(str(stock))
    assert {"usrloc", "registrar", "websocket", "nathelper"} <= set(mods)
    assert "db_mysql" not in mods


def test_modules_of_ifdef_else_and_nested_defines():
    text = """
#!ifdef WITH_A
loadmodule "a.so"
#!else
loadmodule "/usr/lib/kamailio/modules/b.so"
#!endif
#!ifndef WITH_C
#!define WITH_D
#!endif
#!ifdef WITH_D
loadmodule "d"
#!endif
loadmodule "tm.so"
"""
    assert source_build.config_modules(text) == {"a", "b", "d", "tm"}


def test_image_name_is_the_tag_or_the_commit():
    mods = ["sl", "tm"]
    tagged = source_build.Resolved("5.8.5", "b035a803ed85cff9d7000b10b70a118fdbdbae6f", "5.8.5", "5.8.5")
    other = source_build.Resolved("master", "38711a3e788de0130d48cb485578c482b57d9351", None, "x")
    assert source_build.image_tag(tagged, mods) == f"kamleak/kamailio-src:5.8.5-{source_build.modules_hash(mods)}"
    assert source_build.image_tag(other, mods).startswith("kamleak/kamailio-src:38711a3e78-")
    assert source_build.modules_hash(["tm", "sl"]) == source_build.modules_hash(mods)


# -- the knowledge table, against upstream history -------------------------

def _tags_containing(repo: str, commit: str) -> list[str] | None:
    p = subprocess.run(["git", "-C", repo, "tag", "--contains", commit], capture_output=True, text=True)
    if p.returncode != 0:
        return None
    def key(t):
        return tuple(int(x) for x in t.split("."))
    return sorted((t for t in p.stdout.split() if t.replace(".", "").isdigit()), key=key)


@pytest.mark.parametrize("key", list(knowledge.FIXES))
def test_each_fix_first_tag_is_upstreams(source, key):
    fix = knowledge.FIXES[key]
    repo = str(source.mirror)
    for commit, first in [(fix.commit, fix.first_tag), *fix.backports]:
        tags = _tags_containing(repo, commit)
        if tags is None:
            # Older than the shallow history: its marker must be in the tag named.
            assert fix.marker, f"{commit} is not in the history and {key} has no marker"
            path, text = fix.marker
            oldest = _tags_containing(repo, "5.8.0")
            assert oldest and oldest[0] == first, f"{first} is not the oldest tag here"
            assert subprocess.run(["git", "-C", repo, "grep", "-q", "-F", text, first, "--", path]
                                  ).returncode == 0
            continue
        assert (tags[0] if tags else None) == first, f"{commit}: tags {tags[:3]}"


def test_has_answers_from_git_not_version_numbers(source):
    repo = str(source.mirror)

    def at(ref):
        res = source.resolve(ref)
        return knowledge.Provenance.upstream(res.commit, repo, name=ref)

    # The report's version: the mitigations exist, the t_unref() change does not.
    assert knowledge.has("send_reply_error", at("5.8.5")).value is True
    assert knowledge.has("t_reply_error", at("5.8.5")).value is True
    assert knowledge.has("delayed_reply", at("5.8.5")).value is False
    assert knowledge.has("t_unref_orphans", at("5.8.5")).value is False
    assert knowledge.has("t_unref_orphans", at("6.1.4")).value is False
    assert knowledge.has("t_unref_orphans", at("master")).value is True
    # PR 3403: on 5.8 through its backport (5.8.2), not before.
    assert knowledge.has("pr3403", at("5.8.1")).value is False
    ans = knowledge.has("pr3403", at("5.8.2"))
    assert ans.value is True and "fc54fdcd67" in ans.why


def test_has_finds_a_cherry_picked_fix(source, tmp_path):
    """A fix applied by cherry-pick (another commit id, same patch) counts."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(source.mirror), str(clone)], check=True)
    g = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(g + ["checkout", "-q", "-b", "pick", "6.1.4"], check=True)
    subprocess.run(g + ["cherry-pick", "-x", knowledge.FIXES["t_unref_orphans"].commit],
                   check=True, capture_output=True)
    head = subprocess.run(g + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    ans = knowledge.has_commit("t_unref_orphans", head, str(clone))
    assert ans.value is True and "cherry-picked" in ans.why


def test_debian_builds_answer_from_observations():
    assert knowledge.has("t_unref_orphans", "6.1.5").value is True      # Debian's backport
    assert knowledge.has("t_unref_orphans", "6.0.1").value is False
    assert knowledge.has("send_reply_error", "5.6.3").value is False
    assert knowledge.provenance("6.1.5").kind == "debian"


def test_unknown_provenance_says_so_and_points_to_check():
    ans = knowledge.has("t_unref_orphans", knowledge.Provenance.unknown("the image x/y:1"))
    assert ans.value is None and "kamleak check" in ans.why
    assert knowledge.provenance("5.8.5").kind == "unknown"   # a bare number is not a build


def test_gh4140_expectations_from_knowledge(source):
    from kamleak.scenarios import gh4140_bye_to_closed_ws as gh4140
    repo = str(source.mirror)

    def up(ref):
        return knowledge.Provenance.upstream(source.resolve(ref).commit, repo, name=ref)

    V = gh4140.Variant.parse  # noqa: N806 - reads as the variant type
    assert gh4140.expected(up("5.8.5"), V("uac_req_send")) == "leak"
    assert gh4140.expected(up("5.8.5"), V("uac_req_send+send_reply_error")) == "clean"
    assert gh4140.expected(up("5.8.5"), V("uac_req_send+t_reply_error")) == "clean"
    assert gh4140.expected(up("5.8.5"), V("uac_req_send+delayed_reply_off")) == "n/a"
    assert gh4140.expected(up("6.1.4"), V("pua_dialoginfo")) == "leak"
    assert gh4140.expected(up("master"), V("pua_dialoginfo")) == "clean"
    unknown = knowledge.Provenance.unknown("the image x/y:1")
    assert gh4140.expected(unknown, V("uac_req_send")) == "unknown"
    assert gh4140.expected(unknown, V("none")) == "clean"


# -- the base a commit builds on: upstream CI's --------------------------------

def _ci_distribution(repo: str, ref: str) -> str:
    """The first `distribution:` of the build matrix in REF's own CI workflow."""
    text = subprocess.run(["git", "-C", repo, "show", f"{ref}:.github/workflows/main.yml"],
                          capture_output=True, text=True, check=True).stdout
    return next(ln.split(":", 1)[1].strip() for ln in text.splitlines()
                if ln.strip().startswith("- distribution:"))


def test_each_suite_move_is_the_commit_that_changed_upstreams_ci(source):
    repo = str(source.mirror)
    for moved, suite in source_build.CI_MOVES:
        assert _ci_distribution(repo, moved) == suite
        assert _ci_distribution(repo, f"{moved}~1") != suite
        assert source_build.ci_suite(repo, moved) == suite
        assert source_build.ci_suite(repo, f"{moved}~1") == source_build.CI_SUITE


def test_every_tag_and_branch_gets_the_suite_its_own_ci_builds_on(source):
    """The rule (contains the move) against each ref's own workflow file."""
    repo = str(source.mirror)
    refs = subprocess.run(["git", "-C", repo, "for-each-ref", "--format=%(refname:short)",
                           "refs/tags", "refs/heads"], capture_output=True, text=True).stdout.split()
    assert {"5.8.5", "6.0.7", "6.1.0", "master", "6.1"} <= set(refs)
    suites = {ref: source_build.ci_suite(repo, ref) for ref in refs}
    assert suites == {ref: _ci_distribution(repo, ref) for ref in refs}
    assert (suites["5.8.5"], suites["6.0.7"], suites["6.1.0"], suites["master"]) == \
        ("bookworm", "bookworm", "trixie", "trixie")
    # The tls.so that needs OpenSSL >= 3.2 (84d09d568e) and the t_unref() change after it.
    for commit in ("84d09d568e", knowledge.FIXES["t_unref_orphans"].commit):
        assert source.ci_suite(source.resolve(commit).commit) == "trixie"


def test_a_history_without_the_move_builds_on_bookworm(tmp_path):
    g = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(g + ["init", "-q"], check=True)
    subprocess.run(g + ["commit", "-q", "--allow-empty", "-m", "one"], check=True)
    assert source_build.ci_suite(tmp_path, "HEAD") == "bookworm"


def test_builder_and_runtime_share_the_suite():
    for suite in ("bookworm", "trixie"):
        b, r = source_build.builder_spec(suite), source_build.runtime_spec(suite)
        assert b.base == r.base == f"debian:{suite}-slim"
        assert b.buildargs == r.buildargs == {"SUITE": suite}
        assert b.tag.endswith(f":{suite}") and r.tag.endswith(f":{suite}")


def test_a_module_that_does_not_load_is_named_with_its_symbol():
    # Kamailio's loader (core/sr_module.c: "could not open module <%s>: %s", dlerror()).
    log = (" 0(1) ERROR: <core> [core/sr_module.c:612]: load_module(): could not open module "
           "</usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so>: /usr/lib/x86_64-linux-gnu/kamailio/"
           "modules/tls.so: undefined symbol: SSL_get0_group_name\n"
           " 0(1) CRITICAL: <core> [core/cfg.y:3967]: yyerror_at(): parse error in config file "
           "/tmp/load.cfg, line 9, column 12-20: failed to load module\n")
    assert source_build.load_refusal(log) == "tls.so does not load: undefined symbol: SSL_get0_group_name"
    missing = ("ERROR: <core> [core/sr_module.c:612]: load_module(): could not open module </m/x.so>: "
               "libfoo.so.1: cannot open shared object file: No such file or directory\n")
    assert source_build.load_refusal(missing) == ("x.so does not load: libfoo.so.1: cannot open shared "
                                                  "object file: No such file or directory")
    assert source_build.load_refusal("config file ok, exiting...\n") is None
