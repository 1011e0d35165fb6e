"""What `kamleak reduce` may remove from a user's kamailio.cfg, read with kamleak's
config reader (harness/stack/kamailio/cfg.py: its preprocessor, tokenizer and
statement parser, with the positions they consume recorded here).

Everything works on the user's own lines: a candidate is the original file
minus some of its lines, so the reduced config is the user's text and every
statement is cited by its line in the ORIGINAL file.

First, for free (no Kamailio run): the lines whose removal leaves Kamailio
reading the same code (the preprocessed tokens are equal and no directive goes
unbalanced): comments, blank lines, the branches `#!ifdef` does not take and
the directives themselves, defines nothing uses any more.

Then the units the search tries, by tier:
  0  route blocks with every call to them (route(X), t_on_failure("X")...),
     loadmodules with their modparams, global parameters, defines, the
     modparams of several modules;
  1  the statements of each route, and the modparams of a module;
  2+ what is nested: statements inside `if`/`while`/`switch`/blocks, an `else`
     branch, an `if` unwrapped to its body.
Kamailio refuses an empty block (`{ }`), so the lone statement of a block goes
with what holds it: the lone body of an `if` with its `if` (whose unwrap stays
a unit), of an `else` with its branch, of a route with its route (and its calls
are the holder's, so a cause names them).  A unit whose lines hold tokens of
another statement is not offered (line granularity).  The gate's contract
(user_config.check) decides what is fixed: a unit whose removal alone makes the
config break the contract (the listen sockets, jsonrpcs/xhttp/websocket, the
WebSocket and RPC handling, the registrar kamleak registers the PBX in) is
never offered.

Nothing here decides what Kamailio takes or what leaks.  Alone, `kamailio -c`
(6.0.1) refuses only a loadmodule whose functions or variables are still used
and a define still substituted; in a set, a removal that empties a block
(tests/unit/test_reduce_removal.py).  The search checks every candidate with
`kamailio -c` before it runs one, accepts a removal on `confirm` runs that keep
the leak and verifies the original first (search.py); once a module's callers
are gone, its next sweep of tier 0 removes the module.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from kamleak.harness.stack.kamailio import cfg, timers
from kamleak.harness.stack.kamailio.user_config import HARNESS_DEFINES, UserConfig, check

_CONDITIONALS = ("ifdef", "ifndef", "ifexp", "else", "endif")
# What user_config.check reads: the modules it needs, their parameters, the calls of
# event_route[xhttp:request], the registrar, the PBX's address, the sockets.
_CONTRACT_WORDS = re.compile(
    r"\b(tm|websocket|xhttp|jsonrpcs|ctl|tls|tcp_accept_no_cl|jsonrpc_dispatch|ws_handle_handshake"
    r"|save|lookup|location|KAMLEAK_PBX_HOSTPORT)\b|^\s*(listen|port)\s*=")


@dataclass(frozen=True)
class Unit:
    id: int
    kind: str                 # route, module, modparam, global, define, stmt, branch, unwrap
    label: str                # its first line as the user wrote it
    line: int                 # that line, in the original file
    lines: frozenset[int]     # every original line it removes
    tier: int
    parent: int | None = None # gone with its parent
    where: str = ""           # the route it is in
    fixed: bool = False       # the gate's contract needs it
    last: bool = False        # a tm timer: tried once the rest is reduced (see Reduction.last)
    keep_as: str | None = None  # a block's lone statement: its first line becomes this `;`
    calls: tuple[str, ...] = ()   # the functions the statement itself calls

    @property
    def role(self) -> str:
        """How a cause is named: the call itself, or what leads to one."""
        if self.kind in ("stmt", "noop") and self.calls and not set(self.calls) <= {"route"}:
            return "call"
        return "way"


class _Reader(cfg.Preprocessor):
    """cfg's preprocessor, recording for the main file what it decides per line."""

    def __init__(self, defines):
        super().__init__(defines)
        self.scanned: set[int] = set()            # indexes into self.lines of code read
        self.directives: dict[int, tuple[str, bool, bool]] = {}   # line -> (word, before, after)
        self.includes: set[int] = set()

    def _scan(self, line: str) -> str:
        self.scanned.add(len(self.lines))         # the index this line is appended at
        return super()._scan(line)

    def _directive(self, word, rest, src, base_dir, depth) -> None:
        before = self.active
        super()._directive(word, rest, src, base_dir, depth)
        if src.file is None:
            self.directives[src.line] = (word, before, self.active)

    def _include(self, kind, name, src, base_dir, depth) -> None:
        if src.file is None:
            self.includes.add(src.line)
        super()._include(kind, name, src, base_dir, depth)


