"""Bad input ends with one clear line, a non-zero exit, and nothing left behind.

Each case runs the way a user meets it (pytest options, the CLI, the
fixtures) against the real engine and images.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kamleak.harness.errors import NotApplicable, ServerError
from kamleak.harness.stack import containers, images, ports
from kamleak.harness.stack.asterisk import AsteriskPBX
from kamleak.harness.stack.kamailio import ContainerKamailio, KamailioConfig
from kamleak.harness.stack.runner import launch_kamailio
from kamleak.harness.stack.targets import Target
from kamleak.scenarios import gh4140_bye_to_closed_ws as gh4140

ROOT = Path(__file__).resolve().parents[2]
GATE = "tests/gate/test_gh4140_bye_to_closed_ws.py"


def ours(client) -> set[str]:
    return {c.id for c in containers.started_by(client, os.getpid())}


@pytest.fixture
def nothing_left(docker_client):
    """Post-condition: the test leaves no container of ours behind."""
    before = ours(docker_client)
    yield
    assert ours(docker_client) <= before, "a container of this run was left behind"


def run(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("option, value, expected", [
    ("--kamailio-version", "9.9.9", "unknown Kamailio version '9.9.9'"),
    ("--variant", "frobnicate", "unknown trigger 'frobnicate'"),
    ("--variant", "uac_req_send+sl_reply_warning", "unknown variant part 'sl_reply_warning'"),
    ("--transport", "udp", "unknown transport 'udp'"),
])
def test_bad_pytest_option_is_one_line_usage_error(option, value, expected):
    proc = run(sys.executable, "-m", "pytest", GATE, option, value, "-p", "no:cacheprovider")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr


def test_docker_unreachable_and_not_startable():
    proc = run(sys.executable, "-m", "kamleak.harness.tools.cli", "setup",
               env={"DOCKER_HOST": "unix:///nonexistent/docker.sock", "KAMLEAK_START_DOCKER": "no"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["kamleak: no Docker engine answers; start Docker (e.g. `sudo systemctl start "
                     "docker`), or run `make setup` as root to start a private engine"], proc.stderr


def test_image_without_kamailio_binary(docker_client, nothing_left):
    target = Target("image", "debian:bookworm-slim")
    with pytest.raises(Exception) as exc:
        target.prepare(docker_client)
    assert str(exc.value) == ("image debian:bookworm-slim has no kamailio binary in its PATH; "
                              "pass an image that contains Kamailio and its modules")


def test_missing_image(docker_client, nothing_left):
    target = Target("image", "kamleak/no-such-image:1.0")
    with pytest.raises(Exception) as exc:
        target.prepare(docker_client)
    assert str(exc.value) == ("image kamleak/no-such-image:1.0 not found on this Docker engine; "
                              "pull or build it first (`docker pull kamleak/no-such-image:1.0`)")


def test_port_taken_is_named(docker_client, nothing_left, kamleak_images, tmp_path):
    udp, ws, wss, pbx = ports.allocate(4)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ws))
        squatter.listen()
        k = ContainerKamailio(docker_client, images.kamailio_spec("6.0.1").tag,
                              KamailioConfig(udp, ws, wss, pbx), tmp_path)
        with pytest.raises(ServerError) as exc:
            k.start()
    assert f"Kamailio could not bind 127.0.0.1:{ws}: the port is already taken" in str(exc.value)


def test_config_refused_shows_kamailios_own_line(docker_client, nothing_left, kamleak_images, tmp_path):
    udp, ws, wss, pbx = ports.allocate(4)
    k = ContainerKamailio(docker_client, images.kamailio_spec("5.6.3").tag,
                          KamailioConfig(udp, ws, wss, pbx, defines=("WITH_REPLY_T_REPLY_ERROR",)),
                          tmp_path)
    with pytest.raises(ServerError) as exc:
        k.start()
    msg = str(exc.value)
    assert msg.startswith("Kamailio refused to start: ")
    assert "unknown command, missing loadmodule?" in msg and "t_reply_error();" in msg
    assert "\n" not in msg


def test_variant_not_applicable_to_the_version(docker_client, kamleak_images, pbx, tmp_path,
                                               nothing_left):
    # delayed_reply exists from 6.1 on: 5.6.3 must refuse it, and we say "not applicable".
    target = Target("version", "5.6.3")

    def start(defines=(), timers=None):
        return launch_kamailio(target, docker_client, pbx.sip_port, tmp_path, defines, timers)

    with pytest.raises(NotApplicable) as exc:
        gh4140.start_kamailio(start, gh4140.Variant.parse("uac_req_send+delayed_reply_off"))
    assert "Can't set module parameter" in str(exc.value)


def test_asterisk_not_booting_within_its_deadline(docker_client, nothing_left, kamleak_images, tmp_path):
    pbx = AsteriskPBX(docker_client, tmp_path)
    with pytest.raises(ServerError) as exc:
        pbx.start(timeout=0.01)
    assert str(exc.value).startswith("Asterisk did not boot: Asterisk fully booted not reached within")


@pytest.mark.parametrize("version", ["5.6.3", "6.0.1", "6.1.5"])
def test_udp_port_taken_is_named(docker_client, nothing_left, kamleak_images, tmp_path, version):
    """Kamailio's udp_init() bind error names the address but not the port (read on
    all three builds): the message must still name the port, from our config."""
    udp, ws, wss, pbx = ports.allocate(4)
    with socket.socket(type=socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", udp))
        k = ContainerKamailio(docker_client, images.kamailio_spec(version).tag,
                              KamailioConfig(udp, ws, wss, pbx), tmp_path)
        with pytest.raises(ServerError) as exc:
            k.start()
    assert "udp_init(): bind(" in exc.value.log and "Address already in use" in exc.value.log
    assert str(exc.value) == (f"Kamailio could not bind 127.0.0.1:{udp} (UDP): the port is already "
                              "taken; free it or run again (ports are chosen anew)")


@pytest.mark.parametrize("path, expected", [
    ("/proc/kamleak-artifacts", "--kamleak-artifacts /proc/kamleak-artifacts: cannot write in /proc"),
    ("/etc/hostname/artifacts", "--kamleak-artifacts /etc/hostname/artifacts: /etc/hostname is not a "
                                "directory; pass a directory you can write to"),
])
def test_unwritable_artifact_dir_is_refused_before_any_test(path, expected):
    proc = run(sys.executable, "-m", "pytest", GATE, "--kamleak-artifacts", path,
               "-p", "no:cacheprovider")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "passed" not in proc.stdout


def kamleak_cli(*args) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "kamleak.harness.tools.cli", *args)


@pytest.mark.parametrize("command", ["check", "bisect"])
@pytest.mark.parametrize("args, message", [
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--transport", "udp"], "argument --transport: invalid choice: 'udp' (choose from 'ws', 'wss')"),
    (["--variant"], "argument --variant: expected one argument"),
])
def test_check_and_bisect_usage_errors_abort_git_bisect_run(command, args, message):
    """argparse's own exit 2 would make `git bisect run` mark the commit bad."""
    proc = kamleak_cli(command, *args)
    assert proc.returncode == 128, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"kamleak {command}: {message}; see `kamleak {command} --help`"]


