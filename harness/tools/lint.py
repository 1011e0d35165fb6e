"""`kamleak lint`: a static advisor for Kamailio configs (issue 4140).

What it looks for.  On a forwarding error `t_relay()` leaves the error reply
to the end of the script (tm's kill reason REQ_ERR_DELAYED, 16).  If the same
worker created a local tm request while that request was handled, the kill
reason becomes 17 and tm no longer sends the delayed reply nor releases the
transaction; a stateless `sl_reply_error()` on the failure path then leaves
the cell in `tm.list` for good.  lint reports, with line numbers of the
original file(s):

- the relay-failure reply (`if (!t_relay()) { sl_reply_error(); }`, also
  `if (t_relay()) {...} else {...}`, the reply possibly in a `route(X)` called
  from the failure branch), in a route reachable from `request_route`;
- the triggers that make it leak, i.e. what creates a local tm request while
  a request is handled, and only these (measured by kamleak on 5.6.3/6.0.1):
  `uac_req_send()` (uac.so loaded), `t_uac_send()` (tm), and pua_dialoginfo
  (pua_dialoginfo.so + dialog.so loaded and dialogs tracked: `dlg_manage()`
  or `setflag()` of dialog's `dlg_flag`, plus pua_dialoginfo's
  `send_publish_flag` when set).  Things that send nothing in the request's
  worker are not triggers: `pua_update_contact()`, `pua_set_publish()`,
  `pua_json_publish()` (writes the presentity table), `uac_auth()` (a new
  branch of the same transaction), `t_replicate()`, t_on_failure/onreply code.
- `drop` in `event_route[tm:local-request]` (Kamailio PR 3403): without its
  fix tm loses the buffer of every dropped local request (measured on 5.6.3).
- build-aware advice, from kamleak.harness.knowledge (one table, keyed by upstream
  history): whether the build has `send_reply_error()`/`t_reply_error()`
  (upstream 5.8.0), `modparam("tm", "delayed_reply", 0)` (6.1.0), PR 3403's
  fix (5.8.2/6.0.0) and bd0aaf89b8's t_unref() change (master only; Debian's
  6.1.5 backports it).  A function or parameter the build lacks is an "error"
  (Kamailio refuses the config); a tm that frees orphaned transactions makes
  the pattern an "info" note.  The build is one of Debian's kamleak makes
  (observed), an upstream release or ref (answered from git in the source
  repository; for a release number without one, from the recorded first
  tags, and lint says so), or an image of unknown provenance (lint says what
  it cannot know and points to `kamleak check`).  Every such finding names the
  build and how it was answered.

Levels: "leak" (measured pattern, exit 1), "warning" (same mechanism, not
measured: stateless `sl_send_reply()` or no reply on the failure path; or a
leak the config as written cannot load to show), "error" (the function or
parameter does not exist in the given build), "info".

What the parser understands: `#`, `//` and nested `/* */` comments (but not
inside strings, and `#!`/`!!` lines are directives); strings in double quotes
(escapes, may span lines) and single quotes; the preprocessor
`#!define/def/trydef/redefine/undef`, `#!ifdef/#!ifndef/#!else/#!endif`
(nested; defines passed as `-A NAME[=VALUE]` via `defines`), define values
substituted in code as Kamailio does (not in strings, not inside `$pv(...)`),
`#!subst`/`#!substdef`/`#!substdefs` (applied to string literals on one line;
substdef also defines the ID as its value); `include_file`/`import_file` (with
or without `#!`) followed when the file exists, relative to the including file; `loadmodule[x]`,
`modparam[x]` (module regex split on `|`), `cfgengine`; route blocks
(`request_route`/`route`, `route[N]`, `failure_route`, `branch_route`,
`onreply_route`/`reply_route`, `onsend_route`, `event_route[...]`) with
`if/else/while/switch` statements; reachability from `request_route` through
`route(N)`, `route_if_exists(N)`, async route names, `t_on_branch(N)` (branch
routes run inside `t_relay()`), and `event_route[dialog:end]` when dialogs are
tracked (it runs while the BYE is handled).

Limits (heuristics): KEMI configs (Lua, Python, JS... via `cfgengine`) are out
of scope and reported as such; `route($var(x))` and other dynamic route names
are not resolved (then triggers outside the static reach are warnings);
reachability ignores conditions (a trigger anywhere on a reachable route
counts, for any method); `$var(r) = t_relay(); if ($var(r) < 0) ...` is not
followed; `#!ifexp` is assumed true; `#!defenv` values are not evaluated
beyond defining the name; `#!subst` replacements are literal (no `\\1`); modules'
own requests other than the three triggers above (presence NOTIFYs, dmq, msilo, dlg_bye, ...) are
not modelled; what an image of unknown provenance contains is not detectable
from the config.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass

from kamleak.harness import knowledge
from kamleak.harness.stack.kamailio.cfg import (
    Call,
    Config,
    Finding,
    Route,
    Src,
    Stmt,
    Tok,
    calls_in,
    parse_lines,
    parse_version,
    preprocess,
    read_config,
)

__all__ = ["Finding", "lint", "lint_file", "main", "parse_version", "add_arguments", "run"]

LEVELS = ("leak", "error", "warning", "info")

# ---------------------------------------------------------------------------
# Which build the advice is about (kamleak.harness.knowledge answers what it contains)


@dataclass(frozen=True)
class Build:
    """The Kamailio a config runs on, as lint names it and asks knowledge about.

    `prov` is a knowledge.Provenance (kind "release": an upstream release
    number answered from the recorded first tags, no source repository at
    hand); `how` says in words how the answers are found."""

    label: str
    how: str
    prov: object = None

    @property
    def release(self) -> str | None:
        return self.prov.version if self.prov.kind == "release" else None

    def has(self, key: str):
        return knowledge.has(key, self.prov)

    def note(self) -> str:
        return f"about {self.label}: {self.how}; {knowledge.BACKPORTS_NOTE}"

    @classmethod
    def of(cls, build) -> Build:
        """A Build from a Target, a knowledge.Provenance or a version string."""
        if isinstance(build, Build):
            return build
        if isinstance(build, str):
            return resolve_build(version=build)
        prov = knowledge.provenance(build)
        return cls(prov.label, _how(prov), prov)


def _how(prov) -> str:
    if prov.kind == "upstream":
        return f"answered from git (ancestry of {prov.commit[:10]} in {prov.repo})"
    if prov.kind == "debian":
        return "answered from what kamleak observed on that build (harness/knowledge.py)"
    return f"its source is unknown, so kamleak cannot tell what it contains: {knowledge.UNKNOWN_HINT}"


def resolve_build(*, version: str | None = None, ref: str | None = None, image: str | None = None,
                  source: str | None = None) -> Build | None:
    """--kamailio-version V (one of Debian's builds kamleak makes, else the
    upstream release V), --kamailio-ref R (any upstream ref) or
    --kamailio-image (unknown provenance) -> a Build; None: none given.

    Upstream builds are answered from git in the source repository
    (--kamailio-source, $KAMLEAK_KAMAILIO_SOURCE, or a mirror kamleak already
    cached); for a release number with none at hand, from the recorded first
    tags, and the Build says so.  A ref needs the repository (UsageError)."""
    from kamleak.harness.errors import KamleakError
    from kamleak.harness.stack import source_build
    if image:
        prov = knowledge.Provenance.unknown(f"the image {image}")
        return Build(prov.label, _how(prov), prov)
    if version is None and ref is None:
        return None
    if version is not None:
        v = version.strip()
        prov = knowledge.provenance(v)
        if prov.kind == "debian":
            return Build(prov.label + " (kamleak's kamleak/kamailio-debian image)", _how(prov), prov)
    loc = source or os.environ.get(source_build.SOURCE_ENV)
    if loc is None:
        cached = source_build.cache_dir() / "sources" / \
            f"{source_build._key(source_build.DEFAULT_SOURCE)}.git"
        loc = source_build.DEFAULT_SOURCE if (cached / "HEAD").exists() or ref else None
    why = ("no source repository given (--kamailio-source PATH|URL or "
           f"${source_build.SOURCE_ENV})")
    if loc is not None:
        try:
            src = source_build.Source(loc)
            res = src.resolve(ref or v)
            prov = knowledge.Provenance.upstream(res.commit, str(src.mirror), name=res.name)
            return Build(f"upstream Kamailio {res.name}" + ("" if res.tag else f" ({res.describe})"),
                         _how(prov), prov)
        except KamleakError as exc:
            if ref is not None:
                raise
            why = f"the source repository is not usable ({exc.line()})"
    return Build(f"upstream Kamailio {v}",
                 f"{why}: answered from the first upstream tags kamleak records, not from git",
                 knowledge.Provenance.release(v))


# ---------------------------------------------------------------------------
# The analysis

_RELAY = {"t_relay", "t_relay_to", "t_relay_to_udp", "t_relay_to_tcp", "t_relay_to_tls",
          "t_relay_to_sctp"}
# How a relay failure is answered: kind, and whether the reply goes through tm.
_REPLIES = {
    "sl_reply_error": "sl_reply_error",        # stateless (the stock config): measured
    "sl_send_reply": "stateless", "sl_reply": "stateless",
    "send_reply_error": "send_reply_error",    # sl (upstream 5.8.0+): stateful when a transaction exists
    "t_reply_error": "t_reply_error",          # tm (upstream 5.8.0+)
    "t_reply": "stateful", "t_send_reply": "stateful",
    "send_reply": "stateful", "send_reply_mode": "stateful",   # sl: t_reply() if a transaction exists
}
_REPLY_PRIORITY = ("sl_reply_error", "stateless", "send_reply_error", "t_reply_error", "stateful")
_ROUTE_CALLS = {"route": 0, "route_if_exists": 0, "async_route": 0, "async_ms_route": 0,
                "async_task_route": 0, "async_task_group_route": 0, "async_task_data": 0}
# Reply functions a build may lack (kamleak.harness.knowledge keys) -> their module.
_NEEDS_FIX = knowledge.ERROR_REPLY_FUNCTIONS


@dataclass
class Trigger:
    what: str          # e.g. "uac_req_send()"
    src: Src           # the line that creates the local request (or the loadmodule)
    via: str           # how it is reached, e.g. "request_route -> route[WITHINDLG]"
    note: str = ""     # supporting lines, in words

    def cite(self) -> str:
        note = f" ({self.note})" if self.note else ""
        return f"{self.what} at {self.src.cite()}{note}, reached {self.via}"


@dataclass
class RelaySite:
    route: Route
    relay: Call
    reply_kind: str          # see _REPLIES, "none" or "unchecked"
    reply_src: Src | None
    reply_name: str = ""
    reply_route: str = ""    # set when the reply is in a route called from the failure branch

    def reply_cite(self) -> str:
        if not self.reply_route:
            return f"{self.reply_name}()"
        return f"{self.reply_name}() ({self.reply_src.cite()}, in {self.reply_route})"


class _Analysis:
    def __init__(self, cfg: Config, build: Build | None):
        self.cfg = cfg
        self.build = build          # None: advice for every build
        self.findings: list[Finding] = []
        self.dynamic_route_calls: list[Src] = []

    def add(self, src: Src, level: str, code: str, message: str, advice=()) -> None:
        self.findings.append(Finding(src.line, level, code, message, tuple(advice), src.file))

    # -- reachability ------------------------------------------------------

    def reach(self, starts: list[tuple[str, str]], seen: dict | None = None) -> dict:
        """Route key -> path of labels from the start, for routes reachable from STARTS."""
        seen = {} if seen is None else seen
        queue = []
        for k in starts:
            if k in self.cfg.routes and k not in seen:
                seen[k] = (self.cfg.routes[k].label,)
                queue.append(k)
        while queue:
            key = queue.pop(0)
            for call in self.cfg.routes[key].calls():
                nxt = None
                if call.name in _ROUTE_CALLS:
                    name = call.literal(_ROUTE_CALLS[call.name])
                    if name is None:
                        self.dynamic_route_calls.append(call.src)
                        continue
                    nxt = ("route", name)
                elif call.name == "t_on_branch":
                    name = call.literal(0)
                    if name is None:
                        self.dynamic_route_calls.append(call.src)
                        continue
                    nxt = ("branch", name)
                if nxt and nxt in self.cfg.routes and nxt not in seen:
                    seen[nxt] = seen[key] + (self.cfg.routes[nxt].label,)
                    queue.append(nxt)
        return seen

    # -- relay sites -------------------------------------------------------

    def relay_sites(self, reachable: dict) -> list[RelaySite]:
        sites: list[RelaySite] = []
        for key in reachable:
            route = self.cfg.routes[key]
            self._relay_walk(route, route.body, False, sites)
        return sites

    def _relay_walk(self, route: Route, stmts: list[Stmt], ack_cancel: bool, sites) -> None:
        """Collect relay sites; ACK_CANCEL: under a t_check_trans()/ACK/CANCEL condition."""
        for s in stmts:
            if s.kind == "if":
                relay, negated = _relay_in_condition(s.toks)
                if relay is not None:
                    branch = s.body if negated else s.orelse
                    kind, src, name, where = self.reply_in(branch, set())
                    if not (kind == "none" and ack_cancel):
                        sites.append(RelaySite(route, relay, kind, src, name, where))
            elif s.kind == "simple" and s.toks and s.toks[0].kind == "id" \
                    and s.toks[0].val in _RELAY and not ack_cancel:
                # A bare `t_relay();`.  Under t_check_trans() (ACK to a negative
                # reply, CANCEL) t_relay() forwards without a delayed error reply.
                sites.append(RelaySite(route, s.calls()[0], "unchecked", None))
            inner = ack_cancel or (s.kind == "if" and _ack_cancel_condition(s.toks))
            self._relay_walk(route, s.body, inner, sites)
            self._relay_walk(route, s.orelse, inner, sites)

    def reply_in(self, stmts: list[Stmt], visiting: set,
                 where: str = "") -> tuple[str, Src | None, str, str]:
        """The reply on a failure branch (following route() calls), the worst first.

        A stateless reply anywhere on the branch wins over stateful ones (a
        conditional stateless reply still leaks when taken).  Returns (kind,
        line, function name, route label when found in a called route).
        """
        found = self._replies(stmts, visiting, where)
        for kind in _REPLY_PRIORITY:
            for f in found:
                if f[0] == kind:
                    return f
        return "none", None, "", ""

    def _replies(self, stmts, visiting, where) -> list[tuple[str, Src, str, str]]:
        out = []
        for s in stmts:
            for st in s.walk():
                for call in st.calls():
                    if call.name in _REPLIES:
                        out.append((_REPLIES[call.name], call.src, call.name, where))
                    elif call.name in ("route", "route_if_exists"):
                        name = call.literal(0)
                        key = ("route", name)
                        if name and key in self.cfg.routes and key not in visiting:
                            out += self._replies(self.cfg.routes[key].body, visiting | {key},
                                                 self.cfg.routes[key].label)
        return out

    # -- triggers ----------------------------------------------------------

    def triggers(self, reachable: dict) -> list[Trigger]:
        out = []
        loaded = self.cfg.modules
        for key, path in reachable.items():
            route = self.cfg.routes[key]
            via = " -> ".join(path)
            for call in route.calls():
                if call.name == "uac_req_send":
                    if "uac" in loaded:
                        out.append(Trigger("uac_req_send()", call.src, via,
                                           f"uac.so loaded at {loaded['uac'].cite()}"))
                    else:
                        self.add(call.src, "error", "missing-module",
                                 "uac_req_send() without loadmodule \"uac.so\": Kamailio refuses "
                                 "the config")
                elif call.name == "t_uac_send":
                    out.append(Trigger("t_uac_send()", call.src, via))
        return out

    def dialog_tracking(self, reachable: dict) -> list[tuple[Src, str, str]]:
        """Lines that make the dialog module track dialogs on reachable routes."""
        out = []
        flag = self.cfg.modparam("dialog", "dlg_flag")
        flag_val = _int_value(flag[0]) if flag else None
        for key, path in reachable.items():
            for call in self.cfg.routes[key].calls():
                if call.name == "dlg_manage":
                    out.append((call.src, "dlg_manage()", " -> ".join(path)))
                elif call.name == "setflag" and flag_val is not None and \
                        _int_value(call.args[0] if call.args else []) == flag_val:
                    out.append((call.src, f"setflag({flag_val}) (dialog's dlg_flag)",
                                " -> ".join(path)))
        return out

    def flag_set(self, reachable: dict, flag: int) -> Src | None:
        for key in reachable:
            for call in self.cfg.routes[key].calls():
                if call.name == "setflag" and _int_value(call.args[0] if call.args else []) == flag:
                    return call.src
        return None

    # -- build checks ------------------------------------------------------

    def has(self, key: str):
        """knowledge's answer for this build (value None without a build)."""
        from kamleak.harness.knowledge import Answer
        return self.build.has(key) if self.build else Answer(None, "no build given")

    def version_checks(self) -> tuple[bool, Src | None]:
        """Errors for functions/params the build lacks; (delayed_reply off?, its line)."""
        from kamleak.harness.knowledge import FIXES
        b = self.build
        for route in self.cfg.routes.values():
            for call in route.calls():
                if call.name not in _NEEDS_FIX or b is None:
                    continue
                fix, ans = FIXES[call.name], self.has(call.name)
                if ans.value is False:
                    self.add(call.src, "error", "unknown-function",
                             f"{call.name}() ({_NEEDS_FIX[call.name]} module) is not in {b.label}: "
                             f"it refuses this config ({fix.describe()}; {ans.why})",
                             [_advice_restructure().replace("or, on this build, ", "instead "),
                              _advice_upgrade("send_reply_error"), b.note()])
                elif ans.value is None:
                    self.add(call.src, "info", "unknown-build",
                             f"{call.name}() needs {fix.describe()}: {ans.why}", [b.note()])
        dr = self.cfg.modparam("tm", "delayed_reply")
        if dr is None:
            return False, None
        value, src = dr
        if b is not None:
            ans = self.has("delayed_reply")
            if ans.value is False:
                self.add(src, "error", "unknown-param",
                         f'modparam("tm", "delayed_reply") is not in {b.label}: it refuses to start '
                         f"with it ({FIXES['delayed_reply'].describe()}; {ans.why})",
                         ["remove it; " + (_advice_6_0() if self.has("send_reply_error").value
                                           else _advice_upgrade("send_reply_error")), b.note()])
            elif ans.value is None:
                self.add(src, "info", "unknown-build",
                         f'modparam("tm", "delayed_reply") needs {FIXES["delayed_reply"].describe()}: '
                         f"{ans.why}", [b.note()])
        return _int_value(value) == 0, src


