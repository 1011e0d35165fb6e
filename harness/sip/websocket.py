"""The WebSocket codec (RFC 6455): one side of a connection, bytes in, events and bytes out.

wsproto does the handshake (the HTTP upgrade, the accept key, the
subprotocol), control frames (ping/pong, the close handshake) and
fragmented messages.  A complete unfragmented data frame, the SIP message
of nearly every frame, is cut out and built here instead: soak moves
thousands a second and wsproto's general path costs ~20 us a frame, as
much as the rest of a call's handling.  Frames reach wsproto whole, so its
state is always between frames when this fast path runs.

Used by the UA (harness/sip/ua.py), soak's driver and the tests' server.
"""

from __future__ import annotations

import os
import random
import struct

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA
NORMAL_CLOSURE = 1000


class WebSocketError(Exception):
    """The peer broke the protocol (a bad handshake or frame)."""


class WebSocket:
    """A client (masks what it sends) or server side of one connection, without I/O.

    `receive(data)` returns events, tuples whose first item says what:
      ("open", subprotocol)            client: the server accepted the upgrade
      ("refused", status)              client: it did not
      ("request", subprotocols, headers)   server: a client asks to upgrade (`accept()` it)
      ("message", payload, opcode)     a whole data message (payload bytes)
      ("close", code, reason)          the peer's close frame (the reply is queued)
      ("pong", payload)                the answer to our ping (a ping is answered here)
    Replies the protocol owes (pong, the close reply) pile up for `outgoing()`.
    """

    __slots__ = ("client", "_ws", "_head", "_buf", "_frag", "_parts", "_out", "_mask", "open",
                 "subprotocol", "closed")

    def __init__(self, client: bool = True):
        self.client = client
        self._ws = WSConnection(ConnectionType.CLIENT if client else ConnectionType.SERVER)
        self._head = bytearray()          # handshake bytes until the blank line
        self._buf = bytearray()           # frame bytes past the handshake
        self._frag = False                # a fragmented message is under way (wsproto holds it)
        self._parts: list = []
        self._out = bytearray()
        # Mask keys need not be secret for a test client; os.urandom per frame cost ~1 us.
        self._mask = random.Random(os.urandom(16)).getrandbits
        self.open = False
        self.subprotocol: str | None = None
        self.closed = False               # the close handshake was started or answered

    # -- the handshake ------------------------------------------------------
    def connect(self, host: str, target: str = "/", subprotocols=("sip",), extra_headers=()) -> bytes:
        """The client's upgrade request (with an Origin, as browsers send)."""
        headers = [(k.encode(), v.encode()) for k, v in extra_headers] or \
            [(b"Origin", f"http://{host.split(':')[0]}".encode())]
        return self._ws.send(Request(host=host, target=target, subprotocols=list(subprotocols),
                                     extra_headers=headers))

    def accept(self, subprotocol: str | None = "sip") -> bytes:
        """The server's 101 (SUBPROTOCOL None: no Sec-WebSocket-Protocol header)."""
        data = self._ws.send(AcceptConnection(subprotocol=subprotocol))
        self.open, self.subprotocol = True, subprotocol
        self._buf, self._head = self._head, bytearray()    # frames that came with the request
        return data

    # -- sending --------------------------------------------------------------
    def message(self, payload: bytes, opcode: int = TEXT) -> bytes:
        """One unfragmented frame (masked from a client, RFC 6455 5.3)."""
        n = len(payload)
        b1 = 0x80 if self.client else 0
        if n < 126:
            head = bytes((0x80 | opcode, b1 | n))
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, b1 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, b1 | 127, n)
        if not self.client:
            return head + payload
        mask = self._mask(32).to_bytes(4, "little")
        if not n:
            return head + mask
        key = (mask * (n // 4 + 1))[:n]
        return head + mask + (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")

    def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> bytes:
        """Our close frame (RFC 6455 5.5.1); the peer's answers with a ("close", ...) event."""
        self.closed = True
        try:
            return self._ws.send(CloseConnection(code=code, reason=reason or None))
        except LocalProtocolError:
            return b""                    # already closing

    def ping(self, payload: bytes = b"") -> bytes:
        return self._ws.send(Ping(payload=payload))

    def outgoing(self) -> bytes:
        """What the protocol owes the peer (pong, close reply) since the last call."""
        if not self._out:
            return b""
        out, self._out = bytes(self._out), bytearray()
        return out

    # -- receiving ------------------------------------------------------------
    def receive(self, data: bytes) -> list:
        if not self.open:
            return self._handshake(data)
        buf = self._buf
        buf += data
        events, pos, size, frag = [], 0, len(buf), self._frag
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, p = b1 & 0x7F, pos + 2
            if n == 126:
                if size - p < 2:
                    break
                n = (buf[p] << 8) | buf[p + 1]
                p += 2
            elif n == 127:
                if size - p < 8:
                    break
                n = struct.unpack_from("!Q", buf, p)[0]
                p += 8
            masked = b1 & 0x80
            end = p + n + (4 if masked else 0)
            if size < end:
                break
            op = b0 & 0x0F
            if (b0 & 0xF0) == 0x80 and op in (TEXT, BINARY) and not frag and bool(masked) != self.client:
                if masked:
                    key = bytes(buf[p:p + 4]) * (n // 4 + 1)
                    payload = (int.from_bytes(buf[p + 4:end], "little") ^
                               int.from_bytes(key[:n], "little")).to_bytes(n, "little")
                else:
                    payload = bytes(buf[p:end])
                events.append(("message", payload, op))
            else:
                frag = self._slow(bytes(buf[pos:end]), events)
            pos = end
        self._frag = frag
        if pos:
            del buf[:pos]
        return events

    def _slow(self, frame: bytes, events: list) -> bool:
        """A control or fragment frame, through wsproto; True while a message is unfinished."""
        try:
            self._ws.receive_data(frame)
            for ev in self._ws.events():
                if isinstance(ev, (TextMessage, BytesMessage)):
                    self._parts.append(ev.data.encode() if isinstance(ev.data, str) else bytes(ev.data))
                    if ev.message_finished:
                        events.append(("message", b"".join(self._parts),
                                       TEXT if isinstance(ev, TextMessage) else BINARY))
                        self._parts = []
                elif isinstance(ev, Ping):
                    self._out += self._ws.send(ev.response())
                elif isinstance(ev, Pong):
                    events.append(("pong", bytes(ev.payload)))
                elif isinstance(ev, CloseConnection):
                    if not self.closed:
                        self.closed = True
                        self._out += self._ws.send(ev.response())
                    events.append(("close", ev.code, ev.reason or ""))
        except (RemoteProtocolError, LocalProtocolError) as exc:
            raise WebSocketError(str(exc)) from None
        return bool(self._parts)

    def _handshake(self, data: bytes) -> list:
        # Only the head goes to wsproto; frames after it are cut here (see the module doc).
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > 16384:
                raise WebSocketError("no end of the HTTP handshake in 16 KiB")
            return []
        head, rest = bytes(self._head[:end + 4]), bytes(self._head[end + 4:])
        self._head = bytearray()
        events = []
        try:
            self._ws.receive_data(head)
            for ev in self._ws.events():
                if isinstance(ev, AcceptConnection):
                    self.open, self.subprotocol = True, ev.subprotocol
                    events.append(("open", ev.subprotocol))
                elif isinstance(ev, RejectConnection):
                    events.append(("refused", ev.status_code))
                elif isinstance(ev, Request):
                    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in ev.extra_headers}
                    events.append(("request", list(ev.subprotocols), headers))
                elif isinstance(ev, RejectData):
                    pass
        except (RemoteProtocolError, LocalProtocolError) as exc:
            raise WebSocketError(f"WebSocket handshake: {exc}") from None
        if rest:
            if self.open:
                events += self.receive(rest)
            else:
                self._head += rest
        return events
