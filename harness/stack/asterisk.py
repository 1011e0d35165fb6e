"""The Asterisk PBX behind Kamailio: a real Asterisk 22 in a container.

chan_pjsip listens on a loopback UDP port allocated for the run; the
run-time part of its config (`docker/asterisk/*.in`) is rendered here and
mounted read-only.  Asterisk answers any numeric extension and keeps the call
up until the harness hangs it up by command: session-timer BYEs would take
minutes, and a timer would be luck, not a test.  A word before the digits
(`RING + "12345678"`) picks another behaviour of the called party
(docker/asterisk/etc/extensions.conf).
"""

from __future__ import annotations

import os
import string
import time
from pathlib import Path

from kamleak.harness.errors import ServerError
from kamleak.harness.stack import containers, images, ports
from kamleak.harness.wait import AbortedWait, WaitTimeout, poll

TEMPLATES = images.DOCKER_DIR / "asterisk"

# Extension prefixes, each followed by digits (the dialplan's [kamleak] context):
ANSWER = ""              # 200 OK at once, up until hung up
RING = "ring"            # 180 Ringing, 200 OK 1 s later, up until hung up
BUSY = "busy"            # 486 Busy Here
NOANSWER = "noanswer"    # 180 Ringing, no final until CANCEL or a CLI hangup
DECLINE = "decline"      # 603 Decline
BEHAVIOURS = {"answer": ANSWER, "ring": RING, "busy": BUSY, "noanswer": NOANSWER,
              "decline": DECLINE}


class AsteriskPBX:
    def __init__(self, client, run_dir, image: str | None = None, name_hint: str = "pbx"):
        self.client = client
        self.image = image or images.asterisk_spec().tag
        self.run_dir = Path(run_dir)
        self.name_hint = name_hint
        self.running: containers.Running | None = None
        self.sip_port: int | None = None
        self.ready_after: float | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    def render(self) -> dict[str, str]:
        """Render the *.in templates; returns {host path: container path}."""
        self.sip_port, rtp = ports.allocate(2)
        values = {"sip_port": self.sip_port, "rtp_start": rtp, "rtp_end": rtp + 100}
        mounts = {}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for tpl in sorted(TEMPLATES.glob("*.in")):
            out = self.run_dir / tpl.name[:-3]
            out.write_text(string.Template(tpl.read_text()).substitute(values))
            os.chmod(out, 0o644)
            mounts[str(out)] = f"/etc/asterisk/{out.name}"
        return mounts

    def start(self, timeout: float = 60.0) -> AsteriskPBX:
        import docker.errors
        mounts = self.render()
        t0 = time.monotonic()
        try:
            self.running = containers.Running(
                containers.run(self.client, self.image, role="asterisk",
                               name_hint=self.name_hint, mounts=mounts), "Asterisk")
        except docker.errors.ImageNotFound:
            raise ServerError(f"image {self.image} not found", "build it: `make images`") from None
        try:
            began = time.monotonic()
            poll(self._booted, timeout=timeout, what="Asterisk fully booted", abort=self.death)
            if time.monotonic() - began > timeout:
                # `core waitfullybooted` blocks until the boot: a yes after the deadline is a no.
                raise WaitTimeout("Asterisk fully booted", timeout)
        except (AbortedWait, WaitTimeout) as exc:
            log = self.log()
            self.stop()
            raise ServerError(f"Asterisk did not boot: {exc}", "see the Asterisk log", log=log) from None
        self.ready_after = time.monotonic() - t0
        return self

    def _booted(self) -> bool:
        rc, out = self.running.exec(["asterisk", "-rx", "core waitfullybooted"], timeout=5)
        return rc == 0 and "fully booted" in out.lower()

    def cli(self, command: str, timeout: float = 10.0) -> str:
        if self.running is None or self.running.container is None:
            raise ServerError("Asterisk is not running")
        rc, out = self.running.exec(["asterisk", "-rx", command], timeout=timeout)
        if rc != 0:
            raise ServerError(f"Asterisk CLI `{command}` failed ({rc}): {out.strip()[:200]}",
                              "see the Asterisk log", log=self.log())
        return out

    def channels(self) -> list[dict[str, str]]:
        """`core show channels concise`: channel, context, extension, state..."""
        fields = ["channel", "context", "extension", "priority", "state", "application", "data",
                  "callerid", "accountcode", "peeraccount", "amaflags", "duration", "bridged",
                  "uniqueid"]
        rows = []
        for line in self.cli("core show channels concise").splitlines():
            if "!" in line:
                rows.append(dict(zip(fields, line.split("!"))))
        return rows

    def channel_for(self, extension: str, timeout: float = 10.0) -> str:
        return poll(lambda: next((c["channel"] for c in self.channels()
                                  if c.get("extension") == extension), None),
                    timeout=timeout, what=f"an Asterisk channel for extension {extension}",
                    abort=self.death)

    # Find the call's channel and hang it up in one `docker exec` (each costs ~0.1 s):
    # prints the channel, or nothing while Asterisk has none for the extension yet.
    _HANGUP = ('ch=$(asterisk -rx "core show channels concise" | awk -F! -v e="$1" '
               "'$3 == e { print $1; exit }'); "
               '[ -n "$ch" ] || exit 0; asterisk -rx "channel request hangup $ch" >/dev/null && echo "$ch"')

    def hangup(self, extension: str, timeout: float = 10.0) -> str:
        """Hang up the call to EXTENSION: Asterisk sends its BYE now."""
        if not extension.isalnum():
            raise ServerError(f"not an extension kamleak dials: {extension!r}")

        def hung_up() -> str | None:
            rc, out = self.running.exec(["sh", "-c", self._HANGUP, "hangup", extension], timeout=5)
            if rc != 0:
                raise ServerError(f"Asterisk CLI hangup of {extension} failed ({rc}): "
                                  f"{out.strip()[:200]}", "see the Asterisk log", log=self.log())
            return out.strip() or None

        return poll(hung_up, timeout=timeout, what=f"an Asterisk channel for extension {extension}",
                    abort=self.death)

    def death(self) -> str | None:
        return self.running.death() if self.running else "Asterisk was never started"

    def log(self) -> str:
        return self.running.log() if self.running else ""

    def log_since(self, epoch: float) -> str:
        """Only what Asterisk logged from EPOCH on (whole seconds: a little before it):
        a long campaign's log is large, and re-reading all of it per call adds up."""
        if self.running is None or self.running.container is None:
            return ""
        return containers.logs(self.running.container, since=max(1, int(epoch) - 1))

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop()
        if self.sip_port:
            ports.release(self.sip_port)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