def _relay_in_condition(toks: list[Tok]) -> tuple[Call | None, bool]:
    """The t_relay*() call in an if-condition and whether it is negated."""
    for k, t in enumerate(toks):
        if t.kind == "id" and t.val in _RELAY and k + 1 < len(toks) and toks[k + 1].val == "(":
            neg = 0
            j = k - 1
            while j >= 0 and (toks[j].val in ("!", "(") or toks[j].val == "not"):
                if toks[j].val in ("!", "not"):
                    neg += 1
                j -= 1
            call = next(c for c in calls_in(toks[k:]) if c.name == t.val)
            return call, bool(neg % 2)
    return None, False


def _ack_cancel_condition(toks: list[Tok]) -> bool:
    if any(t.kind == "id" and t.val == "t_check_trans" for t in toks):
        return True
    return any(t.kind == "str" and re.fullmatch(r"(ACK|CANCEL)(\|(ACK|CANCEL))*", t.val)
               for t in toks)


def _int_value(toks: list[Tok]) -> int | None:
    text = "".join(t.val for t in toks).strip()
    try:
        return int(text, 0)
    except ValueError:
        return None


def _fixes(*keys: str) -> str:
    from kamleak.harness.knowledge import FIXES
    return "; ".join(FIXES[k].describe() for k in keys)


