"""One replay's files for a finding's directory: the logs of its fresh Kamailio and of
Asterisk from the flow's start, the SIP trace, and a pcap of the Kamailio's ports.

The gate's own files by the same code and names (reporting.artifacts.run_files,
reporting.text.sip_trace, probes.capture); only a finding's confirming replays
record, never the campaign's generation batches.
"""

from __future__ import annotations

import time
from pathlib import Path

from kamleak.harness.probes.capture import Capture
from kamleak.harness.reporting.artifacts import run_files
from kamleak.harness.reporting.text import sip_trace

PCAP = "capture.pcap"
NOTE = "capture.txt"            # in the pcap's place: why there is none (as the gate writes it)


class Recording:
    """Started on a running Kamailio before the flow; `finish` before the Kamailio stops."""

    def __init__(self, kamailio, pbx):
        self.kamailio, self.pbx = kamailio, pbx
        self.since = time.time()
        c = kamailio.config
        self.capture = Capture([c.udp_port, c.ws_port, c.wss_port, pbx.sip_port]).start()

    def finish(self, judged) -> dict[str, bytes | str]:
        """File name -> content; the pcap is NOTE's text when there is none.  JUDGED (of
        run_batch(trace=True)) gives the clients' side of the SIP trace."""
        pcap = self.capture.finish()
        try:
            pbx_log = self.pbx.log_since(self.since)
            files: dict[str, bytes | str] = dict(run_files(self.kamailio, pbx_log))
            files["sip-trace.txt"] = sip_trace([j.run.trace for j in judged], pbx_log, [pcap],
                                               self.pbx.sip_port)
        except Exception as exc:  # noqa: BLE001 - the finding stands without its files
            files = {"logs.txt": f"the replay's logs could not be read: {exc}"}
        if isinstance(pcap, bytes):
            files[PCAP] = pcap
        else:
            files[NOTE] = pcap
        return files


def write(where: Path, files: dict) -> None:
    for name, content in files.items():
        if isinstance(content, bytes):
            (where / name).write_bytes(content)
        else:
            (where / name).write_text(content)


def describe(files, replay: int, why_none: str) -> dict:
    """What finding.json and summary.json say of the files: the replay they are from, their
    names, and the pcap's name or why there is none (WHY_NONE: why there are no files)."""
    if not files:
        return {"replay": None, "files": [], "pcap": f"not captured ({why_none})"}
    pcap = PCAP if PCAP in files else f"not captured ({str(files.get(NOTE)).removeprefix('no pcap: ')})"
    return {"replay": replay, "files": sorted(files), "pcap": pcap}


def line(described: dict, source: str) -> str:
    """describe()'s dict in one line: the files of SOURCE (the replay), the pcap's fate."""
    names = ", ".join(n for n in described["files"] if n != NOTE)
    return (f"files of {source}: {names}; " if names else "no replay files; ") + f"pcap: {described['pcap']}"
