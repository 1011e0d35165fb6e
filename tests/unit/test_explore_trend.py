"""Explore's per-campaign memory trend, on a series recorded from Debian 6.1.5
(kamleak's config with pua_dialoginfo, ten batches of eight varied flows on one
Kamailio, a sample after each batch's drain, every second one after the closed
connections' records went): what a clean build shows is no finding, and what a
leak would add on top of it is one."""

from __future__ import annotations

from kamleak.harness.judging.trend import keeps_rising, rises
from kamleak.harness.tools.explore.trend import PKG_FLOOR_PER_BATCH, Sample, memory_trend

# Baseline first, then after batches 1..10 (a selection of the recorded sites).
SITES = {
    "core: tcpconn_new(1268)": [17376, 17376, 17744, 18016, 17744, 17744, 17744, 17744, 17744, 17744, 17744],
    "pua: publ_cback_func(328)": [0, 9056, 15264, 20752, 26848, 33936, 39424, 44816, 49120, 54992, 62048],
    "pua: update_htable(191)": [0, 912, 1984, 3008, 4224, 5440, 6240, 6976, 7696, 8768, 10000],
    "tmx: tmx_check_pretran(265)": [0, 512, 656, 656, 656, 656, 656, 656, 656, 656, 656],
    "websocket: wsconn_add(201)": [0, 526720, 0, 557824, 0, 152384, 0, 85136, 0, 65840, 0],
    "websocket: wsconn_init(103)": [16384] * 11,
    "tls: ser_malloc(364)": [1025568] + [1097712] * 10,
    "tm: init_tm_stats_child(57)": [3376] * 11,
}
PKG = {
    "0: main process - attendant": [1701712] * 11,
    "10: tcp receiver (generic) child=0": [1781616, 1778064, 1781616, 1778064, 1778064, 1778064, 1778064,
                                           1778064, 1781616, 1778064, 1781616],
    "11: tcp receiver (generic) child=1": [1778064, 1781616, 1778064, 1781616, 1781616, 1781616, 1781616,
                                           1781616, 1778064, 1781616, 1778064],
}
SETTLED = [True, False] * 5 + [True]
LIVE = {"tm cells": 0, "dialogs": 0, "ws connections": 0}


def series(sites=SITES, pkg=PKG, live=None):
    return [Sample(i, {}, dict((live or {}).get(i, LIVE)), {k: v[i] for k, v in sites.items()},
                   {k: v[i] for k, v in pkg.items()}, ws_settled=SETTLED[i]) for i in range(11)]


def test_the_recorded_clean_series_is_no_finding_and_says_what_it_did_not_judge():
    notes: list[str] = []
    assert memory_trend(series(), notes) == []
    # pua's records (Expires 3600) grow every batch by design: never judged.
    assert any("pua" in n and "tls" in n and "not judged" in n for n in notes)


def test_a_site_leaking_a_block_a_batch_on_top_of_it_is_found():
    leaky = dict(SITES, **{"tm: build_uac_req(1618)": [0] + [64 * b for b in range(1, 11)]})
    (f,) = memory_trend(series(leaky), [])
    assert (f.kind, f.key, f.status) == ("shm", "tm: build_uac_req(1618)", "unconfirmed")
    assert f.values == [64 * b for b in range(1, 11)] and not f.sure


def test_a_process_leaking_pkg_is_found_and_tcp_receivers_on_settled_samples_only():
    grows = [1701712 + 4096 * b for b in range(11)]
    (f,) = memory_trend(series(pkg=dict(PKG, **{"0: main process - attendant": grows})), [])
    assert f.kind == "pkg" and f.key == "0: main process - attendant" and len(f.values) == 10
    # A TCP receiver's pkg rising only between unsettled samples is not read there.
    wobble = [1778064 + (8192 * b if not SETTLED[b] else 0) for b in range(11)]
    assert memory_trend(series(pkg=dict(PKG, **{"10: tcp receiver (generic) child=0": wobble})), []) == []


def test_connection_records_in_removal_are_not_a_trend():
    rising_when_unsettled = [16384 + (4096 * b if not SETTLED[b] else 0) for b in range(11)]
    sites = dict(SITES, **{"websocket: wsconn_init(103)": rising_when_unsettled})
    assert memory_trend(series(sites), []) == []
    real = [16384 + 1024 * b for b in range(11)]            # freed-or-not, it rises at every settled one
    (f,) = memory_trend(series(dict(SITES, **{"websocket: wsconn_init(103)": real})), [])
    assert f.key == "websocket: wsconn_init(103)" and len(f.values) == 5


def test_samples_where_cells_are_held_are_left_out_and_then_nothing_is_judged():
    leaky = dict(SITES, **{"tm: build_uac_req(1618)": [0] + [64 * b for b in range(1, 11)]})
    held = {i: dict(LIVE, **{"tm cells": i}) for i in range(1, 11)}     # a reported 4140 cell a batch
    notes: list[str] = []
    assert memory_trend(series(leaky, live=held), notes) == []
    assert any("left out of the memory trend" in n for n in notes)
    assert any("memory trend not judged: 0 comparable" in n for n in notes)


def test_keeps_rising_refuses_caches_steps_and_dips():
    assert keeps_rising([0, 64, 128, 192, 256, 320], floor=80) is not None
    assert keeps_rising([448, 624, 624, 624, 624, 624, 624], floor=96) is None        # filled once
    assert keeps_rising([448] * 4 + [624] * 5, floor=16) is None                        # one step
    assert keeps_rising([0, 100, 200, 300, 400, 400, 400, 400, 400], floor=16) is None  # flat at the end
    assert keeps_rising([0, 100, 90, 300, 400, 500], floor=16) is None                  # went down
    assert keeps_rising([0, 100, 200, 300], floor=16) is None                           # too few
    assert keeps_rising([0, 10, 20, 30, 40, 50], floor=PKG_FLOOR_PER_BATCH * 5) is None  # under the floor


def test_soaks_test_is_the_same_function():
    from kamleak.harness.tools.soak import stats
    assert stats.rises is rises and stats.ols([0, 1, 2], [0, 1, 2]).slope == 1.0