def _advice_upgrade(key: str) -> str:
    return f"or run a build that has {_fixes(key)}"


def _advice_6_0() -> str:
    return ("replace sl_reply_error() by send_reply_error() (sl) or t_reply_error() (tm): both "
            "reply through the transaction, which tm then releases (" +
            _fixes("send_reply_error", "t_reply_error") + ")")


def _advice_restructure() -> str:
    return ('or, on this build, reply through the transaction: send_reply("500", "Server Error") '
            '(sl: stateful when a transaction exists) or t_reply("500", "Server Error"); the '
            "specific error code is lost; not measured by kamleak: verify with `kamleak check`")


def _advice_6_1() -> str:
    return ('modparam("tm", "delayed_reply", 0) also avoids it (tm replies and kills the '
            "transaction at once; with sl_reply_error() still there, two final replies go out; "
            + _fixes("delayed_reply") + ")")


def _leak_advice(a: _Analysis) -> list[str]:
    """What to do about the 4140 pattern, from what the build has (knowledge)."""
    b = a.build
    if b is None:
        return [_advice_6_0(), "where the build has it: " + _advice_6_1(),
                "on builds without them: " + _advice_restructure().replace("or, on this build, ", ""),
                "name the build (--kamailio-version/--kamailio-ref/--kamailio-image) for advice "
                "about it; " + __import__("kamleak.harness.knowledge", fromlist=["x"]).BACKPORTS_NOTE]
    sre = a.has("send_reply_error").value
    out = []
    if sre is False and a.has("t_reply_error").value is False:
        out += [_advice_restructure(), _advice_upgrade("send_reply_error")]
    else:
        out.append(_advice_6_0() + ("" if sre else f" - whether {b.label} has them is not known"))
    dr = a.has("delayed_reply").value
    if dr is not False:
        out.append(("" if dr else f"if {b.label} has it: ") + _advice_6_1())
    out.append(b.note())
    return out


