"""What Kamailio still holds for a call besides its transactions: its dialog
(`dlg.list`, the dialog module) and its registrar contacts (`ul.dump`, usrloc).

Each is read only where the config loads the module that serves it: Kamailio
answers an RPC no module registered with error 500 "Method Not Found" (jsonrpcs)
or "command dlg.list not found" (ctl), and the readers then return None (the
check has nothing to read), never an empty list (which would say "nothing held")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kamleak.harness.probes.rpc import Pairs, RPCCallError, _plain

# The dialog module's states (dlg_hash.h DLG_STATE_*).
DLG_STATES = {1: "unconfirmed", 2: "early", 3: "confirmed, not ACKed", 4: "confirmed", 5: "deleted"}
DLG_DELETED = 5


def not_served(exc: RPCCallError) -> bool:
    """Whether EXC is Kamailio's answer to an RPC no loaded module registered."""
    msg = exc.message.lower()
    return "method not found" in msg or (msg.startswith("command ") and msg.endswith(" not found"))


def served_call(rpc, method: str, *params) -> Any | None:
    """METHOD's result, or None when no loaded module serves it."""
    try:
        return rpc.call(method, *params)
    except RPCCallError as exc:
        if not_served(exc):
            return None
        raise


def _int(v) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


@dataclass(frozen=True)
class Dialog:
    """One dialog as `dlg.list` shows it (dialog.c internal_rpc_print_dlg):
    timestamps are Kamailio's wall clock in seconds; `timeout` the absolute
    time its dialog timer fires, 0 without one."""

    callid: str
    h_entry: int
    h_id: int
    ref: int
    state: int
    init_ts: int
    start_ts: int
    end_ts: int
    timeout: int
    lifetime: int

    @property
    def key(self) -> str:
        return f"{self.h_entry}:{self.h_id}"

    @property
    def state_name(self) -> str:
        return DLG_STATES.get(self.state, f"state {self.state}")

    def describe(self) -> str:
        return (f"dialog {self.key} Call-ID {self.callid}: {self.state_name} (state {self.state}), "
                f"ref {self.ref}, init_ts {self.init_ts}, end_ts {self.end_ts}, timeout {self.timeout}")


def parse_dlg_list(result: Any) -> list[Dialog]:
    out = []
    for d in _plain(result) if isinstance(result, list) else []:
        if not isinstance(d, dict):
            continue
        out.append(Dialog(callid=str(d.get("call-id", "")), h_entry=_int(d.get("h_entry")),
                          h_id=_int(d.get("h_id")), ref=_int(d.get("ref")), state=_int(d.get("state")),
                          init_ts=_int(d.get("init_ts")), start_ts=_int(d.get("start_ts")),
                          end_ts=_int(d.get("end_ts")), timeout=_int(d.get("timeout")),
                          lifetime=_int(d.get("lifetime"))))
    return out


def dialogs(rpc) -> list[Dialog] | None:
    """The dialogs Kamailio holds; None without the dialog module."""
    result = served_call(rpc, "dlg.list")
    return None if result is None else parse_dlg_list(result)


@dataclass(frozen=True)
class Contact:
    """One registrar contact as `ul.dump` shows it (usrloc ul_rpc.c): `expires`
    the seconds it has left at the dump, or None when ul.dump says
    "permanent", "deleted" or "expired" (`expires_text`)."""

    aor: str
    address: str
    callid: str
    expires: int | None
    expires_text: str
    received: str
    tcpconn_id: int

    def describe(self) -> str:
        left = f"{self.expires} s left" if self.expires is not None else self.expires_text
        return f"contact {self.address} of AoR {self.aor} (Call-ID {self.callid}, {left})"


def _get(obj, key):
    return obj.get(key) if isinstance(obj, (Pairs, dict)) else None


def _items(value) -> list:
    """An array as jsonrpcs writes it ([{"Domain": {...}}, ...]), or as ctl does: a struct
    (binrpc_run.c rpc_struct_add writes '[' as one) whose named members, repeated names
    kept, are the array's one-key objects."""
    if isinstance(value, (Pairs, dict)):
        return [{k: v} for k, v in value.items()] if isinstance(value, dict) else \
            [Pairs([(k, v)]) for k, v in value]
    return value if isinstance(value, list) else []


def parse_ul_dump(result: Any) -> list[Contact]:
    """{"Domains": [{"Domain": {"AoRs": [{"Info": {"AoR", "Contacts": [{"Contact": {...}}]}}]}}]}
    over either transport (`_items`)."""
    out = []
    if isinstance(result, list) and not isinstance(result, Pairs) and len(result) == 1:
        result = result[0]
    for dom in _items(_get(result, "Domains")):
        for rec in _items(_get(_get(dom, "Domain"), "AoRs")):
            info = _plain(_get(rec, "Info") or {})
            for c in _items(_get(_get(rec, "Info"), "Contacts")):
                c = _plain(_get(c, "Contact") or {})
                exp = c.get("Expires")
                number = isinstance(exp, int) or (isinstance(exp, str) and exp.lstrip("-").isdigit())
                out.append(Contact(aor=str(info.get("AoR", "")), address=str(c.get("Address", "")),
                                   callid=str(c.get("Call-ID", "")),
                                   expires=int(exp) if number else None,
                                   expires_text=str(exp), received=str(c.get("Received", "")),
                                   tcpconn_id=_int(c.get("Tcpconn-Id"))))
    return out


def contacts(rpc) -> list[Contact] | None:
    """Every contact in usrloc's tables; None without usrloc."""
    result = served_call(rpc, "ul.dump")
    return None if result is None else parse_ul_dump(result)
