"""Soak mode: many calls through ONE Kamailio, and how many tm cells / shm bytes each leaves.

`run_soak()` drives CALLS calls over WebSocket at up to RATE new calls/s with
at most CONCURRENCY in flight, from a pool of WebSocket clients (one call at
a time per client; a client whose connection was killed is replaced).  A
fraction MIX of the calls (spread evenly: mix 0.001 is exactly 1 in 1000)
run the issue-4140 ladder, the rest are healthy:

  healthy, client hangs up   INVITE (Session-Expires) / 200 / ACK, [hold], BYE / 200
  healthy, peer hangs up     INVITE / 200 / ACK, [hold], the PBX's BYE reaches the live
                             client through Kamailio, which answers 200
  4140                       INVITE / 200 / ACK, re-INVITE / 200 / ACK, the client's
                             connection is RST, we wait until Kamailio no longer lists
                             it (ws.dump; core.tcp_list once ws.dump truncates at 50),
                             then the PBX hangs up: its BYE cannot be forwarded

The far end is `kamleak.harness.sip.peer.UdpPeer` (built in, hundreds of calls/s) or a
real Asterisk (`kamleak.harness.stack.asterisk.AsteriskPBX`, hung up by `pbx.hangup(ext)`,
a docker exec each, so tens of calls/s at most).

The run is cut into CHECKPOINTS segments.  After each one no new call starts
until every call in flight is over and Kamailio has drained (tm.stats
`waiting` 0 and `current` steady, bounded by fr_timer + wt_timer); then
tm.stats, core.shmmem and, where the build has it, `mod.mem_stats tm shm`
are read.  A least-squares line through these drained checkpoints (cells ~
calls, shm ~ calls) gives the leaked cells per call and shm bytes per call,
with a 95 % confidence interval; a background sampler records the same
counters during the run for the plot.  Cells still there after the last
drain are the leak: they are matched against the 4140 calls whose BYE
Kamailio answered with a 5xx (the calls that really hit the dead-connection
path) and against `tm.list`.  A drain also follows those calls' BYE cells in
`tm.list` with the orphan proof's time rule (kamleak.harness.judging.orphan:
idle, outgoings 0 and ref_count 1, at every read for longer than wt_timer
x1.25 + 0.5 s): it ends as soon as every cell left is such a BYE proven
orphaned, waits for an idle one to be proven or gone, and the record says per
leaked call when its cell was proven (`orphaned`).  The count proof
(tm.stats waiting) is never used: the soak's calls run concurrently.

The WebSocket clients are the driver's lean multiplexed client, not
`kamleak.harness.sip.WebSocketUA` (see driver.py for why).

The parts: plan (which call is which), stats (least squares), driver (the
lean client and the call state machine), run (run_soak and the analysis),
plot, cli (`kamleak soak`).
"""
from __future__ import annotations

from kamleak.harness.tools.soak.plan import KINDS, dead_path_reply, plan_kinds
from kamleak.harness.tools.soak.plot import render_plot
from kamleak.harness.tools.soak.run import SoakResult, _container_cpu, run_soak
from kamleak.harness.tools.soak.stats import Fit, ols

__all__ = ["KINDS", "Fit", "SoakResult", "_container_cpu",
           "dead_path_reply", "ols", "plan_kinds", "render_plot", "run_soak"]