# ---------------------------------------------------------------------------
# Entry points


def lint(text: str, *, defines: set[str] | frozenset[str] = frozenset(),
         version: str | None = None, path: str = "kamailio.cfg", build=None) -> list[Finding]:
    """Findings for the config TEXT (read from PATH, used to resolve includes).

    DEFINES are `-A` defines (`NAME` or `NAME=VALUE`).  The build the config
    runs on: BUILD (a Build from `resolve_build`, a Target, a
    knowledge.Provenance) or VERSION (one of Debian's builds kamleak makes,
    else the upstream release); neither: advice for every build.
    """
    if version is not None:
        parse_version(version)
    b = Build.of(build) if build is not None else resolve_build(version=version)
    defs = {}
    for d in defines:
        name, _, value = d.partition("=")
        defs[name.strip()] = value.strip()
    pre = preprocess(text, defines=defs, path=path)
    cfg = parse_lines(pre.lines)
    a = _Analysis(cfg, b)
    a.findings.extend(pre.notes)
    _analyze(a)
    order = {lvl: k for k, lvl in enumerate(LEVELS)}
    return sorted(a.findings, key=lambda f: (f.path or "", f.line, order.get(f.level, 9), f.code))


def _analyze(a: _Analysis) -> None:
    cfg = a.cfg
    if cfg.cfgengine and cfg.cfgengine[0].lower() not in ("native", "kamailio", "default"):
        a.add(cfg.cfgengine[1], "warning", "kemi",
              f'cfgengine "{cfg.cfgengine[0]}": the routing logic is a KEMI script, out of scope '
              "for kamleak lint (only the native config is analyzed)")
        a.version_checks()
        return
    delayed_off, delayed_src = a.version_checks()
    _local_request_drop(a)
    if ("request", "") not in cfg.routes:
        a.findings.append(Finding(1, "warning", "no-request-route",
                                  "no request_route found: nothing to analyze"))
        return
    reachable = a.reach([("request", "")])
    triggers = a.triggers(reachable)

    # pua_dialoginfo publishes dialog state changes (the BYE's "terminated" too).
    tracking = a.dialog_tracking(reachable) if "dialog" in cfg.modules else []
    if tracking:
        # The dialog's end runs event_route[dialog:end] while the BYE is handled.
        before = set(reachable)
        a.reach([("event", "dialog:end")], reachable)
        if set(reachable) != before:
            extra = {k: p for k, p in reachable.items() if k not in before}
            triggers += a.triggers(extra)
    if "pua_dialoginfo" in cfg.modules:
        pd = cfg.modules["pua_dialoginfo"]
        if "dialog" not in cfg.modules:
            a.add(pd, "warning", "pua_dialoginfo",
                  'pua_dialoginfo is loaded without dialog.so: it needs the dialog module')
        elif not tracking:
            a.add(pd, "info", "pua_dialoginfo",
                  "pua_dialoginfo is loaded but no dialog is tracked on a route reachable from "
                  "request_route (no dlg_manage(), no setflag() of dialog's dlg_flag): it "
                  "publishes nothing, so it is not counted as a 4140 trigger")
        else:
            spf = cfg.modparam("pua_dialoginfo", "send_publish_flag")
            spf_val = _int_value(spf[0]) if spf else None
            flag_src = a.flag_set(reachable, spf_val) if spf_val not in (None, -1) else None
            if spf_val not in (None, -1) and flag_src is None:
                a.add(spf[1], "info", "pua_dialoginfo",
                      f"pua_dialoginfo publishes only dialogs flagged {spf_val} (send_publish_flag) "
                      "and no reachable setflag() sets it: not counted as a 4140 trigger")
            else:
                src, name, via = tracking[0]
                note = (f"with dialog.so it PUBLISHes every state change of a tracked dialog, the "
                        f"BYE's \"terminated\" included; dialogs tracked by {name} at {src.cite()}")
                if flag_src:
                    note += f", send_publish_flag set at {flag_src.cite()}"
                triggers.append(Trigger("pua_dialoginfo.so", pd, via, note))

    # Triggers on routes no request reaches: say why they do not count.
    for key, route in cfg.routes.items():
        if key in reachable:
            continue
        for call in route.calls():
            if call.name in ("uac_req_send", "t_uac_send"):
                why = ("runs while a reply or timeout is handled, not the request"
                       if route.kind in ("failure", "onreply") else
                       "is not reached from request_route")
                level = "info"
                if a.dynamic_route_calls and route.kind == "route":
                    why = ("is not reached statically from request_route, but the config calls "
                           f"routes by a dynamic name ({a.dynamic_route_calls[0].cite()})")
                    level = "warning"
                a.add(call.src, level, "4140-trigger-unreached",
                      f"{call.name}() in {route.label} {why}: not counted as a 4140 trigger")

    sites = a.relay_sites(reachable)
    if not triggers:
        return
    cited = "; ".join(t.cite() for t in triggers)
    for site in sites:
        _judge(a, site, triggers, cited, delayed_off, delayed_src)


