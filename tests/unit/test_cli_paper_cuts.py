"""What `check`, `gate`, `repro` and `soak` say before any container starts, and how
cut text reads: the exit-code table in each --help, bad output paths and soak numbers
refused first, "…" where a line was cut, a warning for a config of many MB (no containers:
a Docker host that does not exist proves none is asked for)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from kamleak.harness import progress
from kamleak.harness.tools import cli

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "tests/configs/user/deployment.cfg")


@pytest.fixture
def no_engine(monkeypatch):
    """Any Docker call would fail with 'no Docker engine answers', not the line under test."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.setenv("KAMLEAK_START_DOCKER", "no")


@pytest.mark.parametrize("command", ["check", "gate", "repro"])
def test_each_help_prints_the_one_exit_code_table(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert cli.EXIT_CODES in out, out[-1500:]
    for code in (0, 1, 125, 128, 130, 3):
        assert f"\n  {code:<4} " in cli.EXIT_CODES


def test_the_command_list_says_the_same_codes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "2 bad input" not in out
    assert "gate the issue-4140 gate on your own kamailio.cfg: exit 0 clean, 1 leak, 125 cannot " \
           "test, 128 bad input" in out


@pytest.mark.parametrize("args", [["gate", "--frobnicate"], ["repro", "--frobnicate"],
                                  ["gate", "--kamailio-version", "6.0.1"]])
def test_bad_input_exits_128_in_one_line(args, capsys, no_engine):
    with pytest.raises(SystemExit) as done:
        code = cli.main(args)
        raise SystemExit(code)
    assert done.value.code == cli.EXIT_ABORT == 128
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, option", [
    (["repro", "--artifacts", "/proc/kamleak"], "--artifacts"),
    (["repro", "--kamailio-version", "6.0.1", "--artifacts", "/etc/hostname/x"], "--artifacts"),
    (["gate", "--kamailio-config", CONFIG, "--artifacts", "/etc/hostname/x"], "--artifacts"),
    (["check", "--kamailio-version", "6.0.1", "--artifacts", "/proc/kamleak"], "--artifacts"),
    (["soak", "--kamailio-version", "6.0.1", "--out", "/proc/kamleak"], "--out"),
])
def test_an_unwritable_output_path_is_refused_before_anything_starts(args, option, capsys,
                                                                     no_engine):
    code = cli.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (2, 128) and len(err) == 1, err
    assert err[0].startswith(f"kamleak: {option} /") and err[0].endswith(
        "; pass a directory you can write to"), err
    assert "Docker" not in err[0]


@pytest.mark.parametrize("args, line", [
    (["--calls", "0"], "kamleak: --calls 0: nothing to do; give 1 or more"),
    (["--mix", "2"], "kamleak: --mix 2 is not a fraction; give a value from 0 to 1, e.g. 0.001"),
    (["--mix", "-0.5"], "kamleak: --mix -0.5 is not a fraction; give a value from 0 to 1, e.g. 0.001"),
    (["--concurrency", "0"], "kamleak: --concurrency 0: no call could run; give 1 or more"),
])
def test_soak_numbers_are_refused_before_kamailio_starts(args, line, capsys, no_engine):
    assert cli.main(["soak", "--kamailio-version", "6.0.1", *args]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]


def test_a_cut_line_ends_with_an_ellipsis():
    assert progress.clip("abcdef", 6) == "abcdef"
    assert progress.clip("abcdefg", 6) == "abcde…" and len(progress.clip("abcdefg", 6)) == 6
    from kamleak.harness.reporting.text import ladder
    from kamleak.harness.sip.message import SipMessage

    class Entry:        # one message of a UA's trace, as the ladder reads it
        ts, direction, transport = 0.0, "out", "ws"
        message = SipMessage.parse(b"INVITE sip:" + b"x" * 100 + b"@127.0.0.1 SIP/2.0\r\n"
                                   b"Call-ID: c\r\nCSeq: 1 INVITE\r\n\r\n")
    [row] = ladder([Entry()], [])
    assert row.endswith("x…") and "INVITE sip:xxx" in row


LIVE = """
import time
from kamleak.harness import progress
with progress.Ticker("outer", status=lambda: "outer line"):
    time.sleep(1.2)
    tick = progress.countdown("watching the cell", 7.0)
    for i in range(12):
        tick(i / 10)
        time.sleep(0.1)
    tick(None)
    time.sleep(1.6)
"""


def test_a_countdown_inside_a_ticker_keeps_the_line_and_says_until_when():
    """gate: the whole run's line, then the watch's own countdown over it (not both in turn)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "KAMLEAK_PROGRESS")}
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", LIVE], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=secondary, stderr=secondary)
    os.close(secondary)
    out = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    proc.wait(30)
    os.close(primary)
    draws = [d.split(b"\x1b[K")[0].decode() for d in out.split(b"\r") if d.strip(b"\x1b[K ")]
    first = next(i for i, d in enumerate(draws) if d.startswith("kamleak: watching the cell"))
    last = max(i for i, d in enumerate(draws) if d.startswith("kamleak: watching the cell"))
    assert "outer line" in draws[:first], draws
    assert "outer line" not in draws[first:last], "the Ticker drew over the countdown"
    assert "outer line" in draws[last:], "the Ticker's line comes back once the countdown is over"
    assert " / 7.0 s, until " in draws[first], draws[first]


def test_a_config_of_many_megabytes_is_warned_about(tmp_path, capsys):
    from kamleak.harness.stack.kamailio.cfg import SANE_CONFIG_BYTES, read_config

    big = tmp_path / "kamailio.cfg"
    big.write_text("#!KAMAILIO\n" + ("# " + "x" * 77 + "\n") * (SANE_CONFIG_BYTES // 80 + 1))
    read_config(str(big))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"kamleak: {big} is 10 MB, where a Kamailio config is rarely over 1 MB: "
                   "reading it takes a while; is it the file you meant?"]
    small = tmp_path / "small.cfg"
    small.write_text("#!KAMAILIO\n")
    read_config(str(small))
    assert capsys.readouterr().err == ""
