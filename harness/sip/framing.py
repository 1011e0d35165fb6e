"""SIP on a plain socket: a TCP byte stream cut into messages by Content-Length
(RFC 3261 18.3), or UDP datagrams, one message each (18.2).

The same face as websocket.WebSocket's data path (`message`, `receive`,
`outgoing`), so the UA (harness/sip/ua.py) reads and writes all its
transports alike: `receive(data)` returns ("message", payload, 0) events.
"""

from __future__ import annotations

import re

# Content-Length or its compact form `l` (RFC 3261 7.3.3), at a line start.
_CONTENT_LENGTH = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*(\d+)", re.IGNORECASE)
MAX_HEAD = 65536


class FramingError(Exception):
    """The peer's byte stream is not SIP messages (no header end, a bad length)."""


class StreamFraming:
    """SIP over TCP: bytes in, whole messages out."""

    __slots__ = ("_buf", "_out")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._out = bytearray()

    def message(self, payload: bytes) -> bytes:
        return payload                    # a SIP message is its own frame on a stream

    def outgoing(self) -> bytes:
        """What the protocol owes the peer: the CRLF pong to a CRLFCRLF ping (RFC 5626 4.4.1)."""
        out, self._out = bytes(self._out), bytearray()
        return out

    def receive(self, data: bytes) -> list:
        buf = self._buf
        buf += data
        events = []
        while True:
            start = 0
            while buf[start:start + 2] == b"\r\n":       # keep-alives between messages
                if buf[start:start + 4] == b"\r\n\r\n":
                    self._out += b"\r\n"
                    start += 4
                else:
                    start += 2
            if start:
                del buf[:start]
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise FramingError(f"no end of a SIP header in {MAX_HEAD} bytes")
                return events
            m = _CONTENT_LENGTH.search(buf, 0, end + 2)
            # RFC 3261 18.3: mandatory on a stream; a message without it has no body.
            size = end + 4 + (int(m.group(1)) if m else 0)
            if len(buf) < size:
                return events
            events.append(("message", bytes(buf[:size]), 0))
            del buf[:size]


class DatagramFraming:
    """SIP over UDP: a datagram is a message."""

    __slots__ = ()

    def message(self, payload: bytes) -> bytes:
        return payload

    def outgoing(self) -> bytes:
        return b""

    def receive(self, data: bytes) -> list:
        return [("message", bytes(data), 0)]
