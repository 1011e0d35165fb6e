"""Kamailio's shm accounting per allocation site (`mod.stats all shm`).

Kamailio builds with DBG_SR_MEMORY (Debian's do) keep, for every module,
the bytes still allocated from each `function(line)`.  That is the
instrument for leaks no `tm.list` shows: a buffer lost while the cell
itself was freed (Kamailio PR 3403), or a connection record nobody
releases (issue 3236).  `core.shmmem` cannot see those: it moves by tens
of KB between runs that leak nothing.

The answer is a flat list: "Module: tm", {site: bytes, ..., "Total": n},
"", "Module: sl", ... (objects arrive as `rpc.Pairs`, lists of pairs).
"""

from __future__ import annotations

from typing import Any

Sites = dict[str, int]     # "tm: build_uac_req(1618)" -> bytes


def per_module(result: Any) -> dict[str, Sites]:
    """The one reader of Kamailio's per-module accounting answers (`mod.stats`,
    `mod.mem_stats`): ["Module: tm", [[site, bytes]..., ["Total", n]], ...] ->
    {"tm": {site: bytes, ..., "Total": n}}."""
    out: dict[str, Sites] = {}
    module = ""
    for item in result if isinstance(result, list) else []:
        if isinstance(item, str):
            if item.startswith("Module: "):
                module = item[len("Module: "):].strip()
            continue
        if isinstance(item, dict):
            item = list(item.items())
        if not isinstance(item, list):
            continue
        for entry in item:
            if isinstance(entry, (list, tuple)) and len(entry) == 2:
                try:
                    out.setdefault(module, {})[str(entry[0])] = int(entry[1])
                except (TypeError, ValueError):
                    continue
    return out


def parse_mod_stats(result: Any) -> Sites:
    """`mod.stats all shm` as {"tm: build_uac_req(1618)": bytes}, totals left out."""
    return {f"{module}: {site}": n for module, sites in per_module(result).items()
            for site, n in sites.items() if site != "Total"}


def module_totals(result: Any) -> dict[str, int]:
    """{module: its `Total`} from a `mod.mem_stats` (or `mod.stats`) answer."""
    return {module: sites["Total"] for module, sites in per_module(result).items() if "Total" in sites}


def growth(before: Sites, after: Sites) -> Sites:
    """Sites whose allocated bytes changed, by how much (new sites count from 0)."""
    out = {}
    for site in set(before) | set(after):
        d = after.get(site, 0) - before.get(site, 0)
        if d:
            out[site] = d
    return out


def snapshot(rpc) -> Sites:
    """The shm sites now; a build that keeps no per-site accounting is an error.

    Without it (Kamailio built without DBG_SR_MEMORY) every site list is
    empty and a memory oracle would call every run clean.
    """
    from kamleak.harness.errors import ScenarioError

    sites = parse_mod_stats(rpc.call("mod.stats", "all", "shm"))
    if not sites:
        raise ScenarioError("this Kamailio keeps no shm accounting per allocation site "
                            "(`mod.stats all shm` lists nothing), so a memory verdict is impossible",
                            "use a build with memory debugging (DBG_SR_MEMORY, on in Debian's "
                            "and upstream's packages)")
    return sites


def process_key(entry: dict) -> str:
    """A process as two Kamailios on one config both name it: its index and
    description, addresses left out (`udp receiver child=0 sock=*`)."""
    import re
    desc = re.sub(r"\[?[\d.:a-fA-F]*\d\]?:\d+", "*", str(entry.get("desc", "")))
    return f"{entry.get('entry', '?')}: {desc}"


def parse_pkg_stats(result: Any) -> dict[str, int]:
    """`pkg.stats` (one struct per process: entry, pid, rank, used, real_used,
    ...) as {process_key: used bytes}: what each process holds privately."""
    from kamleak.harness.probes.rpc import _plain
    out = {}
    for p in _plain(result) if isinstance(result, list) else []:
        if isinstance(p, dict) and "used" in p:
            try:
                out[process_key(p)] = int(p["used"])
            except (TypeError, ValueError):
                continue
    return out