@pytest.mark.parametrize("args, line, code", [
    (["gate", "--frobnicate"], "kamleak gate: unrecognized arguments: --frobnicate; "
                               "see `kamleak gate --help`", 128),
    (["gate", "--kamailio-version", "6.0.1"], "kamleak: gate needs your config; pass "
                                              "--kamailio-config KAMAILIO_CFG", 128),
    (["repro", "--transport", "udp"], "kamleak repro: argument --transport: invalid choice: 'udp' "
                                      "(choose from 'ws', 'wss'); see `kamleak repro --help`", 128),
    (["check", "--kamailio-version", "6.0.1", "--image", "x"],
     "kamleak: give one of --kamailio-version, --kamailio-ref, --kamailio-image, --kamailio-bin; "
     "pick the Kamailio to run", 128),
    (["check", "--version", "9.9.9"],
     "kamleak: unknown Kamailio version '9.9.9'; pick one of 5.6.3, 6.0.1, 6.1.5, or test an image "
     "of any other build (--kamailio-image)", 128),
])
def test_other_usage_errors_in_one_line(args, line, code):
    proc = kamleak_cli(*args)
    assert proc.returncode == code and proc.stderr.strip().splitlines() == [line], proc.stderr


@pytest.mark.parametrize("command", ["gate", "repro"])
def test_a_missing_image_cannot_be_tested_and_says_docker_pull(command, docker_client, kamleak_images):
    """Exit 125 (cannot test: `git bisect run` skips) with the hint the docs promise."""
    image = "kamleak/no-such-image:1.0"
    args = ["--kamailio-config", "tests/configs/user/deployment.cfg"] if command == "gate" else []
    popen = subprocess.Popen([sys.executable, "-m", "kamleak.harness.tools.cli", command,
                              "--kamailio-image", image, *args], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = popen.communicate(timeout=300)
    proc = subprocess.CompletedProcess(popen.args, popen.returncode, out, err)
    assert proc.returncode == 125, proc.stdout + proc.stderr
    assert containers.started_by(docker_client, popen.pid) == [], "its Asterisk was left behind"
    said = proc.stdout if command == "gate" else proc.stderr
    assert f"image {image} not found on this Docker engine; pull or build it first " \
           f"(`docker pull {image}`)" in said, said
    if command == "repro":
        assert proc.stderr.strip().splitlines()[-1].startswith("kamleak: image "), proc.stderr
    else:
        assert proc.stdout.strip().splitlines()[-1] == "kamleak gate: over WS; no verdict, no deadline; " \
                                                       "evidence not kept (--artifacts DIR keeps it)"
