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

Every finding has a stable rule code (harness/tools/lint_rules.py, docs/lint.md):
one short line per finding, `kamleak lint --explain CODE` for the mechanism,
the upstream commits and the fix, said once.  Levels: "leak" (measured
pattern), "error" (Kamailio refuses the config on the given build),
"warning" (same mechanism, not measured, or what lint cannot read), "info"
(a note; does not fail the run).  Exit codes as ruff's: 0 nothing but notes,
1 findings, 2 bad input.

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

Limits (heuristics): KEMI configs (Lua, Python, JS... via `cfgengine`): lint
reads native routing only, says so (KL001) and points to `kamleak gate`; `route($var(x))` and other dynamic route names
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
import dataclasses
import os
import re
import sys
from dataclasses import dataclass

from kamleak.harness import knowledge
from kamleak.harness.stack.kamailio import cfg as _cfg
from kamleak.harness.stack.kamailio.cfg import (
    Call,
    Config,
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
from kamleak.harness.tools import lint_rules
from kamleak.harness.tools.lint_rules import RULES

__all__ = ["Finding", "lint", "lint_file", "main", "parse_version", "add_arguments", "run",
           "RULES"]

LEVELS = ("leak", "error", "warning", "info")
USAGE_EXIT = 2
# The levels that fail a run (exit 1); "info" notes do not.
FAILING = ("leak", "error", "warning")


@dataclass(frozen=True)
class Finding(_cfg.Finding):
    """A lint finding: `code` is its rule's (KL4140...), `message` one short
    line, `advice` the few short notes about this finding (its trigger, what
    the build has); `col` is 1-based in `line`, found from `anchor`."""

    col: int = 1
    anchor: str = ""

    @property
    def rule(self) -> lint_rules.Rule:
        return RULES[self.code]

    def format(self, default_path: str) -> str:
        head = f"{self.path or default_path}:{self.line}:{self.col}: {self.code} {self.message}"
        return "\n".join([head] + [f"    {a}" for a in self.advice])


# ---------------------------------------------------------------------------
# Which build the advice is about (kamleak.harness.knowledge answers what it contains)


@dataclass(frozen=True)
class Build:
    """The Kamailio a config runs on, as lint names it and asks knowledge about.

    `prov` is a knowledge.Provenance (kind "release": an upstream release
    number answered from the recorded first tags, no source repository at
    hand); `how` says in words how the answers are found (said once a run)."""

    label: str
    how: str
    prov: object = None

    @property
    def release(self) -> str | None:
        return self.prov.version if self.prov.kind == "release" else None

    def has(self, key: str):
        return knowledge.has(key, self.prov)

    def answer(self, key: str) -> str:
        """Whether it has FIXES[KEY], in a few words with how that is known."""
        fix, ans, prov = knowledge.FIXES[key], self.has(key), self.prov
        verb = {True: "has", False: "lacks", None: "may lack"}[ans.value]
        how = {"debian": "observed by kamleak", "release": "recorded tags",
               "upstream": f"git, at {(prov.commit or '')[:10]}"}.get(prov.kind, "")
        if ans.value is None:
            how = "cannot tell: run `kamleak check`"
        tags = ", ".join(fix.first_tags()) or "no release, master only"
        commits = "/".join([fix.commit, *(c for c, _ in fix.backports)])
        return f"{prov.label} {verb} {commits} (upstream: {tags}; {how})"

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
        return f"answered from git (ancestry of {prov.commit[:10]})"
    if prov.kind == "debian":
        return "observed by kamleak on that build"
    return "unknown contents: run `kamleak check` on it"


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
            return Build(prov.label + " (kamleak/kamailio-debian image)", _how(prov), prov)
    loc = source or os.environ.get(source_build.SOURCE_ENV)
    if loc is None:
        cached = source_build.cache_dir() / "sources" / \
            f"{source_build._key(source_build.DEFAULT_SOURCE)}.git"
        loc = source_build.DEFAULT_SOURCE if (cached / "HEAD").exists() or ref else None
    why = "no --kamailio-source"
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
            why = f"source repository not usable: {exc.line()}"
    return Build(f"upstream Kamailio {v}",
                 f"answered from recorded first tags, not from git ({why})",
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
# A trigger's note fits a 120-column line after its 4-column indent.
_NOTE_WIDTH = 114


@dataclass
class Trigger:
    what: str          # e.g. "uac_req_send()"
    src: Src           # the line that creates the local request (or the loadmodule)
    via: str           # how it is reached, e.g. "request_route -> route[WITHINDLG]"
    note: str = ""     # supporting lines, in words

    def notes(self) -> list[str]:
        """The trigger in a note or two of a finding, each under 120 characters."""
        head = f"trigger: {self.what} at {self.src.cite()}, via "
        hops = self.via.split(" -> ")
        via = self.via if len(head) + len(self.via) <= _NOTE_WIDTH or len(hops) < 3 else \
            " -> ".join([hops[0], "...", hops[-1]])
        return [head + via] + ([f"  {self.note}"] if self.note else [])


@dataclass
class RelaySite:
    route: Route
    relay: Call
    reply_kind: str          # see _REPLIES, "none" or "unchecked"
    reply_src: Src | None
    reply_name: str = ""
    reply_route: str = ""    # set when the reply is in a route called from the failure branch

    def notes(self) -> list[str]:
        """Where the relay is (and the reply, when in a called route)."""
        out = f"{self.relay.name}() at {self.relay.src.cite()} in {self.route.label}"
        if self.reply_route:
            out += f"; {self.reply_name}() in {self.reply_route}"
        return [out]


class _Analysis:
    def __init__(self, cfg: Config, build: Build | None):
        self.cfg = cfg
        self.build = build          # None: advice for every build
        self.findings: list[Finding] = []
        self.dynamic_route_calls: list[Src] = []

    def add(self, src: Src, code: str, message: str, notes=(), *, level: str | None = None,
            anchor: str = "") -> None:
        """A finding of rule CODE at SRC (its usual level unless LEVEL), its
        column where ANCHOR first appears on the line."""
        self.findings.append(Finding(src.line, level or RULES[code].level, code, message,
                                     tuple(notes), src.file, anchor=anchor))

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
                        out.append(Trigger("uac_req_send()", call.src, via))
                    else:
                        self.add(call.src, "KL103", 'uac_req_send() without loadmodule "uac.so"',
                                 ["Kamailio refuses the config"], anchor=call.name)
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
        b = self.build
        for route in self.cfg.routes.values():
            for call in route.calls():
                if call.name not in _NEEDS_FIX or b is None:
                    continue
                ans = self.has(call.name)
                if ans.value is False:
                    self.add(call.src, "KL101", f"{call.name}() does not exist in this build",
                             [b.answer(call.name)], anchor=call.name)
                elif ans.value is None:
                    self.add(call.src, "KL104", f"{call.name}() may not exist in this build",
                             [b.answer(call.name)], anchor=call.name)
        dr = self.cfg.modparam("tm", "delayed_reply")
        if dr is None:
            return False, None
        value, src = dr
        if b is not None:
            ans = self.has("delayed_reply")
            if ans.value is not True:
                code, verb = ("KL102", "does not") if ans.value is False else ("KL104", "may not")
                self.add(src, code, f"tm's delayed_reply parameter {verb} exist in this build",
                         [b.answer("delayed_reply")], anchor="delayed_reply")
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
    a.findings.extend(_from_note(n) for n in pre.notes)
    _analyze(a)
    order = {lvl: k for k, lvl in enumerate(LEVELS)}
    found = sorted(a.findings, key=lambda f: (f.path or "", f.line, order.get(f.level, 9), f.code))
    return _with_columns(found, text)


# The preprocessor's notes (harness/stack/kamailio/cfg.py) under lint's rules.
_NOTE_RULES = {"include": "KL003", "preprocessor": "KL004", "syntax": "KL005"}


def _from_note(note: _cfg.Finding) -> Finding:
    message = note.message.replace(" relative to the config: its content is not analyzed",
                                   ": not read")
    # A long include path: its file name tells which one (the line shows the rest).
    message = re.sub(r'"(/?[^"]*/)([^"/]+)"', lambda m: m[0] if len(m[0]) < 40 else f'".../{m[2]}"',
                     message)
    anchor = next((w for w in ("include_file", "import_file", "#!") if w in message), "")
    return Finding(note.line, note.level, _NOTE_RULES.get(note.code, "KL004"), message,
                   note.advice, note.path, anchor=anchor)


def _with_columns(found: list[Finding], text: str) -> list[Finding]:
    """Each finding's 1-based column: where its anchor is on the line, else the
    line's first non-blank character."""
    files: dict[str | None, list[str]] = {None: text.split("\n")}
    out = []
    for f in found:
        if f.path not in files:
            try:
                files[f.path] = read_config(f.path).split("\n")
            except Exception:   # noqa: BLE001 - a column is a nicety, never a failure
                files[f.path] = []
        lines = files[f.path]
        line = lines[f.line - 1] if 0 < f.line <= len(lines) else ""
        k = line.find(f.anchor) if f.anchor else -1
        if k < 0:
            k = len(line) - len(line.lstrip())
        out.append(dataclasses.replace(f, col=k + 1))
    return out


def _analyze(a: _Analysis) -> None:
    cfg = a.cfg
    if cfg.cfgengine and cfg.cfgengine[0].lower() not in ("native", "kamailio", "default"):
        a.add(cfg.cfgengine[1], "KL001",
              f'cfgengine "{cfg.cfgengine[0]}": lint reads native routing only; run kamleak gate',
              anchor="cfgengine")
        a.version_checks()
        return
    delayed_off, delayed_src = a.version_checks()
    _local_request_drop(a)
    if ("request", "") not in cfg.routes:
        a.add(Src(None, 1), "KL002", "no request_route: nothing to check")
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
            a.add(pd, "KL103", 'pua_dialoginfo.so without loadmodule "dialog.so"',
                  level="warning", anchor="pua_dialoginfo")
        elif not tracking:
            a.add(pd, "KL4146", "pua_dialoginfo.so: no dialog is tracked, so not a trigger",
                  ["no dlg_manage() nor setflag() of dialog's dlg_flag on a route "
                   "request_route reaches"], anchor="pua_dialoginfo")
        else:
            spf = cfg.modparam("pua_dialoginfo", "send_publish_flag")
            spf_val = _int_value(spf[0]) if spf else None
            flag_src = a.flag_set(reachable, spf_val) if spf_val not in (None, -1) else None
            if spf_val not in (None, -1) and flag_src is None:
                a.add(spf[1], "KL4146",
                      f"pua_dialoginfo's send_publish_flag {spf_val} is never set: not a trigger",
                      [f"no reachable setflag({spf_val})"], anchor="send_publish_flag")
            else:
                src, name, via = tracking[0]
                note = f"it publishes each state of dialogs tracked by {name} at {src.cite()}"
                if flag_src:
                    note += f", send_publish_flag set at {flag_src.cite()}"
                triggers.append(Trigger("pua_dialoginfo.so", pd, via, note))

    # Triggers on routes no request reaches: say why they do not count.
    for key, route in cfg.routes.items():
        if key in reachable:
            continue
        for call in route.calls():
            if call.name not in ("uac_req_send", "t_uac_send"):
                continue
            what, notes, level = f"{call.name}() in {route.label}", [], "info"
            if a.dynamic_route_calls and route.kind == "route":
                message = f"{what} may be reached by a dynamic route()"
                notes, level = [f"not resolved: {a.dynamic_route_calls[0].cite()}"], "warning"
            elif route.kind in ("failure", "onreply"):
                message = f"{what} runs on replies and timeouts, not requests"
            else:
                message = f"{what} is not reached from request_route"
            a.add(call.src, "KL4145", message, notes, level=level, anchor=call.name)

    sites = a.relay_sites(reachable)
    if not triggers:
        return
    for site in sites:
        _judge(a, site, triggers, delayed_off, delayed_src)


def _local_request_drop(a: _Analysis) -> None:
    """PR 3403: `drop` in event_route[tm:local-request] lost the request's buffer
    on builds without its fix (kamleak.harness.knowledge: ee06666c43, 6.0.0; fc54fdcd67, 5.8.2).

    Measured by kamleak (scenario pr3403): Debian's 5.6.3 keeps ~430-450 B of
    shm at tm's build_uac_req() per dropped request; 6.0.1 and 6.1.5 free it.
    """
    route = a.cfg.routes.get(("event", "tm:local-request"))
    if route is None:
        return
    b, fix = a.build, knowledge.FIXES["pr3403"]
    ans = a.has("pr3403")
    for st in route.stmts():
        if not (st.kind == "simple" and st.toks and st.toks[0].val == "drop"):
            continue
        if ans.value:
            a.add(st.src, "KL3403", "drop of a local request: this build frees its buffer",
                  [b.answer("pr3403")], level="info", anchor="drop")
            continue
        note = b.answer("pr3403") if b else \
            f"builds without {'/'.join(c for c in [fix.commit, *(c for c, _ in fix.backports)])} " \
            f"(upstream: {', '.join(fix.first_tags())}); observed: Debian's 5.6.3"
        a.add(st.src, "KL3403", "drop of a local request loses its shm buffer (PR 3403)",
              ["some 450 B of shm a dropped request, never freed", note], anchor="drop")


def _judge(a: _Analysis, site: RelaySite, triggers, delayed_off: bool,
           delayed_src: Src | None) -> None:
    b = a.build
    relay, kind = site.relay.name, site.reply_kind
    reply = f"{site.reply_name}()" if site.reply_name else "the reply"
    line = site.reply_src or site.relay.src
    anchor = site.reply_name if site.reply_src and not site.reply_route else relay
    about = site.notes() + [n for t in triggers for n in t.notes()]

    def add(code, message, notes=(), level=None):
        a.add(line, code, message, about + list(notes), level=level, anchor=anchor)

    if kind in ("send_reply_error", "t_reply_error", "stateful"):
        if kind in _NEEDS_FIX and a.has(kind).value is False:
            return   # KL101 says it all
        add("KL4142", f"{reply} on {relay}() failure replies statefully: no leak",
            [b.answer(kind)] if b and kind in _NEEDS_FIX else [])
        return
    if kind == "sl_reply_error":
        code, message = "KL4140", f"{reply} on {relay}() failure leaks the transaction"
    elif kind == "stateless":
        code, message = "KL4141", f"{reply} on {relay}() failure may leak the transaction"
    elif kind == "none":
        code, message = "KL4141", f"no reply on {relay}() failure: may leak the transaction"
    else:
        code, message = "KL4141", f"unchecked {relay}(): may leak the transaction"
    level = RULES[code].level
    if delayed_off:
        dr = a.has("delayed_reply")
        if dr.value is False:
            # Kamailio refuses the modparam there (KL102): the leak it would show is not measured.
            add(code, message, [b.answer("delayed_reply")], level="warning")
        else:
            add("KL4143", f"{reply} on {relay}() failure: delayed_reply 0 frees it",
                [f'modparam("tm", "delayed_reply", 0) at {delayed_src.cite()}: two final replies']
                + ([b.answer("delayed_reply")] if b else []))
        return
    fixed = a.has("t_unref_orphans")
    if fixed.value:
        add("KL4144", f"{reply} on {relay}() failure: this build's tm frees it",
            [b.answer("t_unref_orphans"), "two final replies (stateless, then stateful)"])
        return
    orphans = knowledge.FIXES["t_unref_orphans"]
    where = b.answer("t_unref_orphans") if b else (
        f"leaks where tm lacks {orphans.commit} (observed: Debian's 5.6.3 and 6.0.1; "
        "Debian's 6.1.5 backports it)")
    add(code, message, [where], level=level)


def lint_file(path: str, *, defines: set[str] | frozenset[str] = frozenset(),
              version: str | None = None) -> list[Finding]:
    return lint(read_config(path), defines=defines, version=version, path=path)


NAME = "lint"
HELP = "static check of a Kamailio config for the issue-4140 pattern (a linter: rule codes, SARIF)"
DESCRIPTION = ("Static advisor for Kamailio configs (issue 4140, PR 3403): one line per finding, "
               "path:line:col: CODE message; `--explain CODE` for a rule's mechanism, upstream "
               "commits and fix. Exit 0: nothing but notes; 1: findings (or, with --contract, "
               "things the gate needs changed); 2: bad input. Rules and formats: docs/lint.md.")
FORMATS = ("text", "json", "sarif", "github")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", nargs="*",
                   help="the Kamailio config file(s) (kamailio.cfg); each is linted on its own, "
                        "following its include_file/import_file")
    p.add_argument("--explain", default=None, metavar="CODE",
                   help="print a rule's mechanism, its upstream commits with their first tags and "
                        "the fix (for the build named, if any), then exit; e.g. KL4140")
    p.add_argument("--format", default="text", choices=FORMATS,
                   help="text (path:line:col: CODE message), json, sarif (SARIF 2.1.0) or github "
                        "(workflow annotations); default: text")
    p.add_argument("--define", "-A", action="append", default=[], metavar="NAME[=VALUE]",
                   help="a preprocessor define, as kamailio -A (repeatable)")
    p.add_argument("--kamailio-version", default=None, metavar="V",
                   help="the Kamailio the config runs on: one of Debian's builds kamleak makes "
                        "(5.6.3, 6.0.1, 6.1.5) or else the upstream release V, e.g. 5.8.5 "
                        "(default: advice for every build); a branch or commit: --kamailio-ref")
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
                        "-A KAMLEAK): a `contract:` line each in text, KL201 findings in the other "
                        "formats")


