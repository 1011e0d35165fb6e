"""`kamleak watch` against real Kamailio 6.0.1 (Debian's, where the 4140 leak is observed).

- a real leaked BYE (issue 4140, uac_req_send trigger, Asterisk hangs up on a
  dead WebSocket client) is reported ORPHANED (outgoings 0, ref_count 1, idle
  longer than wt_timer x1.25 + 0.5 s) before it is reported STUCK, within one
  interval after its bound,
  over JSON-RPC/HTTP and over ctl's BINRPC socket, with the 4140 signature;
  a real Prometheus (Debian's package) scrapes the endpoint and its HTTP
  API returns the stuck count; the one-shot mode exits 2 (CRITICAL);
- soaks: 10,000 calls at several hundred calls/s without a leak -> no stuck
  and no orphaned cell; with a small 4140 mix -> as many stuck cells, and as
  many orphaned ones (each before it is stuck), as the soak leaves;
- bad input: one line, one-shot exit 3.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from kamleak.harness.plugin import state
from kamleak.harness.sip.peer import UdpPeer
from kamleak.harness.stack import ports
from kamleak.harness.stack.kamailio import TmTimers
from kamleak.harness.stack.runner import launch_kamailio
from kamleak.harness.stack.targets import Target
from kamleak.harness.wait import poll, stop_process
from kamleak.scenarios import gh4140_bye_to_closed_ws as gh4140
from tests.terminal import interruptible

pytestmark = [pytest.mark.kamailio]

VERSION = "6.0.1"
INTERVAL = 1.0
KAMLEAK = [sys.executable, "-m", "kamleak.harness.tools.cli"]


def _need_version(request):
    if not any(t.kind == "version" and t.ref == VERSION for t in request.config.stash[state.TARGETS]):
        pytest.skip(f"the watch tests need Kamailio {VERSION} among the targets")


class WatchProc:
    """`kamleak watch ... --json` in a subprocess, its JSON lines read on a thread."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([*KAMLEAK, "watch", *args, "--json"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
                                     preexec_fn=interruptible)
        self.events: queue.Queue = queue.Queue()
        self.all: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"event": "text", "line": line}
            self.all.append(ev)
            self.events.put(ev)

    def wait_for(self, pred, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                ev = self.events.get(timeout=max(0.05, end - time.monotonic()))
            except queue.Empty:
                break
            if pred(ev):
                return ev
        if self.proc.poll() is not None:
            raise AssertionError(f"watch exited {self.proc.returncode}: {self.proc.stderr.read()}")
        raise AssertionError(f"no such event within {timeout} s; last: {self.all[-3:]}")

    def stop(self) -> str:
        stop_process(self.proc, signal.SIGINT)
        return self.proc.stderr.read()


@pytest.fixture
def leaky_kamailio(request, docker_client, kamleak_images, pbx_log, tmp_path):
    _need_version(request)
    started = []
    k = launch_kamailio(Target("version", VERSION), docker_client, pbx_log.sip_port, tmp_path,
                        gh4140.Variant.parse("uac_req_send").defines, TmTimers(),
                        on_start=started.append)
    yield k
    for x in started:
        x.stop()


class Prometheus:
    """Debian's prometheus on a loopback port, temp config and data dir; killed after."""

    def __init__(self, target: str, tmp: Path):
        exe = shutil.which("prometheus")
        if not exe:
            pytest.skip("Debian's prometheus package is not installed (make host-packages)")
        (self.port,) = ports.allocate(1)
        cfg = tmp / "prometheus.yml"
        cfg.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                       "scrape_configs:\n  - job_name: kamleak\n    static_configs:\n"
                       f"      - targets: ['{target}']\n")
        self.log = open(tmp / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [exe, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def query(self, q: str):
        r = requests.get(f"{self.url}/api/v1/query", params={"query": q}, timeout=2).json()
        res = r.get("data", {}).get("result", [])
        return float(res[0]["value"][1]) if res else None

    def stop(self):
        stop_process(self.proc, group=True)
        self.log.close()


def test_leaked_bye_is_reported_over_http_and_ctl_and_scraped(leaky_kamailio, pbx, ua_factory,
                                                              tmp_path):
    k = leaky_kamailio
    cfg = str(k.run_dir / "kamailio.cfg")
    (prom_port,) = ports.allocate(1)
    http = WatchProc("--kamailio-rpc", k.rpc.url, "--kamailio-config", cfg,
                     "--interval", str(INTERVAL), "--prometheus", f"127.0.0.1:{prom_port}")
    ctl = WatchProc("--kamailio-rpc", f"tcp:127.0.0.1:{k.config.ctl_port}", "--kamailio-config",
                    cfg, "--interval", str(INTERVAL))
    prom = None
    try:
        for w in (http, ctl):
            w.wait_for(lambda e: e["event"] == "poll", 15)
        prom = Prometheus(f"127.0.0.1:{prom_port}", tmp_path)
        verdict = gh4140.run(kamailio=k, pbx=pbx, ua_factory=ua_factory, transport="ws",
                             variant=gh4140.Variant.parse("uac_req_send"), target=VERSION)
        assert verdict.leaked, verdict.sentence()
        bye_at = verdict.started_at + next(t for t, label in verdict.timeline
                                           if label.startswith("BYE (Asterisk hangs up)"))
        for name, w in (("http", http), ("ctl", ctl)):
            orphaned = w.wait_for(lambda e: e["event"] == "orphaned"
                                  and e["callid"] == verdict.call_id, 20)
            assert orphaned["method"] == "BYE" and orphaned["signature_4140"], orphaned
            assert (orphaned["outgoings"], orphaned["ref_count"]) == (0, 1), orphaned
            # The harness's wt_timer, read from the config Kamailio runs: 1000 ms x1.25 + 0.5 s.
            assert orphaned["wt_timer_ms"] == 1000 and "kamailio.cfg" in \
                orphaned["wt_timer_source"], orphaned
            assert orphaned["needed"] == pytest.approx(1.75) and \
                orphaned["idle"] > orphaned["needed"], orphaned
            assert orphaned["evidence"].startswith("outgoings 0, ref_count 1, idle "), orphaned
            ev = w.wait_for(lambda e: e["event"] == "stuck" and e["callid"] == verdict.call_id, 20)
            # ORPHANED came first: it is in the stream before the STUCK of the same cell.
            assert w.all.index(orphaned) < w.all.index(ev), (orphaned, ev)
            assert (orphaned["tindex"], orphaned["tlabel"]) == (ev["tindex"], ev["tlabel"])
            assert ev["method"] == "BYE" and ev["signature_4140"], ev
            assert (ev["outgoings"], ev["tflags"], ev["ref_count"]) == (0, 0, 1), ev
            # The harness's timers: (max_noninv 3000 + wt 1000) x1.25 + 2 s.
            assert ev["bound"] == pytest.approx(7.0), ev
            late = ev["t"] - (ev["first_seen"] + ev["bound"])
            assert 0 <= late <= INTERVAL + 0.5, f"{name}: reported {late:.2f} s after the bound"
            seen_after_bye = ev["first_seen"] - bye_at
            assert -0.5 <= seen_after_bye <= INTERVAL + 0.5, seen_after_bye
            print(f"{name}: first seen {seen_after_bye:.2f} s after the BYE, orphaned "
                  f"{orphaned['t'] - bye_at:.2f} s after it ({orphaned['evidence']}), stuck "
                  f"{late:.2f} s after its bound ({ev['t'] - bye_at:.2f} s after the BYE)")
        others = [e for w in (http, ctl) for e in w.all if e["event"] in ("stuck", "orphaned")
                  and e["callid"] != verdict.call_id]
        assert others == [], "only the leaked BYE is orphaned and stuck"
        # Prometheus scrapes the endpoint; its API gives the stuck count.
        got = poll(lambda: prom.query("kamleak_stuck_cells") == 1.0 or None, timeout=20,
                   what="Prometheus reporting kamleak_stuck_cells 1",
                   retry_on=(requests.RequestException, ValueError, KeyError))
        assert got
        assert prom.query("kamleak_stuck_cells_4140_signature") == 1.0
        assert prom.query("kamleak_orphaned_cells") == 1.0
        # One-shot (monitoring-plugin) mode with a state file: first sighting, then CRITICAL.
        state = tmp_path / "watch.state"
        args = [*KAMLEAK, "watch", "--kamailio-rpc", f"tcp:127.0.0.1:{k.config.ctl_port}",
                "--kamailio-config", cfg, "--once", "--state", str(state)]
        first = subprocess.run(args, capture_output=True, text=True, timeout=30)
        assert first.returncode == 0 and first.stdout.startswith("KAMLEAK OK"), first
        time.sleep(7.0 + 0.2)   # the bound must pass between the two cron runs
        second = subprocess.run(args, capture_output=True, text=True, timeout=30)
        assert second.returncode == 2, second
        assert second.stdout.startswith("KAMLEAK CRITICAL - 1 stuck") and verdict.call_id in \
            second.stdout, second.stdout
        assert ", 1 orphaned" in second.stdout and "orphaned=1;" in second.stdout, second.stdout
        print(second.stdout.strip())
    finally:
        err = http.stop() + ctl.stop()
        if prom is not None:
            prom.stop()
    assert "Traceback" not in err, err


# ---------------------------------------------------------------------------
# Bad input: one line, exit 3; --once's status line says UNKNOWN on stdout too


def _one_line_exit_3(*args: str, timeout: float = 30) -> str:
    r = subprocess.run([*KAMLEAK, "watch", *args, "--once"], capture_output=True, text=True,
                       timeout=timeout, cwd=Path(__file__).parents[2])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    # As a monitoring plugin: one status line on stdout, the same cause and fix.
    cause = re.sub(r"^kamleak( watch)?: ", "", lines[0])
    assert r.stdout == f"KAMLEAK UNKNOWN - {cause}\n", (r.stdout, lines[0])
    return lines[0]


class _Server:
    """A loopback TCP server that answers every connection with BYTES (not Kamailio)."""

    def __init__(self, answer: bytes):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                c.settimeout(2)
                try:
                    c.recv(65536)
                    c.sendall(self.answer)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


def test_bad_input_one_line_exit_3():
    (free,) = ports.allocate(1)
    line = _one_line_exit_3("--kamailio-rpc", f"http://127.0.0.1:{free}/RPC")
    assert "refused" in line, line
    line = _one_line_exit_3("--kamailio-rpc", f"tcp:127.0.0.1:{free}")
    assert "ctl" in line and "refused" in line, line
    garbage = _Server(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
    try:
        line = _one_line_exit_3("--kamailio-rpc", f"http://127.0.0.1:{garbage.port}/RPC")
        assert "malformed JSON" in line, line
        # The same HTTP server given as ctl's socket: not BINRPC.
        line = _one_line_exit_3("--kamailio-rpc", f"tcp:127.0.0.1:{garbage.port}")
        assert "does not speak BINRPC" in line, line
    finally:
        garbage.close()
    for bad in ("0", "-1", "abc", "100000"):
        line = _one_line_exit_3("--kamailio-rpc", "tcp:127.0.0.1:1", "--interval", bad)
        assert "--interval" in line, line
    line = _one_line_exit_3("--kamailio-rpc", "udp:127.0.0.1:2049")
    assert "neither" in line, line


def test_once_interrupted_by_a_schedulers_sigterm_is_unknown():
    """A check the scheduler stops (SIGTERM on its timeout) while Kamailio's RPC
    says nothing: UNKNOWN on stdout and exit 3, as every other no-verdict."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    accepted = []
    threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True).start()
    proc = subprocess.Popen([*KAMLEAK, "watch", "--kamailio-rpc",
                             f"tcp:127.0.0.1:{silent.getsockname()[1]}", "--once", "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parents[2])
    try:
        poll(lambda: accepted or None, timeout=30, what="watch connecting to the silent socket")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        silent.close()
        for conn, _ in accepted:
            conn.close()
    assert proc.returncode == 3, (proc.returncode, out, err)
    assert out == "KAMLEAK UNKNOWN - interrupted before a verdict\n", out
    assert err.splitlines() == ["kamleak: watch --once interrupted before a verdict"], err


def test_socket_that_is_not_ctl_on_a_real_kamailio(leaky_kamailio):
    """Kamailio's own SIP-over-TCP (WS) port is no ctl socket: one line, exit 3."""
    k = leaky_kamailio
    line = _one_line_exit_3("--kamailio-rpc", f"tcp:127.0.0.1:{k.config.ws_port}",
                            "--timeout", "2")
    assert "ctl" in line, line
    # And JSON-RPC spoken to ctl's socket: Kamailio's ctl answers no HTTP.
    line = _one_line_exit_3("--kamailio-rpc", f"http://127.0.0.1:{k.config.ctl_port}/RPC",
                            "--timeout", "2")
    assert "JSON-RPC" in line, line


# ---------------------------------------------------------------------------
# Under load


@pytest.fixture
def soak_bench(request, docker_client, kamleak_images, tmp_path):
    _need_version(request)
    peer = UdpPeer().start()
    started = []

    def start(variant: str):
        return launch_kamailio(Target("version", VERSION), docker_client, peer.sip_port, tmp_path,
                               gh4140.Variant.parse(variant).defines, TmTimers(),
                               on_start=started.append)

    yield peer, start
    for k in started:
        k.stop()
    peer.stop()


def _soak_watched(k, peer, *, calls, rate, mix, variant):
    from kamleak.harness.tools.soak import run_soak
    cfg = str(k.run_dir / "kamailio.cfg")
    w = WatchProc("--kamailio-rpc", f"tcp:127.0.0.1:{k.config.ctl_port}", "--kamailio-config",
                  cfg, "--interval", str(INTERVAL))
    try:
        w.wait_for(lambda e: e["event"] == "poll", 15)
        res = run_soak(k, peer, calls=calls, concurrency=50, rate=rate, mix=mix, seed=16,
                       checkpoints=2, variant=variant)
        # Every leaked cell passes its bound (7 s) at most one interval after it is seen.
        poll_after = time.time() + 7.0 + 2 * INTERVAL + 0.5
        w.wait_for(lambda e: e["event"] == "poll" and e["t"] >= poll_after, 20)
    finally:
        err = w.stop()
    assert "Traceback" not in err, err
    polls = [e for e in w.all if e["event"] == "poll"]
    stuck = {e["callid"] for e in w.all if e["event"] == "stuck"}
    orphaned = {e["callid"] for e in w.all if e["event"] == "orphaned"}
    print(res.summary_line())
    print(f"watch: {len(polls)} polls, tm.list up to {max(p['cells'] or 0 for p in polls)} cells, "
          f"max {max(p['tm_list_seconds'] or 0 for p in polls):.3f} s; {len(orphaned)} orphaned, "
          f"{len(stuck)} stuck")
    assert all(p["mode"] == "tm.list" for p in polls), [p for p in polls if p["mode"] != "tm.list"]
    # A cell is reported orphaned before it is reported stuck, never after.
    first = {}
    for i, e in enumerate(w.all):
        if e["event"] in ("orphaned", "stuck"):
            first.setdefault((e["callid"], e["event"]), i)
    late = [cid for cid in orphaned & stuck if first[(cid, "orphaned")] > first[(cid, "stuck")]]
    assert late == [], f"stuck before orphaned: {late}"
    return res, stuck, orphaned, polls[-1]


def test_soak_without_leaks_reports_no_stuck_cell(soak_bench):
    peer, start = soak_bench
    k = start("none")
    res, stuck, orphaned, last = _soak_watched(k, peer, calls=10_000, rate=400, mix=0.0,
                                               variant="none")
    assert res.failed == 0, res.errors[:5]
    assert res.calls_per_s >= 200, res.summary_line()
    assert res.leaked_cells == 0
    assert stuck == set(), f"false positives: {stuck}"
    assert orphaned == set(), f"healthy cells called orphaned: {orphaned}"
    assert last["stuck"] == 0 and last["orphaned"] == 0


def test_soak_with_a_leak_mix_reports_the_cells_it_leaves(soak_bench):
    peer, start = soak_bench
    k = start("uac_req_send")
    res, stuck, orphaned, last = _soak_watched(k, peer, calls=2000, rate=400, mix=0.005,
                                               variant="uac_req_send")
    assert res.failed == 0, res.errors[:5]
    assert res.hits >= 1, res.outcomes
    assert res.leaked_cells == res.hits
    assert stuck == set(res.leaked_in_tm_list), (stuck, res.leaked_in_tm_list)
    assert orphaned == stuck, (orphaned, stuck)
    assert last["stuck"] == res.leaked_cells == last["stuck_4140"] == last["orphaned"]


# ---------------------------------------------------------------------------
# A busy server: ~10,000 live cells


def _leak_udp(port: int, n: int, window: int = 200) -> None:
    """N out-of-dialog MESSAGEs over UDP, WINDOW in flight (issue 4919's ladder: each leaks)."""
    from kamleak.harness.sip.udp import UdpClient
    with UdpClient() as c:
        c._sock.settimeout(2)
        sent = got = 0
        while got < n:
            while sent < n and sent - got < window:
                c._sock.sendto(c.build("MESSAGE", f"sip:gone@127.0.0.1:{port}", body="x").encode(),
                               ("127.0.0.1", port))
                sent += 1
            try:
                data, _ = c._sock.recvfrom(65535)
            except TimeoutError:
                return              # a few replies lost over UDP: tm.stats counts the cells
            if data.startswith(b"SIP/2.0 ") and not data.startswith(b"SIP/2.0 1"):
                got += 1


def _settled_current(rpc) -> int:
    """tm.stats `current` once only the leaked cells are left: the triggers' local
    MESSAGEs and the last requests still wait out wt_timer (1 s) right after the flood."""
    seen = [rpc.tm_stats()["current"]]

    def unchanged_for_two_seconds() -> bool:
        seen.append(rpc.tm_stats()["current"])
        return len(seen) >= 5 and len(set(seen[-5:])) == 1

    poll(unchanged_for_two_seconds, timeout=30, what="tm.stats current to settle", interval=0.5,
         max_interval=0.5)
    return seen[-1]


def test_ten_thousand_cells_http_falls_back_ctl_lists_them(request, docker_client, kamleak_images,
                                                           tmp_path):
    """Debian 6.0.1 with ~10,000 live cells: jsonrpcs builds tm.list but xhttp cannot
    allocate the HTTP reply in pkg memory and sends nothing (observed: its log says
    "could not allocate private memory from pkg pool"); watch says it falls back to
    tm.stats.  ctl streams the same cells (kamcmd refuses them: "reply too big"), and
    watch lists them: the poll cost printed here is the one in the README."""
    from kamleak.harness.tools.soak import _container_cpu
    _need_version(request)
    peer = UdpPeer().start()
    k = launch_kamailio(Target("version", VERSION), docker_client, peer.sip_port, tmp_path,
                        gh4140.Variant.parse("uac_req_send").defines
                        + ("WITH_RELAY_NOCONNECT", "KAMLEAK_SHM_MB=320"), TmTimers())
    try:
        _leak_udp(k.config.udp_port, 10_000)
        cur = _settled_current(k.rpc)
        assert cur >= 9_000, cur
        for _name, addr, mode in (("http", k.rpc.url, "tm.stats"),
                                 ("ctl", f"tcp:127.0.0.1:{k.config.ctl_port}", "tm.list")):
            cpu0 = _container_cpu(k)
            w = WatchProc("--kamailio-rpc", addr, "--interval", "2", "--timeout", "4",
                          "--duration", "5")
            first = w.wait_for(lambda e: e["event"] == "poll", 30)
            w.proc.wait(30)
            cpu = _container_cpu(k) - cpu0 if cpu0 is not None else None
            polls = [e for e in w.all if e["event"] == "poll"]
            assert "Traceback" not in w.stop()
            assert first["mode"] == mode, first
            cost = f"{cpu:.3f} s Kamailio CPU for {len(polls)} polls" if cpu is not None else ""
            if mode == "tm.stats":
                assert first["fallback_started"] and "did not answer tm.list" in \
                    first["fallback_reason"], first
                assert first["created_minus_freed"] == cur
                # tm.list is not asked again before RETRY_LIST_S: the next polls are light.
                assert all(p["mode"] == "tm.stats" and not p["fallback_started"] for p in polls[1:])
                print(f"http: {cur} cells: fallback ({first['fallback_reason']}); {cost}")
            else:
                assert first["cells"] == cur, first
                print(f"ctl: {cur} cells: tm.list {[p['tm_list_seconds'] for p in polls]} s; {cost}")
        log = k.log()
        assert "could not allocate private memory from pkg pool" in log
    finally:
        k.stop()
        peer.stop()


@pytest.mark.kamailio
def test_once_speaks_to_every_target_over_http_and_ctl(kamailio_factory, kamailio_target, tmp_path):
    """watch against each Kamailio the run targets (Debian's, upstream builds, images):
    both transports answer, a healthy server is OK (exit 0), its counters are read.
    (`--state`: one poll, as cron runs it.)"""
    k = kamailio_factory()
    for i, rpc in enumerate((k.rpc.url, f"tcp:127.0.0.1:{k.config.ctl_port}")):
        proc = subprocess.run([*KAMLEAK, "watch", "--kamailio-rpc", rpc, "--once",
                               "--state", str(tmp_path / f"state{i}.json")],
                              capture_output=True, text=True, timeout=60,
                              cwd=Path(__file__).parents[2])
        assert proc.returncode == 0, f"{kamailio_target.id} {rpc}: {proc.stdout}{proc.stderr}"
        assert proc.stdout.startswith("KAMLEAK OK"), proc.stdout
