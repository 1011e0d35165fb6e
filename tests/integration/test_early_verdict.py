"""The early verdict on real Kamailio: where it may not decide, it does not.

The agreement itself (early LEAK vs the lifetime bound, run after run) is
held by every gate test (tests/gate/matrix.assert_early; the suite runs with
--kamleak-confirm) and measured at length by `make agreement`.  Here: a
Kamailio whose RPC stops answering while the orphan is being proven gives no
verdict at all, and the CLI's gate says so (cannot test), never LEAK.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from kamleak.harness.errors import KamleakError, RPCError
from kamleak.harness.probes.rpc import KamailioRPC
from kamleak.harness.tools import cli
from kamleak.harness.wait import poll
from kamleak.scenarios import gh4140_bye_to_closed_ws as gh4140

pytestmark = [pytest.mark.kamailio, pytest.mark.asterisk]


@pytest.mark.single_target
def test_an_rpc_that_stops_answering_mid_proof_is_cannot_test(kamailio_factory, pbx, ua_factory):
    # The session's fixtures, not a Stack: a Stack's close() removes every container of
    # this process, the worker's Asterisk among them.
    variant = gh4140.parse_variant("uac_req_send")
    kam = gh4140.start_kamailio(kamailio_factory, variant)
    outcome: dict = {}

    def ladder():
        try:
            outcome["verdict"] = gh4140.run(kamailio=kam, pbx=pbx, ua_factory=ua_factory,
                                            transport="ws", variant=variant)
        except KamleakError as exc:
            outcome["error"] = exc

    runner = threading.Thread(target=ladder, daemon=True)
    runner.start()
    own = KamailioRPC(kam.rpc.url)
    # The moment Asterisk's BYE has its cell, before any proof can hold (>= 0.6 s).
    poll(lambda: any(c.method == "BYE" for c in own.tm_list()), timeout=60, interval=0.02,
         max_interval=0.02, what="the BYE cell")
    # Every process of it stopped (SIGSTOP from the host): the container still
    # runs, Kamailio answers no RPC at all.
    pids = [int(row[1]) for row in kam.running.container.top()["Processes"]]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        runner.join(timeout=60)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        pbx.cli("channel request hangup all")
    assert not runner.is_alive()
    assert "verdict" not in outcome, outcome["verdict"].report()
    error = outcome["error"]
    # gate_once maps exactly these to "cannot test" (exit 125), never to a verdict.
    assert isinstance(error, cli.CANNOT_TEST_ERRORS), repr(error)
    assert isinstance(error, RPCError), error.line()       # the RPC, not a death, ended it
    assert cli.EXIT_CANNOT_TEST == 125
