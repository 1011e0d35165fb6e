"""Human-readable renderings of what happened (SIP traces, for now)."""

from __future__ import annotations

import datetime


def _ts(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


def first_line(entry) -> str:
    msg = getattr(entry, "message", None)
    if msg is not None:
        if getattr(msg, "is_request", False):
            return f"{msg.method} {msg.uri}"
        return f"{msg.status} {msg.reason}"
    raw = getattr(entry, "raw", b"") or b""
    return raw.split(b"\r\n", 1)[0].decode("utf-8", "replace")


def format_trace(entries, full: bool = True) -> str:
    """Messages in order: a ladder line per message, then the message text."""
    out = []
    for e in entries:
        arrow = "-->" if e.direction == "out" else "<--"
        head = f"{_ts(e.ts)} {e.transport.upper()} {e.local} {arrow} {e.remote}  {first_line(e)}"
        out.append(head)
        if full:
            raw = e.raw.decode("utf-8", "replace") if isinstance(e.raw, bytes) else str(e.raw)
            out.append("    " + raw.replace("\r\n", "\n").rstrip("\n").replace("\n", "\n    "))
    return "\n".join(out) + ("\n" if out else "")
