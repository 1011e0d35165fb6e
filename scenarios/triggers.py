"""Which builds leak with which trigger and reply style: what the stories expect.

Issue 4140's mechanism, which 4503, 4919, PR 3403 and the takeover reuse: a
local tm request created in the same worker while a request is handled, and
the way the config answers when t_relay() fails.  The variants themselves
(`trigger[+reply_style][+delayed_reply_off]`, each part a define of the
harness's kamailio.cfg) are config facts: kamleak.harness.stack.kamailio.variants.
Which builds leak with which is read from kamleak.harness.knowledge, so from
upstream history for source builds.
"""

from __future__ import annotations

from kamleak.harness import knowledge
from kamleak.harness.stack.kamailio.variants import DEFAULT_TRIGGER as DEFAULT_TRIGGER
from kamleak.harness.stack.kamailio.variants import DELAYED_REPLY_OFF as DELAYED_REPLY_OFF
from kamleak.harness.stack.kamailio.variants import REPLY_STYLES as REPLY_STYLES
from kamleak.harness.stack.kamailio.variants import TRIGGERS as TRIGGERS
from kamleak.harness.stack.kamailio.variants import Variant as Variant


def applicable(build, variant: Variant) -> str | None:
    """Why VARIANT cannot run on BUILD (Kamailio would refuse the config), or None.

    BUILD: a Target, a `knowledge.Provenance`, or a version string naming one
    of Debian's builds.  Whether the build has a feature comes from
    kamleak.harness.knowledge (git for upstream builds, observations for Debian's);
    where that is unknown, nothing is ruled out: the run says.
    """
    return knowledge.lacking(variant.features, build)


def expected(build, variant: Variant) -> str:
    """"leak", "clean", "n/a", or "unknown" where kamleak cannot know.

    A leak needs a trigger (a local tm request in the same worker), the stock
    stateless error reply and a tm whose t_unref() still tests the kill
    reason for equality: bd0aaf89b8 (upstream master only; Debian's 6.1.5
    carries it as a backport) drops such orphaned transactions.
    """
    if applicable(build, variant):
        return "n/a"
    if any(knowledge.has(key, build).value is None for key in variant.features):
        return "unknown"          # refused (n/a) or clean: only a run can tell
    if not (variant.creates_local_request and variant.reply == "sl_reply_error"
            and not variant.delayed_reply_off):
        return "clean"
    fixed = knowledge.has("t_unref_orphans", build).value
    return "unknown" if fixed is None else "clean" if fixed else "leak"
