"""tm timers from the config Kamailio runs, the deadline rule, and the post-condition.

Parsers and the oracle's decision function, fed text and recorded RPC answers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kamleak.harness.errors import ScenarioError, UsageError
from kamleak.harness.judging import oracle
from kamleak.harness.judging.verdict import timers_text
from kamleak.harness.probes import rpc
from kamleak.harness.stack.kamailio import KamailioConfig, TmTimers
from kamleak.harness.stack.kamailio import timers as tm_timers
from kamleak.harness.stack.kamailio.user_config import UserConfig

ROOT = Path(__file__).resolve().parents[2]
WT8000 = ROOT / "tests/configs/wt8000/kamailio.cfg"
KSRC = Path("/work/ksrc/src")


def extract(text, tmp_path=None, **kw):
    path = str((tmp_path or Path("/nonexistent")) / "my.cfg")
    return tm_timers.extract(text, path=path, **kw)


def test_literal_quoted_and_defaults_with_sources():
    t = extract('loadmodule "tm.so"\nmodparam("tm", "wt_timer", 8000)\n'
                'modparam("tm", "fr_inv_timer", "90000")\n', version="6.1.5")
    assert t["wt_timer"] == tm_timers.Timer(8000, "my.cfg:2 modparam")
    assert t["fr_inv_timer"] == tm_timers.Timer(90000, "my.cfg:3 modparam")
    assert t["fr_timer"] == tm_timers.Timer(30000, "tm default (src/modules/tm/config.h)")
    assert t["max_noninv_lifetime"].ms == 32000 and t["max_inv_lifetime"].ms == 180000


def test_define_ifdef_and_last_one_wins():
    text = ("#!define WT 8000\n#!define FAST\n"
            '#!ifdef FAST\nmodparam("tm", "fr_timer", 2000)\n#!else\n'
            'modparam("tm", "fr_timer", 9000)\n#!endif\n'
            '#!ifdef SLOW\nmodparam("tm", "wt_timer", 1)\n#!endif\n'
            'modparam("tm", "wt_timer", WT)\nmodparam("tm|sl", "max_noninv_lifetime", 1)\n'
            'modparam("tm", "max_noninv_lifetime", 4000)\n')
    t = extract(text)
    assert (t["fr_timer"].ms, t["fr_timer"].source) == (2000, "my.cfg:4 modparam")
    assert (t["wt_timer"].ms, t["wt_timer"].source) == (8000, "my.cfg:11 modparam")
    assert (t["max_noninv_lifetime"].ms, t["max_noninv_lifetime"].source) == (4000, "my.cfg:13 modparam")
    # -A defines, as the caller passes them
    t = extract('#!ifdef SLOW\nmodparam("tm", "wt_timer", 1)\n#!endif\n', defines={"SLOW": ""})
    assert t["wt_timer"].ms == 1


def test_substdef_in_a_string_and_as_a_define():
    text = ('#!substdef "!WT!8000!g"\n#!substdefs "/FR/2500/"\n'
            'modparam("tm", "wt_timer", "WT")\nmodparam("tm", "fr_timer", FR)\n'
            '#!subst "/LIFE/5000/"\nmodparam("tm", "max_noninv_lifetime", "LIFE")\n')
    t = extract(text)
    assert t["wt_timer"].ms == 8000 and t["fr_timer"].ms == 2500
    assert t["max_noninv_lifetime"] == tm_timers.Timer(5000, "my.cfg:6 modparam")


def test_include_relative_to_the_config_cites_the_included_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "tm.cfg").write_text('# tm\nmodparam("tm", "wt_timer", 7000)\n')
    (tmp_path / "more.cfg").write_text('import_file "sub/tm.cfg"\n')
    t = extract('#!define X\ninclude_file "more.cfg"\n', tmp_path)
    assert t["wt_timer"] == tm_timers.Timer(7000, "sub/tm.cfg:2 modparam")


def test_a_value_that_is_no_number_is_one_clear_line():
    with pytest.raises(UsageError) as e:
        extract('modparam("tm", "wt_timer", "$var(x)")\n')
    assert "my.cfg:1:" in str(e.value) and "wt_timer" in str(e.value) and "\n" not in str(e.value)


def test_version_defaults_say_when_the_version_predates_the_checked_history():
    assert tm_timers.default_source("6.0.1") == "tm default (src/modules/tm/config.h)"
    assert "5.6.3 is older than the upstream history" in tm_timers.default_source("kamailio 5.6.3 (x86_64/linux)")


@pytest.mark.skipif(not (KSRC / ".git").exists() or not shutil.which("git"),
                    reason="upstream Kamailio history not at /work/ksrc/src")
@pytest.mark.parametrize("tag", ["5.8.0", "6.0.0", "6.1.0", "master"])
def test_defaults_match_upstream_tm_config_h(tag):
    text = subprocess.run(["git", "-C", str(KSRC), "show", f"{tag}:src/modules/tm/config.h"],
                          capture_output=True, text=True, check=True).stdout
    macros = {"fr_timer": "FR_TIME_OUT", "fr_inv_timer": "INV_FR_TIME_OUT",
              "wt_timer": "WT_TIME_OUT", "max_inv_lifetime": "MAX_INV_LIFETIME",
              "max_noninv_lifetime": "MAX_NONINV_LIFETIME"}
    for name, macro in macros.items():
        value = int(re.search(rf"#define {macro}\s+(\d+)", text).group(1))
        assert tm_timers.DEFAULTS[name] == value, (tag, macro)


def test_the_harness_config_keeps_its_7_s_bye_deadline():
    t = oracle.read_timers(None, KamailioConfig(5060, 8080, 4443, 5080), "6.0.1")
    assert t.deadline_for("BYE") == pytest.approx(7.0)
    body = (ROOT / "harness/stack/kamailio/kamailio.cfg").read_text().split("\n")
    wt_line = next(i for i, ln in enumerate(body, 1) if 'modparam("tm", "wt_timer"' in ln)
    assert t.values["wt_timer"].source == f"kamailio.cfg:{wt_line} modparam"
    assert t.values["max_noninv_lifetime"].source.startswith("kamailio.cfg:")
    # a timer left to Kamailio comes from tm's defaults
    d = oracle.read_timers(None, KamailioConfig(5060, 8080, 4443, 5080,
                                                timers=TmTimers.kamailio_defaults()), "6.1.5")
    assert d.values["wt_timer"] == tm_timers.Timer(5000, "tm default (src/modules/tm/config.h)")
    assert d.deadline_for("BYE") == pytest.approx((32000 + 5000) / 1000 * 1.25 + 2)


def test_invite_rule_adds_the_ack_wait():
    t = oracle.Timers({n: tm_timers.Timer(v, "x") for n, v in (
        ("fr_timer", 3000), ("fr_inv_timer", 3000), ("wt_timer", 1000),
        ("max_inv_lifetime", 3000), ("max_noninv_lifetime", 3000))})
    assert t.lifetime_ms("INVITE") == (7000, ("max_inv_lifetime", "fr_timer", "wt_timer"))
    assert t.lifetime_ms("BYE") == (4000, ("max_noninv_lifetime", "wt_timer"))


def test_a_users_config_is_read_as_rendered_with_its_own_line_numbers():
    cfg = KamailioConfig(5060, 8080, 4443, 5080, user_config=UserConfig.load(str(WT8000)))
    t = oracle.read_timers(None, cfg, "6.1.5")
    line = WT8000.read_text().split("\n").index('modparam("tm", "wt_timer", 8000)') + 1
    assert t.values["wt_timer"] == tm_timers.Timer(8000, f"kamailio.cfg:{line} modparam")
    assert t.values["fr_timer"] == tm_timers.Timer(30000, "tm default (src/modules/tm/config.h)")
    d = t.as_dict("BYE")
    assert d["wt_timer"] == {"ms": 8000, "source": f"kamailio.cfg:{line} modparam"}
    assert "source" not in d          # no blanket "config" label any more
    assert t.deadline_for("BYE") == pytest.approx((32000 + 8000) / 1000 * 1.25 + 2)
    assert timers_text(d, "BYE") == (f"fr 30000 ms tm default, max_noninv_lifetime 32000 ms "
                                     f"tm default, wt 8000 ms kamailio.cfg:{line}")


# ---------------------------------------------------------------------------
# The post-condition: tm.list and tm.stats must agree, or there is no verdict.

# Recorded on Debian's 6.0.1 (a leaked BYE cell), trimmed to the fields used.
TM_LIST = ('[{"cell":"0x7f2a","tindex":1234,"tlabel":1,"method":"BYE",'
           '"from":"From: <sip:a@127.0.0.1>;tag=1\\r\\n","to":"To: <sip:b@127.0.0.1>\\r\\n",'
           '"callid":"Call-ID: leak-1\\r\\n","cseq":"CSeq: 2","uas_request":"yes",'
           '"tflags":0,"outgoings":0,"ref_count":1,"lifetime":5000}]')
BEFORE = {"current": 0, "waiting": 0, "created": 10, "freed": 10}


def test_cell_and_counters_agree_is_a_verdict():
    cells = rpc.parse_tm_list(rpc.loads(TM_LIST))
    after = {"current": 1, "waiting": 0, "created": 13, "freed": 12}
    note = oracle.check_post_condition("BYE", cells, BEFORE, after)
    assert "matches the 1 BYE cell(s)" in note


def test_listed_cell_not_counted_is_an_error_not_a_leak():
    # The run: tm.list held the cell at the deadline, tm.stats had it freed.
    cells = rpc.parse_tm_list(rpc.loads(TM_LIST))
    after = {"current": 0, "waiting": 0, "created": 13, "freed": 13}
    with pytest.raises(ScenarioError) as e:
        oracle.check_post_condition("BYE", cells, BEFORE, after, deadline=7.0,
                                    rule="max_noninv_lifetime + wt_timer = 4000 ms")
    line = str(e.value)
    assert "\n" not in line
    assert "tm.list holds 1 BYE cell(s) 7.0 s after the BYE" in line
    assert "current 0 -> 0 (+0), created-freed +0" in line
    assert "t_set_fr()" in line


def test_counted_cell_not_listed_is_an_error_too():
    after = {"current": 1, "waiting": 0, "created": 11, "freed": 10}
    with pytest.raises(ScenarioError) as e:
        oracle.check_post_condition("BYE", [], BEFORE, after)
    assert "tm.list holds 0 BYE cell(s) but tm.stats current 0 -> 1 (+1), created-freed +1" \
        in str(e.value)


class _RecordedStats:
    """Replays recorded tm.stats answers, the last one for good (no Kamailio behaviour made up)."""

    def __init__(self, answers):
        self.answers = list(answers)

    def tm_stats(self):
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_post_condition_waits_for_the_counters_then_judges():
    cells = rpc.parse_tm_list(rpc.loads(TM_LIST))
    t = oracle.read_timers(None, TmTimers())
    draining = [{"current": 2, "created": 14, "freed": 12}, {"current": 1, "created": 14, "freed": 13}]
    after, note = oracle.post_condition(_RecordedStats(draining), BEFORE, cells, "BYE", t)
    assert after["current"] == 1 and "matches" in note
