"""A loopback packet capture of one run's ports, when the host can take one.

tcpdump (or tshark) on `lo`, filtered to the ports the run allocated, so
the pcap holds exactly the SIP/WebSocket/TLS traffic of that test.  Needs
the tool and the right to capture (root or CAP_NET_RAW); without them the
run goes on and the artifact says why there is no pcap.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from kamleak.harness.wait import poll, stop_process


def available() -> str | None:
    """The capture tool's path, or None."""
    return shutil.which("tcpdump") or shutil.which("tshark")


class Capture:
    def __init__(self, ports: list[int]):
        self.ports = sorted(set(ports))
        self.tool = available()
        self.path = Path(tempfile.mkstemp(prefix="kamleak-", suffix=".pcap")[1])
        self.proc: subprocess.Popen | None = None
        self.note = ""
        self._err: list[str] = []
        self._result: bytes | str | None = None

    def start(self, timeout: float = 5.0) -> Capture:
        if not self.tool:
            self.note = "no pcap: neither tcpdump nor tshark is installed (apt-get install tcpdump)"
            return self
        flt = " or ".join(f"port {p}" for p in self.ports)
        name = os.path.basename(self.tool)
        # -U/-l: write packets as they come, so stopping never loses the tail.
        cmd = ([self.tool, "-i", "lo", "-U", "-s", "0", "-w", str(self.path), flt] if name == "tcpdump"
               else [self.tool, "-i", "lo", "-l", "-w", str(self.path), "-f", flt])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read_err, daemon=True).start()
        try:
            # Ready when it says it listens: packets before that would be lost.
            poll(lambda: any("listening on" in e.lower() or "capturing on" in e.lower()
                             for e in self._err),
                 timeout=timeout, what=f"{name} listening on lo",
                 abort=lambda: f"{name} exited: {' '.join(self._err)[-200:]}"
                 if self.proc.poll() is not None else None)
        except Exception:  # noqa: BLE001 - a capture is a bonus, never a failure
            self.note = f"no pcap: {name} could not capture ({' '.join(self._err)[-200:] or 'no reason given'})"
            self._kill()
        return self

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            self._err.append(line.strip())

    def _kill(self) -> None:
        # SIGINT: tcpdump flushes the pcap before it exits.
        stop_process(self.proc, signal.SIGINT, grace=5)

    def finish(self) -> bytes | str:
        """Stop and return the pcap bytes, or the note saying why there is none
        (the same answer on every call: the pcap file and the SIP trace both read it)."""
        if self._result is not None:
            return self._result
        self._kill()
        try:
            data = self.path.read_bytes() if not self.note else b""
        finally:
            self.path.unlink(missing_ok=True)
        self._result = data if data else (self.note or "no pcap: the capture produced nothing")
        return self._result

    def stop(self) -> None:
        self._kill()
        self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# Reading the capture back: the UDP datagrams on loopback (what Kamailio sends
# itself, e.g. the MESSAGE/PUBLISH of a local tm request, appears nowhere else).


@dataclass
class Datagram:
    ts: float
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


# pcap link types tcpdump/tshark write for `lo`, and the bytes before the IP header.
_LINK_HEADER = {0: 4, 1: 14, 101: 0, 113: 16, 276: 20}


def udp_datagrams(pcap: bytes) -> list[Datagram]:
    """IPv4 UDP datagrams of a classic pcap file (µs or ns stamps, either byte
    order); anything else (TCP, IPv6, fragments, pcapng) is skipped."""
    if len(pcap) < 24:
        return []
    magic = pcap[:4]
    order = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
             b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}.get(magic)
    if order is None:
        return []
    end, frac = order
    linktype = struct.unpack(end + "I", pcap[20:24])[0] & 0x0FFFFFFF
    skip = _LINK_HEADER.get(linktype)
    if skip is None:
        return []
    out, pos = [], 24
    while pos + 16 <= len(pcap):
        sec, sub, incl, _orig = struct.unpack(end + "IIII", pcap[pos:pos + 16])
        frame = pcap[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        if linktype == 1 and frame[12:14] != b"\x08\x00":
            continue  # not IPv4
        ip = frame[skip:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        if struct.unpack(">H", ip[6:8])[0] & 0x3FFF:
            continue  # a fragment
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack(">H", ip[2:4])[0]
        udp = ip[ihl:total]
        if len(udp) < 8:
            continue
        sport, dport, length = struct.unpack(">HHH", udp[:6])
        src = ".".join(str(b) for b in ip[12:16])
        dst = ".".join(str(b) for b in ip[16:20])
        out.append(Datagram(sec + sub * frac, (src, sport), (dst, dport), udp[8:length]))
    return out
