"""A one-request SIP client over UDP: send, collect the final replies, ACK them.

The UDP scenarios (issues 4919, 4503) need no dialog and no WebSocket: one
out-of-dialog request, and the replies Kamailio sends back.  This is the
UAC half of RFC 3261 17.1 reduced to that: no retransmissions (loopback
does not lose datagrams), every final reply recorded in arrival order (a
6.1 Kamailio may send two), and for an INVITE each non-2xx final reply
ACKed hop-by-hop (17.1.1.3), so a stateful reply stops being retransmitted
and its transaction can end.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from kamleak.harness.sip.message import SipMessage, build_ack, build_request, new_branch, new_call_id, new_tag

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Received:
    message: SipMessage
    at: float          # seconds after the request was sent


class UdpClient:
    """`with UdpClient() as c: finals = c.request("MESSAGE", "sip:x@127.0.0.1:5060", body="hi")`."""

    def __init__(self, host: str = HOST):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self.host, self.port = self._sock.getsockname()
        self.call_id = ""
        self.sent_at = 0.0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> UdpClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def build(self, method: str, uri: str, body: str = "", content_type: str = "text/plain",
              ) -> SipMessage:
        self.call_id = new_call_id()
        return build_request(
            method, uri,
            from_=f"<sip:kamleak@{self.host}>;tag={new_tag()}",
            to=f"<{uri}>", call_id=self.call_id, cseq=1,
            via=f"SIP/2.0/UDP {self.host}:{self.port};branch={new_branch()};rport",
            contact=f"<sip:kamleak@{self.host}:{self.port}>" if method == "INVITE" else None,
            body=body, content_type=content_type if body else None)

    def register(self, registrar: tuple[str, int], aor: str, contact: str,
                 expires: int = 300, timeout: float = 5.0) -> list[Received]:
        """REGISTER AOR at REGISTRAR (host, port) with CONTACT; its final replies."""
        self.call_id = new_call_id()
        req = build_request(
            "REGISTER", f"sip:{registrar[0]}:{registrar[1]}",
            from_=f"<{aor}>;tag={new_tag()}", to=f"<{aor}>", call_id=self.call_id, cseq=1,
            via=f"SIP/2.0/UDP {self.host}:{self.port};branch={new_branch()};rport",
            contact=f"<{contact}>;expires={expires}")
        return self.request(req, registrar, timeout=timeout, quiet=0)

    def request(self, request: SipMessage, to: tuple[str, int], timeout: float = 10.0,
                quiet: float = 0.5) -> list[Received]:
        """Send REQUEST; return its final replies once QUIET seconds pass without one.

        Waits up to TIMEOUT for the first final reply (an empty list when
        none came); QUIET 0 returns right after it.  Provisional replies
        are skipped.
        """
        self._sock.sendto(request.encode(), to)
        self.sent_at = time.monotonic()
        finals: list[Received] = []
        self._sock.settimeout(timeout)
        try:
            while True:
                data, src = self._sock.recvfrom(65535)
                msg = SipMessage.parse(data)
                if msg.is_request or msg.status < 200 or \
                        msg.header("Call-ID") != request.header("Call-ID"):
                    continue        # a late reply to an earlier request on this socket
                finals.append(Received(msg, round(time.monotonic() - self.sent_at, 3)))
                if request.method == "INVITE" and msg.status >= 300:
                    self._sock.sendto(build_ack(request, msg).encode(), src)
                if quiet <= 0:
                    break
                self._sock.settimeout(quiet)
        except TimeoutError:
            pass
        return finals
