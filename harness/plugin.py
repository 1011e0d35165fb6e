"""kamleak's pytest plugin: options, target parametrization, fixtures.

Registered through the `pytest11` entry point, so any pytest run in an
environment with kamleak installed gets:

* options `--kamailio-version`, `--kamailio-image`, `--kamailio-bin` (each
  repeatable or comma-separated: several targets parametrize the tests),
  `--kamailio-modules`, `--transport`;
* fixtures `docker_client`, `pbx` (Asterisk, once per session),
  `kamailio_target`, `kamailio_factory`/`kamailio` (fresh Kamailio per test),
  `transport`, `ua_factory`;
* errors raised by the harness (`KamleakError`) reported as one line with
  the servers' logs attached as report sections, instead of a traceback.
"""

from __future__ import annotations

import signal

import pytest

from . import containers, engine, images
from .asterisk import AsteriskPBX
from .errors import KamleakError
from .kamailio import TmTimers
from .runner import launch_kamailio
from .targets import Target, parse_targets
from . import ports

TRANSPORTS = ("ws", "wss")


def pytest_addoption(parser):
    g = parser.getgroup("kamleak", "kamleak: Kamailio transaction-leak harness")
    g.addoption("--kamailio-version", action="append", default=[], metavar="V",
                help=f"Kamailio version(s) to build and test: {', '.join(images.KAMAILIO_SUITES)} "
                     "(repeat or comma-separate; default: all of them)")
    g.addoption("--kamailio-image", action="append", default=[], metavar="IMAGE",
                help="test any image containing a kamailio binary (e.g. "
                     "ghcr.io/kamailio/kamailio:5.8.5-bookworm); the harness brings its config")
    g.addoption("--kamailio-bin", action="append", default=[], metavar="PATH",
                help="test a local kamailio binary (runs on this host, loopback only)")
    g.addoption("--kamailio-modules", default=None, metavar="DIR",
                help="module directory for --kamailio-bin (kamailio -L)")
    g.addoption("--transport", default="ws,wss", metavar="ws,wss",
                help="WebSocket transports to test (default: ws,wss)")
    g.addoption("--variant", action="append", default=[], metavar="VARIANT",
                help="issue-4140 config variant(s), e.g. pua_dialoginfo, uac_req_send+t_reply_error "
                     "(default: pua_dialoginfo, the realistic trigger with the stock reply)")
    g.addoption("--kamleak-summary", default=None, metavar="PATH",
                help="write every verdict of the run as JSON (for dashboards and bisection)")
    g.addoption("--disconnect", default="rst", choices=("rst", "fin", "close"),
                help="how the WebSocket client goes away (default: rst)")


def _targets(config) -> list[Target]:
    return config._kamleak_targets


def pytest_configure(config):
    try:
        config._kamleak_targets = parse_targets(
            config.getoption("kamailio_version"), config.getoption("kamailio_image"),
            config.getoption("kamailio_bin"), config.getoption("kamailio_modules"))
        transports = [t.strip() for t in config.getoption("transport").split(",") if t.strip()]
        bad = [t for t in transports if t not in TRANSPORTS]
        if bad or not transports:
            raise KamleakError(f"unknown transport '{','.join(bad) or '(none)'}'",
                               "use --transport ws, wss or ws,wss")
        config._kamleak_transports = transports
        from scenarios.gh4140_bye_to_closed_ws import DEFAULT_VARIANT, Variant
        names = [v.strip() for opt in config.getoption("variant") for v in opt.split(",") if v.strip()]
        config._kamleak_variants = [Variant.parse(n) for n in (names or [DEFAULT_VARIANT])]
    except KamleakError as exc:
        raise pytest.UsageError(exc.line()) from None
    # SIGTERM (CI cancelling a job) must clean up like Ctrl-C does.
    if hasattr(signal, "SIGTERM") and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _sigterm)


def _sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def pytest_unconfigure(config):
    containers.remove_all_live()


