"""The plugin's state on pytest's config and items: one stash key per value.

`config.stash[TARGETS]`, `item.stash[ARTIFACTS]`, ...: typed, private to
kamleak, and no attribute on pytest's objects that another plugin could clash with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kamleak.harness.probes.capture import Capture
from kamleak.harness.reporting.artifacts import ArtifactStore
from kamleak.harness.stack.kamailio.user_config import UserConfig
from kamleak.harness.stack.targets import Target

# On config: the run's options, parsed once in pytest_configure.
TARGETS = pytest.StashKey[list[Target]]()
TRANSPORTS = pytest.StashKey[list[str]]()
USER_CONFIG = pytest.StashKey[UserConfig | None]()
VARIANTS = pytest.StashKey[list[Any]]()
STORE = pytest.StashKey[ArtifactStore]()
# On config: what the run produced, for the summary.
VERDICTS = pytest.StashKey[list[tuple[str, Any]]]()  # (nodeid, verdict)
ITEMS = pytest.StashKey[list[pytest.Item]]()

# On items: one test's evidence.
ARTIFACTS = pytest.StashKey[str]()  # the test's artifact directory
VERDICT = pytest.StashKey[Any]()
PBX_LOG = pytest.StashKey[Callable[[], str]]()  # the PBX log written during the test
PBX_PORT = pytest.StashKey[int]()
CAPTURES = pytest.StashKey[list[Capture]]()
KAMAILIOS = pytest.StashKey[list[Any]]()  # the Kamailios the test started
