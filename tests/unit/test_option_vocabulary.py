"""One option vocabulary: every `--option` a message names exists.

Hints, fixes and help texts in harness/ and scenarios/ are collected from the
source (every string constant, f-strings included) and each `--option` they
name must be an option of the CLI (any command, under its visible name) or
of the pytest plugin.  The old short names stay accepted as hidden aliases,
so no text may name them.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

from kamleak.harness.tools.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
# Options of other programs that texts name on purpose.
FOREIGN = {
    "--storage-driver", "--bridge", "--iptables",   # dockerd, harness/stack/engine.py
    "--number",                                     # the Asterisk testsuite, plugin help
    "--oneline",                                    # git log, in bisect's hint
}


def _cli_options() -> tuple[set[str], set[str]]:
    """(visible option names, hidden aliases) over every kamleak command."""
    visible, hidden = set(), set()
    parsers = [build_parser()]
    while parsers:
        p = parsers.pop()
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                parsers += list(a.choices.values())
            for name in a.option_strings:
                (hidden if a.help == argparse.SUPPRESS else visible).add(name)
    return visible, hidden - visible


def _pytest_options() -> set[str]:
    from kamleak.harness import plugin

    names: set[str] = set()

    class Group:
        def addoption(self, *opts, **_):
            names.update(opts)

    class Parser:
        def getgroup(self, *_a, **_k):
            return Group()

    plugin.pytest_addoption(Parser())
    return names


DEFINERS = {"add_argument", "add_option", "addoption"}
# A string that is one option and nothing else ("--quiet", "--format=") is an
# argument handed to another program; hints are sentences.
ARGV_WORD = re.compile(r"--[a-z][a-z0-9-]*(=.*)?")


def _definitions(tree) -> set[int]:
    """ids of the string constants that *define* options (`add_argument("--x", ...)`)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr",
                                                  getattr(node.func, "id", None)) in DEFINERS:
            for arg in node.args:
                for c in ast.walk(arg):
                    if isinstance(c, ast.Constant):
                        out.add(id(c))
    return out


def _docstrings(tree) -> set[int]:
    """ids of docstrings: they explain code (git's options, say), users never see them."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and node.body and isinstance(node.body[0], ast.Expr) \
                and isinstance(node.body[0].value, ast.Constant):
            out.add(id(node.body[0].value))
    return out


def _mentioned() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    files = sorted((ROOT / "harness").rglob("*.py")) + sorted((ROOT / "scenarios").rglob("*.py"))
    for f in files:
        tree = ast.parse(f.read_text(), str(f))
        defining = _definitions(tree) | _docstrings(tree)
        for node in ast.walk(tree):
            if id(node) in defining:
                continue
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if ARGV_WORD.fullmatch(node.value.strip()):
                    continue        # a word of some command's argv (git, tcpdump), not prose
                for m in re.finditer(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]", node.value):
                    found.setdefault(m.group(0), []).append(f"{f.relative_to(ROOT)}:{node.lineno}")
    return found


def _defined_elsewhere() -> set[str]:
    """Options some other parser in the tree defines (a measurement script's own)."""
    names: set[str] = set()
    for f in sorted((ROOT / "scenarios").rglob("*.py")):
        tree = ast.parse(f.read_text(), str(f))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                names.update(a.value for a in node.args
                             if isinstance(a, ast.Constant) and str(a.value).startswith("--"))
    return names


def test_every_option_a_text_names_exists():
    visible, _ = _cli_options()
    known = visible | _pytest_options() | FOREIGN | _defined_elsewhere()
    unknown = {o: where for o, where in _mentioned().items() if o not in known}
    assert not unknown, f"texts name options nobody accepts: {unknown}"


def test_the_collector_sees_the_hints():
    """Guard against a collector that silently finds nothing."""
    mentioned = _mentioned()
    assert "--kamailio-image" in mentioned and "--kamailio-config" in mentioned
    assert any("images.py" in w for w in mentioned["--kamailio-image"])


@pytest.mark.parametrize("command", ["check", "gate", "repro", "soak", "setup"])
def test_target_options_share_the_pytest_names(command):
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    shown = {o for a in sub._actions if a.help != argparse.SUPPRESS for o in a.option_strings}
    assert "--kamailio-version" in shown
    assert "--version" not in shown and "--image" not in shown and "--config" not in shown
    assert shown & {"--kamailio-version", "--kamailio-image", "--kamailio-bin", "--kamailio-config",
                    "--kamailio-modules"} <= _pytest_options()


@pytest.mark.parametrize("argv, dest, value", [
    (["check", "--version", "6.0.1"], "version", "6.0.1"),
    (["check", "--kamailio-version", "6.0.1"], "version", "6.0.1"),
    (["check", "--image", "x:1"], "image", "x:1"),
    (["check", "--config", "a.cfg"], "config", "a.cfg"),
    (["gate", "--kamailio-config", "a.cfg"], "config", "a.cfg"),
    (["repro", "--version", "5.6.3"], "version", "5.6.3"),
    (["soak", "--image", "x:1"], "image", "x:1"),
    (["setup", "--version", "6.0.1", "--kamailio-version", "6.1.5"], "version", ["6.0.1", "6.1.5"]),
    (["lint", "a.cfg", "--kamailio-version", "5.8.5"], "kamailio_version", "5.8.5"),
])
def test_old_names_stay_hidden_aliases(argv, dest, value):
    assert getattr(build_parser().parse_args(argv), dest) == value


def test_text_never_names_a_hidden_alias():
    _, hidden = _cli_options()
    used = {o: w for o, w in _mentioned().items() if o in hidden and o not in _pytest_options()}
    assert not used, used
