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
import tempfile

import pytest

from . import containers, engine, images
from .asterisk import AsteriskPBX
from .errors import KamleakError, ServerError
from .kamailio import KamailioConfig, TmTimers
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
        metafunc.parametrize("kamailio_target", targets, ids=[t.id for t in targets], indirect=True)
    if "transport" in metafunc.fixturenames:
        transports = metafunc.config._kamleak_transports
        metafunc.parametrize("transport", transports, ids=transports, indirect=True)


@pytest.fixture
def kamailio_target(request) -> Target:
    return request.param


@pytest.fixture
def transport(request) -> str:
    return request.param


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


@pytest.fixture
def pbx_log(request, pbx):
    """Attach the part of the Asterisk log written during this test."""
    start = len(pbx.log())
    yield pbx
    request.node.add_report_section("call", "asterisk log", pbx.log()[start:])


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

    def start(defines=(), timers: TmTimers | None = None, timeout: float = 30.0):
        last = None
        for attempt in range(3):
            udp, ws, wss = ports.allocate(3)
            cfg = KamailioConfig(udp_port=udp, ws_port=ws, wss_port=wss, pbx_port=pbx_log.sip_port,
                                 defines=tuple(defines), timers=timers or TmTimers())
            run_dir = tempfile.mkdtemp(prefix=f"kamailio-{len(started)}-{attempt}-", dir=tmp_path)
            k = kamailio_target.kamailio(client, cfg, run_dir, name_hint=kamailio_target.id.replace(":", "_").replace("/", "_"))
            started.append(k)
            try:
                return k.start(timeout=timeout)
            except ServerError as exc:
                last = exc
                if "port was taken" not in str(exc):
                    raise
        raise last

    yield start
    for k in started:
        k.stop()
        request.node.add_report_section("call", f"kamailio log ({k.config.ws_port})", k.log())
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

    def make(url: str, **kwargs) -> "WebSocketUA":
        ua = WebSocketUA(url, **kwargs)
        uas.append(ua)
        ua.connect()
        return ua

    yield make
    for ua in uas:
        ua.close()
        from .report import format_trace
        request.node.add_report_section("call", "SIP trace (UA side)", format_trace(ua.trace))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and isinstance(call.excinfo.value, KamleakError):
        exc = call.excinfo.value
        report.longrepr = f"kamleak: {exc.line()}"
        log = getattr(exc, "log", "")
        if log:
            report.sections.append((f"Captured {report.when} server log", log[-20000:]))
