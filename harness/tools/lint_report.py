"""`kamleak lint --format`: its findings as text (path:line:col: CODE message,
as compilers and ruff print them), JSON, SARIF 2.1.0 (code scanning) or
GitHub workflow annotations.  One writer each; the rules they cite are
harness/tools/lint_rules.py's."""

from __future__ import annotations

import json
import textwrap
from importlib import metadata
from urllib.parse import quote

from kamleak.harness.tools.lint_rules import RULES, explain

WIDTH = 120
SARIF_LEVEL = {"leak": "error", "error": "error", "warning": "warning", "info": "note"}
GITHUB_LEVEL = {"leak": "error", "error": "error", "warning": "warning", "info": "notice"}


def text(findings, config: str, problems=None) -> list[str]:
    """CONFIG's lines: one a finding and its short notes (each under WIDTH
    characters for a path under ~40), the contract's lines when asked."""
    out = []
    for f in findings:
        out.append(f"{f.path or config}:{f.line}:{f.col}: {f.code} {f.message}")
        for note in f.advice:
            out += textwrap.wrap(note, WIDTH - 1, initial_indent="    ", subsequent_indent="      ",
                                 break_on_hyphens=False)
    if not findings:
        out.append(f"{config}: ok: no issue-4140 pattern found")
    for pr in problems or ():
        out.append(pr.line_text(config, label="contract: "))
    if problems == []:
        out.append(f"{config}: ok: meets kamleak's contract for `gate --kamailio-config`")
    return out


def footer(findings) -> list[str]:
    """The run's last line: how many, and the codes to --explain (said once)."""
    codes = sorted({f.code for f in findings}, key=list(RULES).index)
    if not codes:
        return []
    n = len(findings)
    return [f"{n} finding{'s' if n > 1 else ''} ({', '.join(codes)}); the mechanism, commits "
            "and fix: kamleak lint --explain CODE"]


def _record(f) -> dict:
    return {"code": f.code, "name": RULES[f.code].name, "level": f.level, "path": f.path,
            "line": f.line, "column": f.col, "message": f.message, "notes": list(f.advice)}


def json_report(findings) -> str:
    return json.dumps([_record(f) for f in findings], indent=2)


def _uri(path: str) -> str:
    return ("file://" if path.startswith("/") else "") + quote(path)


def sarif(findings) -> str:
    """A SARIF 2.1.0 log: one run, the rules it cites, one result a finding."""
    used = sorted({f.code for f in findings}, key=list(RULES).index)
    rules = [{"id": code, "name": RULES[code].name,
              "shortDescription": {"text": RULES[code].summary},
              "fullDescription": {"text": RULES[code].mechanism},
              "help": {"text": explain(code)},
              "defaultConfiguration": {"level": SARIF_LEVEL[RULES[code].level]}}
             for code in used]
    results = [{"ruleId": f.code, "ruleIndex": used.index(f.code),
                "level": SARIF_LEVEL[f.level],
                "message": {"text": "\n".join([f.message, *f.advice])},
                "locations": [{"physicalLocation": {
                    "artifactLocation": {"uri": _uri(f.path)},
                    "region": {"startLine": f.line, "startColumn": f.col}}}]}
               for f in findings]
    log = {"version": "2.1.0",
           "runs": [{"tool": {"driver": {"name": "kamleak lint",
                                         "version": metadata.version("kamleak"),
                                         "rules": rules}},
                     "results": results}]}
    return json.dumps(log, indent=2)


def _escape(value: str, prop: bool = False) -> str:
    # GitHub's workflow command encoding (actions/toolkit, command.ts).
    out = value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return out.replace(":", "%3A").replace(",", "%2C") if prop else out


def github(findings) -> str:
    """::error file=...,line=...,col=...,title=KL4140::message, one a finding."""
    return "\n".join(
        f"::{GITHUB_LEVEL[f.level]} file={_escape(f.path, True)},line={f.line},"
        f"col={f.col},title={f.code}::{_escape(chr(10).join([f.message, *f.advice]))}"
        for f in findings)


FORMATTERS = {"json": json_report, "sarif": sarif, "github": github}
