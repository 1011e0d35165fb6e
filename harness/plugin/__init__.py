"""kamleak's pytest plugin: options, target parametrization, reporting hooks.

Registered through the `pytest11` entry point, so any pytest run in an
environment with kamleak installed gets:

* options `--kamailio-version`, `--kamailio-image`, `--kamailio-bin` (each
  repeatable or comma-separated: several targets parametrize the tests),
  `--kamailio-modules`, `--transport`, `--variant`, `--disconnect`, and the
  evidence options `--kamleak-artifacts`, `--keep-artifacts`,
  `--kamleak-keep-runs`, `--kamleak-summary`, `--kamleak-html`;
* the fixtures of `kamleak.harness.plugin.fixtures`;
* errors raised by the harness (`KamleakError`) reported as one line, with
  the servers' logs and the SIP trace attached, instead of a traceback.
"""

from __future__ import annotations

import signal

import pytest

from kamleak.harness.errors import KamleakError
from kamleak.harness.judging.evidence import add_sections, write_files
from kamleak.harness.judging.verdict import leaked_bytes
from kamleak.harness.plugin import state
from kamleak.harness.plugin.fixtures import (
    disconnect_mode,
    docker_client,
    gate_variant,
    gh4140_verdict,
    hangup_mode,
    kamailio,
    kamailio_factory,
    kamailio_target,
    kamleak_images,
    kamleak_repeat,
    pbx,
    pbx_log,
    record_verdict,
    transport,
    ua_factory,
)
from kamleak.harness.reporting.artifacts import ArtifactStore
from kamleak.harness.stack import containers, images
from kamleak.harness.stack.targets import add_source_option, parse_targets

TRANSPORTS = ("ws", "wss")


def pytest_addoption(parser):
    g = parser.getgroup("kamleak", "kamleak: Kamailio transaction-leak harness")
    g.addoption("--kamailio-version", action="append", default=[], metavar="V",
                help=f"Kamailio version(s) to build and test: {', '.join(images.KAMAILIO_SUITES)} "
                     "(repeat or comma-separate; default: all of them)")
    g.addoption("--kamailio-image", action="append", default=[], metavar="IMAGE",
                help="test any image containing a kamailio binary (e.g. "
                     "ghcr.io/kamailio/kamailio:5.8.5-bookworm); the harness brings its config")
    g.addoption("--kamailio-ref", action="append", default=[], metavar="REF",
                help="build Kamailio from upstream source at a tag, branch or commit (e.g. 5.8.5, "
                     "master) and test it; repeat or comma-separate")
    add_source_option(g.addoption)
    g.addoption("--kamailio-bin", action="append", default=[], metavar="PATH",
                help="test a local kamailio binary (runs on this host, loopback only)")
    g.addoption("--kamailio-modules", default=None, metavar="DIR",
                help="module directory for --kamailio-bin (kamailio -L)")
    g.addoption("--kamailio-config", default=None, metavar="PATH",
                help="run the scenarios on YOUR kamailio.cfg (see README: the harness injects "
                     "sockets and values; your routing stays untouched)")
    g.addoption("--transport", default="ws,wss", metavar="ws,wss",
                help="WebSocket transports to test (default: ws,wss)")
    g.addoption("--variant", action="append", default=[], metavar="VARIANT",
                help="issue-4140 config variant(s), e.g. pua_dialoginfo, uac_req_send+t_reply_error "
                     "(default: pua_dialoginfo, the realistic trigger with the stock reply)")
    g.addoption("--disconnect", default="rst", choices=("rst", "fin", "close", "rst+advertise"),
                help="how the WebSocket client goes away (default: rst; rst+advertise: the "
                     "report's 477 path, README 'Disconnect modes')")
    g.addoption("--hangup", default="command", choices=("command", "session-timer"),
                help="who ends the call: the harness on Asterisk's CLI (default), or Asterisk's "
                     "session timer after the client stops refreshing (~1 min)")
    g.addoption("--kamleak-artifacts", default="artifacts", metavar="DIR",
                help="where each run's evidence tree goes (default: ./artifacts; `latest` links "
                     "the newest run)")
    g.addoption("--keep-artifacts", action="store_true",
                help="keep the evidence of passing tests too (default: failures and errors only)")
    g.addoption("--kamleak-keep-runs", type=int, default=10, metavar="N",
                help="how many runs to keep under the artifact directory (default: 10)")
    g.addoption("--kamleak-summary", default=None, metavar="PATH",
                help="also write every verdict of the run as JSON to PATH")
    g.addoption("--kamleak-repeat", type=int, default=1, metavar="N",
                help="run every Kamailio test N times and report the verdict counts "
                     "(like the Asterisk testsuite's --number)")
    g.addoption("--kamleak-shard", default=None, metavar="I/N",
                help="run only shard I of N (1-based) of the collected tests, split round-robin "
                     "over their sorted ids: a CI job matrix runs every shard, `kamleak summary "
                     "merge` joins their --kamleak-summary files")
    g.addoption("--kamleak-confirm", action="store_true",
                help="after an early LEAK (the cell proven orphaned) also wait out tm's lifetime "
                     "bound; a disagreement is a test error")
    g.addoption("--kamleak-no-early", action="store_true",
                help="no early verdict: a LEAK only once the cell outlived its lifetime bound")
    g.addoption("--kamleak-html", action="store_true",
                help="write a self-contained report.html into the run's artifact directory")


