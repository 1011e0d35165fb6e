"""The Kamailio config reader: preprocessor, tokens, routes and modparams.

Read as Kamailio reads it: comments, `#!define`/`#!ifdef`/`#!subst`,
`include_file`/`import_file` relative to the including file, define values
substituted in code; then route blocks and their statements.  What it
understands and where it guesses is listed in `kamleak lint`'s docstring
(harness/tools/lint.py), its main user; the gate's contract check
(user_config), the tm timers (timers) and source builds read configs here too.
"""

from __future__ import annotations

import bisect
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

# ---------------------------------------------------------------------------
# Findings


@dataclass(frozen=True)
class Finding:
    """One finding; `line` is in `path` (None: the linted config itself)."""

    line: int
    level: str      # "leak" | "error" | "warning" | "info"
    code: str       # e.g. "4140-leak"
    message: str
    advice: tuple[str, ...] = ()
    path: str | None = None

    def format(self, default_path: str) -> str:
        head = f"{self.path or default_path}:{self.line}: {self.level}: {self.message}"
        return "\n".join([head] + [f"    advice: {a}" for a in self.advice])


def parse_version(version: str | None) -> tuple[int, int, int] | None:
    """"5.6.3", "6.1", "kamailio 5.8.5 (x86_64/linux)" -> (5, 6, 3); None -> None."""
    if version is None:
        return None
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if not m:
        raise ValueError(f"not a Kamailio version: {version!r} (use e.g. 5.8.5)")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


# ---------------------------------------------------------------------------
# Preprocessing: comments, #! directives, includes, define substitution


@dataclass(frozen=True)
class Src:
    file: str | None   # None: the main config
    line: int

    def cite(self) -> str:
        return f"{self.file}:{self.line}" if self.file else f"line {self.line}"


_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIRECTIVE = re.compile(r"^[ \t]*(?:#!|!!)([A-Za-z_]+)(.*)$")
_INCLUDE = re.compile(r"^[ \t]*(?:#!|!!)?(include_file|import_file)[ \t]+\"([^\"]+)\"")
_MAX_INCLUDE_DEPTH = 10