def pytest_generate_tests(metafunc):
    if "kamailio_target" in metafunc.fixturenames:
        targets = _targets(metafunc.config)
        if metafunc.definition.get_closest_marker("known_versions"):
            # Tests asserting expected verdicts run only where expectations exist.
            targets = [t for t in targets if t.kind == "version"]
        if metafunc.definition.get_closest_marker("single_target"):
            # Harness behaviour that does not depend on the Kamailio: run it once.
            targets = targets[:1]
        metafunc.parametrize("kamailio_target", targets, ids=[t.id for t in targets], indirect=True)
    if "transport" in metafunc.fixturenames:
        transports = metafunc.config._kamleak_transports
        metafunc.parametrize("transport", transports, ids=transports, indirect=True)
    if "gate_variant" in metafunc.fixturenames and not _parametrized_here(metafunc, "gate_variant"):
        variants = metafunc.config._kamleak_variants
        metafunc.parametrize("gate_variant", variants, ids=[v.name for v in variants], indirect=True)


def _parametrized_here(metafunc, name: str) -> bool:
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        if name in names:
            return True
    return False


@pytest.fixture
def kamailio_target(request) -> Target:
    return request.param


@pytest.fixture
def transport(request) -> str:
    return request.param


@pytest.fixture
def gate_variant(request):
    """The issue-4140 config variant (from --variant)."""
    return request.param


@pytest.fixture
def disconnect_mode(request) -> str:
    return request.config.getoption("disconnect")


@pytest.fixture
def record_verdict(request):
    """`record_verdict(verdict)`: attach it to the report (and JUnit properties)."""
    def record(verdict):
        request.node.kamleak_verdict = verdict
        request.config.__dict__.setdefault("_kamleak_verdicts", []).append(
            (request.node.nodeid, verdict))
        request.node.user_properties.append(("kamleak.outcome", verdict.outcome))
        request.node.user_properties.append(("kamleak.verdict", verdict.sentence()))
        attach(request, "kamleak verdict", verdict.dumps)
    return record


@pytest.fixture
def gh4140_verdict(kamailio_factory, pbx, ua_factory, transport, kamailio_target, gate_variant,
                   disconnect_mode, record_verdict):
    """Run the issue-4140 scenario during *setup* and return its verdict.

    Anything that keeps the scenario from reaching a verdict (Kamailio dead,
    Asterisk silent, the call failing) is then a test error; only the
    verdict's assertion in the test body can fail the test.
    """
    from scenarios import gh4140_bye_to_closed_ws as gh4140

    try:
        kamailio = gh4140.start_kamailio(kamailio_factory, gate_variant)
    except gh4140.NotApplicable as exc:
        pytest.skip(f"not applicable: {exc}")
    verdict = gh4140.run(kamailio=kamailio, pbx=pbx, ua_factory=ua_factory, transport=transport,
                         variant=gate_variant, disconnect=disconnect_mode,
                         target=kamailio_target.id)
    record_verdict(verdict)
    return verdict


@pytest.fixture(scope="session")
def docker_client():
    """A Docker client; starts a private engine only where allowed (CI, root)."""
    client = engine.client()
    containers.reap_leftovers(client, log=lambda m: print(m, flush=True))
    yield client
    containers.remove_all_live()


@pytest.fixture(scope="session")
def kamleak_images(request, docker_client):
    """Build every image this session needs, in parallel, once."""
    specs = [images.asterisk_spec()]
    specs += [images.kamailio_spec(t.ref) for t in _targets(request.config) if t.kind == "version"]
    images.build_all(docker_client, specs)
    return specs


@pytest.fixture(scope="session")
def pbx(docker_client, kamleak_images, tmp_path_factory):
    """The Asterisk PBX, booted once per session (per xdist worker)."""
    ast = AsteriskPBX(docker_client, tmp_path_factory.mktemp("asterisk"))
    ast.start()
    yield ast
    ast.stop()