# Registered by the plugin itself, so a project outside this checkout that
# uses them gets no PytestUnknownMarkWarning.
MARKERS = (
    "kamailio: needs a running Kamailio (real containers)",
    "asterisk: needs the Asterisk PBX container",
    "gate: the user-facing leak gate (fails on a leaking Kamailio by design)",
    "single_target: run once, on the first Kamailio target (harness behaviour, not Kamailio's)",
    "known_versions: parametrize only over the Kamailio builds kamleak makes, Debian's and "
    "upstream source builds (kamleak.harness.knowledge has expectations for them)",
)


def pytest_configure(config):
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    from kamleak.harness.judging import oracle
    oracle.configure(early=not config.getoption("kamleak_no_early"),
                     confirm=config.getoption("kamleak_confirm"))
    try:
        config.stash[state.TARGETS] = parse_targets(
            config.getoption("kamailio_version"), config.getoption("kamailio_image"),
            config.getoption("kamailio_bin"), config.getoption("kamailio_modules"),
            refs=config.getoption("kamailio_ref"), source=config.getoption("kamailio_source"),
            config=config.getoption("kamailio_config"))
        transports = [t.strip() for t in config.getoption("transport").split(",") if t.strip()]
        bad = [t for t in transports if t not in TRANSPORTS]
        if bad or not transports:
            raise KamleakError(f"unknown transport '{','.join(bad) or '(none)'}'",
                               "use --transport ws, wss or ws,wss")
        config.stash[state.TRANSPORTS] = transports
        user_cfg = config.getoption("kamailio_config")
        from kamleak.harness.stack.kamailio.user_config import UserConfig
        config.stash[state.USER_CONFIG] = UserConfig.load(user_cfg) if user_cfg else None
        from kamleak.harness import registry
        gh4140 = registry.scenario("gh4140")    # --variant names the 4140 story's variants
        names = [v.strip() for opt in config.getoption("variant") for v in opt.split(",") if v.strip()]
        config.stash[state.VARIANTS] = [gh4140.parse_variant(n) for n in (names or [gh4140.DEFAULT_VARIANT])]
        repeat = config.getoption("kamleak_repeat")
        if repeat < 1:
            raise KamleakError(f"--kamleak-repeat {repeat} runs nothing", "give 1 or more")
        keep = config.getoption("kamleak_keep_runs")
        if keep < 1:
            raise KamleakError(f"--kamleak-keep-runs {keep} keeps nothing", "give 1 or more")
        store = ArtifactStore(config.getoption("kamleak_artifacts"), keep)
        if not hasattr(config, "workerinput"):
            store.check_writable()  # now, not after the whole run
    except KamleakError as exc:
        raise pytest.UsageError(exc.line()) from None
    config.stash[state.STORE] = store
    if not hasattr(config, "workerinput"):
        # xdist workers start after this and inherit it: one run directory.
        import os
        os.environ["KAMLEAK_RUN_DIR_NAME"] = config.stash[state.STORE].run_dir.name
    config.pluginmanager.register(JUnitLogs(config), "kamleak-junit-logs")
    # SIGTERM (CI cancelling a job) must clean up like Ctrl-C does.
    if hasattr(signal, "SIGTERM") and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _sigterm)


