"""The CLI workflows users run: `kamleak repro`, `check` (git bisect run), `bisect`.

All against real Kamailio and Asterisk; `check` also against the Kamailio
binary installed on this host from Debian (5.6.3 on bookworm), as a Kamailio
developer's build tree would be run.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOST_KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
HOST_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"


def kamleak(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kamleak.harness.tools.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_repro_shows_the_leak_and_the_mitigation(kamleak_images):
    # kamleak's own gate path (via_builder()'s 500), not the report's default (test_repro_report.py)
    proc = kamleak("repro", "--kamailio-version", "6.0.1", "--transport", "ws", "--disconnect", "rst")
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-2000:]
    assert "Verdict: LEAK: BYE Call-ID" in out and "Verdict: CLEAN: BYE Call-ID" in out
    assert "← stateless" in out and "← stateful" in out
    assert "via_builder(): TCP/TLS connection" in out, "Kamailio's own log line is shown"
    assert "outgoings 0, ref_count 1" in out
    side = out.split("side by side", 1)[1]
    assert "500 (1/SL) statelessly" in side and "500 (1/TM) statefully" in side


def test_repro_says_why_when_the_leak_does_not_reproduce(kamleak_images):
    proc = kamleak("repro", "--kamailio-version", "6.1.5", "--variant", "uac_req_send")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "kamleak: the leak did NOT reproduce on debian-6.1.5 with uac_req_send: BYE Call-ID")


def test_repro_without_a_runnable_mitigation_is_not_a_success(kamleak_images):
    """Debian 5.6.3 refuses all three mitigations (observed: send_reply_error() and
    t_reply_error() are unknown commands, tm has no delayed_reply): the leak shows,
    the contrast cannot, so the repro must not exit 0."""
    proc = kamleak("repro", "--kamailio-version", "5.6.3")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "Verdict: LEAK: BYE Call-ID" in proc.stdout
    assert "── mitigated: no mitigation runs here" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == (
        "kamleak: the leak reproduced on debian-5.6.3, but the mitigation could not run: Kamailio refused "
        "send_reply_error (unknown command, missing loadmodule?), t_reply_error (unknown command, "
        "missing loadmodule?), delayed_reply_off (Can't set module parameter); it accepts none of "
        "them, so test a build that has one (--kamailio-version/--kamailio-image)")


def test_repro_names_a_mitigation_the_kamailio_accepts(kamleak_images):
    """6.0.1 (Debian) has no tm delayed_reply but accepts send_reply_error()."""
    proc = kamleak("repro", "--kamailio-version", "6.0.1", "--mitigation", "delayed_reply_off")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "kamleak: the leak reproduced on debian-6.0.1, but the mitigation could not run: Kamailio refused "
        "delayed_reply_off (Can't set module parameter); pick --mitigation send_reply_error, "
        "which it accepts")


needs_host_kamailio = pytest.mark.skipif(
    not (os.path.exists(HOST_KAMAILIO) and os.path.exists(f"{HOST_MODULES}/websocket.so")),
    reason="Debian's kamailio + websocket/tls/presence modules are not installed on this host "
           "(`make setup` as root installs them)")


@needs_host_kamailio
@pytest.mark.serial     # it looks for ANY local kamleak Kamailio left: not beside xdist workers
@pytest.mark.parametrize("variant, code", [
    ("uac_req_send", 1),                      # 5.6.3 leaks with a trigger
    ("none", 0),                              # and not without
    ("uac_req_send+t_reply_error", 125),      # t_reply_error() does not exist: cannot test
])
def test_check_on_a_local_binary_follows_git_bisect_run(kamleak_images, variant, code):
    proc = kamleak("check", "--kamailio-bin", HOST_KAMAILIO, "--kamailio-modules", HOST_MODULES,
                   "--variant", variant)
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-2000:]
    if code == 125:
        assert "unknown command, missing loadmodule?" in proc.stdout
    else:
        assert proc.stdout.startswith(f"kamleak check: {'LEAK' if code else 'CLEAN'}: BYE Call-ID")
    left = subprocess.run(["pgrep", "-f", r"kamleak-.*/kamailio\.cfg"], capture_output=True, text=True)
    assert left.stdout == "", "the local Kamailio must be stopped"


@needs_host_kamailio
def test_check_invert_is_for_finding_the_fix(kamleak_images):
    proc = kamleak("check", "--kamailio-bin", HOST_KAMAILIO, "--kamailio-modules", HOST_MODULES,
                   "--variant", "none", "--invert")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_check_bad_binaries(tmp_path):
    missing = kamleak("check", "--kamailio-bin", str(tmp_path / "src" / "kamailio"))
    assert missing.returncode == 125 and "not found (did the build fail?)" in missing.stderr
    notkam = kamleak("check", "--kamailio-bin", "/bin/true")
    assert notkam.returncode == 128, "a wrong binary must abort a git bisect, not mark it bad"
    assert notkam.stderr.strip() == "kamleak: /bin/true is not Kamailio (`-v` printed 'nothing'); pass the kamailio binary"


def test_bisect_finds_where_the_leak_disappears(kamleak_images):
    builds = ["5.6.3", "6.0.1", "6.1.5"]
    proc = kamleak("bisect", *builds, "--variant", "uac_req_send")
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "kamleak bisect: 6.1.5 is the first build with verdict CLEAN (6.0.1 and earlier: LEAK)" in out
    # Two ends, then ceil(log2(N-1)) points between them.
    between = math.ceil(math.log2(len(builds) - 1))
    assert f"kamleak bisect: {2 + between} gate runs ({between} between the ends)" in out


@pytest.mark.parametrize("args, message", [
    (["5.6.3"], "bisect needs at least two Kamailio builds, got 1"),
    ([], "bisect needs at least two Kamailio builds, got 0"),
    (["5.6.3", "7.7.7"], "unknown Kamailio version '7.7.7'"),
])
def test_bisect_bad_lists(args, message):
    proc = kamleak("bisect", *args)
    assert proc.returncode == 128 and message in proc.stderr.strip().splitlines()[-1]


def test_bisect_ends_that_agree(kamleak_images):
    proc = kamleak("bisect", "6.1.5", "6.1.5", "--variant", "none")
    assert proc.returncode == 128
    assert "both ends give the same verdict (clean)" in proc.stderr


def test_bisect_any_scenario_of_the_catalogue(kamleak_images):
    """PR 3403's buffer leak: only 5.6.3 loses it, so 6.0.1 is where it stops."""
    proc = kamleak("bisect", "5.6.3", "6.0.1", "6.1.5", "--scenario", "pr3403")
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "scenario pr3403, variant t_uac_send+drop" in proc.stderr
    assert "kamleak bisect: 6.0.1 is the first build with verdict CLEAN (5.6.3 and earlier: LEAK)" in out


