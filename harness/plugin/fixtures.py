"""kamleak's pytest fixtures (registered through kamleak.harness.plugin).

Session scope: `docker_client`, `kamleak_images`, `pbx` (one Asterisk per
session, per xdist worker).  Function scope: `kamailio_factory`/`kamailio`
(a fresh Kamailio per test), `ua_factory`, `record_verdict`, and
`gh4140_verdict` (the scenario run in setup, so harness trouble is an
error and only a leak fails the test).
"""

from __future__ import annotations

import pytest

from kamleak.harness.judging.evidence import attach
from kamleak.harness.plugin import state
from kamleak.harness.probes import capture
from kamleak.harness.stack import containers, engine, images, ports
from kamleak.harness.stack.asterisk import AsteriskPBX
from kamleak.harness.stack.kamailio import TmTimers
from kamleak.harness.stack.runner import launch_kamailio
from kamleak.harness.stack.targets import Target


@pytest.fixture
def kamailio_target(request) -> Target:
    """The Kamailio under test (parametrized from --kamailio-version/-image/-bin)."""
    return request.param


@pytest.fixture
def transport(request) -> str:
    return request.param


@pytest.fixture
def gate_variant(request):
    """The issue-4140 config variant (from --variant)."""
    return request.param


@pytest.fixture
def kamleak_repeat(request) -> int:
    """Which repetition this is (with --kamleak-repeat N)."""
    return request.param


@pytest.fixture
def disconnect_mode(request) -> str:
    return request.config.getoption("disconnect")


@pytest.fixture
def hangup_mode(request) -> str:
    return request.config.getoption("hangup")


@pytest.fixture(scope="session")
def docker_client():
    """A Docker client; starts a private engine only where allowed (CI, root)."""
    client = engine.client()
    containers.reap_leftovers(client, log=lambda m: print(f"kamleak: {m}", flush=True))
    yield client
    containers.remove_all_live()


@pytest.fixture(scope="session")
def kamleak_images(request, docker_client):
    """Build every image this session needs, in parallel, once."""
    specs = [images.asterisk_spec()]
    specs += [images.kamailio_spec(t.ref) for t in request.config.stash[state.TARGETS]
              if t.kind == "version"]
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
    """The PBX, with the part of its log written during this test as evidence."""
    start = len(pbx.log())
    request.node.stash[state.PBX_LOG] = lambda: pbx.log()[start:]
    request.node.stash[state.PBX_PORT] = pbx.sip_port
    attach(request, "asterisk log", request.node.stash[state.PBX_LOG], "asterisk.log")
    return pbx


@pytest.fixture
def kamailio_factory(request, kamailio_target, tmp_path, pbx_log):
    """Start a fresh Kamailio for this test: `kamailio_factory(defines=..., timers=...)`.

    Ports are allocated per instance; a port taken meanwhile is retried with
    new ones.  Each instance's log, rendered config and (where the host can)
    a pcap of its ports are the test's evidence; all are stopped at teardown.
    """
    client = request.getfixturevalue("docker_client") if kamailio_target.needs_docker else None
    if kamailio_target.kind == "version":
        request.getfixturevalue("kamleak_images")
    kamailio_target.prepare(client)
    started, captures = [], []

    def registered(k):
        started.append(k)
        request.node.stash.setdefault(state.KAMAILIOS, []).append(k)
        n = "" if len(started) == 1 else f"-{len(started)}"
        attach(request, f"kamailio log ({k.describe()}, ws {k.config.ws_port})", k.log,
               f"kamailio{n}.log")
        attach(request, "kamailio.cfg", lambda: k.config.render(), f"kamailio{n}.cfg",
               in_report=False)
        cap = capture.Capture([k.config.udp_port, k.config.ws_port, k.config.wss_port,
                               pbx_log.sip_port]).start()
        captures.append(cap)
        request.node.stash.setdefault(state.CAPTURES, []).append(cap)
        attach(request, "capture", cap.finish, f"capture{n}.pcap", in_report=False)

    def start(defines=(), timers: TmTimers | None = None, timeout: float = 30.0):
        return launch_kamailio(kamailio_target, client, pbx_log.sip_port, tmp_path, defines,
                               timers, timeout, on_start=registered,
                               user_config=request.config.stash[state.USER_CONFIG])

    yield start
    for cap in captures:
        cap.stop()
    for k in started:
        k.stop()
        ports.release(k.config.udp_port, k.config.ws_port, k.config.wss_port, k.config.rpc_port,
                      k.config.ctl_port)