class Preprocessor:
    """Turns config text into code lines, each tagged with its origin."""

    def __init__(self, defines: dict[str, str]):
        self.defines = dict(defines)
        self.lines: list[tuple[Src, str]] = []
        self.notes: list[Finding] = []
        # Scanner state carried across lines (and included files).
        self.in_string: str | None = None
        self.comment_depth = 0
        self.stack: list[tuple[bool, bool]] = []   # (branch active, parent active)
        self.substs: list[tuple[re.Pattern, str, bool]] = []   # #!subst/#!substdef rules

    @property
    def active(self) -> bool:
        return all(a for a, _ in self.stack)

    def run(self, text: str, file: str | None, base_dir: Path | None, depth: int = 0) -> None:
        raw = text.split("\n")
        i = 0
        while i < len(raw):
            line, lineno = raw[i].rstrip("\r"), i + 1
            i += 1
            src = Src(file, lineno)
            if self.in_string is None and self.comment_depth == 0:
                m = _DIRECTIVE.match(line)
                if m:
                    word, rest = m.group(1), m.group(2)
                    # A define's value may continue on lines ending in "\".
                    while rest.endswith("\\") and i < len(raw) and \
                            word in ("define", "def", "trydef", "trydefine", "redefine", "redef"):
                        rest = rest[:-1] + "\n" + raw[i].rstrip("\r")
                        self.lines.append((src, ""))
                        i += 1
                    self._directive(word, rest, src, base_dir, depth)
                    self.lines.append((src, ""))
                    continue
            if not self.active:
                self.lines.append((src, ""))
                continue
            if self.in_string is None and self.comment_depth == 0:
                m = _INCLUDE.match(line)
                if m:
                    self.lines.append((src, ""))
                    self._include(m.group(1), m.group(2), src, base_dir, depth)
                    continue
            self.lines.append((src, self._scan(line)))

    # -- directives --------------------------------------------------------

    def _directive(self, word: str, rest: str, src: Src, base_dir, depth) -> None:
        arg = rest.strip()
        name = _ID.match(arg).group(0) if _ID.match(arg) else ""
        if word in ("ifdef", "ifndef"):
            parent = self.active
            hit = name in self.defines
            self.stack.append(((hit if word == "ifdef" else not hit), parent))
            return
        if word == "ifexp":
            self.stack.append((True, self.active))
            if self.active:
                self.notes.append(Finding(src.line, "info", "preprocessor",
                                          "#!ifexp is not evaluated: its branch is assumed true",
                                          path=src.file))
            return
        if word == "else":
            if self.stack:
                a, parent = self.stack.pop()
                self.stack.append((not a, parent))
            else:
                self.notes.append(Finding(src.line, "warning", "preprocessor",
                                          "#!else without #!ifdef", path=src.file))
            return
        if word == "endif":
            if self.stack:
                self.stack.pop()
            else:
                self.notes.append(Finding(src.line, "warning", "preprocessor",
                                          "#!endif without #!ifdef", path=src.file))
            return
        if not self.active:
            return
        if word in ("define", "def", "trydef", "trydefine", "redefine", "redef"):
            if not name:
                return
            if word in ("trydef", "trydefine") and name in self.defines:
                return
            value = arg[len(name):].strip()
            self.defines[name] = _strip_comments(value)
        elif word == "undef":
            self.defines.pop(name, None)
        elif word in ("subst", "substdef", "substdefs"):
            # Kamailio (core/ppcfg.c): the rule rewrites string literals; substdef
            # also defines ID as its replacement (substdefs: quoted).
            m = re.match(r"\"(.)((?:\\.|(?!\1).)+)\1((?:\\.|(?!\1).)*)\1(\w*)\"", arg)
            if m:
                sep, pat, repl, flags = m.groups()

                def unesc(x: str) -> str:
                    return x.replace("\\" + sep, sep)

                try:
                    rx = re.compile(unesc(pat), re.I if "i" in flags else 0)
                except re.error:
                    rx = None
                if rx is not None:
                    self.substs.append((rx, unesc(repl), "g" in flags))
                if word != "subst" and _ID.fullmatch(pat):
                    self.defines[pat] = f'"{unesc(repl)}"' if word == "substdefs" \
                        else unesc(repl)
        elif word in ("defenv", "defenvs", "trydefenv", "trydefenvs"):
            m = re.match(r"(\w+)(?:\s*=\s*(\w+))?", arg)
            if m:
                env = m.group(2) or m.group(1)
                if env in os.environ or not word.startswith("try"):
                    self.defines.setdefault(m.group(1), "")
        elif word in ("include_file", "import_file"):
            m = re.match(r"\"([^\"]+)\"", arg)
            if m:
                self._include(word, m.group(1), src, base_dir, depth)
        # KAMAILIO, SER, ALL, MAXCOMPAT, subst: nothing to do here.

    def _include(self, kind: str, name: str, src: Src, base_dir: Path | None, depth: int) -> None:
        target = Path(name)
        if not target.is_absolute():
            target = (base_dir or Path(".")) / target
        if depth >= _MAX_INCLUDE_DEPTH:
            self.notes.append(Finding(src.line, "warning", "include",
                                      f"{kind} \"{name}\": too many nested includes, not followed",
                                      path=src.file))
            return
        try:
            text = target.read_text(errors="replace")
        except OSError:
            level = "warning" if kind == "include_file" else "info"
            self.notes.append(Finding(
                src.line, level, "include",
                f"{kind} \"{name}\" not found relative to the config: its content is not analyzed",
                path=src.file))
            return
        self.run(text, str(target), target.parent, depth + 1)

    # -- code scanning -----------------------------------------------------

    def _scan(self, line: str) -> str:
        out: list[str] = []
        opened = None
        i, n = 0, len(line)
        while i < n:
            c = line[i]
            if self.comment_depth:
                if line.startswith("*/", i):
                    self.comment_depth -= 1
                    i += 2
                    out.append(" ")
                elif line.startswith("/*", i):
                    self.comment_depth += 1
                    i += 2
                else:
                    i += 1
                continue
            if self.in_string:
                j = i
                while j < n:
                    if line[j] == "\\" and self.in_string == '"':
                        j += 2
                        continue
                    if line[j] == self.in_string:
                        break
                    j += 1
                if j < n:
                    out.append(line[i:j + 1])
                    if opened is not None:      # opened on this line: #!subst rules apply
                        out[opened:] = [self._subst("".join(out[opened:]))]
                    self.in_string = None
                    i = j + 1
                else:
                    out.append(line[i:])
                    i = n
                continue
            if c in "\"'":
                self.in_string = c
                opened = len(out)
                out.append(c)
                i += 1
            elif c == "#" or line.startswith("//", i):
                break
            elif line.startswith("/*", i):
                self.comment_depth = 1
                i += 2
            elif c == "$":
                j = _pvar_end(line, i)
                out.append(line[i:j])
                i = j
            elif (c.isascii() and c.isalpha()) or c == "_":    # 'é' is no name start for Kamailio
                m = _ID.match(line, i)
                word = m.group(0)
                out.append(self._expand(word))
                i = m.end()
            else:
                out.append(c)
                i += 1
        if self.in_string:
            out.append("\n")   # keep line structure; the string continues
        return "".join(out)

    def _subst(self, literal: str) -> str:
        """A string literal (with its quotes) after the #!subst rules, in order."""
        if not self.substs or len(literal) < 2 or literal[0] != '"':
            return literal
        body = literal[1:-1]
        for rx, repl, every in self.substs:
            body = rx.sub(lambda _m, r=repl: r, body, count=0 if every else 1)
        return f'"{body}"'

    def _expand(self, word: str, depth: int = 0) -> str:
        value = self.defines.get(word)
        if not value or depth > 10:
            return word
        return _ID.sub(lambda m: self._expand(m.group(0), depth + 1), value)


