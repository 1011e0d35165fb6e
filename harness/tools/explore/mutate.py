"""`explore --mutate-config`: what kamleak's config does around the flows, varied.

A mutation is a small set (0..3) of points, each a define kamleak's
kamailio.cfg tests (`#!ifdef`, the header lists them): a local tm request in
another route (the 4140 mechanism's trigger, wherever a deployment may send
one), a `drop`, another error reply after a failed t_relay(), other t_relay()
flags.  Points of one group are alternatives of one `#!ifdef` chain, so a
mutation holds at most one of each.  Whether a build accepts a mutation is
asked of its real `kamailio -c` (`Checker`, once per define set): a drawn
mutation the build refuses (delayed_reply on 6.0.1, send_reply_error before
5.8) is rejected before a batch runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from kamleak.harness.errors import UsageError


@dataclass(frozen=True)
class Point:
    name: str          # the text form: "uac_req_send@request:BYE"
    define: str
    group: str = ""    # points of one non-empty group exclude each other
    what: str = ""


# Plainest first: Hypothesis shrinks a drawn point toward the start of this list.
POINTS = (
    Point("uac_req_send@request:BYE", "WITH_TRIGGER_UAC_REQ_SEND", "",
          "uac_req_send() of a MESSAGE on an in-dialog BYE, before t_relay() (issue 4140)"),
    Point("t_uac_send@request:BYE", "WITH_TRIGGER_T_UAC_SEND", "",
          "t_uac_send() of a MESSAGE on an in-dialog BYE, before t_relay()"),
    Point("uac_req_send@request:INVITE", "KAMLEAK_MUT_UAC_REQ_INVITE", "",
          "uac_req_send() of a MESSAGE on an initial INVITE, before t_relay()"),
    Point("t_uac_send@branch", "KAMLEAK_MUT_T_UAC_BRANCH", "",
          "t_uac_send() in branch_route (every INVITE, BYE, UPDATE branch)"),
    Point("uac_req_send@failure", "KAMLEAK_MUT_UAC_REQ_FAILURE", "",
          "uac_req_send() in failure_route (a failed or cancelled INVITE)"),
    Point("t_uac_send@dialog:end", "KAMLEAK_MUT_T_UAC_DIALOG_END", "",
          "t_uac_send() in event_route[dialog:end] (dialog module, dlg_manage() on INVITE)"),
    Point("pua_dialoginfo", "WITH_TRIGGER_PUA_DIALOGINFO", "",
          "dialog + pua + pua_dialoginfo: PUBLISHes of the dialog's states (BLF)"),
    Point("reply:send_reply_error", "WITH_REPLY_SEND_REPLY_ERROR", "reply",
          "send_reply_error() when t_relay() fails (sl, 5.8.0+)"),
    Point("reply:t_reply_error", "WITH_REPLY_T_REPLY_ERROR", "reply",
          "t_reply_error() when t_relay() fails (tm, 5.8.0+)"),
    Point("reply:t_reply", "KAMLEAK_MUT_REPLY_T_REPLY", "reply",
          't_reply("500", ...) when t_relay() fails (stateful)'),
    Point("reply:sl_send_reply", "KAMLEAK_MUT_REPLY_SL_SEND_REPLY", "reply",
          'sl_send_reply("500", ...) when t_relay() fails (stateless)'),
    Point("relay:t_relay_to:0x01", "KAMLEAK_MUT_RELAY_TO_NO_100", "relay",
          't_relay_to("0x01") instead of t_relay(): no 100 Trying'),
    Point("relay:t_relay_to:0x02", "KAMLEAK_MUT_RELAY_TO_NO_INTERNAL_REPLY", "relay",
          't_relay_to("0x02") instead of t_relay(): no reply on an internal error'),
    Point("t_set_disable_internal_reply", "KAMLEAK_MUT_NO_INTERNAL_REPLY", "",
          "t_set_disable_internal_reply(1) before every t_relay()"),
    Point("drop@branch:BYE", "KAMLEAK_MUT_DROP_BRANCH_BYE", "",
          "`drop` of a BYE's branches in branch_route"),
    Point("drop@failure", "KAMLEAK_MUT_DROP_FAILURE", "",
          "`drop` in failure_route"),
    Point("delayed_reply=0", "WITH_DELAYED_REPLY_OFF", "",
          'modparam("tm", "delayed_reply", 0) (6.1.0+)'),
)
BY_NAME = {p.name: p for p in POINTS}
BY_DEFINE = {p.define: p for p in POINTS}
MAX_POINTS = 3


@dataclass(frozen=True)
class Mutation:
    """Points in POINTS order (one text form, one define set per mutation)."""

    points: tuple[Point, ...] = ()

    @classmethod
    def of(cls, points) -> Mutation:
        """POINTS as drawn, made canonical: repeats and a second point of a group go."""
        kept: list[Point] = []
        for p in points:
            if p not in kept and not (p.group and any(k.group == p.group for k in kept)):
                kept.append(p)
        return cls(tuple(sorted(kept, key=POINTS.index)))

    @classmethod
    def parse(cls, text: str) -> Mutation:
        """The text form back: `none`, or names joined by `+`; a mistake is one line."""
        names = [n.strip() for n in (text or "").split("+") if n.strip()]
        if names == ["none"]:
            return cls()
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            raise UsageError(f"unknown config mutation point '{unknown[0]}'",
                             f"use some of {', '.join(BY_NAME)} joined by +")
        m = cls.of(BY_NAME[n] for n in names)
        if len(m.points) != len(set(names)):
            raise UsageError(f"config mutation '{text}' has two points of one group",
                             "keep one reply:... and one relay:... at most")
        return m

    def text(self) -> str:
        return "+".join(p.name for p in self.points) or "none"

    @property
    def defines(self) -> tuple[str, ...]:
        return tuple(p.define for p in self.points)

    def __bool__(self) -> bool:
        return bool(self.points)


NONE = Mutation()     # kamleak's config as it is


def mutations(exclude=(), max_points: int = MAX_POINTS):
    """A Hypothesis strategy of Mutations: a list of points, so the shrinker
    deletes points down to none, and each toward POINTS' first.  EXCLUDE: defines
    the base config already sets (a point that changes nothing is not drawn)."""
    from hypothesis import strategies as st

    pool = [p for p in POINTS if p.define not in set(exclude)]
    return st.lists(st.sampled_from(pool), max_size=max_points).map(Mutation.of)


def with_base(base, mutation: Mutation) -> tuple[str, ...]:
    """The defines a mutated Kamailio runs with: BASE (the variant, --define), then the
    mutation's own (a define twice is an error in Kamailio's preprocessor)."""
    base = tuple(base)
    return base + tuple(d for d in mutation.defines if d not in base)


class Checker:
    """Does TARGET's real `kamailio -c` accept kamleak's config with these defines?
    `refusal(defines)`: None, or Kamailio's own error line (the shared check,
    harness/stack/kamailio/cfgcheck.py, caches it)."""

    def __init__(self, target, client):
        from kamleak.harness.stack.kamailio.cfgcheck import Checker as ConfigChecker

        self._check = ConfigChecker(target, client)

    def refusal(self, defines) -> str | None:
        return self.refusals([defines])[0]

    def refusals(self, define_sets) -> list[str | None]:
        """Each define set's verdict, the unchecked ones in one container (or one binary run each)."""
        from kamleak.harness.stack.kamailio.cfgcheck import config_for_check

        return self._check.refusals(config_for_check(d) for d in define_sets)