@pytest.fixture
def kamailio(kamailio_factory):
    """A Kamailio with the harness's default config (no variant)."""
    return kamailio_factory()


@pytest.fixture
def ua_factory(request):
    """`ua_factory(url)` -> a connected WebSocket UA, closed at teardown.

    Its evidence is the SIP trace of both legs: the UA's own messages and,
    when the test has a PBX, what Asterisk logged.
    """
    from kamleak.harness.reporting.text import sip_trace
    from kamleak.harness.sip import WebSocketUA

    uas = []
    node = request.node

    def make(url: str, **kwargs) -> WebSocketUA:
        ua = WebSocketUA(url, **kwargs)
        uas.append(ua)
        if len(uas) == 1:
            attach(request, "SIP trace",
                   lambda: sip_trace([u.trace for u in uas],
                                     node.stash.get(state.PBX_LOG, lambda: "")(),
                                     [c.finish() for c in node.stash.get(state.CAPTURES, [])],
                                     node.stash.get(state.PBX_PORT, None)),
                   "sip-trace.txt")
        ua.connect()
        return ua

    yield make
    for ua in uas:
        ua.close()


@pytest.fixture
def record_verdict(request):
    """`record_verdict(verdict, hints=None)`: a report section, artifacts, JUnit properties,
    the summary; HINTS: the story's PLOT_HINTS for its timeline (tm's by default)."""
    def record(verdict, hints=None):
        from kamleak.harness.reporting.text import run_label
        from kamleak.harness.stack.kamailio.server import provided

        node = request.node
        verdict.variant = run_label(verdict.variant, request.config.stash[state.USER_CONFIG])
        # What kamleak added to a user's config (RPC over ctl, a tls.cfg): the report says it.
        verdict.provided = provided(request.node.stash.get(state.KAMAILIOS, []))
        node.stash[state.VERDICT] = verdict
        request.config.stash.setdefault(state.VERDICTS, []).append((node.nodeid, verdict))
        node.user_properties.append(("kamleak.outcome", verdict.outcome))
        node.user_properties.append(("kamleak.verdict", verdict.sentence()))
        attach(request, "kamleak verdict", verdict.dumps, "verdict.json")
        for label, data in verdict.snapshots.items():
            attach(request, label, lambda data=data: data,
                   f"rpc/{label.replace(' ', '-').replace('/', '_')}.json", in_report=False)
        attach(request, "timeline", lambda: _timeline_png(verdict, hints), "timeline.png",
               in_report=False)
    return record


def _timeline_png(verdict, hints=None) -> bytes:
    import tempfile
    from pathlib import Path

    from kamleak.harness.reporting import plot

    with tempfile.TemporaryDirectory() as d:
        return Path(plot.render_timeline(verdict.to_json(), Path(d) / "timeline.png",
                                         hints)).read_bytes()


@pytest.fixture
def gh4140_verdict(kamailio_factory, pbx, ua_factory, transport, kamailio_target, gate_variant,
                   disconnect_mode, hangup_mode, record_verdict):
    """Run the issue-4140 scenario during *setup* and return its verdict.

    Anything that keeps the scenario from reaching a verdict (Kamailio dead,
    Asterisk silent, the call failing) is then a test error; only the
    verdict's assertion in the test body can fail the test.
    """
    from kamleak.harness import registry
    from kamleak.harness.errors import NotApplicable

    gh4140 = registry.scenario("gh4140")
    try:
        kamailio = gh4140.start_kamailio(kamailio_factory, gate_variant,
                                         extra_defines=gh4140.disconnect_defines(disconnect_mode))
    except NotApplicable as exc:
        pytest.skip(f"not applicable: {exc}")
    verdict = gh4140.run(kamailio=kamailio, pbx=pbx, ua_factory=ua_factory, transport=transport,
                         variant=gate_variant, disconnect=disconnect_mode, hangup=hangup_mode,
                         target=kamailio_target.id)
    record_verdict(verdict)
    return verdict
