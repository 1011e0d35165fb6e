"""How long Kamailio may legitimately hold a call's dialog, its client's WebSocket
connection and a registrar contact: past these bounds nothing in Kamailio will
ever release the object, so one still listed is a leak.  Read in upstream's
source at master (38711a3e; the same functions in Debian's 5.6.3, 6.0.1 and 6.1.5,
whose dialog.so carries the clean run's "too old" notices):

* **dialog** (modules/dialog): `dlg_clean_run()` (dlg_hash.c:219-262) runs every
  `dlg_clean_timer` = 90 s (dialog.c:158, a fixed interval, its own "Dialog Clean
  Timer" process, dialog.c:831) and destroys, whatever their ref count, a dialog
  in state <= early whose `init_ts < now - early_timeout` and a deleted one whose
  `end_ts < now - end_timeout` (modparams, 300 s each, dialog.c:113-115).  So a
  deleted dialog is gone by end_ts + end_timeout + 1 + 90 s, an unconfirmed or
  early one by init_ts + early_timeout + 1 + 90 s.  A confirmed dialog lives until
  its dialog timer (`timeout` in dlg.list; default_timeout 12 h): no bound an
  explore campaign can wait out, so it is never judged.
* **WebSocket connection** (modules/websocket): with keepalive_mechanism 1 or 2
  (PING/PONG, the default) the keepalive process runs every keepalive_interval
  (1 s) and, for a connection idle longer than keepalive_timeout (180 s), sends a
  PING; at the next check one still idle and awaiting its PONG is closed
  (ws_frame.c:795-840 ws_keepalive()): 2 x keepalive_timeout + keepalive_interval.
  With mechanism 0 or 3 only the TCP layer's tcp_connection_lifetime ends an idle
  connection (+8 s of its timer's slack, measured by the gh3236 story).  Either
  way plus rm_delay_interval (5 s).
* **contact** (modules/usrloc): an expired contact is removed by usrloc's timer,
  every timer_interval (60 s, usrloc_mod.c:203/396); a registered contact lives,
  rightly, until its expiry, even when its connection died.  Without a timer
  (timer_interval 0) nothing bounds it.

Each bound gets the oracle's margin (x1.25 on the timer intervals, + 2 s).
"""

from __future__ import annotations

from dataclasses import dataclass

from kamleak.harness.probes.state import DLG_DELETED, Contact, Dialog

MARGIN_FACTOR = 1.25
MARGIN_S = 2.0

DLG_CLEAN_TIMER_S = 90
DEFAULTS = {("dialog", "early_timeout"): 300, ("dialog", "end_timeout"): 300,
            ("websocket", "keepalive_mechanism"): 1, ("websocket", "keepalive_timeout"): 180,
            ("websocket", "keepalive_interval"): 1, ("websocket", "rm_delay_interval"): 5,
            ("usrloc", "timer_interval"): 60}


