"""Kamailio under test: its config (ours) and how it runs (container or local)."""

from __future__ import annotations

from kamleak.harness.stack.kamailio.config import VARIANT_DEFINES, KamailioConfig, TmTimers
from kamleak.harness.stack.kamailio.server import ContainerKamailio, Kamailio, LocalKamailio, refusal_line

__all__ = ["KamailioConfig", "TmTimers", "VARIANT_DEFINES", "Kamailio", "ContainerKamailio",
           "LocalKamailio", "refusal_line"]
