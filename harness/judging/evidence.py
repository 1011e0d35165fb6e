"""A test's evidence: what its failure report shows and what the artifact tree keeps.

Fixtures register evidence as they start things (`attach`); each source is
read once, when the test's report is made, while the containers still
exist: a report section added at teardown would be lost, and a log read
after removal would be empty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest


@dataclass
class Evidence:
    title: str                  # report section title
    source: Callable[[], object]
    filename: str | None        # artifact file name, or None
    in_report: bool = True      # also a report section (text only)


# On the test item: what fixtures attached, and what was read of it (once).
EVIDENCE = pytest.StashKey["list[Evidence]"]()
READ = pytest.StashKey["dict[int, object]"]()


def attach(node_or_request, title: str, source, filename: str | None = None,
           in_report: bool = True) -> None:
    node = getattr(node_or_request, "node", node_or_request)
    node.stash.setdefault(EVIDENCE, []).append(
        Evidence(title, source, filename, in_report))


def read_all(item) -> list[tuple[Evidence, object]]:
    """Every registered source, read once per test (some, like a pcap, only can be)."""
    cache = item.stash.setdefault(READ, {})
    out = []
    for i, ev in enumerate(item.stash.get(EVIDENCE, [])):
        if i not in cache:
            try:
                cache[i] = ev.source()
            except Exception as exc:  # noqa: BLE001 - evidence must not mask the result
                cache[i] = f"(could not be read: {exc})"
        out.append((ev, cache[i]))
    return out


def add_sections(report, item, where: str | None, verdict=None) -> None:
    """A failed test's report: on the terminal its verdict, the call's ladder and where
    its files are (WHERE: the test's artifact directory); the texts in full (the servers'
    logs, every SIP message) as `report.kamleak_logs`, which the plugin puts in the JUnit
    <system-out>: thousands of log lines would bury the verdict on a terminal."""
    texts = [(ev, c) for ev, c in read_all(item) if ev.in_report and isinstance(c, str) and c]
    report.kamleak_logs = [(f"kamleak: {ev.title}", c) for ev, c in texts]
    lines = [f"verdict: {verdict.outcome.upper()}: {verdict.sentence()}"] if verdict else []
    ladder = next((c for ev, c in texts if ev.filename == "sip-trace.txt"), "")
    if ladder:
        lines += ladder.split("\n# messages", 1)[0].rstrip("\n").split("\n")
    files = sorted(ev.filename for ev, c in read_all(item)
                   if ev.filename and c not in (None, "", b"") and "/" not in ev.filename)
    if where:
        lines += [f"evidence in {where}/:", "  " + "  ".join(files)]
    elif files:
        lines.append("evidence not written (no artifact store): " + ", ".join(files))
    if lines:
        report.sections.append(("kamleak: verdict, ladder, evidence", "\n".join(lines)))


def write_files(store, item) -> str | None:
    """Write every file-backed piece of evidence; returns the test's directory."""
    files = [(ev, c) for ev, c in read_all(item) if ev.filename and c not in (None, "", b"")]
    if not files:
        return None
    directory = store.test_dir(item.nodeid)
    for ev, content in files:
        name = ev.filename
        if name.endswith(".pcap") and isinstance(content, str):
            name = name[:-5] + ".txt"  # the note saying why there is no capture
        store.write(directory, name, content)
    return str(directory)