@dataclass(frozen=True)
class Bounds:
    """The parameters the bounds rest on, each with where it was read."""

    values: dict          # (module, param) -> int
    sources: dict         # (module, param) -> "kamailio.cfg modparam" | "default" | "cfg.get ..."
    tcp_lifetime: int | None = None     # s, core.tcp_options connection_lifetime

    def get(self, module: str, param: str) -> int:
        return self.values.get((module, param), DEFAULTS[(module, param)])

    def cite(self, module: str, param: str) -> str:
        return f"{param} {self.get(module, param)} s ({self.sources.get((module, param), 'default')})"

    def dialog(self, d: Dialog) -> tuple[float | None, str]:
        """(wall-clock time by which D is gone, why) or (None, why it has no bound)."""
        clean = DLG_CLEAN_TIMER_S * MARGIN_FACTOR + MARGIN_S
        if d.state == DLG_DELETED and d.end_ts > 0:
            end = self.get("dialog", "end_timeout")
            return (d.end_ts + end + 1 + clean,
                    f"deleted at end_ts {d.end_ts}: the dialog module's clean run destroys it by "
                    f"end_ts + {self.cite('dialog', 'end_timeout')} + its {DLG_CLEAN_TIMER_S} s "
                    f"interval x{MARGIN_FACTOR:g} + {MARGIN_S:g} s")
        if d.state <= 2 and d.init_ts > 0:
            early = self.get("dialog", "early_timeout")
            return (d.init_ts + early + 1 + clean,
                    f"{d.state_name} since init_ts {d.init_ts}: the clean run destroys it by init_ts "
                    f"+ {self.cite('dialog', 'early_timeout')} + its {DLG_CLEAN_TIMER_S} s interval "
                    f"x{MARGIN_FACTOR:g} + {MARGIN_S:g} s")
        if d.state == DLG_DELETED:
            return None, "deleted without an end_ts: the clean run never looks at it, no bound"
        return None, (f"{d.state_name}: it lives until its dialog timer (timeout {d.timeout}), "
                      "longer than a campaign waits")

    def ws(self) -> tuple[float | None, str]:
        """(seconds after the client ended the connection by which Kamailio has dropped it, why)."""
        mech = self.get("websocket", "keepalive_mechanism")
        rm = self.get("websocket", "rm_delay_interval")
        if mech in (1, 2):
            ka, iv = self.get("websocket", "keepalive_timeout"), self.get("websocket", "keepalive_interval")
            return (2 * ka + iv * MARGIN_FACTOR + rm + MARGIN_S,
                    f"keepalive_mechanism {mech}: closed by 2 x {self.cite('websocket', 'keepalive_timeout')}"
                    f" + {self.cite('websocket', 'keepalive_interval')} x{MARGIN_FACTOR:g} + "
                    f"{self.cite('websocket', 'rm_delay_interval')} + {MARGIN_S:g} s")
        if self.tcp_lifetime is None:
            return None, f"keepalive_mechanism {mech} and tcp_connection_lifetime unknown: no bound"
        return (self.tcp_lifetime + 8 + rm + MARGIN_S,
                f"keepalive_mechanism {mech}: only tcp_connection_lifetime {self.tcp_lifetime} s "
                f"(+8 s timer slack) + {self.cite('websocket', 'rm_delay_interval')} + {MARGIN_S:g} s "
                "ends it")

    def contact(self, c: Contact) -> tuple[float | None, str]:
        """(seconds after the ul.dump read by which C is gone, why) or (None, why not)."""
        timer = self.get("usrloc", "timer_interval")
        if timer <= 0:
            return None, "usrloc timer_interval 0: no timer removes expired contacts"
        if c.expires is None and c.expires_text != "expired":
            return None, f"Expires {c.expires_text}: no expiry bounds it"
        left = c.expires or 0
        return (left + timer * MARGIN_FACTOR + MARGIN_S,
                f"{left} s left to its expiry, then usrloc's timer ({self.cite('usrloc', 'timer_interval')}"
                f" x{MARGIN_FACTOR:g}) + {MARGIN_S:g} s")


def read_bounds(kamailio) -> Bounds:
    """The bounds' parameters for the config KAMAILIO runs (its modparams, read
    with the one config reader; keepalive_timeout as Kamailio runs it)."""
    from kamleak.harness.errors import RPCError
    from kamleak.harness.stack.kamailio import cfg

    values, sources = {}, {}
    try:
        user = kamailio.config.user_config
        parsed, _ = cfg.parse(kamailio.config.render(),
                              path=str(user.path) if user is not None else "kamailio.cfg")
    except Exception:  # noqa: BLE001 - unreadable config: the defaults, said so
        parsed = None
    for (module, param) in DEFAULTS:
        found = parsed.modparam(module, param) if parsed is not None else None
        raw = "".join(t.val for t in found[0]).strip() if found else ""
        if raw.isdigit():
            values[(module, param)], sources[(module, param)] = int(raw), "modparam"
    try:
        values[("websocket", "keepalive_timeout")] = int(kamailio.rpc.cfg_get("websocket", "keepalive_timeout"))
        sources[("websocket", "keepalive_timeout")] = "cfg.get"
    except (RPCError, TypeError, ValueError):
        pass
    lifetime = None
    try:
        opts = kamailio.rpc.call("core.tcp_options")
        opts = opts[0] if isinstance(opts, list) and opts else opts
        lifetime = int(opts.get("connection_lifetime"))
    except (RPCError, TypeError, ValueError, AttributeError):
        pass
    return Bounds(values, sources, lifetime)