def _pvar_end(line: str, i: int) -> int:
    """End of a `$name`, `$name(...)` or `$(...)` pseudo-variable starting at i."""
    j = i + 1
    n = len(line)
    if j < n and line[j] == "(":
        return _paren_end(line, j)
    m = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*").match(line, j)
    if not m:
        return j
    j = m.end()
    if j < n and line[j] == "(":
        return _paren_end(line, j)
    return j


def _paren_end(line: str, j: int) -> int:
    depth = 0
    while j < len(line):
        if line[j] == "(":
            depth += 1
        elif line[j] == ")":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return j


def _strip_comments(value: str) -> str:
    out, q = [], None
    for k, c in enumerate(value):
        if q:
            q = None if c == q else q
        elif c in "\"'":
            q = c
        elif c == "#" or value.startswith("//", k):
            break
        out.append(c)
    return "".join(out).strip()


# ---------------------------------------------------------------------------
# Tokens and statements


@dataclass(frozen=True)
class Tok:
    kind: str   # "id", "str", "num", "pvar", "op"
    val: str
    src: Src


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:\\.|[^"\\])*"|'[^']*')
  | (?P<pvar>\$)
  | (?P<num>0x[0-9a-fA-F]+|\d+)
  | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|=~|>=|<=|&&|\|\||\+=|<<|>>|.)
