"""kamleak reduce's removal steps (harness/tools/reduce/removal.py) on the stock and
user configs: the free lines keep what Kamailio reads, units cite the original's
lines, the contract's units are never offered, a route goes with its calls; and
every unit removed alone, and seeded sets of them, asked of the real `kamailio -c`
of Debian's 6.0.1: it refuses only what the search's refusal check is there for."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from kamleak.harness.stack.kamailio import cfg, timers
from kamleak.harness.stack.kamailio.cfgcheck import Checker, config_for_check
from kamleak.harness.stack.kamailio.user_config import HARNESS_DEFINES, UserConfig, check
from kamleak.harness.tools.reduce.removal import Reduction, code_key

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PATHS = [CONFIGS / "stock" / "kamailio-default-websocket.cfg",
         CONFIGS / "stock" / "kamailio-default-websocket.trigger.cfg",
         CONFIGS / "stock" / "kamailio.cfg",
         CONFIGS / "user" / "deployment.cfg",
         CONFIGS / "wt8000" / "kamailio.cfg"]
IDS = [f"{p.parent.name}/{p.name}" for p in PATHS]
_READ: dict[Path, Reduction] = {}


def reduction(path: Path) -> Reduction:
    if path not in _READ:
        _READ[path] = Reduction.of(UserConfig.load(str(path)))
    return _READ[path]


@pytest.fixture(params=PATHS, ids=IDS)
def red(request) -> Reduction:
    return reduction(request.param)


def offered(red: Reduction, state=frozenset()) -> list[int]:
    return [u for tier in red.tiers(state) for u in tier]


def samples(red: Reduction, units: list[int], n: int, seed: int = 23) -> list[frozenset]:
    rng = random.Random(seed)
    return [frozenset(rng.sample(units, rng.randint(2, max(2, len(units) // 4)))) for _ in range(n)]


# -- pure: no Kamailio ---------------------------------------------------------------


def test_the_free_lines_leave_what_kamailio_reads_unchanged(red):
    original = red.user_config.text
    assert code_key(red.text(), red.path) == code_key(original, red.path)
    # Most of a stock config (its comments, the #!ifdef branches not taken), and never
    # a line Kamailio reads code from.
    assert len(red.free) > red.original_size // 4
    pre = cfg.preprocess(original, defines=HARNESS_DEFINES, path=red.path)
    read = {src.line for src, code in pre.lines if src.file is None and code.strip()}
    assert read and not red.free & read


def test_candidate_of_nothing_removed_is_the_users_config_minus_only_free_lines(red):
    uc, cand = red.user_config, red.candidate(frozenset())
    assert cand.text == "\n".join(line for k, line in enumerate(red.lines, 1) if k not in red.free)
    assert (cand.path, cand.encoding, cand.uses_tls, cand.pbx_by_registrar) == \
        (uc.path, uc.encoding, uc.uses_tls, uc.pbx_by_registrar)
    assert red.size() == red.original_size - len({k for k in red.free if k <= red.original_size})


def test_every_unit_names_its_first_line_in_the_original_file(red):
    on_disk = Path(red.path).read_text().split("\n")
    for u in red.units:
        assert u.line in u.lines and u.line not in red.free, u
        # Its own first line: a route's head (its calls may come before), a loadmodule's
        # (a modparam may); any other unit's first line.
        assert u.kind in ("route", "module") or u.line == min(u.lines), u
        assert u.label == on_disk[u.line - 1].strip()[:100], u
        if u.kind == "route":
            assert re.match(r"\w*route\b", u.label), u
        for fn in u.calls:
            assert any(fn in on_disk[k - 1] for k in u.lines), (fn, u)


def test_the_contracts_units_are_fixed_and_never_offered(red):
    fixed = {u.id for u in red.units if u.fixed}
    # The listen-free sockets, websocket/xhttp/jsonrpcs and the xhttp route at least.
    assert len(fixed) >= 10
    for state in [frozenset()] + samples(red, offered(red), 10):
        assert not fixed & set(offered(red, state)), state


@pytest.mark.parametrize("path", [PATHS[1], PATHS[3]], ids=[IDS[1], IDS[3]])
def test_fixed_is_exactly_what_breaks_the_contract_alone(path):
    """removal checks the contract only for units naming what it reads: on these two
    configs that shortcut agrees with checking every unit."""
    red = reduction(path)
    for u in red.units:
        assert u.fixed == bool(red.contract(frozenset({u.id}))), u


def test_a_route_goes_with_every_call_to_it_that_has_a_line_of_its_own(red):
    """A call sharing its line with other code (`} else if (is_method("ACK")) { route(NATMANAGE);`
    in the stock example) stays: the real kamailio -c takes a call to a missing route (every unit
    alone: the test below), and the call goes with its branch."""
    # Named ones: reply_route has no callers.
    routes = [u for u in red.units if u.kind == "route" and not u.fixed and "[" in u.where]
    assert len(routes) >= 5
    for u in routes:
        name = re.match(r"\w*route\[([^\]]+)\]", u.where).group(1)
        text = red.text(frozenset({u.id}))
        parsed, _ = cfg.parse(text, defines=HARNESS_DEFINES, path=red.path)
        assert not [k for k in parsed.routes if k[1] == name], u
        lines = [t.strip() for t in text.split("\n")]
        for k, t in enumerate(lines):
            if re.search(rf"\broute\({name}\)", t):
                # Left only where it shares its line, or is a block's lone statement whose
                # braces share theirs (`} else if (...) {` / `} else ... {`).
                before = next(x for x in reversed(lines[:k]) if x)
                after = next(x for x in lines[k + 1:] if x)
                assert t != f"route({name});" or (before.endswith("{") and before.startswith("}")
                                                   and after.startswith("}")), (u, t)
        assert not check(text, red.path)


def test_a_lone_statement_goes_with_what_holds_it(red):
    """Kamailio refuses `{ }`: no unit alone empties a block, and what went with its
    holder is the holder's call (the cause names it)."""
    for u in offered(red):
        assert not empty_block(red.text(frozenset({u}))), red.units[u]
    if "trigger" in red.path:
        relay = [u for u in red.units if u.label == "if (!t_relay()) {"]
        assert relay and relay[0].calls == ("t_relay", "sl_reply_error") and relay[0].role == "call"


