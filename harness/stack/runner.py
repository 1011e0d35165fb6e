"""Running scenarios outside pytest (`kamleak repro`, `check`, `bisect`).

A `Stack` owns what the pytest fixtures own in a test session: the engine,
the images, one Asterisk, the Kamailios and user agents it starts, and the
cleanup of all of them on success, failure and Ctrl-C alike.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from kamleak.harness.errors import ServerError
from kamleak.harness.stack import containers, engine, images, ports
from kamleak.harness.stack.asterisk import AsteriskPBX
from kamleak.harness.stack.kamailio import Kamailio, KamailioConfig, TmTimers
from kamleak.harness.stack.targets import Target


def launch_kamailio(target: Target, client, pbx_port: int, workdir, defines=(),
                    timers: TmTimers | None = None, timeout: float = 30.0,
                    on_start=None, user_config=None) -> Kamailio:
    """Start Kamailio for TARGET with fresh loopback ports (retried if one is taken)."""
    last: ServerError | None = None
    for attempt in range(3):
        udp, ws, wss, rpc, ctl = ports.allocate(5)
        cfg = KamailioConfig(udp_port=udp, ws_port=ws, wss_port=wss, pbx_port=pbx_port, rpc_port=rpc,
                             ctl_port=ctl,
                             defines=tuple(defines), timers=timers or TmTimers(),
                             user_config=user_config)
        run_dir = tempfile.mkdtemp(prefix=f"kamailio-{attempt}-", dir=workdir)
        hint = target.id.replace(":", "_").replace("/", "_")
        k = target.kamailio(client, cfg, run_dir, name_hint=hint)
        k.target = target          # what the oracle asks knowledge about (the orphan proof)
        if on_start:
            on_start(k)
        try:
            return k.start(timeout=timeout)
        except ServerError as exc:
            ports.release(udp, ws, wss, rpc, ctl)
            last = exc
            if "already taken" not in str(exc):
                raise
    raise last  # type: ignore[misc]


class Stack:
    """`with Stack(target) as bench:` -> bench.kamailio(...), bench.ua(...), bench.pbx."""

    def __init__(self, target: Target, workdir: str | None = None, log=print, user_config=None):
        self.target = target
        self.user_config = user_config
        self.log = log
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or containers.workdir())
        self.client = None
        self.pbx: AsteriskPBX | None = None
        self.kamailios: list[Kamailio] = []
        self.uas: list = []

    def __enter__(self) -> Stack:
        try:
            self.client = engine.client()
            containers.reap_leftovers(self.client, log=self.log)
            specs = [images.asterisk_spec()]
            if self.target.kind == "version":
                specs.append(images.kamailio_spec(self.target.ref))
            images.build_all(self.client, specs)
            self.target.prepare(self.client)
            self.pbx = AsteriskPBX(self.client, self.workdir / "asterisk").start()
        except BaseException:
            self.close()
            raise
        return self

    def kamailio(self, defines=(), timers: TmTimers | None = None) -> Kamailio:
        return launch_kamailio(self.target, self.client, self.pbx.sip_port, self.workdir,
                               defines, timers, on_start=self.kamailios.append,
                               user_config=self.user_config)

    def ua(self, url: str, **kwargs):
        from kamleak.harness.sip import WebSocketUA
        ua = WebSocketUA(url, **kwargs)
        self.uas.append(ua)
        ua.connect()
        return ua

    def release(self) -> None:
        """Stop the Kamailios and user agents started so far, keep Asterisk: a long
        series of gates on one Stack (each gate starts a Kamailio of its own)."""
        for ua in self.uas:
            try:
                ua.close()
            except Exception:  # noqa: BLE001 - closing must go on
                pass
        for k in self.kamailios:
            k.stop()
        self.uas.clear()
        self.kamailios.clear()

    def close(self) -> None:
        self.release()
        if self.pbx is not None:
            self.pbx.stop()
        containers.remove_all_live()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __exit__(self, *exc) -> None:
        self.close()