""", re.VERBOSE | re.DOTALL)


def _tokenize(lines: list[tuple[Src, str]]) -> list[Tok]:
    text = "\n".join(code for _, code in lines)
    starts, pos = [], 0
    for _, code in lines:
        starts.append(pos)
        pos += len(code) + 1
    toks: list[Tok] = []
    i, n = 0, len(text)
    while i < n:
        m = _TOKEN.match(text, i)
        kind = m.lastgroup
        if kind == "pvar":
            j = _pvar_end(text, i)
            val = text[i:j]
        else:
            j = m.end()
            val = m.group(0)
        if kind != "ws":
            src = lines[bisect.bisect_right(starts, i) - 1][0]
            if kind == "str":
                val = val[1:-1]
            toks.append(Tok(kind, val, src))
        i = j
    return toks


@dataclass
class Call:
    name: str
    src: Src
    args: list[list[Tok]]

    def literal(self, k: int) -> str | None:
        """Argument k as a literal name/string, or None if it is dynamic."""
        if k >= len(self.args) or not self.args[k]:
            return None
        a = self.args[k]
        if all(t.kind in ("id", "str", "num") for t in a):
            return "".join(t.val for t in a)
        return None


@dataclass
class Stmt:
    kind: str                     # "if", "while", "switch", "block", "simple"
    src: Src
    toks: list[Tok] = field(default_factory=list)   # condition / expression / statement
    body: list[Stmt] = field(default_factory=list)   # then / loop / switch / block
    orelse: list[Stmt] = field(default_factory=list)

    def calls(self) -> list[Call]:
        """Calls in this statement's own tokens (not nested statements)."""
        return calls_in(self.toks)

    def walk(self):
        yield self
        for s in self.body + self.orelse:
            yield from s.walk()


_KEYWORDS = {"if", "else", "while", "switch", "case", "default", "break", "return", "exit",
             "drop", "not", "and", "or"}


def calls_in(toks: list[Tok]) -> list[Call]:
    out = []
    for k, t in enumerate(toks):
        if t.kind != "id" or t.val in _KEYWORDS:
            continue
        if k + 1 < len(toks) and toks[k + 1].val == "(" and toks[k + 1].kind == "op":
            args, depth, cur = [], 0, []
            for u in toks[k + 2:]:
                if u.kind == "op" and u.val == "(":
                    depth += 1
                elif u.kind == "op" and u.val == ")":
                    if depth == 0:
                        break
                    depth -= 1
                if u.kind == "op" and u.val == "," and depth == 0:
                    args.append(cur)
                    cur = []
                    continue
                cur.append(u)
            if cur or args:
                args.append(cur)
            out.append(Call(t.val, t.src, args))
    # A bare `name;` statement calls a function without parameters.
    if len(toks) == 1 and toks[0].kind == "id" and toks[0].val not in _KEYWORDS:
        out.append(Call(toks[0].val, toks[0].src, []))
    return out


class _Parser:
    def __init__(self, toks: list[Tok]):
        self.t = toks
        self.i = 0

    def peek(self, k: int = 0) -> Tok | None:
        j = self.i + k
        return self.t[j] if j < len(self.t) else None

    def is_op(self, val: str, k: int = 0) -> bool:
        t = self.peek(k)
        return t is not None and t.kind == "op" and t.val == val

    def balanced(self, open_: str, close: str) -> list[Tok]:
        """Tokens between an opening bracket at self.i and its match."""
        assert self.is_op(open_)
        self.i += 1
        depth, out = 0, []
        while self.peek() is not None:
            t = self.peek()
            if t.kind == "op" and t.val == open_:
                depth += 1
            elif t.kind == "op" and t.val == close:
                if depth == 0:
                    self.i += 1
                    return out
                depth -= 1
            out.append(t)
            self.i += 1
        return out

    def block(self) -> list[Stmt]:
        """Statements of a `{ ... }` block starting at self.i."""
        self.i += 1   # "{"
        out = []
        while self.peek() is not None and not self.is_op("}"):
            s = self.stmt()
            if s is not None:
                out.append(s)
        self.i += 1   # "}"
        return out

    def stmt(self) -> Stmt | None:
        t = self.peek()
        if t.kind == "op" and t.val == ";":
            self.i += 1
            return None
        if t.kind == "op" and t.val == "{":
            return Stmt("block", t.src, body=self.block())
        if t.kind == "id" and t.val in ("if", "while") and self.is_op("(", 1):
            self.i += 1
            cond = self.balanced("(", ")")
            body = self._one()
            orelse = []
            if t.val == "if" and self.peek() is not None and self.peek().kind == "id" \
                    and self.peek().val == "else":
                self.i += 1
                orelse = self._one()
            return Stmt(t.val, t.src, cond, body, orelse)
        if t.kind == "id" and t.val == "switch" and self.is_op("(", 1):
            self.i += 1
            expr = self.balanced("(", ")")
            body: list[Stmt] = []
            if self.is_op("{"):
                self.i += 1
                while self.peek() is not None and not self.is_op("}"):
                    u = self.peek()
                    if u.kind == "id" and u.val in ("case", "default"):
                        while self.peek() is not None and not self.is_op(":"):
                            self.i += 1
                        self.i += 1
                        continue
                    s = self.stmt()
                    if s is not None:
                        body.append(s)
                self.i += 1
            return Stmt("switch", t.src, expr, body)
        # A simple statement: up to ";" (or a "}" that closes the block).
        toks, depth = [], 0
        while self.peek() is not None:
            u = self.peek()
            if u.kind == "op":
                if u.val in "([":
                    depth += 1
                elif u.val in ")]":
                    depth -= 1
                elif u.val == ";" and depth <= 0:
                    self.i += 1
                    break
                elif u.val == "}" and depth <= 0:
                    break
                elif u.val == "{" and depth <= 0:
                    break
            toks.append(u)
            self.i += 1
        if not toks and self.is_op("{"):
            return Stmt("block", t.src, body=self.block())
        return Stmt("simple", t.src, toks)

    def _one(self) -> list[Stmt]:
        if self.peek() is None:
            return []
        if self.is_op("{"):
            return self.block()
        s = self.stmt()
        return [s] if s is not None else []


