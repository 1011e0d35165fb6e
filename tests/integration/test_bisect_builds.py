"""`kamleak bisect` over Debian's builds, for real: where the flip is Debian's
backport of a fix no upstream release has, it says so (kamleak.harness.knowledge)."""

from __future__ import annotations

from tests.integration.test_cli_workflows import kamleak


def test_a_flip_at_debians_backport_is_named_as_one(kamleak_images):
    proc = kamleak("bisect", "6.0.1", "6.1.5", "--variant", "uac_req_send")
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "kamleak: bisecting 2 builds: scenario gh4140, variant uac_req_send over WS" in proc.stderr
    assert "kamleak bisect: 6.1.5 is the first build with verdict CLEAN (6.0.1 and earlier: LEAK)" in out
    assert "kamleak bisect: kamleak.harness.knowledge records between 6.0.1 and 6.1.5:" in out
    assert "  bd0aaf89b8 tm t_unref(): " in out
    assert ("kamleak bisect: Debian's Kamailio 6.1.5 carries bd0aaf89b8 as Debian's backport: "
            "upstream's 6.1.5 lacks it (no release tag contains it, master only). The flip may be "
            "Debian's patch, not upstream's: `kamleak check --kamailio-ref 6.1.5` runs upstream's") in out
    assert "kamleak bisect: 2 gate runs (0 between the ends)" in out
    print(out)


def test_one_build_is_refused_before_anything_is_said_of_it():
    proc = kamleak("bisect", "6.0.1")
    assert proc.returncode == 128
    assert proc.stderr.splitlines() == ["kamleak: bisect needs at least two Kamailio builds, got 1; "
                                        "list them oldest first, e.g. 5.6.3 6.0.1 6.1.5"]
