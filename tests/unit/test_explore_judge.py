"""Explore's per-flow checks beyond tm.list, on answers recorded from Debian 6.1.5
(kamleak's config with pua_dialoginfo; the stock WebRTC config for usrloc):
the readers of dlg.list, ul.dump and pkg.stats, the bounds of a dialog, a
connection and a contact, and what a flow is judged to hold."""

from __future__ import annotations

import time

import pytest

from kamleak.harness.judging import lifetimes
from kamleak.harness.probes import memstats, state
from kamleak.harness.probes.rpc import KamailioRPC, RPCCallError, TmCell, loads
from kamleak.harness.tools.explore import flow as fl
from kamleak.harness.tools.explore.drive import FlowRun
from kamleak.harness.tools.explore.judge import CONTACT, DIALOG, TM, WS, Held, Judgement, Objects, recheck

_CALLER = ('"caller":{"tag":"662156e7c8","contact":"sip:u4242@3294e15cd5ae.invalid;transport=ws;ob",'
           '"cseq":"1","route_set":"","socket":"tcp:127.0.0.1:24775"},"callee":{"tag":"c9be008b-9d1a-'
           '4d7f-a051-572fd469016c","contact":"sip:127.0.0.1:24314","cseq":"0","route_set":"",'
           '"socket":"udp:127.0.0.1:23083"},"profiles":[],"variables":[]')
# A call up (confirmed, its dialog timer 12 h away), then 0.3 s after the client's BYE (deleted).
DLG_CONFIRMED = ('{"jsonrpc":"2.0","result":[{"h_entry":3397,"h_id":3948,"ref":2,"call-id":'
                 '"e940b65a6fa2d0ecd2d66d12","from_uri":"sip:u4242@127.0.0.1","to_uri":"sip:4242@127.0.0.1",'
                 '"state":4,"start_ts":1796315614,"init_ts":1796315614,"end_ts":0,"duration":1,'
                 '"timeout":1796358814,"lifetime":43200,"dflags":515,"sflags":0,"iflags":0,' + _CALLER + '}],"id":1}')
DLG_DELETED = DLG_CONFIRMED.replace('"ref":2', '"ref":1').replace('"state":4', '"state":5') \
    .replace('"end_ts":0', '"end_ts":1796315615').replace('"timeout":1796358814', '"timeout":0')
DLG_EMPTY = '{"jsonrpc":"2.0","result":[],"id":1}'
NOT_FOUND = '{"jsonrpc":"2.0","error":{"code":500,"message":"Method Not Found"},"id":1}'
WS_ONE = ('{"jsonrpc":"2.0","result":{"connections":["9: ws:127.0.0.1:50908 -> ws:127.0.0.1:24775 '
          '(state: OPEN,  last used 1s ago, sub-protocol: sip)"],"info":{"wscounter":1,"truncated":"no"}},"id":1}')
WS_NONE = '{"jsonrpc":"2.0","result":{"connections":[],"info":{"wscounter":0,"truncated":"no"}},"id":1}'
UL_ONE = ('{"jsonrpc":"2.0","result":{"Domains":[{"Domain":{"Domain":"location","Size":1024,"AoRs":[{"Info":'
          '{"AoR":"u4243","HashID":2074477705,"Contacts":[{"Contact":{"Address":'
          '"sip:u4243@40023da9e484.invalid;transport=ws;ob","Expires":600,"Q":-1,"Call-ID":'
          '"a55665a61d37e337d6b2f540","CSeq":1,"User-Agent":"kamleak","Received":'
          '"sip:127.0.0.1:47534;transport=ws","Path":"[not set]","State":"CS_NEW","Flags":0,"CFlags":64,'
          '"Socket":"tcp:127.0.0.1:25403","Methods":4294967295,"Ruid":"uloc-6b119ac0-1d-1","Instance":'
          '"[not set]","Reg-Id":0,"Server-Id":0,"Tcpconn-Id":5,"Keepalive":1,"Last-Keepalive":1796315840,'
          '"KA-Roundtrip":0,"Last-Modified":1796315840}}]}}],"Stats":{"Records":1,"Max-Slots":1}}}]},"id":1}')
UL_EMPTY = ('{"jsonrpc":"2.0","result":{"Domains":[{"Domain":{"Domain":"location","Size":1024,"AoRs":[],'
            '"Stats":{"Records":0,"Max-Slots":0}}}]},"id":1}')