def empty_block(text: str) -> bool:
    """Does what Kamailio reads hold a `{ }` (a syntax error to it)?"""
    code = code_key(text, "kamailio.cfg")[0]
    return bool(re.search(r"\{\s*\}", re.sub(r'"(?:\\.|[^"\\])*"', '""', code)))


# -- the real kamailio -c ------------------------------------------------------------


@pytest.fixture(scope="module")
def checker_601(debian_601):
    return Checker(*debian_601)


def refusals(checker, red: Reduction, states) -> list[str | None]:
    return checker.refusals([config_for_check(user_config=red.candidate(s)) for s in states])


def test_kamailio_c_takes_every_unit_removed_alone_but_modules_and_defines_still_used(red, checker_601):
    """What Kamailio refuses alone is a loadmodule whose functions or variables are still
    called, and a define still substituted: the search checks every candidate first
    (search.py: refused candidates never run) and sweeps the tiers again once their
    users are gone."""
    units = offered(red)
    why = refusals(checker_601, red, [frozenset()] + [frozenset({u}) for u in units])
    assert why[0] is None, why[0]
    refused = {u: w for u, w in zip(units, why[1:]) if w}
    kinds = {red.units[u].kind for u in refused}
    assert kinds <= {"module", "define"}, {red.units[u].label: w for u, w in refused.items()}
    for u, w in refused.items():
        if red.units[u].kind == "module":
            assert "unknown command" in w or "Can't get from cache" in w, (red.units[u], w)
    # Most units go alone (the stock configs: 215 of 234 offered).
    assert len(refused) < len(units) // 5


def test_kamailio_c_refuses_a_set_of_units_only_where_it_empties_a_block(red, checker_601):
    units = offered(red)
    alone = refusals(checker_601, red, [frozenset({u}) for u in units])
    fine = [u for u, w in zip(units, alone) if w is None]
    states = samples(red, fine, 12)
    why = refusals(checker_601, red, states)
    model = [empty_block(red.text(s)) for s in states]
    assert [bool(w) for w in why] == model, [(sorted(s), w) for s, w, m in zip(states, why, model)
                                             if bool(w) != m]
    assert not all(model), "every sample empties a block: the test shows nothing"


def test_tm_timers_are_offered_last_and_nothing_else_is(red):
    """Without its tm timers a config's every gate waits tm's defaults: they are LAST."""
    last = {red.units[u] for u in red.last(frozenset())}
    assert all(u.kind == "modparam" and u.where == "tm" and any(n in u.label for n in timers.NAMES)
               for u in last)
    assert not last & {red.units[u] for u in offered(red)}
    timer = re.compile(r'\s*modparam\("tm",\s*"(' + "|".join(timers.NAMES) + ')"')
    written = {k for k, t in enumerate(red.lines, 1) if timer.match(t)}
    assert {u.line for u in last} == written - red.free


def test_a_lone_statement_can_become_a_no_op_and_its_block_stays():
    """`if (!t_relay()) { sl_reply_error(); }`: the reply can be tried away as `;` (an empty
    block is a syntax error); the no-op's line stays, anything else of the config is the
    user's own text."""
    red = reduction(CONFIGS / "reduce" / "small_trigger.cfg")
    noop = next(u for u in red.units if u.kind == "noop" and u.label == "sl_reply_error();")
    assert noop.role == "call" and noop.parent is not None and noop.keep_as.strip() == ";"
    text = red.text(frozenset({noop.id}))
    assert re.search(r"if \(!t_relay\(\)\) \{\n\t\t;\n\t\}", text), text
    assert red.size(frozenset({noop.id})) == red.size()
    # Gone with its holder, the no-op leaves nothing behind.
    assert ";" not in [t.strip() for t in red.text(frozenset({noop.id, noop.parent})).split("\n")]
    assert ";" in [t.strip() for t in text.split("\n")]


def test_a_paced_candidate_is_the_same_config_with_the_wait_timer_kamleak_gives_it(red, checker_601):
    """reduce's candidates run with tm's wt_timer at PACE_WT_MS where the user's is longer
    (probe.paced): one modparam after everything, which the real kamailio -c takes and the
    timers reader reads as the one Kamailio runs (the last value given wins), every line of
    the user's where it was."""
    from kamleak.harness.stack.kamailio.config import KamailioConfig
    from kamleak.harness.tools.reduce.probe import PACE_WT_MS, paced

    for state in (frozenset(), frozenset(offered(red)[:3])):
        uc = red.candidate(state)
        fast = paced(uc, PACE_WT_MS)
        assert fast.text.split("\n")[:len(uc.text.rstrip("\n").split("\n"))] == \
            uc.text.rstrip("\n").split("\n")
        assert refusals(checker_601, red, [state]) == [None]
        assert checker_601.refusals([config_for_check(user_config=fast)]) == [None]
        read = timers.from_config(KamailioConfig(5070, 8080, 4443, 5080, ctl_port=8082, user_config=fast))
        assert read["wt_timer"].ms == PACE_WT_MS, read["wt_timer"]
        assert read["wt_timer"].source.startswith(red.path.rsplit("/", 1)[-1] + ":")