def test_check_runs_a_catalogue_scenario_with_git_bisect_exit_codes(kamleak_images):
    leak = kamleak("check", "--kamailio-version", "6.0.1", "--scenario", "gh4503", "--variant", "uac_req_send")
    assert leak.returncode == 1, leak.stdout[-2000:] + leak.stderr[-2000:]
    assert "kamleak check: LEAK: INVITE Call-ID" in leak.stdout and "outgoings 0, ref_count 1" in leak.stdout


@pytest.mark.parametrize("args, message", [
    (["--scenario", "nope"], "kamleak: unknown scenario 'nope'; use one of gh3236, gh4140, gh4503, "
                             "gh4919, pr3403, takeover"),
    (["--scenario", "gh4503", "--kamailio-config", "tests/configs/user/deployment.cfg"],
     "kamleak: scenario gh4503 runs on the harness's own config only (its story is built from the "
     "harness's defines); use --scenario gh4140 or takeover with --kamailio-config"),
    (["--scenario", "pr3403", "--variant", "pua_dialoginfo"],
     "kamleak: unknown variant 'pua_dialoginfo' for PR 3403; use one of t_uac_send, uac_req_send, "
     "optionally with +drop"),
])
def test_check_bad_scenario_input_aborts_a_bisection_in_one_line(args, message):
    proc = kamleak("check", "--kamailio-version", "6.1.5", *args)
    assert proc.returncode == 128, "bad input must abort `git bisect run`, not mark a commit"
    assert proc.stderr.strip() == message


def test_check_drives_websocket_peers_for_the_silent_peer_scenario(kamleak_images):
    proc = kamleak("check", "--kamailio-version", "6.1.5", "--scenario", "gh3236", "--variant", "none")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "kamleak check: LEAK: 5 silent WS peers (none): still held at the deadline: shm at " \
           "websocket: wsconn_add(" in proc.stdout


def test_gate_shows_its_wait_and_ends_naming_transport_deadline_and_evidence(kamleak_images, tmp_path):
    """A TTY (KAMLEAK_PROGRESS=1 stands for one) sees what the gate waits for, and until when;
    the last line names the transport, the deadline's timers with their lines, the evidence."""
    art = tmp_path / "evidence"
    proc = subprocess.run([sys.executable, "-m", "kamleak.harness.tools.cli", "gate",
                           "--kamailio-config", "tests/configs/user/deployment.cfg",
                           "--kamailio-version", "6.0.1", "--artifacts", str(art)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL, env={**os.environ, "KAMLEAK_PROGRESS": "1", "COLUMNS": "200"})
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    first, last = proc.stdout.strip().splitlines()
    assert first.startswith("kamleak gate: LEAK: BYE Call-ID")
    assert last == (f"kamleak gate: over WS; deadline 7.0 s for the BYE from fr 3000 ms deployment.cfg:71, "
                    f"max_noninv_lifetime 3000 ms deployment.cfg:75, wt 1000 ms deployment.cfg:72; "
                    f"evidence in {art}")
    assert " s; waiting for Kamailio, a call, the client gone, the BYE cell's deadline (debian-6.0.1, " \
           "deployment.cfg, WS)" in proc.stderr, proc.stderr[-500:]
    assert "kamleak: watching the BYE cell  0.0 / 7.0 s, until " in proc.stderr, proc.stderr[-500:]
    call_id = first.split("Call-ID ", 1)[1].split()[0]
    for name in ("verdict.json", "sip-trace.txt", "asterisk.log"):
        assert call_id in (art / name).read_text(), name
    assert "sl_reply_error()" in (art / "kamailio.log").read_text(), "your config's log, as it ran"
    assert "# ---- generated by kamleak" in (art / "kamailio.cfg").read_text(), "the config as run"
    assert (art / "timeline.png").read_bytes()[:4] == b"\x89PNG"


def test_check_keeps_the_evidence_of_a_story_without_a_websocket_client(kamleak_images, tmp_path):
    """pr3403 runs over UDP (no UA of the stack): its own transport, its verdict and logs kept."""
    proc = kamleak("check", "--kamailio-version", "6.0.1", "--scenario", "pr3403",
                   "--artifacts", str(tmp_path / "ev"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == f"kamleak check: over UDP; evidence in {tmp_path / 'ev'}"
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == [
        "asterisk.log", "kamailio.cfg", "kamailio.log", "verdict.json"]
