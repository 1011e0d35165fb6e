"""`kamleak lint`'s rules: one stable code per kind of finding, and what
`kamleak lint --explain CODE` says about it (the mechanism, the upstream
commits with their first tags as kamleak.harness.knowledge records them, the fix).

A finding's line says what and where in a few words; everything said once per
rule lives here, so a run never repeats it.  The advice about a build reads
knowledge (has it the fix?), never a version range.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from kamleak.harness import knowledge


@dataclass(frozen=True)
class Rule:
    code: str            # stable, e.g. "KL4140"
    name: str            # a slug, e.g. "relay-failure-stateless-reply"
    level: str           # the usual level: "leak" | "error" | "warning" | "info"
    summary: str         # one line
    mechanism: str       # why, in a paragraph
    fixes: tuple[str, ...] = ()   # knowledge.FIXES keys the rule's advice depends on
    advice: str = ""     # what to do, when it does not depend on the build ("4140": _advice_4140)


_MECHANISM_4140 = (
    "On a forwarding error t_relay() leaves the error reply to the end of the script (tm's kill "
    "reason REQ_ERR_DELAYED, 16). If the same worker created a local tm request while that "
    "request was handled (uac_req_send(), t_uac_send(), pua_dialoginfo publishing a tracked "
    "dialog's state), the kill reason becomes 17: tm no longer sends the delayed reply nor "
    "releases the transaction, and a stateless sl_reply_error() on the failure path leaves the "
    "cell in tm.list for good (outgoings 0, ref_count 1). Kamailio issue 4140; measured by "
    "kamleak on Debian's 5.6.3 and 6.0.1.")

RULES: dict[str, Rule] = {r.code: r for r in (
    Rule("KL001", "kemi-config", "warning",
         "cfgengine names a KEMI language: lint reads native routing only",
         "With cfgengine \"lua\", \"python3\", \"jsdt\", \"ruby\"... the routing logic is a KEMI "
         "script that lint does not read; the native config around it is still checked for the "
         "build's functions and parameters.",
         advice="run the real thing: kamleak gate --kamailio-config YOUR.cfg (the gate measures, "
                "whatever the language)"),
    Rule("KL002", "no-request-route", "info", "no request_route: nothing to check",
         "lint follows what request_route reaches; a file without one (a fragment another "
         "includes, a KEMI config's native part) has nothing to follow.",
         advice="lint the file that holds request_route (its include_file/import_file are followed)"),
    Rule("KL003", "include", "info", "an included file is not read",
         "include_file/import_file are followed relative to the including file; one that is not "
         "there is not read (include_file: Kamailio refuses to start; import_file: optional).",
         advice="run lint where the included files are, or pass the config's own path"),
    Rule("KL004", "preprocessor", "warning", "a preprocessor directive lint cannot follow",
         "#!ifdef/#!else/#!endif that do not pair up, or #!ifexp (not evaluated: its branch is "
         "assumed true).",
         advice="pair every #!ifdef/#!ifndef with #!endif; pass defines as -A NAME[=VALUE]"),
    Rule("KL005", "syntax", "warning", "the config ends inside a string or a /* comment",
         "An unterminated string or comment hides the rest of the file from lint (and from "
         "Kamailio's parser).", advice="close the string or comment"),
    Rule("KL101", "unknown-function", "error", "a function the build does not have",
         "send_reply_error() (sl) and t_reply_error() (tm) exist only in builds that carry their "
         "upstream commits; on others Kamailio refuses the config at startup.",
         fixes=("send_reply_error", "t_reply_error"), advice="4140"),
    Rule("KL102", "unknown-param", "error", "a module parameter the build does not have",
         "modparam(\"tm\", \"delayed_reply\", 0) exists only in builds that carry its upstream "
         "commit; on others Kamailio refuses to start with it.",
         fixes=("delayed_reply",), advice="4140"),
    Rule("KL103", "missing-module", "error", "a function or module without the module it needs",
         "uac_req_send() needs loadmodule \"uac.so\" (else Kamailio refuses the config); "
         "pua_dialoginfo needs dialog.so to know dialogs.",
         advice="load the module it names before the call"),
    Rule("KL104", "unknown-build", "info", "kamleak cannot tell whether the build has this",
         "An image of unknown provenance, or a commit the source repository does not hold: what "
         "it contains is not in the config.",
         fixes=("send_reply_error", "t_reply_error", "delayed_reply"),
         advice=knowledge.UNKNOWN_HINT),
    Rule("KL201", "gate-contract", "error",
         "kamleak gate --kamailio-config needs this changed before it can run the config",
         "The gate runs your config with kamleak's header (listen addresses, the RPC it reads tm "
         "through, TLS files); each item names the line and exactly what to add, under "
         "#!ifdef KAMLEAK so the file still runs unchanged at home (docs/config.md).",
         advice="add what the finding says (--contract, or -A KAMLEAK, lists them all)"),
    Rule("KL4140", "relay-failure-stateless-reply", "leak",
         "sl_reply_error() answers a failed t_relay() while a local tm request is created",
         _MECHANISM_4140, fixes=("t_unref_orphans", "send_reply_error", "t_reply_error",
                                 "delayed_reply"), advice="4140"),
    Rule("KL4141", "relay-failure-unmeasured", "warning",
         "a failed t_relay() answered statelessly (sl_send_reply()) or not at all, with a trigger",
         _MECHANISM_4140 + " The same mechanism holds for any stateless reply, or none, on the "
                           "failure path (tm sends the delayed reply only when nothing else "
                           "touched the kill reason); kamleak has not measured these.",
         fixes=("t_unref_orphans", "send_reply_error", "t_reply_error", "delayed_reply"),
         advice="4140"),
    Rule("KL4142", "relay-failure-stateful-reply", "info",
         "a failed t_relay() answered through the transaction: no 4140 leak",
         "send_reply_error(), t_reply_error(), t_reply() or send_reply() (sl: t_reply() when a "
         "transaction exists) answer through the transaction, which tm then releases, whatever "
         "the kill reason.", fixes=("send_reply_error", "t_reply_error")),
    Rule("KL4143", "delayed-reply-off", "info",
         "modparam(\"tm\", \"delayed_reply\", 0): tm replies at once, no leak, two final replies",
         "With delayed_reply 0 tm sends its error reply and kills the transaction when t_relay() "
         "fails; the script's sl_reply_error() then sends a second final reply.",
         fixes=("delayed_reply", "send_reply_error", "t_reply_error"), advice="4140"),
    Rule("KL4144", "freed-by-tm", "info",
         "the 4140 pattern on a build whose tm frees orphaned transactions",
         "tm's t_unref() tests `kr & REQ_ERR_DELAYED` instead of `==` and drops orphaned "
         "transactions without branches ('dropping orphaned transaction without branches'): the "
         "cell is freed, after two final replies (stateless, then stateful).",
         fixes=("t_unref_orphans",), advice="4140"),
    Rule("KL4145", "trigger-unreached", "info", "a trigger no request reaches: not counted",
         "Only a local tm request created while a request is handled sets the kill reason of that "
         "request's transaction: a trigger in failure_route/onreply_route (replies, timeouts) or "
         "in a route request_route never calls does not count. A dynamic route($var(x)) is not "
         "resolved: then a trigger outside the static reach is a warning.",
         advice="none needed where the route is really not reached by a request"),
    Rule("KL4146", "pua-dialoginfo-idle", "info", "pua_dialoginfo publishes nothing: not counted",
         "pua_dialoginfo sends a PUBLISH (a local tm request) for each state change of a tracked "
         "dialog: without dlg_manage() or setflag() of dialog's dlg_flag on a reachable route, or "
         "with a send_publish_flag no reachable setflag() sets, it publishes nothing."),
    Rule("KL3403", "local-request-drop", "leak",
         "drop in event_route[tm:local-request] loses the request's shm buffer",
         "tm builds the local request in shm (build_uac_req()); `drop` in "
         "event_route[tm:local-request] frees the transaction but not that buffer on builds "
         "without PR 3403's fix (measured by kamleak on Debian's 5.6.3: some 450 B per dropped "
         "request; 6.0.1 and 6.1.5 free it). Kamailio PR 3403.",
         fixes=("pr3403",),
         advice="filter before uac_req_send()/t_uac_send()/the module that sends it instead of "
                "dropping in the event route, or run a build that has PR 3403's fix"),
)}

# The analysis's slugs of old, kept so callers can still name a finding by them.
BY_NAME = {r.name: r for r in RULES.values()}


def _fixes(*keys: str) -> str:
    return "; ".join(knowledge.FIXES[k].describe() for k in keys)


def advice_reply_error() -> str:
    return ("replace sl_reply_error() by send_reply_error() (sl) or t_reply_error() (tm): both "
            "reply through the transaction, which tm then releases")


def advice_delayed_reply() -> str:
    return ('modparam("tm", "delayed_reply", 0) also avoids it: tm replies and kills the '
            "transaction at once (with sl_reply_error() still there, two final replies go out)")


def advice_restructure() -> str:
    return ('reply through the transaction: send_reply("500", "Server Error") (sl: stateful when a '
            'transaction exists) or t_reply("500", "Server Error"); the specific error code is '
            "lost; not measured by kamleak: verify with `kamleak check`")


def advice_4140(build=None) -> list[str]:
    """What to do about the 4140 pattern; for BUILD (a lint Build), from what it
    has as knowledge answers it, else for every build."""
    if build is None:
        return [advice_reply_error() + " (where the build has them)",
                advice_delayed_reply() + " (where the build has it)",
                "on builds without them: " + advice_restructure(),
                "name the build (--kamailio-version/--kamailio-ref/--kamailio-image) "
                "for advice about it"]
    label = build.prov.label
    sre, tre = build.has("send_reply_error").value, build.has("t_reply_error").value
    out = []
    if sre is False and tre is False:
        out += [f"{label} has neither send_reply_error() nor t_reply_error(): "
                + advice_restructure(), "or run a build that has them"]
    else:
        known = sre or tre
        out.append(advice_reply_error() + ("" if known else
                                           f" (whether {label} has them is not known)"))
    dr = build.has("delayed_reply").value
    if dr is not False:
        out.append(advice_delayed_reply() + ("" if dr else f" (if {label} has it)"))
    return out


def explain(code: str, build=None) -> str:
    """The text of `kamleak lint --explain CODE` (KeyError: no such rule)."""
    rule = RULES[code.strip().upper()]
    wrap = textwrap.TextWrapper(width=100, subsequent_indent="  ")
    out = wrap.wrap(f"{rule.code} ({rule.name}, {rule.level}): {rule.summary}") + [""]
    out += textwrap.wrap(rule.mechanism, 100) + [""]
    if rule.fixes:
        out.append("Upstream commits (first release tags from upstream history, as kamleak records them):")
        for key in rule.fixes:
            fix = knowledge.FIXES[key]
            tags = ", ".join(fix.first_tags()) or "none yet (master only)"
            commits = "/".join([fix.commit, *(c for c, _ in fix.backports)])
            out += wrap.wrap(f"- {commits}: {fix.what}; first tag: {tags}")
            if build is not None:
                out += wrap.wrap(f"  {build.answer(key)}")
        out.append("")
    advice = (advice_4140(build) if rule.advice == "4140" else
              [rule.advice] if rule.advice else [])
    if advice:
        out.append("Fix" + (f" (for {build.prov.label}):" if build is not None else ":"))
        for a in advice:
            out += wrap.wrap(f"- {a}")
        out.append("")
    if rule.fixes:
        out += textwrap.wrap(knowledge.BACKPORTS_NOTE[0].upper() + knowledge.BACKPORTS_NOTE[1:]
                             + ".", 100)
    return "\n".join(out).rstrip() + "\n"
