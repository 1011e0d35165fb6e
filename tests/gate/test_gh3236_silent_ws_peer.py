"""Kamailio issue 3236 across the versions kamleak builds (see the scenario module).

Five WebSocket peers fall silent (socket open, never read); their state
must drain once keepalive or the TCP lifetime ends it.
"""

from __future__ import annotations

import pytest

from kamleak.scenarios import gh3236_silent_ws_peer as gh3236
from tests.gate.matrix import assert_expected

MATRIX = ["ping", "lifetime", "none", "concheck"]


@pytest.mark.known_versions
@pytest.mark.parametrize("variant_name", MATRIX)
def test_gh3236_verdict_matches_real_kamailio(kamailio_factory, ua_factory, kamailio_target,
                                              variant_name, record_verdict):
    variant = gh3236.parse_variant(variant_name)
    kamailio = gh3236.start_kamailio(kamailio_factory, variant)
    verdict = gh3236.run(kamailio=kamailio, variant=variant, ua_factory=ua_factory,
                         target=kamailio_target.id)
    record_verdict(verdict, gh3236.PLOT_HINTS)
    assert_expected(verdict, gh3236.expected(kamailio_target, variant))
    m = verdict.memory
    # Each peer really cost Kamailio a connection record and its shm ...
    assert m["counters"]["ws_current_connections"][1] - m["counters"]["ws_current_connections"][0] == 5
    assert m["bytes_per_peer"] > 1000, m
    if verdict.leaked:
        # ... which a silent peer keeps: the records and wsconn_add()'s shm
        # (wsconn_add_mode() on master since 5e45bc7f, "websocket: extended
        # connection to keep handshake key").
        assert m["counters"]["ws_current_connections"][2] == m["counters"]["ws_current_connections"][1]
        assert any(s.startswith(("websocket: wsconn_add(", "websocket: wsconn_add_mode("))
                   for s in m["leaked_sites"]), verdict.report()
    else:
        # ... released in this order: ws.dump forgets the peers, then the records go.
        assert m["ws_dump_empty_after"] <= m["drained_after"] <= verdict.deadline


def test_unknown_mechanism_is_refused_with_the_choices():
    with pytest.raises(Exception, match="use one of ping, lifetime, none, concheck"):
        gh3236.parse_variant("pong")