PKG = ('{"jsonrpc":"2.0","result":[{"entry":0,"pid":8,"rank":0,"used":1717952,"free":6224752,"real_used":'
       '2163856,"total_size":8388608,"total_frags":14,"desc":"main process - attendant"},{"entry":1,"pid":9,'
       '"rank":1,"used":1718144,"free":6224224,"real_used":2164384,"total_size":8388608,"total_frags":15,'
       '"desc":"udp receiver child=0 sock=127.0.0.1:23083"},{"entry":10,"pid":18,"rank":3,"used":1794304,'
       '"free":6148064,"real_used":2240544,"total_size":8388608,"total_frags":14,"desc":'
       '"tcp receiver (generic) child=0"}],"id":1}')


class Recorded(KamailioRPC):
    """A JSON-RPC client that answers from recorded wire texts (method -> text)."""

    def __init__(self, answers: dict[str, str]):
        super().__init__("http://127.0.0.1:1/RPC")
        self.answers = answers

    def call(self, method, *params):
        body = loads(self.answers.get(method, NOT_FOUND))
        error = body.get("error")
        if error is not None:
            raise RPCCallError(method, error.get("code"), error.get("message"))
        return body.get("result")


class _Kamailio:
    config = None            # unreadable: the bounds' defaults

    def __init__(self, answers):
        self.rpc = Recorded(answers)

    def death(self):
        return None


def test_dlg_list_reads_state_ref_and_times():
    (d,) = state.parse_dlg_list(loads(DLG_CONFIRMED).get("result"))
    assert (d.callid, d.key, d.state, d.ref, d.end_ts, d.timeout) == \
        ("e940b65a6fa2d0ecd2d66d12", "3397:3948", 4, 2, 0, 1796358814)
    (gone,) = state.parse_dlg_list(loads(DLG_DELETED).get("result"))
    assert gone.state_name == "deleted" and gone.end_ts == 1796315615 and gone.ref == 1
    assert state.parse_dlg_list(loads(DLG_EMPTY).get("result")) == []


def test_an_rpc_no_module_serves_reads_as_none_not_as_nothing_held():
    rpc = Recorded({})
    assert state.dialogs(rpc) is None and state.contacts(rpc) is None
    assert state.dialogs(Recorded({"dlg.list": DLG_EMPTY})) == []

    class Broken(Recorded):
        def call(self, method, *params):
            raise RPCCallError(method, 500, "Internal error")
    with pytest.raises(RPCCallError):
        state.dialogs(Broken({}))


def test_ul_dump_reads_each_contact_and_its_expiry():
    (c,) = state.contacts(Recorded({"ul.dump": UL_ONE}))
    assert (c.aor, c.expires, c.tcpconn_id, c.callid) == ("u4243", 600, 5, "a55665a61d37e337d6b2f540")
    assert state.contacts(Recorded({"ul.dump": UL_EMPTY})) == []
    (expired,) = state.parse_ul_dump(loads(UL_ONE.replace('"Expires":600', '"Expires":"expired"')).get("result"))
    assert expired.expires is None and expired.expires_text == "expired"


def test_pkg_stats_per_process_named_without_addresses():
    used = memstats.parse_pkg_stats(loads(PKG).get("result"))
    assert used == {"0: main process - attendant": 1717952, "1: udp receiver child=0 sock=*": 1718144,
                    "10: tcp receiver (generic) child=0": 1794304}


def test_dialog_bounds_rest_on_the_clean_run_and_a_confirmed_one_has_none():
    b = lifetimes.Bounds({}, {})
    (deleted,) = state.parse_dlg_list(loads(DLG_DELETED).get("result"))
    at, why = b.dialog(deleted)
    assert at == 1796315615 + 300 + 1 + 90 * 1.25 + 2 and "end_timeout 300" in why
    (confirmed,) = state.parse_dlg_list(loads(DLG_CONFIRMED).get("result"))
    assert b.dialog(confirmed)[0] is None
    early = state.Dialog("x", 1, 2, 1, 2, 1000, 0, 0, 0, 0)
    assert b.dialog(early)[0] == 1000 + 300 + 1 + 90 * 1.25 + 2
    no_end = state.Dialog("x", 1, 2, 1, 5, 1000, 0, 0, 0, 0)
    assert b.dialog(no_end)[0] is None                       # the clean run skips end_ts 0
    tuned = lifetimes.Bounds({("dialog", "end_timeout"): 10}, {("dialog", "end_timeout"): "modparam"})
    assert tuned.dialog(deleted)[0] == 1796315615 + 10 + 1 + 90 * 1.25 + 2