def _build_of(args) -> Build | None:
    """The build the options name (UsageError: two of them, or a version that is a ref)."""
    from kamleak.harness.errors import UsageError
    v = args.kamailio_version
    if v is not None:
        try:
            parse_version(v)
        except ValueError:
            raise UsageError(f"--kamailio-version {v!r} is not a release number like 5.8.5",
                             f"for a git ref: --kamailio-ref {v.strip()}") from None
    given = [o for o, val in (("--kamailio-version", v), ("--kamailio-ref", args.kamailio_ref),
                              ("--kamailio-image", args.kamailio_image)) if val]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} name two builds", "give one of them")
    return resolve_build(version=v, ref=args.kamailio_ref, image=args.kamailio_image,
                         source=args.kamailio_source)


def _contract_finding(problem, config: str) -> Finding:
    """A contract problem of user_config.check() (in CONFIG) as a KL201 finding."""
    return Finding(problem.line or 1, "error", "KL201", problem.what, (f"add: {problem.add}",),
                   problem.file or config)


def run(args) -> int:
    from kamleak.harness.errors import KamleakError, UsageError
    from kamleak.harness.tools import lint_report
    try:
        if args.explain is not None:
            if args.explain.strip().upper() not in RULES:
                raise UsageError(f"no rule {args.explain!r}",
                                 f"the rules: {', '.join(RULES)} (docs/lint.md)")
            print(lint_rules.explain(args.explain, _build_of(args)), end="")
            return 0
        if not args.config:
            raise UsageError("no CONFIG given", "pass your kamailio.cfg, or --explain CODE")
        texts = {path: read_config(path) for path in args.config}
        build = _build_of(args)
    except KamleakError as exc:
        print(f"kamleak lint: {exc.line()}", file=sys.stderr)
        return USAGE_EXIT
    if build is not None:
        # How the build's answers are found: said once a run, not in each finding.
        print(f"kamleak lint: about {build.label}: {build.how}", file=sys.stderr)
    contract = args.contract or any(d.partition("=")[0].strip() == "KAMLEAK" for d in args.define)
    found, failed, out = [], False, []
    for path, text in texts.items():
        findings = [f if f.path else dataclasses.replace(f, path=path)
                    for f in lint(text, defines=set(args.define), path=path, build=build)]
        problems = None
        if contract:
            # The gate's own check (harness defines only, as the gate renders it).
            from kamleak.harness.stack.kamailio.user_config import check
            problems = check(text, path)
        failed = failed or bool(problems) or any(f.level in FAILING for f in findings)
        if args.format == "text":
            out += lint_report.text(findings, path, problems)
        found += findings + [_contract_finding(pr, path) for pr in problems or ()]
    if args.format == "text":
        out += lint_report.footer([f for f in found if f.code != "KL201"])
        print("\n".join(out))
    else:
        print(lint_report.FORMATTERS[args.format](found))
    return 1 if failed else 0


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
