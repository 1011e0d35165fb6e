"""What happened, in text: SIP traces (the UA's, the PBX's, a pcap's), ladders, side by side."""

from __future__ import annotations

import datetime

from kamleak.harness.progress import clip


def _ts(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


def run_label(variant: str, user_config=None) -> str:
    """What a verdict names as its variant: on the user's own config the config
    carries the trigger, so the config's name (plus any harness defines asked for)."""
    if user_config is None:
        return variant
    name = f"config {user_config.path.name}"
    return name if variant in ("", "none") else f"{name} + {variant}"


def first_line(entry) -> str:
    msg = getattr(entry, "message", None)
    if msg is not None:
        if getattr(msg, "is_request", False):
            return f"{msg.method} {msg.uri}"
        return f"{msg.status} {msg.reason}"
    raw = getattr(entry, "raw", b"") or b""
    return raw.split(b"\r\n", 1)[0].decode("utf-8", "replace")




# ---------------------------------------------------------------------------
# The call ladder: both legs around Kamailio, in time order.

def ladder(ua_trace, pbx_messages, call_id: str | None = None, events=(), local=()) -> list[str]:
    """One line per SIP message: time, who -> who, first line, and a note.

    The WebSocket leg comes from the UA's own trace, the UDP leg from
    Asterisk's log; both clocks are the host's (the containers share it).
    """
    from kamleak.harness.probes.pbx_trace import stamp_seconds

    rows = []
    for e in ua_trace:
        msg = e.message
        if call_id and msg is not None and msg.call_id != call_id:
            continue
        who = "UA ──────────▶ Kamailio" if e.direction == "out" else "UA ◀────────── Kamailio"
        rows.append((e.ts, f"{e.transport.upper():4}", who, first_line(e), ""))
    for m in pbx_messages:
        msg = m.message
        if msg is None or (call_id and msg.call_id != call_id):
            continue
        t = stamp_seconds(m.stamp) or 0.0
        who = ("           Kamailio ◀────────── Asterisk" if m.direction == "out"
               else "           Kamailio ──────────▶ Asterisk")
        note = ""
        if not msg.is_request:
            mark = msg.reason.rstrip()
            note = ("  ← stateless" if mark.endswith("/SL)") else
                    "  ← stateful" if mark.endswith("/TM)") else "")
        rows.append((t, "UDP ", who, f"{msg.method} {msg.uri}" if msg.is_request
                     else f"{msg.status} {msg.reason}", note))
    for d, msg in local:
        if call_id and msg.call_id != call_id:
            continue
        who = f"  {d.src[0]}:{d.src[1]} ──▶ {d.dst[0]}:{d.dst[1]}"
        rows.append((d.ts, "UDP ", who, f"{msg.method} {msg.uri}" if msg.is_request
                     else f"{msg.status} {msg.reason}", "  (captured)"))
    for t, label in events:
        rows.append((t, "    ", f"  ┄┄ {label}", "", ""))
    rows.sort(key=lambda r: r[0])
    return [f"{_ts(t)}  {tr} {who:42} {clip(text, 70)}{note}".rstrip() for t, tr, who, text, note in rows]


def kamailio_lines(log: str, call_id: str, limit: int = 12) -> list[str]:
    """Kamailio's log lines about this call (its log_prefix carries the Call-ID)."""
    keep = [ln.strip() for ln in log.splitlines()
            if call_id in ln or "WebSocket connection from" in ln]
    return keep[-limit:]


def stats_delta(before: dict, after: dict, keys=("current", "waiting", "created", "freed",
                                                   "rpl_generated", "rpl_sent")) -> str:
    return ", ".join(f"{k} {before.get(k, 0)}→{after.get(k, 0)}" for k in keys)


def early_lines(v) -> list[str]:
    """How a transaction verdict's LEAK was reached: when the orphan was proven,
    by which rule, on what evidence, and whether the lifetime bound was waited
    out (kamleak.harness.judging.orphan).  None for a cell that left tm.list."""
    if not v.leaked:
        return []
    bound = f"bound {v.deadline:.1f} s"
    if v.orphan:
        return [f"orphan proven {v.orphan['at']:.1f} s after the {v.method} ({v.orphan['rule']}):",
                f"  {v.orphan['evidence']}",
                f"{bound} waited out too: the cell was still there, the two agree"
                if v.confirmed else f"{bound} not waited out: the proof ended the watch"]
    # The watch's own words: "not proven orphaned before the bound (...)" or the fallback's reason.
    return [f"{bound} waited out: {v.early or 'not proven orphaned'}"]


def fate(v) -> str:
    """The BYE transaction's fate in a few words: `orphaned 1.0 s after the BYE (bound 7.0 s)`."""
    if v.leaked and v.orphan:
        waited = " waited out" if v.confirmed else ""
        return f"orphaned {v.orphan['at']:.1f} s after the {v.method} (bound {v.deadline:.1f} s{waited})"
    if v.leaked:
        return f"still in tm.list after {v.watched_for:.1f} s (bound {v.deadline:.1f} s)"
    return f"gone after {v.gone_after:.1f} s" if v.gone_after is not None else "never seen"


def decided_by(v) -> str:
    """What ended the watch: the orphan proof (its rule), the bound, or the cell leaving."""
    if v.leaked and v.orphan:
        return f"orphan proof ({v.orphan['rule']})" + (", bound agrees" if v.confirmed else "")
    if v.leaked:
        return "bound waited out"
    return "cell left tm.list" if v.gone_after is not None else "cell never seen"


def side_by_side(left_title: str, left, right_title: str, right) -> list[str]:
    """Two verdicts as a small comparison table."""
    def reply(v):
        return ", ".join(r.describe() for r in v.replies) or "-"

    def stat(v, k):
        return f"{v.stats_before.get(k, 0)} → {v.stats_after.get(k, 0)}"

    def live(v):
        d = (v.stats_after.get("created", 0) - v.stats_after.get("freed", 0)) - \
            (v.stats_before.get("created", 0) - v.stats_before.get("freed", 0))
        return f"{d:+d}"

    rows = [("", left_title, right_title),
            ("reply to the BYE", reply(left), reply(right)),
            ("BYE transaction", fate(left), fate(right)),
            ("tm.stats current", stat(left, "current"), stat(right, "current")),
            ("created - freed", live(left), live(right)),
            ("decided by", decided_by(left), decided_by(right)),
            ("verdict", left.outcome.upper(), right.outcome.upper())]
    w1 = max(len(r[1]) for r in rows) + 3
    return [f"  {a:18} {b:{w1}} {c}" for a, b, c in rows]


def captured_sip(pcaps=(), skip_ports=()) -> list:
    """(datagram, SipMessage) for the SIP over UDP in the captures, leaving out
    datagrams to or from `skip_ports` (Asterisk's: its own log has those)."""
    from kamleak.harness.probes.capture import udp_datagrams
    from kamleak.harness.sip.message import SipMessage, SipParseError

    out = []
    for pcap in pcaps:
        if not isinstance(pcap, (bytes, bytearray)):
            continue  # the note saying why there is no capture
        for d in udp_datagrams(bytes(pcap)):
            if d.src[1] in skip_ports or d.dst[1] in skip_ports or not d.payload.strip():
                continue
            try:
                out.append((d, SipMessage.parse(d.payload)))
            except (SipParseError, ValueError):
                continue  # keepalives and other non-SIP
    return out


def sip_trace(ua_traces, pbx_log: str, pcaps=(), pbx_port: int | None = None) -> str:
    """The SIP trace of a test: the ladder of both legs, then every message in full.

    WS/WSS messages come from the UA's own trace, UDP ones to/from Asterisk
    from Asterisk's log, and the other UDP ones (the requests Kamailio sends
    by itself, e.g. uac_req_send()'s MESSAGE or pua's PUBLISH, and their
    replies) from the loopback capture; all are stamped with the host's clock.
    """
    from kamleak.harness.probes.pbx_trace import parse_pjsip_log, stamp_seconds

    pbx_msgs = parse_pjsip_log(pbx_log) if pbx_log else []
    local = captured_sip(pcaps, skip_ports={pbx_port} if pbx_port else set())
    entries = [e for trace in ua_traces for e in trace]
    out = ["# ladder (UA = the WebSocket client, Asterisk = the PBX, "
           "captured = other UDP on loopback, from the pcap)"]
    out += ladder(entries, pbx_msgs, local=local)
    out.append("")
    out.append("# messages")
    full = []
    for e in entries:
        arrow = "UA -> Kamailio" if e.direction == "out" else "Kamailio -> UA"
        raw = e.raw.decode("utf-8", "replace") if isinstance(e.raw, bytes) else str(e.raw)
        full.append((e.ts, f"{_ts(e.ts)} {e.transport.upper()} {arrow} ({e.local} / {e.remote})", raw))
    for m in pbx_msgs:
        arrow = "Asterisk -> Kamailio" if m.direction == "out" else "Kamailio -> Asterisk"
        t = stamp_seconds(m.stamp) or 0.0
        full.append((t, f"{_ts(t)} UDP {arrow} (Asterisk peer {m.peer})",
                     m.raw.decode("utf-8", "replace")))
    for d, _ in local:
        full.append((d.ts, f"{_ts(d.ts)} UDP {d.src[0]}:{d.src[1]} -> {d.dst[0]}:{d.dst[1]} "
                           f"(captured)", d.payload.decode("utf-8", "replace")))
    for _, head, raw in sorted(full, key=lambda x: x[0]):
        out.append(head)
        out.append("    " + raw.replace("\r\n", "\n").rstrip("\n").replace("\n", "\n    "))
    return "\n".join(out) + "\n"