def _local_request_drop(a: _Analysis) -> None:
    """PR 3403: `drop` in event_route[tm:local-request] lost the request's buffer
    on builds without its fix (kamleak.harness.knowledge: ee06666c43, 6.0.0; fc54fdcd67, 5.8.2).

    Measured by kamleak (scenario pr3403): Debian's 5.6.3 keeps ~430-450 B of
    shm at tm's build_uac_req() per dropped request; 6.0.1 and 6.1.5 free it.
    """
    from kamleak.harness.knowledge import FIXES
    route = a.cfg.routes.get(("event", "tm:local-request"))
    if route is None:
        return
    b, fix = a.build, FIXES["pr3403"]
    ans = a.has("pr3403")
    note = [b.note()] if b else []
    for st in route.stmts():
        if not (st.kind == "simple" and st.toks and st.toks[0].val == "drop"):
            continue
        base = ("drop in event_route[tm:local-request]: tm built the local request in shm "
                "(build_uac_req()) and frees the transaction, not that buffer")
        if ans.value:
            a.add(st.src, "info", "3403-freed",
                  f"{base} without {fix.describe()}; {b.label} has it: {ans.why}", note)
            continue
        where = (f"on {b.label} ({ans.why})" if b and ans.value is False else
                 f"on {b.label} unless it has {fix.describe()}: {ans.why}" if b else
                 f"on builds without {fix.describe()} (observed: Debian's 5.6.3)")
        a.add(st.src, "leak", "3403-leak",
              f"{base}: some 450 B of shm are lost per dropped request {where} (Kamailio PR 3403)",
              ["do not create the request instead of dropping it in the event route (filter "
               "before uac_req_send()/t_uac_send()/the module that sends it), or run a build "
               f"that has {fix.describe()}"] + note)