class JUnitLogs:
    """A failed test's logs in full (`report.kamleak_logs`) in its JUnit <system-out>, where a
    CI system shows them; the terminal shows only the verdict, the ladder and the paths."""

    def __init__(self, config):
        self.config = config

    @pytest.hookimpl(trylast=True)      # after junitxml's <failure>: <system-out> comes last
    def pytest_runtest_logreport(self, report):
        logs = getattr(report, "kamleak_logs", None)
        if not logs:
            return
        import xml.etree.ElementTree as ET

        # No public API adds to a test case's output: junitxml's own reporter does.
        from _pytest import junitxml
        log_xml = self.config.stash.get(junitxml.xml_key, None)
        if log_xml is None:
            return
        out = ET.Element("system-out")
        out.text = junitxml.bin_xml_escape("\n".join(f"{f' {title} ':-^80}\n{text.rstrip()}"
                                                     for title, text in logs))
        log_xml.node_reporter(report).append(out)


def _sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def pytest_unconfigure(config):
    containers.remove_all_live()


def _parametrized_here(metafunc, name: str) -> bool:
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        if name in names:
            return True
    return False


def pytest_generate_tests(metafunc):
    config = metafunc.config
    if "kamailio_target" in metafunc.fixturenames and not _parametrized_here(metafunc, "kamailio_target"):
        targets = config.stash[state.TARGETS]
        if metafunc.definition.get_closest_marker("known_versions"):
            # Tests asserting expected verdicts run only where expectations can
            # exist: Debian's builds (observed) and upstream source builds (git).
            targets = [t for t in targets if t.kind in ("version", "source")]
        if metafunc.definition.get_closest_marker("single_target"):
            # Harness behaviour that does not depend on the Kamailio: run it once.
            targets = targets[:1]
        metafunc.parametrize("kamailio_target", targets, ids=[t.id for t in targets], indirect=True)
    repeat = config.getoption("kamleak_repeat")
    if repeat > 1 and "kamailio_target" in metafunc.fixturenames:
        metafunc.fixturenames.append("kamleak_repeat")
        metafunc.parametrize("kamleak_repeat", range(repeat),
                             ids=[f"run{i + 1}" for i in range(repeat)], indirect=True)
    if "transport" in metafunc.fixturenames and not _parametrized_here(metafunc, "transport"):
        transports = config.stash[state.TRANSPORTS]
        metafunc.parametrize("transport", transports, ids=transports, indirect=True)
    if "gate_variant" in metafunc.fixturenames and not _parametrized_here(metafunc, "gate_variant"):
        variants = config.stash[state.VARIANTS]
        metafunc.parametrize("gate_variant", variants, ids=[v.name for v in variants], indirect=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    config = item.config
    keep = config.getoption("keep_artifacts")
    if report.when in ("setup", "call") and (report.failed or (keep and report.when == "call")):
        where = write_files(config.stash[state.STORE], item)
        if where:
            item.stash[state.ARTIFACTS] = where
        if report.failed:
            add_sections(report, item, where, item.stash.get(state.VERDICT, None))
        elif where:
            report.sections.append(("kamleak: artifacts", where))
    if call.excinfo is not None and isinstance(call.excinfo.value, KamleakError):
        exc = call.excinfo.value
        report.longrepr = f"kamleak: {exc.line()}"
        log = getattr(exc, "log", "")
        if log:
            report.sections.append((f"Captured {report.when} server log", log[-20000:]))


def _records(config) -> list[dict]:
    """One JSON record per verdict: for dashboards, bisection, the HTML report."""
    from kamleak.harness.reporting.summary import early_fields

    out = []
    for nodeid, v in config.stash.get(state.VERDICTS, []):
        rec = {"test": nodeid, **v.to_json()}
        rec.update(early_fields(rec))           # flat for dashboards: orphan_at, orphan_rule, deadline
        where = None
        for item in config.stash.get(state.ITEMS, []):
            if item.nodeid == nodeid:
                where = item.stash.get(state.ARTIFACTS, None)
        if where:
            import os
            rec["artifacts"] = os.path.relpath(where, config.stash[state.STORE].run_dir)
        out.append(rec)
    return out


def _shard(value: str) -> tuple[int, int]:
    import re
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value or "")
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise pytest.UsageError(f"kamleak: --kamleak-shard {value!r} is no shard; fix: give I/N "
                                "with 1 <= I <= N, e.g. 2/4")
    return int(m.group(1)), int(m.group(2))


