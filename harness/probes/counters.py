"""Kamailio's counters: the one reader of tm.stats, core.shmmem and per-module shm totals.

`tm_and_shm()` is the scenarios' sample (the plot's names); `Counters.read()`
is the soak's fuller row (tm's reply counters, shm used/real_used/fragments
and, where the build has `mod.mem_stats`, tm's and websocket's shm).
"""

from __future__ import annotations

from kamleak.harness.errors import RPCError
from kamleak.harness.probes import memstats


def tm(rpc) -> dict:
    """tm.stats: cells `current`/`waiting`, `created`/`freed`, and the reply counters soak keeps."""
    s = rpc.tm_stats()
    return {"current": s.get("current", 0), "waiting": s.get("waiting", 0),
            "created": s.get("created", 0), "freed": s.get("freed", 0),
            "rpl_generated": s.get("rpl_generated", 0), "5xx": s.get("5xx", 0)}


def shm(rpc) -> dict:
    """core.shmmem: used, real_used (used plus the allocator's overhead) and fragments."""
    s = rpc.shmmem()
    return {"shm_used": s.get("used", 0), "shm_real_used": s.get("real_used", 0),
            "shm_fragments": s.get("fragments", 0)}


def tm_and_shm(rpc) -> dict:
    """One sample of tm.stats and core.shmmem, in the plot's names (`shm_used` is real_used)."""
    t, s = tm(rpc), rpc.shmmem()
    return {"current": t["current"], "waiting": t["waiting"], "created": t["created"],
            "freed": t["freed"], "shm_used": s.get("real_used", s.get("used", 0))}


class Counters:
    """tm.stats, core.shmmem and, where the build has it (memdbg), `mod.mem_stats`
    for tm and websocket (the latter keeps a closed connection's 64 KiB frame buffer
    until its rm_delay_interval, 5 s by default, has passed)."""

    def __init__(self, rpc):
        self.rpc = rpc
        self.mod_ok: dict[str, bool] = {}   # False once the build refused mod.mem_stats

    def tm(self) -> dict:
        return tm(self.rpc)

    def mod_shm(self, module: str) -> int | None:
        if self.mod_ok.get(module) is False:
            return None
        try:
            res = self.rpc.call("mod.mem_stats", module, "shm")
        except RPCError:
            self.mod_ok[module] = False
            return None
        # mod.mem_stats (alias mod.stats) answers "Module: tm" and a struct ending in Total
        total = memstats.module_totals(res).get(module)
        self.mod_ok[module] = total is not None
        return total

    def tm_shm(self) -> int | None:
        return self.mod_shm("tm")

    def all_modules(self) -> dict[str, int] | None:
        """{module: shm bytes} from `mod.mem_stats all shm` (None if the build lacks it)."""
        if self.mod_ok.get("all") is False:
            return None
        try:
            res = self.rpc.call("mod.mem_stats", "all", "shm")
        except RPCError:
            self.mod_ok["all"] = False
            return None
        out = memstats.module_totals(res)
        self.mod_ok["all"] = bool(out)
        return out or None

    def read(self, modules: bool = False) -> dict:
        out = {**tm(self.rpc), **shm(self.rpc)}
        per_module = self.all_modules() if modules else None
        tm_shm = per_module.get("tm") if per_module else self.mod_shm("tm")
        if tm_shm is not None:
            out["tm_shm"] = tm_shm
        ws_shm = per_module.get("websocket") if per_module else self.mod_shm("websocket")
        if ws_shm is not None:
            out["ws_shm"] = ws_shm
            out["shm_other"] = out["shm_real_used"] - ws_shm
        if per_module:
            out["module_shm"] = per_module
        return out
