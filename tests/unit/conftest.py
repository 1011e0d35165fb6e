"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def debian_601():
    """(target, client) for Debian's Kamailio 6.0.1, whose real `kamailio -c` a test asks;
    a skip where there is no engine or no image (nothing real to ask)."""
    from kamleak.harness.stack import engine
    from kamleak.harness.stack.targets import Target
    try:
        client = engine.client(start=False)
        client.images.get("kamleak/kamailio-debian:6.0.1")
    except Exception as exc:  # noqa: BLE001 - no engine or image here
        pytest.skip(f"no kamleak/kamailio-debian:6.0.1 to run kamailio -c in: {exc}")
    return Target("version", "6.0.1"), client
