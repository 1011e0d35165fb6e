"""`mod.stats all shm` parsing and growth, on an answer shaped like Kamailio 6.0's."""
from __future__ import annotations

from kamleak.harness.probes.memstats import growth, parse_mod_stats
from kamleak.harness.probes.rpc import loads

# As Kamailio 5.6.3 answers over jsonrpcs (trimmed): one object per module.
WIRE = ('{"jsonrpc":"2.0","result":["Module: core",{"tcpconn_new(1203)":17344,'
        '"init_tcp(5219)":8192,"Total":25536},"","Module: xlog",{"Total":0},"",'
        '"Module: tm",{"init_hash_table(488)":2097152,"build_uac_req(1618)":8712,'
        '"Total":2105864},""],"id":1}')
ANSWER = loads(WIRE).get("result")


def test_sites_are_keyed_by_module_and_site_without_totals():
    sites = parse_mod_stats(ANSWER)
    assert sites == {"core: tcpconn_new(1203)": 17344, "core: init_tcp(5219)": 8192,
                     "tm: init_hash_table(488)": 2097152, "tm: build_uac_req(1618)": 8712}


def test_growth_counts_new_sites_and_drops_unchanged_ones():
    before = {"tm: init_hash_table(488)": 2097152, "websocket: wsconn_add(198)": 400}
    after = {"tm: init_hash_table(488)": 2097152, "tm: build_uac_req(1618)": 870,
             "websocket: wsconn_add(198)": 0}
    assert growth(before, after) == {"tm: build_uac_req(1618)": 870,
                                     "websocket: wsconn_add(198)": -400}


def test_plain_dicts_parse_the_same():
    assert parse_mod_stats(["Module: tm", {"build_uac_req(1618)": 10, "Total": 10}]) == \
        {"tm: build_uac_req(1618)": 10}


def test_anything_else_parses_to_nothing():
    assert parse_mod_stats({"error": "x"}) == {}
    assert parse_mod_stats(["Module: tm", "not a list", ["bad"], [["a(1)", "x"]]]) == {}


def test_a_build_without_per_site_accounting_is_refused_not_judged_clean():
    import pytest

    from kamleak.harness.errors import ScenarioError
    from kamleak.harness.probes.memstats import snapshot

    class NoAccounting:      # what `mod.stats all shm` answers without DBG_SR_MEMORY: nothing
        def call(self, *args):
            return ["Module: core", {"Total": 0}, ""]

    with pytest.raises(ScenarioError, match="keeps no shm accounting per allocation site"):
        snapshot(NoAccounting())