# ---------------------------------------------------------------------------
# The config model


_ROUTE_HEADS = {
    "request_route": "request", "route": "route", "failure_route": "failure",
    "branch_route": "branch", "onreply_route": "onreply", "reply_route": "onreply",
    "onsend_route": "onsend", "event_route": "event",
}


@dataclass
class Route:
    kind: str
    name: str
    src: Src
    body: list[Stmt]

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.name

    @property
    def label(self) -> str:
        if self.kind == "request":
            return "request_route"
        if self.kind == "route":
            return f"route[{self.name}]"
        return f"{self.kind}_route[{self.name}]" if self.name else f"{self.kind}_route"

    def stmts(self):
        for s in self.body:
            yield from s.walk()

    def calls(self):
        for s in self.stmts():
            yield from s.calls()


@dataclass
class Config:
    modules: dict[str, Src] = field(default_factory=dict)
    modparams: list[tuple[str, str, list[Tok], Src]] = field(default_factory=list)
    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    cfgengine: tuple[str, Src] | None = None

    def modparam(self, module: str, param: str) -> tuple[list[Tok], Src] | None:
        found = None
        for mods, p, value, src in self.modparams:
            names = {x.strip("^$ ") for x in mods.split("|")}
            if module in names and p == param:
                found = (value, src)   # the last one wins
        return found


def _parse_config(toks: list[Tok]) -> Config:
    cfg = Config()
    p = _Parser(toks)
    while p.peek() is not None:
        t = p.peek()
        if t.kind != "id":
            p.i += 1
            continue
        if t.val in ("loadmodule", "loadmodulex") and p.peek(1) and p.peek(1).kind == "str":
            name = p.peek(1).val.rsplit("/", 1)[-1]
            name = name[:-3] if name.endswith(".so") else name
            cfg.modules.setdefault(name, t.src)
            p.i += 2
        elif t.val in ("modparam", "modparamx") and p.is_op("(", 1):
            p.i += 1
            args = _split_args(p.balanced("(", ")"))
            if len(args) >= 3 and args[0] and args[1]:
                cfg.modparams.append(("".join(x.val for x in args[0]),
                                      "".join(x.val for x in args[1]), args[2], t.src))
        elif t.val == "cfgengine":
            j = 1
            while p.peek(j) is not None and p.peek(j).kind == "op" and p.peek(j).val == "=":
                j += 1
            if p.peek(j) is not None and p.peek(j).kind in ("str", "id"):
                cfg.cfgengine = (p.peek(j).val, t.src)
            p.i += j + 1
        elif t.val in _ROUTE_HEADS and (p.is_op("[", 1) or p.is_op("{", 1)):
            kind = _ROUTE_HEADS[t.val]
            p.i += 1
            name = ""
            if p.is_op("["):
                name = "".join(x.val for x in p.balanced("[", "]")).strip()
            if not p.is_op("{"):
                continue
            body = p.block()
            if kind == "route" and name in ("", "0", "DEFAULT_ROUTE"):
                kind, name = "request", ""
            route = Route(kind, name, t.src, body)
            if route.key in cfg.routes:
                cfg.routes[route.key].body.extend(body)
            else:
                cfg.routes[route.key] = route
        else:
            p.i += 1
    return cfg