def pytest_collection_modifyitems(session, config, items):
    shard = config.getoption("kamleak_shard")
    if shard:
        # Deterministic: every job collects the same ids, sorts them the same way.
        i, n = _shard(shard)
        order = {nid: k for k, nid in enumerate(sorted(it.nodeid for it in items))}
        keep = [it for it in items if order[it.nodeid] % n == i - 1]
        drop = [it for it in items if order[it.nodeid] % n != i - 1]
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep
    config.stash[state.ITEMS] = items


def _repeat_counts(tr, config, records) -> None:
    """With --kamleak-repeat: how often each test gave each verdict."""
    if config.getoption("kamleak_repeat") <= 1:
        return
    import collections
    import re
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in records:
        counts[re.sub(r"-run\d+|run\d+-|run\d+", "", r["test"]).replace("[]", "")][r["outcome"]] += 1
    tr.section("kamleak repeat: verdict counts")
    for test, c in counts.items():
        n = sum(c.values())
        mark = "stable" if len(c) == 1 else "UNSTABLE"
        tr.write_line(f"{mark:8} {', '.join(f'{k} {m}/{n}' for k, m in sorted(c.items()))}  {test}")


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if hasattr(config, "workerinput"):  # an xdist worker: hand the records to the controller
        records = _records(config)
        if records:
            wid = config.workerinput.get("workerid", "gw")
            config.stash[state.STORE].write_summary(records, name=f"summary-{wid}.json")


def _merged_records(config) -> list[dict]:
    records = _records(config)
    run_dir = config.stash[state.STORE].run_dir
    if run_dir.is_dir():
        import json
        for part in sorted(run_dir.glob("summary-gw*.json")):
            records += json.loads(part.read_text())
            part.unlink()
    return records


def _memory_cell(m: dict) -> str:
    """The summary's last column for a memory verdict: the leaking site, or none."""
    leaked = m.get("leaked_sites") or []
    if m.get("drained_after") is not None:
        return f"drained {m['drained_after']:.1f}s"
    if not leaked:
        return "no shm site grew" if "drained_after" not in m else "held"
    per = leaked_bytes(m)[1]
    return f"{leaked[0].split('(')[0]} +{per:.0f} B/{m.get('unit', 'request')}"


def _leaked_cell(r: dict) -> str:
    """`orphaned 1.0s (count)`, or `still there 7.0s` when no proof ended the watch."""
    orphan = r.get("orphan") or {}
    if orphan and not r.get("confirmed"):
        return f"orphaned {orphan['at']:.1f}s ({orphan.get('rule')})"
    agreed = f", orphaned {orphan['at']:.1f}s" if orphan else ""
    return f"still there {r['watched_for']:.1f}s{agreed}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workerinput"):
        return  # xdist workers run this too, silenced: the controller reports
    records = _merged_records(config)
    if not records:
        return
    tr = terminalreporter
    tr.section("kamleak verdicts")
    tr.write_line(f"{'kamailio':30} {'variant':34} {'tr':4} {'verdict':7} {'reply':44} cell / shm")
    for r in records:
        reply = ", ".join(_reply(x) for x in r.get("replies", [])) or "-"
        cell = (_memory_cell(r.get("memory") or {}) if r.get("kind") == "memory"
                else f"gone {r['gone_after']:.1f}s" if r.get("gone_after") is not None
                else _leaked_cell(r) if r.get("leaked") else "never seen")
        tr.write_line(f"{r.get('kamailio_version', '')[:30]:30} {r.get('variant', '')[:34]:34} "
                      f"{r.get('transport', ''):4} {r.get('outcome', ''):7} {reply[:44]:44} {cell}")
    for provided in dict.fromkeys("; ".join(r.get("provided") or []) for r in records):
        if provided:
            tr.write_line(f"kamleak provided: {provided}")
    _repeat_counts(tr, config, records)
    store = config.stash[state.STORE]
    summary = store.write_summary(records)
    tr.write_line(f"kamleak: verdicts in {summary}")
    path = config.getoption("kamleak_summary")
    if path:
        import json
        with open(path, "w") as f:
            json.dump(records, f, indent=1, default=str)
    if config.getoption("kamleak_html"):
        from kamleak.harness.reporting.html import render_html
        html = render_html(records, store.run_dir)
        tr.write_line(f"kamleak: report in {html}")


def _reply(r: dict) -> str:
    from kamleak.harness.judging.verdict import Reply
    return Reply(r["code"], r["reason"], r.get("at", 0.0), r.get("stateless")).describe()
