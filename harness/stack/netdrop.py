"""Make one loopback TCP connection go silent: its packets are dropped, both ways.

A WebRTC client that vanishes without FIN or RST (a tab frozen, a laptop lid
shut, a NAT mapping gone) leaves the server a connection that is open but
dead: what it sends is never ACKed, nothing comes back.  On loopback a
process that merely stops reading is not that (the kernel still ACKs), so
the silence is made with two iptables rules in the filter table's OUTPUT
chain (loopback traffic passes it once per packet) that match only this
connection's two 127.0.0.1 ports on `lo`.  Each rule carries a comment
naming this process, so a leftover one can be found and removed.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from kamleak.harness.errors import UsageError

CHAIN = "OUTPUT"


def _tag() -> str:
    return f"kamleak-drop-{os.getpid()}"


def _rules(local: tuple[str, int], remote: tuple[str, int]) -> list[list[str]]:
    for host, _ in (local, remote):
        if not host.startswith("127."):
            raise UsageError(f"refusing to drop packets of {host}: not a loopback address",
                             "packet drops stay on 127.0.0.0/8")
    (lh, lp), (rh, rp) = local, remote
    tail = ["-m", "comment", "--comment", _tag(), "-j", "DROP"]
    return [["-o", "lo", "-p", "tcp", "-s", lh, "--sport", str(lp), "-d", rh, "--dport", str(rp)] + tail,
            ["-o", "lo", "-p", "tcp", "-s", rh, "--sport", str(rp), "-d", lh, "--dport", str(lp)] + tail]


def available() -> str | None:
    """Why packets cannot be dropped here, or None."""
    if shutil.which("iptables") is None:
        return "iptables is not installed (apt-get install iptables)"
    if os.geteuid() != 0:
        return "dropping packets needs root (iptables)"
    return None


def _iptables(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True, timeout=15)


class Blackhole:
    """`with Blackhole(("127.0.0.1", p1), ("127.0.0.1", p2)):` -> both directions dropped."""

    def __init__(self, local: tuple[str, int], remote: tuple[str, int]):
        self.rules = _rules(local, remote)
        self.active = False

    def start(self) -> Blackhole:
        why = available()
        if why:
            raise UsageError(f"cannot drop packets: {why}", "run as root with iptables, or pick "
                             "another --disconnect mode")
        for rule in self.rules:
            res = _iptables("-I", CHAIN, *rule)
            if res.returncode != 0:
                self.stop()
                raise UsageError(f"iptables refused a rule: {res.stderr.strip()}",
                                 "check that iptables works here (iptables -S)")
            self.active = True
        return self

    def stop(self) -> None:
        for rule in self.rules:
            while _iptables("-D", CHAIN, *rule).returncode == 0:
                pass            # delete every copy (a rule inserted twice)
        self.active = False

    def __enter__(self) -> Blackhole:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def leftovers() -> list[str]:
    """This process's rules still in the chain (for tests: must be empty)."""
    res = _iptables("-S", CHAIN)
    return [line for line in res.stdout.splitlines() if _tag() in line]


def reap_dead(alive) -> int:
    """Remove the rules of kamleak processes that are gone (a SIGKILLed run
    cannot remove its own); ALIVE(pid) tells. Returns how many were removed."""
    import re
    import shlex

    if available() is not None:
        return 0
    removed = 0
    for line in _iptables("-S", CHAIN).stdout.splitlines():
        m = re.search(r"kamleak-drop-(\d+)", line)
        if not m or not line.startswith(f"-A {CHAIN} ") or alive(int(m.group(1))):
            continue
        if _iptables("-D", *shlex.split(line)[1:]).returncode == 0:
            removed += 1
    return removed