def _judge(a: _Analysis, site: RelaySite, triggers, cited: str, delayed_off: bool,
           delayed_src: Src | None) -> None:
    from kamleak.harness.knowledge import FIXES
    b = a.build
    note = [b.note()] if b else []
    relay = f"{site.relay.name}() ({site.relay.src.cite()}, in {site.route.label})"
    line = site.reply_src or site.relay.src
    kind = site.reply_kind
    if kind in ("send_reply_error", "t_reply_error", "stateful"):
        if kind in _NEEDS_FIX and a.has(kind).value is False:
            return   # the unknown-function error says it all
        a.add(line, "info", "4140-mitigated",
              f"{relay} failure is answered with {site.reply_cite()}, through the transaction: "
              f"no issue-4140 leak despite the local tm request(s): {cited}", note)
        return
    if kind == "sl_reply_error":
        how, level = f"answered with {site.reply_cite()} (stateless)", "leak"
    elif kind == "stateless":
        how, level = (f"answered with {site.reply_cite()} (stateless; same mechanism as "
                      "sl_reply_error(), not measured by kamleak)"), "warning"
    elif kind == "none":
        how, level = ("not answered on the failure branch (same mechanism: tm sends the delayed "
                      "reply only when nothing else touched the kill reason; not measured)"),\
            "warning"
    else:
        how, level = ("not checked (same mechanism: tm sends the delayed reply only when nothing "
                      "else touched the kill reason; not measured)"), "warning"
    base = (f"{relay} failure {how} while a local tm request is created for the same request: "
            f"{cited}")
    orphans = FIXES["t_unref_orphans"]
    if delayed_off:
        dr = a.has("delayed_reply")
        if dr.value is False:
            a.add(line, "warning", "4140-leak",
                  f"{base}: this leaks the transaction on {b.label} (issue 4140); "
                  f'modparam("tm", "delayed_reply", 0) ({delayed_src.cite()}) cannot help there, '
                  "the config does not load", _leak_advice(a))
        else:
            a.add(line, "info", "4140-delayed-reply-off",
                  f'{base}; modparam("tm", "delayed_reply", 0) ({delayed_src.cite()}) makes tm '
                  "reply and release at once, where the build has it "
                  f"({FIXES['delayed_reply'].describe()}): no leak, but two final replies",
                  [_advice_6_0() + "; that also leaves a single final reply"] + note)
        return
    fixed = a.has("t_unref_orphans")
    if fixed.value:
        a.add(line, "info", "4140-freed-by-tm",
              f"{base}. {b.label} has {orphans.describe()} ({fixed.why}): tm frees such orphaned "
              "transactions itself ('dropping orphaned transaction without branches'), replying "
              "twice (stateless, then stateful)", _leak_advice(a))
        return
    if b is None:
        where = (f"on every build without {orphans.describe()} (observed: Debian's 5.6.3 and "
                 "6.0.1; Debian's 6.1.5 carries the change)")
    elif fixed.value is False:
        where = f"on {b.label} ({fixed.why}; {orphans.describe()})"
    else:
        where = f"on {b.label} unless it carries {orphans.describe()}: {fixed.why}"
    a.add(line, level, "4140-leak",
          f"{base}: the transaction is never released {where} (issue 4140)", _leak_advice(a))