def _read(text: str, path: str) -> _Reader:
    pre = _Reader(dict(HARNESS_DEFINES))
    pre.run(text, None, Path(path).parent)
    return pre


def code_key(text: str, path: str) -> tuple[str, int]:
    """What Kamailio reads of TEXT (the preprocessed code lines, in order) and how many
    preprocessor complaints it raises (an unbalanced #!endif reads the same code)."""
    pre = cfg.preprocess(text, defines=HARNESS_DEFINES, path=path)
    code = "\n".join(c.strip() for _, c in pre.lines if c.strip())
    return code, len([n for n in pre.notes if n.level == "warning"])


class _Spans(cfg._Parser):
    """cfg's statement parser, with the token range each statement consumed."""

    def __init__(self, toks):
        super().__init__(toks)
        self.span: dict[int, tuple[int, int]] = {}

    def stmt(self):
        start = self.i
        s = super().stmt()
        if s is not None:
            self.span[id(s)] = (start, self.i - 1)
        return s


@dataclass
class Reduction:
    """A user's config and its removable units; states are sets of unit ids."""

    user_config: UserConfig
    lines: list[str]                      # the original, line k at lines[k - 1]
    free: frozenset[int]                  # lines gone before any unit (see module doc)
    units: list[Unit] = field(default_factory=list)

    @property
    def path(self) -> str:
        return str(self.user_config.path)

    @classmethod
    def of(cls, user_config: UserConfig) -> Reduction:
        lines = user_config.text.split("\n")
        r = cls(user_config, lines, frozenset())
        r.free = frozenset(r._free_lines())
        r.units = r._units()
        return r

    # -- texts --------------------------------------------------------------------

    def removed_lines(self, state) -> set[int]:
        out = set(self.free)
        for u in state:
            out |= self.units[u].lines
        return out

    def _noops(self, state) -> dict[int, str]:
        """Line -> its `;` for the lone statements STATE turns into no-ops (unless gone anyway)."""
        hard = set(self.free)
        for u in state:
            if self.units[u].keep_as is None:
                hard |= self.units[u].lines
        return {self.units[u].line: self.units[u].keep_as for u in state
                if self.units[u].keep_as is not None and self.units[u].line not in hard}

    def kept(self, state) -> list[int]:
        gone, noops = self.removed_lines(state), self._noops(state)
        return [k for k in range(1, len(self.lines) + 1) if k not in gone or k in noops]

    def text(self, state=frozenset()) -> str:
        noops = self._noops(state)
        return "\n".join(noops.get(k, self.lines[k - 1]) for k in self.kept(state))

    def size(self, state=frozenset()) -> int:
        """Lines of the config STATE leaves (a trailing newline is no line)."""
        kept = self.kept(state)
        return len(kept) - (1 if kept and kept[-1] == len(self.lines) and not self.lines[-1] else 0)

    @property
    def original_size(self) -> int:
        return len(self.lines) - (0 if self.lines[-1] else 1)

    def key(self, state) -> tuple[str, int]:
        return code_key(self.text(state), self.path)

    def candidate(self, state) -> UserConfig:
        """STATE's config as the gate loads it (same path: includes resolve the same)."""
        text = self.text(state)
        parsed, _ = cfg.parse(text, defines=HARNESS_DEFINES, path=self.path)
        return dataclasses.replace(self.user_config, text=text, uses_tls="tls" in parsed.modules,
                                   pbx_by_registrar="KAMLEAK_PBX_HOSTPORT" not in text)

    def contract(self, state) -> list:
        """What STATE's config lacks of the gate's contract (user_config.check)."""
        return check(self.text(state), self.path)

    # -- the search's view ----------------------------------------------------------

    def present(self, state) -> list[Unit]:
        gone = self.removed_lines(state)
        out = []
        for u in self.units:
            p = u
            while p is not None and p.id not in state:
                p = self.units[p.parent] if p.parent is not None else None
            if p is None and not u.lines <= gone:
                out.append(u)
        return out

    def tiers(self, state) -> list[list[int]]:
        here = [u for u in self.present(state) if not u.fixed and not u.last]
        top = max((u.tier for u in self.units), default=-1)
        return [[u.id for u in here if u.tier == t] for t in range(top + 1)]

    def last(self, state) -> list[int]:
        """The tm timer modparams present: removed only after the tiers, since without
        them every gate waits tm's defaults (wt_timer 5 s for the early verdict and for a
        clean cell to go, where configs set 1 s)."""
        return [u.id for u in self.present(state) if u.last and not u.fixed]

    # -- free lines -------------------------------------------------------------------

    def _free_lines(self) -> set[int]:
        text = self.user_config.text
        pre = _read(text, self.path)
        scanned = {pre.lines[i][0].line for i in pre.scanned if pre.lines[i][0].file is None}
        code = {pre.lines[i][0].line for i in pre.scanned
                if pre.lines[i][0].file is None and pre.lines[i][1].strip()}
        n = len(self.lines)
        # Lines continuing a directive ("\" at the end) go with it.
        cont = {k + 1 for k in pre.directives if self.lines[k - 1].rstrip().endswith("\\")}
        groups: list[set[int]] = []
        # Each #!ifdef/#!ifndef taken or not, in a region that is read: its directives
        # and the branch not taken go together (innermost chains are inside outer ones).
        stack: list[dict] = []
        for k in sorted(pre.directives):
            word, before, after = pre.directives[k]
            if word in ("ifdef", "ifndef", "ifexp"):
                stack.append({"lines": {k}, "read": before, "exp": word == "ifexp", "from": k,
                              "taken": after, "skip": set()})
            elif word in ("else", "endif") and stack:
                c = stack[-1]
                c["lines"].add(k)
                if not c["taken"]:                 # the branch that ends here is not read
                    c["skip"] |= set(range(c["from"] + 1, k))
                c["from"], c["taken"] = k, after
                if word == "endif":
                    stack.pop()
                    if c["read"] and not c["exp"]:
                        groups.append(c["lines"] | c["skip"])
        groups += [{k} for k in pre.includes]
        # Comments and blank lines read in a region that is read, in runs; other directives alone.
        run: set[int] = set()
        first_line = 1 if self.lines and self.lines[0].strip() in ("#!KAMAILIO", "#!SER") else 0
        for k in range(1, n + 1):
            if k in scanned and k not in code and k != first_line:
                run.add(k)
                continue
            if run:
                groups.append(run)
                run = set()
            if k in pre.directives and pre.directives[k][0] not in _CONDITIONALS \
                    and pre.directives[k][1] and k != first_line:
                groups.append({k} | ({k + 1} if k + 1 in cont else set()))
        if run:
            groups.append(run)
        want = code_key(text, self.path)
        free: set[int] = set()

        def same(extra: set[int]) -> bool:
            gone = free | extra
            t = "\n".join(self.lines[j - 1] for j in range(1, n + 1) if j not in gone)
            return code_key(t, self.path) == want

        # Halves of the groups that keep the code go at once (a define with the #!ifdefs
        # testing it); the rest are swept again until none goes: 68 preprocessor runs on
        # the 1053-line stock config where one run per group took 210.
        def drop(chunk: list[set[int]]) -> list[set[int]]:
            if same(set().union(*chunk)):
                free.update(*chunk)
                return []
            if len(chunk) == 1:
                return chunk
            mid = len(chunk) // 2
            return drop(chunk[:mid]) + drop(chunk[mid:])

        todo = sorted(groups, key=min)
        while todo:
            left = drop(todo)
            if len(left) == len(todo):
                break
            todo = left
        return free

    # -- units ---------------------------------------------------------------------------

    def _units(self) -> list[Unit]:
        base = self.kept(frozenset())
        text = "\n".join(self.lines[k - 1] for k in base)
        pre = cfg.preprocess(text, defines=HARNESS_DEFINES, path=self.path)
        toks = cfg._tokenize(pre.lines)
        b = _Builder(self, toks, base, pre)
        b.build()
        # The contract decides what is fixed: removing it alone breaks the contract.  It
        # reads only lines naming what it asks for (after the defines' substitution), so
        # only those units (and defines) are checked: 30 checks where 283 took 2 s.
        at = {k: ln for ln, k in enumerate(base, 1)}

        def may_break(u: Unit) -> bool:
            words = [self.lines[k - 1] for k in u.lines]
            words += [b.toks[i].val for k in u.lines for i in b.on_line.get(at.get(k), ())]
            return u.kind == "define" or any(_CONTRACT_WORDS.search(w) for w in words)

        return [dataclasses.replace(u, fixed=may_break(u) and bool(
                    check(self._text_without(u.lines), self.path))) for u in b.units]

    def _text_without(self, lines: frozenset[int]) -> str:
        gone = self.free | lines
        return "\n".join(self.lines[k - 1] for k in range(1, len(self.lines) + 1) if k not in gone)