def attach(request, title: str, source) -> None:
    """Register evidence for this test: `source()` is read when its report is made.

    Reports are made before fixture teardown, so logs are read while the
    containers still exist; a section added at teardown would be lost.
    """
    request.node.__dict__.setdefault("_kamleak_evidence", []).append((title, source))


@pytest.fixture
def pbx_log(request, pbx):
    """Attach the part of the Asterisk log written during this test."""
    start = len(pbx.log())
    attach(request, "asterisk log", lambda: pbx.log()[start:])
    return pbx


@pytest.fixture
def kamailio_factory(request, kamailio_target, tmp_path, pbx_log):
    """Start a fresh Kamailio for this test: `kamailio_factory(defines=..., timers=...)`.

    Ports are allocated per instance; a port taken meanwhile is retried with
    new ones.  Every instance is stopped at teardown, its log attached.
    """
    client = request.getfixturevalue("docker_client") if kamailio_target.needs_docker else None
    if kamailio_target.kind == "version":
        request.getfixturevalue("kamleak_images")
    kamailio_target.prepare(client)
    started = []

    def registered(k):
        started.append(k)
        attach(request, f"kamailio log ({k.describe()}, ws {k.config.ws_port})", k.log)

    def start(defines=(), timers: TmTimers | None = None, timeout: float = 30.0):
        return launch_kamailio(kamailio_target, client, pbx_log.sip_port, tmp_path, defines,
                               timers, timeout, on_start=registered)

    yield start
    for k in started:
        k.stop()
        ports.release(k.config.udp_port, k.config.ws_port, k.config.wss_port)


@pytest.fixture
def kamailio(kamailio_factory):
    """A Kamailio with the harness's default config (no variant)."""
    return kamailio_factory()


@pytest.fixture
def ua_factory(request):
    """`ua_factory(url)` -> a connected WebSocket UA, closed at teardown."""
    from .sip import WebSocketUA

    uas = []

    from .report import format_trace

    def make(url: str, **kwargs) -> "WebSocketUA":
        ua = WebSocketUA(url, **kwargs)
        uas.append(ua)
        attach(request, f"SIP trace (UA {len(uas)})", lambda: format_trace(ua.trace))
        ua.connect()
        return ua

    yield make
    for ua in uas:
        ua.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed or (report.when == "call" and getattr(item, "_kamleak_always_attach", False)):
        for title, source in item.__dict__.get("_kamleak_evidence", []):
            try:
                text = source()
            except Exception as exc:  # noqa: BLE001 - evidence must not mask the result
                text = f"(could not be read: {exc})"
            if text:
                report.sections.append((f"kamleak: {title}", text))
    if call.excinfo is not None and isinstance(call.excinfo.value, KamleakError):
        exc = call.excinfo.value
        report.longrepr = f"kamleak: {exc.line()}"
        log = getattr(exc, "log", "")
        if log:
            report.sections.append((f"Captured {report.when} server log", log[-20000:]))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    verdicts = config.__dict__.get("_kamleak_verdicts", [])
    if not verdicts:
        return
    tr = terminalreporter
    tr.section("kamleak verdicts")
    tr.write_line(f"{'kamailio':30} {'variant':34} {'tr':4} {'verdict':7} {'reply':44} cell")
    for _, v in verdicts:
        reply = ", ".join(r.describe() for r in v.replies) or "-"
        cell = (f"gone {v.gone_after:.1f}s" if v.gone_after is not None
                else f"still there {v.watched_for:.1f}s" if v.leaked else "never seen")
        tr.write_line(f"{v.kamailio_version[:30]:30} {v.variant[:34]:34} {v.transport:4} "
                      f"{v.outcome:7} {reply[:44]:44} {cell}")
    path = config.getoption("kamleak_summary")
    if path:
        import json
        with open(path, "w") as f:
            json.dump([{"test": nodeid, **v.to_json()} for nodeid, v in verdicts], f, indent=1,
                      default=str)
        tr.write_line(f"kamleak: verdicts written to {path}")
