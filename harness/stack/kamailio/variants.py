"""kamleak's kamailio.cfg switches for the 4140 mechanism: the local requests and reply styles.

What makes tm keep a transaction (Kamailio issue 4140, and 4503, 4919, PR 3403
and the takeover after it): a local tm request created in the same worker
while a request is handled (uac_req_send(), t_uac_send(), pua_dialoginfo)
and the way the config answers when t_relay() fails.  A variant is
`trigger[+reply_style][+delayed_reply_off]`; each part is a define of the
harness's kamailio.cfg.  These are facts about the config, so they live with
it: explore and the stories (kamleak.scenarios.triggers: which builds leak
with which) read the same table.
"""

from __future__ import annotations

from dataclasses import dataclass

from kamleak.harness import knowledge
from kamleak.harness.errors import UsageError

# What creates a local tm request while the request (the BYE, in 4140) is handled.
TRIGGERS = {
    "none": (),
    "dialog": ("WITH_DIALOG",),                                   # dialog module alone
    "uac_req_send": ("WITH_TRIGGER_UAC_REQ_SEND",),               # MESSAGE via uac
    "t_uac_send": ("WITH_TRIGGER_T_UAC_SEND",),                   # MESSAGE via tm
    "pua_dialoginfo": ("WITH_TRIGGER_PUA_DIALOGINFO",),           # BLF: PUBLISH terminated
}
# How the config answers when t_relay() fails.
REPLY_STYLES = {
    "sl_reply_error": (),                                         # stock kamailio.cfg
    "send_reply_error": ("WITH_REPLY_SEND_REPLY_ERROR",),         # sl, 130dc00c17 (5.8.0)
    "t_reply_error": ("WITH_REPLY_T_REPLY_ERROR",),               # tm, ae0b671c30 (5.8.0)
}
DELAYED_REPLY_OFF = ("WITH_DELAYED_REPLY_OFF",)                   # tm param, a705e601d9 (6.1.0)

DEFAULT_TRIGGER = "pua_dialoginfo"  # the realistic one (BLF), with the stock reply style


@dataclass(frozen=True)
class Variant:
    """`trigger[+reply_style][+delayed_reply_off]`, e.g. `uac_req_send+t_reply_error`."""

    trigger: str = "pua_dialoginfo"
    reply: str = "sl_reply_error"
    delayed_reply_off: bool = False

    @classmethod
    def parse(cls, name: str) -> Variant:
        parts = [p.strip() for p in name.strip().split("+") if p.strip()]
        if not parts:
            raise UsageError("empty variant name", f"use e.g. {DEFAULT_TRIGGER}")
        trigger, reply, off = parts[0], "sl_reply_error", False
        for p in parts[1:]:
            if p in REPLY_STYLES:
                reply = p
            elif p in ("delayed_reply_off", "delayed_reply=0"):
                off = True
            else:
                raise UsageError(f"unknown variant part '{p}' in '{name}'",
                                 f"after the trigger use {', '.join(REPLY_STYLES)} or delayed_reply_off")
        if trigger not in TRIGGERS:
            raise UsageError(f"unknown trigger '{trigger}' in variant '{name}'",
                             f"use one of {', '.join(TRIGGERS)}")
        return cls(trigger, reply, off)

    @property
    def name(self) -> str:
        parts = [self.trigger]
        if self.reply != "sl_reply_error":
            parts.append(self.reply)
        if self.delayed_reply_off:
            parts.append("delayed_reply_off")
        return "+".join(parts)

    @property
    def defines(self) -> tuple[str, ...]:
        d = TRIGGERS[self.trigger] + REPLY_STYLES[self.reply]
        return d + (DELAYED_REPLY_OFF if self.delayed_reply_off else ())

    @property
    def creates_local_request(self) -> bool:
        return self.trigger in ("uac_req_send", "t_uac_send", "pua_dialoginfo")

    @property
    def features(self) -> tuple[str, ...]:
        """What a build may lack to run this variant (kamleak.harness.knowledge keys)."""
        reply = (self.reply,) if self.reply in knowledge.ERROR_REPLY_FUNCTIONS else ()
        return reply + (("delayed_reply",) if self.delayed_reply_off else ())


def config_switches() -> set[str]:
    """The defines kamleak's kamailio.cfg tests (`#!ifdef NAME`), and the header's own
    (config.py: WITH_LISTEN_ADVERTISE puts `advertise` on the WebSocket sockets)."""
    from pathlib import Path

    from kamleak.harness.stack.kamailio.cfg import tested_defines

    return tested_defines((Path(__file__).parent / "kamailio.cfg").read_text()) | {"WITH_LISTEN_ADVERTISE"}


def check_defines(names) -> tuple[str, ...]:
    """NAMES (`WITH_X` or `KAMLEAK_X=value`) checked against config_switches(): one line per mistake."""
    known = config_switches()
    out = []
    for raw in names:
        name = raw.partition("=")[0].strip()
        if name not in known:
            switches = ", ".join(sorted(k for k in known if k.startswith("WITH_")))
            raise UsageError(f"kamleak's config has no switch '{name}'", f"use one its #!ifdef tests: {switches}")
        out.append(raw.strip())
    return tuple(out)
