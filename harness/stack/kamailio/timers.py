"""The tm timers a Kamailio config really runs with, and where each number came from.

Read from the config Kamailio is given (the rendered one: kamleak's header
plus the harness's body or the user's config), through the one config
preprocessor (`kamleak.harness.stack.kamailio.cfg.parse`: defines, `#!ifdef`, includes relative to
the config's directory, `#!substdef`/`#!subst`).  `modparam("tm", NAME, V)`
sets a timer (the last one wins, as Kamailio applies them in order); where the
config is silent, tm's compiled-in default applies.

tm's defaults (ms), `src/modules/tm/config.h`: FR_TIME_OUT 30000,
INV_FR_TIME_OUT 120000, WT_TIME_OUT 5000, MAX_INV_LIFETIME 180000,
MAX_NONINV_LIFETIME 32000.  Identical at the tags 5.8.0, 6.0.0, 6.1.0 and on
master 38711a3e78 (2026-08-21); `git log -S<macro> 5.8.0..master --
src/modules/tm` finds no commit changing any of them.  Versions before 5.8.0
are older than the upstream history kamleak was checked against: their
default is used but its source says so.

Not modelled: per-transaction changes from the script (`t_set_fr()`,
`t_set_max_lifetime()`), `cfg.set` at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kamleak.harness.errors import UsageError
from kamleak.harness.stack.kamailio.cfg import parse, parse_version

NAMES = ("fr_timer", "fr_inv_timer", "wt_timer", "max_inv_lifetime", "max_noninv_lifetime")
DEFAULTS_FILE = "src/modules/tm/config.h"
DEFAULTS = {"fr_timer": 30000, "fr_inv_timer": 120000, "wt_timer": 5000,
            "max_inv_lifetime": 180000, "max_noninv_lifetime": 32000}
CHECKED_FROM = (5, 8, 0)     # oldest upstream tag the defaults were read at


@dataclass(frozen=True)
class Timer:
    ms: int
    source: str         # "kamailio.cfg:128 modparam", "tm default (src/modules/tm/config.h)"

    def as_dict(self) -> dict:
        return {"ms": self.ms, "source": self.source}


def default_source(version: str | None) -> str:
    """Where a default comes from, honest about versions outside the checked history."""
    try:
        v = parse_version(version) if version else None
    except ValueError:
        v = None
    if v is not None and v < CHECKED_FROM:
        return (f"tm default ({DEFAULTS_FILE} as of 5.8.0; {v[0]}.{v[1]}.{v[2]} is older than "
                "the upstream history checked)")
    return f"tm default ({DEFAULTS_FILE})"


def extract(text: str, *, path: str, version: str | None = None,
            defines: dict[str, str] | None = None, origin=None) -> dict[str, Timer]:
    """Every tm timer of NAMES for the config TEXT (read as if it were at PATH).

    ORIGIN(line) -> "file:line" cites a line of TEXT itself (the rendered
    config maps it back to the user's file); included files cite themselves.
    """
    cfg, _ = parse(text, defines=defines, path=path)
    base = Path(path).parent
    out: dict[str, Timer] = {}
    for name in NAMES:
        found = cfg.modparam("tm", name)
        if found is None:
            out[name] = Timer(DEFAULTS[name], default_source(version))
            continue
        toks, src = found
        if src.file is None:
            where = origin(src.line) if origin else f"{Path(path).name}:{src.line}"
        else:
            f = Path(src.file)
            where = f"{f.relative_to(base) if f.is_relative_to(base) else f}:{src.line}"
        raw = "".join(t.val for t in toks).strip()
        if not raw.isdigit():
            raise UsageError(f'{where}: modparam("tm", "{name}", {raw or "?"}) is not a number '
                             "of milliseconds kamleak can read",
                             "use an integer (or a #!define / #!substdef of one) so the oracle's "
                             "deadline follows it")
        out[name] = Timer(int(raw), f"{where} modparam")
    return out


def from_config(config, version: str | None = None) -> dict[str, Timer]:
    """The timers of a `KamailioConfig` as rendered (header + body)."""
    header = config.header()
    header_lines = header.count("\n")
    user = config.user_config
    if user is not None:
        name, path = user.path.name, str(user.path)
        dropped = len(user.text.split("\n")) - len(user.body().split("\n"))   # its #!KAMAILIO
    else:
        from kamleak.harness.stack.kamailio.config import BODY
        name, path, dropped = BODY.name, str(BODY), 0

    def origin(line: int) -> str:
        if line <= header_lines:
            return f"kamleak header:{line}"
        return f"{name}:{line - header_lines + dropped}"

    return extract(config.render(), path=path, version=version, origin=origin)
