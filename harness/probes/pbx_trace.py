"""The PBX side of the SIP trace, read from Asterisk's res_pjsip_logger output.

With `debug = yes` Asterisk logs every SIP message it sends or receives, with
the peer address, e.g.::

    <--- Received SIP response (512 bytes) from UDP:127.0.0.1:5060 --->
    SIP/2.0 500 Server Internal Error (1/SL)
    ...

This is the evidence of what Kamailio answered upstream (code, reason and
Kamailio's "(N/SL)"/"(N/TM)" mark).  It is read after the fact, never used
to decide *when* something happened: timing comes from polling Kamailio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kamleak.harness.sip.message import SipMessage, SipParseError

_HEAD = re.compile(
    r"<--- (?P<what>Received|Transmitting) SIP (?P<kind>request|response) \((?P<size>\d+) bytes\) "
    r"(?:from|to) (?P<proto>\w+):(?P<peer>[^ ]+) --->")
_STAMP = re.compile(r"^\[(?P<ts>[^\]]+)\]")


@dataclass
class PbxMessage:
    direction: str      # "in" (Asterisk received) or "out" (Asterisk sent)
    peer: str           # "127.0.0.1:5060"
    transport: str      # "udp"
    stamp: str          # Asterisk's timestamp of the log line, if any
    message: SipMessage | None
    raw: bytes
    index: int          # position in the log


def parse_pjsip_log(text: str) -> list[PbxMessage]:
    """Every SIP message in an Asterisk log, in log order."""
    lines = text.splitlines()
    out: list[PbxMessage] = []
    i = 0
    while i < len(lines):
        m = _HEAD.search(lines[i])
        if not m:
            i += 1
            continue
        stamp = _STAMP.match(lines[i])
        j = i + 1
        body: list[str] = []
        # The message follows verbatim until the next log record: a line that
        # starts with a "[timestamp]" or another logger header.
        while j < len(lines) and not _STAMP.match(lines[j]) and not _HEAD.search(lines[j]):
            body.append(lines[j])
            j += 1
        raw = "\r\n".join(body).strip("\r\n")
        head, sep, payload = raw.partition("\r\n\r\n")
        raw_bytes = (head + "\r\n\r\n" + payload).encode() if sep else (raw + "\r\n\r\n").encode()
        try:
            msg = SipMessage.parse(raw_bytes)
        except (SipParseError, ValueError):
            msg = _lenient(raw_bytes)
        out.append(PbxMessage(direction="in" if m.group("what") == "Received" else "out",
                              peer=m.group("peer"), transport=m.group("proto").lower(),
                              stamp=stamp.group("ts") if stamp else "", message=msg,
                              raw=raw_bytes, index=len(out)))
        i = j
    return out


def _lenient(raw: bytes) -> SipMessage | None:
    """Retry with Content-Length recomputed (log lines may lose trailing CRLF)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    fixed = re.sub(rb"(?im)^(Content-Length|l)\s*:\s*\d+", b"Content-Length: %d" % len(body), head)
    try:
        return SipMessage.parse(fixed + b"\r\n\r\n" + body)
    except (SipParseError, ValueError):
        return None


def stamp_seconds(stamp: str) -> float | None:
    """Asterisk's `%F %T.%3q` log stamp as epoch seconds (None if absent)."""
    import datetime
    try:
        return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()
    except ValueError:
        return None


def responses_to(messages: list[PbxMessage], call_id: str, method: str) -> list[PbxMessage]:
    """Final responses Asterisk received for its METHOD request in CALL_ID."""
    found = []
    for pm in messages:
        msg = pm.message
        if pm.direction != "in" or msg is None or msg.is_request:
            continue
        if msg.call_id == call_id and msg.cseq[1] == method and msg.status >= 200:
            found.append(pm)
    return found


def requests_sent(messages: list[PbxMessage], call_id: str, method: str) -> list[PbxMessage]:
    return [pm for pm in messages if pm.direction == "out" and pm.message is not None
            and pm.message.is_request and pm.message.method == method
            and pm.message.call_id == call_id]


@dataclass(frozen=True)
class FinalReply:
    """A final reply Asterisk received to a request it sent."""

    code: int
    reason: str
    at: float           # s after Asterisk sent the request, on Asterisk's clock (0.0: no stamp)


def final_replies(messages: list[PbxMessage], call_id: str, method: str = "BYE") -> list[FinalReply]:
    """Kamailio's final replies to Asterisk's METHOD in CALL_ID: the one reader of
    them (the scenarios' verdict evidence and soak's per-call outcome)."""
    sent = requests_sent(messages, call_id, method)
    t_sent = stamp_seconds(sent[0].stamp) if sent else None
    out = []
    for m in responses_to(messages, call_id, method):
        t = stamp_seconds(m.stamp)
        at = round(t - t_sent, 3) if t is not None and t_sent is not None else 0.0
        out.append(FinalReply(m.message.status, m.message.reason, at))
    return out