def test_connection_and_contact_bounds():
    assert lifetimes.Bounds({}, {}).ws()[0] == 2 * 180 + 1.25 + 5 + 2
    none = lifetimes.Bounds({("websocket", "keepalive_mechanism"): 0}, {}, tcp_lifetime=3605)
    assert none.ws()[0] == 3605 + 8 + 5 + 2
    assert lifetimes.Bounds({("websocket", "keepalive_mechanism"): 3}, {}).ws()[0] is None
    (c,) = state.contacts(Recorded({"ul.dump": UL_ONE}))
    assert lifetimes.Bounds({}, {}).contact(c)[0] == 600 + 60 * 1.25 + 2
    assert lifetimes.Bounds({("usrloc", "timer_interval"): 0}, {}).contact(c)[0] is None


def _run(steps, got, call_ids=(), ports=(), extension="4243", transport="ws"):
    run = FlowRun(fl.parse(transport, steps), extension, set(call_ids), list(got))
    run.ports, run.ended_at = list(ports), time.monotonic() - 1.0
    return run


def test_what_a_flow_holds_each_with_its_bound_and_none_a_leak_before_it():
    kam = _Kamailio({"dlg.list": DLG_DELETED, "ws.dump": WS_ONE, "ul.dump": UL_ONE})
    objects = Objects(kam)
    read = objects.read()
    run = _run(["register", "invite:answer", "bye"], ["200", "200", "200"],
               call_ids={"e940b65a6fa2d0ecd2d66d12"}, ports=[50908])
    now = time.monotonic()
    held = {h.kind: h for h in objects.held(run, read, now)}
    assert set(held) == {DIALOG, WS, CONTACT}
    assert held[DIALOG].shape == "deleted/ref1" and held[WS].key == "ws:50908"
    assert held[CONTACT].shape == "registered" and "lives until its expiry" in held[CONTACT].why
    assert held[WS].bound_at == pytest.approx(run.ended_at + 2 * 180 + 1.25 + 5 + 2)
    assert not any(h.leaked for h in held.values())
    # Another flow's port, Call-ID and extension: nothing of it is held.
    other = _run(["invite:answer", "bye"], ["200", "200"], call_ids={"nope"}, ports=[1], extension="1")
    assert objects.held(other, read, now) == []


def test_a_contact_after_its_unregister_is_still_only_held_until_its_expiry():
    kam = _Kamailio({"ul.dump": UL_ONE})
    objects = Objects(kam)
    run = _run(["register", "unregister"], ["200", "200"])
    (h,) = objects.held(run, objects.read(), time.monotonic())
    assert h.shape == "unregistered" and "after its unregister got 200" in h.why
    assert h.bound_at is not None and not h.leaked
    assert any("dialogs not checked" in n for n in objects.notes)


def test_signature_names_the_object_that_leaked():
    cell = TmCell("0x1", 1, 2, "BYE", "", "", "c", "1", "", 0, 0, 1, 0, raw={})
    run = _run(["invite:answer", "rst", "pbx_bye"], ["200", "gone", "500"], call_ids={"c"})
    tm = Judgement(run, True, [cell], ["BYE cell 0x1: proven"], None)
    assert tm.kind == TM and tm.signature() == "tm cell: BYE/out0/ref1/t0"
    dialog = Held(DIALOG, "1:2", "dialog 1:2", "deleted/ref1", time.monotonic() - 1, "past", leaked=True)
    held = Judgement(run, True, [], ["dialog still listed"], 0.5, held=[dialog])
    assert held.kind == DIALOG and held.signature() == "dialog: deleted/ref1"
    clean = Judgement(run, False, [], [], 0.2, held=[Held(WS, "ws:1", "c", "ws", None, "no bound")],
                      notes=["contacts not checked: no usrloc"])
    assert clean.signature() == "" and len(clean.evidence()) == 2 and "no verdict" in clean.evidence()[0]


def test_recheck_calls_a_leak_only_past_the_bound_fixed_when_first_seen():
    run = _run(["invite:answer", "bye"], ["200", "200"], call_ids={"e940b65a6fa2d0ecd2d66d12"})
    j = Judgement(run, False, [], [], 0.1)
    past = Held(DIALOG, "3397:3948", "d", "deleted/ref1", time.monotonic() - 0.01, "bound")
    ahead = Held(DIALOG, "3397:3948", "d", "deleted/ref1", time.monotonic() + 60, "bound")
    leaks, still = recheck(_Kamailio({"dlg.list": DLG_DELETED}), [(j, past)])
    assert [h.leaked for _, h in leaks] == [True] and still == []
    leaks, still = recheck(_Kamailio({"dlg.list": DLG_DELETED}), [(j, ahead)])
    assert leaks == [] and len(still) == 1
    assert recheck(_Kamailio({"dlg.list": DLG_EMPTY}), [(j, past)]) == ([], [])    # gone
