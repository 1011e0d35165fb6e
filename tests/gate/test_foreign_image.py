"""`--kamailio-image`: the gate against an image the harness did not build.

The image under test is made here from tests/images/upstream-like (shaped
like `ghcr.io/kamailio/kamailio:<v>-bookworm`: shell-form entrypoint, its own
default config, the binary elsewhere).  The gate must run unchanged and give
the same verdict as on our own build of that Kamailio (6.0.1 leaks with the
realistic trigger), at the lifetime bound: kamleak read tm's rules for the
builds it makes, not for this one (harness/judging/orphan.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_gate_as_ci import run_gate

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "kamleak-test/upstream-like:6.0.1"


@pytest.fixture(scope="module")
def foreign_image(docker_client, kamleak_images):
    docker_client.images.build(path=str(ROOT / "tests/images/upstream-like"), tag=IMAGE,
                               network_mode="host", rm=True, pull=False)
    yield IMAGE
    docker_client.images.remove(IMAGE, force=True)


def test_gate_runs_unchanged_on_a_foreign_image(tmp_path, foreign_image):
    rc, out, junit = run_gate(tmp_path, "--kamailio-image", foreign_image)
    assert rc == 1, out[-3000:]
    case = junit.find(".//testcase")
    assert "upstream-like" in case.get("name")
    failure = case.find("failure")
    assert failure is not None and "still in tm.list" in failure.get("message")
    # pytest keeps the message attribute short; the whole report is the element's text
    assert "kamailio 6.0.1" in failure.get("message") + (failure.text or "")
    # An image kamleak did not build gives no early verdict: the bound, and why.
    assert "no early verdict for the image" in (failure.text or ""), failure.text
    assert "waiting out the bound" in (failure.text or "")