def _split_args(toks: list[Tok]) -> list[list[Tok]]:
    args, cur, depth = [], [], 0
    for t in toks:
        if t.kind == "op" and t.val in "([":
            depth += 1
        elif t.kind == "op" and t.val in ")]":
            depth -= 1
        if t.kind == "op" and t.val == "," and depth == 0:
            args.append(cur)
            cur = []
        else:
            cur.append(t)
    args.append(cur)
    return args


def tested_defines(text: str) -> set[str]:
    """The names a config tests with `#!ifdef`/`#!ifndef` (`!!` as well), in any branch."""
    found = set()
    for line in text.splitlines():
        m = _DIRECTIVE.match(line)
        if m and m.group(1) in ("ifdef", "ifndef"):
            name = _ID.match(m.group(2).strip())
            if name:
                found.add(name.group(0))
    return found


# Over this a config is likely the wrong file (a log, a dump): said before the slow parse.
SANE_CONFIG_BYTES = 10 * 2**20


def read_config(path: str) -> str:
    """The text of the config at PATH, as `lint` and `gate` both read it.

    Kamailio reads bytes: a config in UTF-8 or in Latin-1 (an accented comment)
    is valid to it, so undecodable UTF-8 falls back to Latin-1 (lossless). A
    file with NUL bytes is no config (a binary passed by mistake).
    """
    from kamleak.harness.errors import UsageError
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the Kamailio config {path}: {exc.strerror or exc}",
                         "pass the path of your kamailio.cfg") from None
    if b"\0" in data[:65536]:
        raise UsageError(f"{path} is not a Kamailio config (a binary file: it contains NUL bytes)",
                         "pass the path of your kamailio.cfg") from None
    if len(data) > SANE_CONFIG_BYTES:
        from kamleak.harness import progress
        progress.say(f"{path} is {len(data) / 2**20:.0f} MB, where a Kamailio config is rarely over "
                     "1 MB: reading it takes a while; is it the file you meant?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")

def preprocess(text: str, *, defines: dict[str, str] | None = None,
               path: str = "kamailio.cfg") -> Preprocessor:
    """TEXT preprocessed (read as if at PATH): `.lines` and the `.notes` about it."""
    pre = Preprocessor(dict(defines or {}))
    pre.run(text, None, Path(path).parent)
    if pre.stack:
        pre.notes.append(Finding(len(text.split("\n")), "warning", "preprocessor",
                                 f"{len(pre.stack)} #!ifdef/#!ifndef without #!endif"))
    if pre.in_string or pre.comment_depth:
        pre.notes.append(Finding(len(text.split("\n")), "warning", "syntax",
                                 "unterminated string or /* comment at the end of the config"))
    return pre


def parse_lines(lines: list[tuple[Src, str]]) -> Config:
    return _parse_config(_tokenize(lines))


def parse(text: str, *, defines: dict[str, str] | None = None,
          path: str = "kamailio.cfg") -> tuple[Config, list[tuple[Src, str]]]:
    """The parsed config and its preprocessed lines."""
    pre = preprocess(text, defines=defines, path=path)
    return parse_lines(pre.lines), pre.lines
