"""Measure how each way a WebSocket client can die makes Kamailio fail the BYE (issue 17).

Not a test: a batch measurement for the README's table.  One Asterisk, one
Kamailio per (target, candidate); N calls in a row, each: INVITE with
Session-Expires, re-INVITE, the disconnect, (wait until ws.dump drops the
connection, if the candidate says so), Asterisk hangs up; the reply code
Asterisk received and the Kamailio log lines the BYE caused are recorded.
After the last BYE, one wait past the BYE deadline, then tm.list names the
leaked calls.

    .venv/bin/python -m kamleak.scenarios.measure_disconnects --target debian:6.0.1 \\
        --target src:5.8.5 --runs 20 --candidates rst,drop,... --out artifacts/disconnects.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from kamleak.harness.judging import oracle
from kamleak.harness.probes import ws_connections
from kamleak.harness.stack.runner import Stack
from kamleak.harness.stack.targets import Target
from kamleak.harness.wait import WaitTimeout, poll
from kamleak.scenarios import gh4140_bye_to_closed_ws as g
from kamleak.scenarios import story

# name: (UA disconnect mode, Kamailio defines, wait for ws.dump to drop it, hangup delay s)
CANDIDATES = {
    "rst": ("rst", (), True, 0.0),
    "rst-nowait": ("rst", (), False, 0.0),
    "fin": ("fin", (), True, 0.0),
    "close-frame": ("close-frame", (), True, 0.0),
    "silent": ("silent", (), False, 0.0),
    "drop": ("drop", (), False, 0.0),
    "drop+ws-ping2": ("drop", ("KAMLEAK_WS_KEEPALIVE_TIMEOUT=2",), True, 0.0),
    "drop+tcp-lifetime2": ("drop", ("WITH_WS_KEEPALIVE_NONE", "KAMLEAK_TCP_LIFETIME=2"), True, 0.0),
    "rst+advertise": ("rst", ("WITH_LISTEN_ADVERTISE",), True, 0.0),
    "rst+stock": ("rst", ("WITH_STOCK_RELAY",), True, 0.0),
    "rst+advertise+stock": ("rst", ("WITH_LISTEN_ADVERTISE", "WITH_STOCK_RELAY"), True, 0.0),
    "drop+advertise+ws-ping2": ("drop", ("WITH_LISTEN_ADVERTISE", "WITH_STOCK_RELAY", "KAMLEAK_WS_KEEPALIVE_TIMEOUT=2"),
                                True, 0.0),
}
# The BYE's own failure lines (5.8.5 file:line in the comments).
LINES = {
    "via_builder": re.compile(r"TCP/TLS connection \(id: \d+\) for WebSocket could not be found"),
    "msg_send_buffer": re.compile(r"msg_send_buffer\(\): TCP/TLS connection for WebSocket could not be found"),
    "ws_closing": re.compile(r"sending on closing connection"),
    "ws_not_found": re.compile(r"WebSocket outbound connection not found"),
    "ws_send": re.compile(r"sending WebSocket frame"),
    "branch_failed": re.compile(r"sending request on branch \d+ failed"),
}


def target_of(spec: str) -> Target:
    kind, _, ref = spec.partition(":")
    return Target("version" if kind == "debian" else "source", ref)


def one_call(bench, kam, cand, variant_defines) -> dict:
    mode, _defines, wait_gone, delay = CANDIDATES[cand]
    ext = g.new_extension()
    ua = bench.ua(kam.url("ws"))
    dialog = ua.invite(f"sip:{ext}@127.0.0.1", session_expires=1800, min_se=90,
                       refresher="uac", timeout=15)
    dialog.reinvite(session_expires=1800, timeout=15)
    port = int(ua.local_addr.rsplit(":", 1)[1])
    ua.disconnect(mode)
    t_disc = time.monotonic()
    gone = None
    if wait_gone:
        try:
            gone = round(ws_connections.wait_gone(kam.rpc, port, timeout=30, abort=kam.death), 3)
        except WaitTimeout:
            gone = "still listed after 30 s"
    log_mark = len(kam.log())
    pbx_mark = len(bench.pbx.log())
    bench.pbx.hangup(ext)
    t_bye = time.monotonic()
    replies = story.bye_replies(bench.pbx, pbx_mark, dialog.call_id, timeout=12)
    # Kamailio's lines about this BYE (its log_prefix carries the Call-ID).
    def lines():
        return [ln for ln in kam.log()[log_mark:].splitlines() if dialog.call_id in ln]
    try:
        poll(lambda: lines() or None, timeout=3, what="Kamailio's log lines for the BYE")
    except WaitTimeout:
        pass
    got = lines()
    found = sorted(k for k, rx in LINES.items() if any(rx.search(ln) for ln in got))
    ua.close()
    return {"call_id": dialog.call_id, "gone_after": gone, "bye_after_disconnect": round(t_bye - t_disc, 3),
            "replies": [f"{r.code} {r.reason}" for r in replies], "lines": found,
            "log": [ln[-220:] for ln in got if any(rx.search(ln) for rx in LINES.values())][:6]}


def measure(bench, cand: str, runs: int, variant: str) -> dict:
    v = g.Variant.parse(variant)
    kam = g.start_kamailio(bench.kamailio, v, extra_defines=CANDIDATES[cand][1])
    try:
        timers = oracle.read_timers(kam.rpc, kam.config, kam.version)
        deadline = timers.deadline_for("BYE")
        out = []
        for i in range(runs):
            try:
                out.append(one_call(bench, kam, cand, v.defines))
            except Exception as exc:  # noqa: BLE001 - a measurement records what happened
                out.append({"error": f"{type(exc).__name__}: {exc}"})
            print(f"  {cand} run {i + 1}: {out[-1].get('replies') or out[-1].get('error')} "
                  f"{out[-1].get('lines', '')}", flush=True)
        # One wait past the last BYE's deadline, then tm.list says which BYE cells stayed.
        time.sleep(deadline + 2)
        listed = json.dumps(kam.rpc.call("tm.list"))
        for r in out:
            if "call_id" in r:
                r["leaked"] = r["call_id"] in listed
        return {"version": kam.version, "deadline": deadline, "runs": out}
    finally:
        kam.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", action="append", required=True, help="debian:<v> or src:<ref>")
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--variant", default="uac_req_send")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    results = json.loads(Path(a.out).read_text()) if Path(a.out).exists() else {}
    for spec in a.target:
        with Stack(target_of(spec)) as bench:
            for cand in a.candidates.split(","):
                print(f"{spec} {cand}", flush=True)
                results.setdefault(spec, {})[cand] = measure(bench, cand, a.runs, a.variant)
                Path(a.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