def lint_file(path: str, *, defines: set[str] | frozenset[str] = frozenset(),
              version: str | None = None) -> list[Finding]:
    return lint(read_config(path), defines=defines, version=version, path=path)


NAME = "lint"
HELP = "static check of a Kamailio config for the issue-4140 pattern"
DESCRIPTION = ("Static advisor for Kamailio configs (issue 4140): exit 1 if a leak pattern is found, "
               "0 otherwise, 2 if the config is unreadable or (with --contract or -A KAMLEAK) "
               "kamleak cannot gate it as is.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="the Kamailio config file (kamailio.cfg)")
    p.add_argument("--define", "-A", action="append", default=[], metavar="NAME[=VALUE]",
                   help="a preprocessor define, as kamailio -A (repeatable)")
    p.add_argument("--kamailio-version", default=None, metavar="V",
                   help="the Kamailio the config runs on: one of Debian's builds kamleak makes "
                        "(5.6.3, 6.0.1, 6.1.5) or else the upstream release V, e.g. 5.8.5 "
                        "(default: advice for every build)")
    p.add_argument("--kamailio-ref", default=None, metavar="REF",
                   help="an upstream git ref (tag, branch, commit): answered from git")
    p.add_argument("--kamailio-image", default=None, metavar="IMAGE",
                   help="an image of unknown provenance: lint says what it cannot know")
    p.add_argument("--kamailio-source", default=None, metavar="URL|PATH",
                   help="the git repository upstream builds are answered from (default: "
                        "$KAMLEAK_KAMAILIO_SOURCE, else a cached mirror of github.com/kamailio/"
                        "kamailio, else the first tags kamleak records)")
    p.add_argument("--contract", action="store_true",
                   help="also list everything `kamleak gate --kamailio-config` needs changed before it can "
                        "run this config (the same check as gate's, all at once; implied by "
                        "-A KAMLEAK); exit 2 if anything is listed and no leak pattern is found")


def run(args) -> int:
    try:
        parse_version(args.kamailio_version)
    except ValueError as exc:
        print(f"kamleak lint: {exc}", file=sys.stderr)
        return 2
    from kamleak.harness.errors import KamleakError
    given = [o for o, v in (("--kamailio-version", args.kamailio_version),
                            ("--kamailio-ref", args.kamailio_ref),
                            ("--kamailio-image", args.kamailio_image)) if v]
    try:
        if len(given) > 1:
            from kamleak.harness.errors import UsageError
            raise UsageError(f"{' and '.join(given)} name two builds", "give one of them")
        text = read_config(args.config)
        build = resolve_build(version=args.kamailio_version, ref=args.kamailio_ref,
                              image=args.kamailio_image, source=args.kamailio_source)
    except KamleakError as exc:
        print(f"kamleak lint: {exc.line()}", file=sys.stderr)
        return 2
    findings = lint(text, defines=set(args.define), path=args.config, build=build)
    if build is not None and build.release is not None:
        print(f"kamleak lint: about {build.label}: {build.how}", file=sys.stderr)
    for f in findings:
        print(f.format(args.config))
    if not findings:
        print(f"{args.config}: ok: no issue-4140 pattern found")
    problems = []
    if args.contract or any(d.partition("=")[0].strip() == "KAMLEAK" for d in args.define):
        # The gate's own check (harness defines only, as the gate renders it).
        from kamleak.harness.stack.kamailio.user_config import check
        problems = check(text, args.config)
        for pr in problems:
            print(pr.line_text(args.config, label="contract: "))
        if not problems:
            print(f"{args.config}: ok: meets kamleak's contract for `gate --kamailio-config`")
    if any(f.level == "leak" for f in findings):
        return 1
    return 2 if problems else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="kamleak lint", description=DESCRIPTION)
    add_arguments(p)
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