_CALLERS = ("route", "t_on_failure", "t_on_branch", "t_on_reply", "t_on_branch_failure",
            "t_on_local_reply")


class _Builder:
    def __init__(self, red: Reduction, toks, base: list[int], pre):
        self.red, self.toks, self.base = red, toks, base
        self.units: list[Unit] = []
        self.idx = {id(t): i for i, t in enumerate(toks)}
        # Tokens per (base) line of the main file; a line with a token elsewhere
        # (an included file) is never removed.
        self.on_line: dict[int, list[int]] = {}
        for i, t in enumerate(toks):
            if t.src.file is None:
                self.on_line.setdefault(t.src.line, []).append(i)
        self.directive_lines = {ln for ln, raw in enumerate(text_lines(red, base), 1)
                                if cfg._DIRECTIVE.match(raw)}
        self.raw = text_lines(red, base)
        self.route_calls: list[tuple[str, tuple[int, int]]] = []   # (callee, token span)

    # -- spans and lines ----------------------------------------------------------

    def orig(self, base_line: int) -> int:
        return self.base[base_line - 1]

    def lines_of(self, a: int, b: int) -> frozenset[int] | None:
        """The original lines of token span a..b (every line between its first and last),
        or None when a line holds a token outside the span, a token of an included
        file, or the directives inside do not balance."""
        ta, tb = self.toks[a], self.toks[b]
        if ta.src.file is not None or tb.src.file is not None or ta.src.line > tb.src.line:
            return None
        depth = 0
        for ln in range(ta.src.line, tb.src.line + 1):
            if any(not a <= i <= b for i in self.on_line.get(ln, [])):
                return None
            m = cfg._DIRECTIVE.match(self.raw[ln - 1]) if ln in self.directive_lines else None
            if m:
                word = m.group(1)
                depth += word in ("ifdef", "ifndef", "ifexp")
                depth -= word == "endif"
                if depth < 0 or (word == "else" and depth == 0):
                    return None
        if depth:
            return None
        return frozenset(self.orig(ln) for ln in range(ta.src.line, tb.src.line + 1))

    def add(self, kind, a, b, tier, parent=None, where="", lines=None, calls=()) -> int | None:
        lines = lines if lines is not None else self.lines_of(a, b)
        if not lines:
            return None
        first = min(lines)
        label = self.red.lines[first - 1].strip()
        u = Unit(len(self.units), kind, label[:100], first, lines, tier, parent, where,
                 calls=tuple(calls))
        self.units.append(u)
        return u.id

    def close(self, i: int, open_: str, close_: str) -> int:
        depth = 0
        for j in range(i, len(self.toks)):
            t = self.toks[j]
            if t.kind == "op" and t.val == open_:
                depth += 1
            elif t.kind == "op" and t.val == close_:
                depth -= 1
                if depth == 0:
                    return j
        return len(self.toks) - 1

    def is_op(self, i: int, val: str) -> bool:
        return i < len(self.toks) and self.toks[i].kind == "op" and self.toks[i].val == val

    # -- top level --------------------------------------------------------------------

    def build(self) -> None:
        toks, i = self.toks, 0
        modules: dict[str, int] = {}
        modparams: list[tuple[str, int, int]] = []
        routes: list[tuple[str, int | None]] = []   # (name, unit)
        while i < len(toks):
            t = toks[i]
            if t.kind == "id" and t.val in cfg._ROUTE_HEADS and (self.is_op(i + 1, "[") or self.is_op(i + 1, "{")):
                j, name = i + 1, ""
                if self.is_op(j, "["):
                    k = self.close(j, "[", "]")
                    name = "".join(x.val for x in toks[j + 1:k]).strip()
                    j = k + 1
                if not self.is_op(j, "{"):
                    i = j
                    continue
                p = _Spans(toks)
                p.i = j
                body = p.block()
                end = p.i - 1
                kind = cfg._ROUTE_HEADS[t.val]
                label = f"{t.val}[{name}]" if name else t.val
                is_request = (kind == "route" and name in ("", "0", "DEFAULT_ROUTE")) or kind == "request"
                uid = None if is_request else self.add("route", i, end, 0, where=label)
                routes.append((name, uid))
                self.stmts(body, p.span, 1, uid, label)
                i = end + 1
            elif t.kind == "id" and t.val in ("loadmodule", "loadmodulex") and i + 1 < len(toks) \
                    and toks[i + 1].kind == "str":
                end = i + 1 + self.is_op(i + 2, ";")
                name = toks[i + 1].val.rsplit("/", 1)[-1].removesuffix(".so")
                uid = self.add("module", i, end, 0, where=name)
                if uid is not None:
                    modules[name] = uid
                i = end + 1
            elif t.kind == "id" and t.val in ("modparam", "modparamx") and self.is_op(i + 1, "("):
                k = self.close(i + 1, "(", ")")
                end = k + self.is_op(k + 1, ";")
                mod = toks[i + 2].val if toks[i + 2].kind == "str" else ""
                modparams.append((mod, i, end))
                i = end + 1
            else:
                # A global parameter: to the end of its line (brackets balanced).
                end, depth = i, 0
                while end + 1 < len(toks):
                    nxt = toks[end + 1]
                    if nxt.src != toks[end].src and depth <= 0:
                        break
                    if nxt.kind == "op" and nxt.val in "([":
                        depth += 1
                    elif nxt.kind == "op" and nxt.val in ")]":
                        depth -= 1
                    end += 1
                self.add("global", i, end, 0)
                i = end + 1
        # A module goes with its own modparams; those are also units of their own.
        for mod, a, b in modparams:
            names = {x.strip("^$ ") for x in mod.split("|")}
            owner = modules.get(mod) if len(names) == 1 else None
            if owner is not None:
                extra = self.lines_of(a, b)
                if extra:
                    u = self.units[owner]
                    self.units[owner] = dataclasses.replace(u, lines=u.lines | extra)
                uid = self.add("modparam", a, b, 1, parent=owner, where=mod)
                if uid is not None and mod == "tm" and toks[a + 4].kind == "str" \
                        and toks[a + 4].val in timers.NAMES:
                    self.units[uid] = dataclasses.replace(self.units[uid], last=True)
            else:
                self.add("modparam", a, b, 0, where=mod)
        # Defines still read (the free step took the unused ones).
        for ln, raw in enumerate(self.raw, 1):
            m = cfg._DIRECTIVE.match(raw)
            if m and m.group(1) not in _CONDITIONALS and m.group(1) not in ("KAMAILIO", "SER") \
                    and not self.on_line.get(ln):
                self.add_lines("define", frozenset({self.orig(ln)}), 0)
        # A route goes with every call to it.
        for name, uid in routes:
            if uid is None or not name:
                continue
            calls = [span for callee, span in self.route_calls if callee == name]
            # A call that shares its line with other code (`} else if (...) { route(X); }`)
            # stays: 6.0.1's kamailio -c takes a call to a route the config does not have (run:
            # `route(FOO);` alone), the gate judges what it does, and the call may go with its
            # branch in another unit.
            extra = [x for x in (self.lines_of(*s) for s in calls) if x is not None]
            u = self.units[uid]
            self.units[uid] = dataclasses.replace(u, lines=u.lines.union(*extra) if extra else u.lines)
        self.units = [u for u in self.units if u.lines]
        renum = {u.id: k for k, u in enumerate(self.units)}
        self.units = [dataclasses.replace(u, id=renum[u.id],
                                          parent=renum.get(u.parent) if u.parent is not None else None)
                      for u in self.units]

    def add_lines(self, kind, lines, tier, parent=None, where="") -> int:
        label = self.red.lines[min(lines) - 1].strip()
        self.units.append(Unit(len(self.units), kind, label[:100], min(lines), lines, tier, parent, where))
        return len(self.units) - 1

    # -- statements -----------------------------------------------------------------------

    def stmts(self, body, span, tier, parent, where, outer=None) -> None:
        """The statements of a braced block.  Kamailio refuses an empty block (`{ }`: a
        syntax error to 5.8.5's, 6.0.1's and 6.1.5's `kamailio -c`): a lone statement goes
        with what holds it (OUTER: the token span that goes instead when a call in it goes
        with its route)."""
        for st in body:
            a, b = span[id(st)]
            if len(body) == 1:
                self.stmt(st, a, b, span, tier, parent, where, own=False, outer=outer)
                self.noop(st, a, b, tier, parent, where)
            else:
                self.stmt(st, a, b, span, tier, parent, where)

    def noop(self, s, a, b, tier, parent, where) -> None:
        """A block's lone statement cannot go (an empty block is a syntax error) but can turn
        into `;`, which Kamailio takes: so `if (!t_relay()) { sl_reply_error(); }` can be
        tried without its reply.  Simple statements only (a call, an assignment, exit...)."""
        lines = self.lines_of(a, b) if s.kind not in ("if", "while", "switch", "block") else None
        if not lines or parent is None:
            return
        first = min(lines)
        indent = re.match(r"\s*", self.red.lines[first - 1]).group(0)
        uid = self.add("noop", a, b, tier, parent, where, lines=lines,
                       calls=tuple(c.name for c in s.calls()))
        if uid is not None:
            self.units[uid] = dataclasses.replace(self.units[uid], keep_as=indent + ";")

    def stmt(self, s, a, b, span, tier, parent, where, own=True, outer=None) -> None:
        """S's units: itself (unless OWN is False: its removal is its parent's, whose token
        span is OUTER) and what it holds."""
        at = outer or (a, b)
        for c in s.calls():
            if c.name in _CALLERS and c.literal(0):
                self.route_calls.append((c.literal(0).strip('"'), at))
        calls = tuple(c.name for c in s.calls())
        uid = self.add("stmt", a, b, tier, parent, where, calls=calls) if own else parent
        if not own and uid is not None and calls:
            # What goes with its holder is the holder's call too (a cause names it).
            u = self.units[uid]
            self.units[uid] = dataclasses.replace(u, calls=u.calls + calls)
        if s.kind in ("if", "while"):
            c = self.close(a + 1, "(", ")")
            then_braced = self.is_op(c + 1, "{")
            if then_braced:
                then_end = self.close(c + 1, "{", "}")
                self.stmts(s.body, span, tier + 1, uid, where, outer=at)
                if not s.orelse:
                    # Unwrapped: the head line and the closing brace go, the body stays.
                    head, tail = self.lines_of(a, c + 1), self.lines_of(then_end, then_end)
                    inner = self.lines_of(c + 2, then_end - 1) if then_end - 1 >= c + 2 else None
                    if head and tail and inner and not head & inner and not tail & inner:
                        self.add_lines("unwrap", head | tail, tier + 1, uid, where)
            else:
                then_end = span[id(s.body[-1])][1] if s.body else c
                for st in s.body:                  # the lone body goes with its `if`
                    self.stmt(st, *span[id(st)], span, tier + 1, uid, where, own=False, outer=at)
            if s.orelse:
                e = then_end + 1                   # the `else`
                lines = self.lines_of(e, b)
                if lines is None and then_braced and self.is_op(b, "}"):
                    lines = self.lines_of(then_end, b - 1)   # "} else {": the last "}" closes then
                branch = self.add_lines("branch", lines, tier + 1, uid, where) if lines else uid
                nested = s.orelse[0] if len(s.orelse) == 1 and not self.is_op(e + 1, "{") else None
                if nested is not None:
                    # `else if (...)` or `else stmt;`: removing it is removing the branch.
                    self.stmt(nested, *span[id(nested)], span, tier + 1, branch, where, own=False,
                              outer=at if branch == uid else None)
                else:
                    self.stmts(s.orelse, span, tier + 2, branch, where)
        elif s.kind in ("switch", "block"):
            self.stmts(s.body, span, tier + 1, uid, where)


def text_lines(red: Reduction, base: list[int]) -> list[str]:
    return [red.lines[k - 1] for k in base]


