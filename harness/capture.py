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
import subprocess
import tempfile
import threading
from pathlib import Path

from .wait import WaitTimeout, poll


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

    def start(self, timeout: float = 5.0) -> "Capture":
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
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def finish(self) -> bytes | str:
        """Stop and return the pcap bytes, or the note saying why there is none."""
        self._kill()
        try:
            data = self.path.read_bytes() if not self.note else b""
        finally:
            self.path.unlink(missing_ok=True)
        return data if data else (self.note or "no pcap: the capture produced nothing")

    def stop(self) -> None:
        self._kill()
        self.path.unlink(missing_ok=True)
