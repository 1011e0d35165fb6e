"""What the README and docs/ promise about themselves, read from the files.

mkdocs build --strict (`make docs`, run by `make test`) checks the pages under
docs/ and their links; the README lives outside the site, so its links are
checked here, with the rest of what the docs claim: the README is short, CI
runs its test command, the copy-paste config lines are the ones a tested
fixture carries, and every issue number a user reads is upstream's, linked.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
STOCK = ROOT / "tests" / "configs" / "stock"

LINK = re.compile(r"\]\(([^)\s]+)\)|^\[[^\]]+\]:\s*(\S+)", re.M)
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)


def pages():
    return [README, *sorted(DOCS.glob("*.md"))]


def test_the_readme_is_under_250_lines():
    n = len(README.read_text().splitlines())
    assert n < 250, f"README.md has {n} lines; move detail to a page under docs/"


def test_every_relative_link_of_the_readme_resolves():
    text = README.read_text()
    targets = [a or b for a, b in LINK.findall(text)]
    relative = [t for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert relative, "the README links no page: where to read on?"
    missing = [t for t in relative if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links files that do not exist: {missing}"


def test_ci_runs_exactly_the_readmes_test_command():
    two = README.read_text().split("## Two commands", 1)[1]
    block = FENCE.search(two).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    test_command = next(c for c in commands if c.startswith("make test"))
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert ci[-1] == test_command, (ci, test_command)


def _blocks(page, heading):
    """The fenced blocks of one section (## heading) of a page."""
    section = page.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return FENCE.findall(section)


def test_the_lines_to_paste_are_the_tested_stock_configs_edits():
    # tests/integration/test_user_config.py gates these files: pasted as the page
    # shows them, the lines are the ones that ran.
    edited = (STOCK / "kamailio-default-websocket.cfg").read_text()
    blocks = _blocks(DOCS / "config.md", "The lines to paste")
    assert len(blocks) == 3
    for block in blocks:
        assert block in edited, block


def test_the_trigger_snippet_is_the_leaking_fixtures():
    trigger = (STOCK / "kamailio-default-websocket.trigger.cfg").read_text()
    blocks = _blocks(DOCS / "config.md", "A trigger, to see the gate fail")
    assert blocks and "uac_req_send();" in blocks[-1]
    for block in blocks:
        lines = [line for line in block.splitlines() if line.strip()]
        for line in lines:
            assert line in trigger.splitlines(), line
    assert blocks[-1].rstrip("\n") in trigger, "route[CALL_ENDED] as one piece"


def test_every_issue_number_is_upstreams_and_linked():
    # kamleak's own tracker is not public: a number a user reads must be one a
    # link to Kamailio's tracker names somewhere in these pages.
    text = "\n".join(p.read_text() for p in pages())
    linked = set(re.findall(r"github\.com/kamailio/kamailio/(?:issues|pull)/(\d+)", text))
    named = set(re.findall(r"\b(?:issues?|PR)[ -](\d+)", text))
    assert linked, "no upstream issue linked"
    assert named <= linked, f"issue numbers with no upstream link (internal?): {sorted(named - linked)}"
