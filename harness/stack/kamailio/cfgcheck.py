"""Would this Kamailio load this config?  Asked of its real `kamailio -c`.

`kamailio -c` parses the config, loads the modules and sets their parameters,
and binds nothing (it skips the fixups, so a start can still refuse what it
passed).  Any number of configs are checked in ONE container of the target's
image, each into its own directory: 16 configs take about 0.4 s on Debian's
6.0.1, so a caller may ask before every real start.  explore --mutate-config
asks it about kamleak's config with other defines, reduce about the user's
config with lines removed.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tempfile
from pathlib import Path

from kamleak.harness.stack.kamailio.config import KamailioConfig
from kamleak.harness.stack.kamailio.server import CONTAINER_DIR, refusal_line


def config_for_check(defines=(), user_config=None) -> KamailioConfig:
    """A config to check: `-c` binds no port, so any loopback ones do."""
    return KamailioConfig(5060, 8080, 4443, 5080, defines=tuple(defines), user_config=user_config)


def your_line(error: str, checked: KamailioConfig, user_config) -> str:
    """` (your line N: TEXT)` for Kamailio's error about line M of the config it read
    (KamailioConfig.cite: the one mapping gate and check use too); explore and reduce
    add it to a refusal."""
    m = re.search(r"line (\d+)", error)
    if not m:
        return ""
    if checked.user_config is None:
        checked = dataclasses.replace(checked, user_config=user_config)
    return checked.cite(int(m.group(1)))


class Checker:
    """`refusals(configs)`: for each KamailioConfig, None if TARGET's `kamailio -c`
    accepts it, else Kamailio's own error line; cached by the rendered text."""

    def __init__(self, target, client):
        self.target, self.client = target, client
        self._cache: dict[str, str | None] = {}
        self.checked = 0            # configs run through kamailio -c (not the cached ones)

    def refusal(self, config: KamailioConfig) -> str | None:
        return self.refusals([config])[0]

    def refusals(self, configs) -> list[str | None]:
        configs = list(configs)
        # The text Kamailio reads, with one config directory for all: what the answer depends on.
        keys = [dataclasses.replace(c, target_dir=CONTAINER_DIR).render() for c in configs]
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if todo:
            by_key = dict(zip(keys, configs))
            for k, why in zip(todo, self._check([by_key[k] for k in todo])):
                self._cache[k] = why
            self.checked += len(todo)
        return [self._cache[k] for k in keys]

    def _check(self, configs: list[KamailioConfig]) -> list[str | None]:
        binary = self.target.kind == "binary"
        with tempfile.TemporaryDirectory(prefix="kamleak-cfgcheck-") as tmp:
            where = Path(tmp) if binary else CONTAINER_DIR
            for i, config in enumerate(configs):
                dataclasses.replace(config, target_dir=f"{where}/{i}").write(Path(tmp) / str(i))
            if binary:
                logs = []
                for i in range(len(configs)):
                    cmd = [self.target.ref, "-c", "-f", f"{tmp}/{i}/kamailio.cfg"]
                    cmd += ["-L", self.target.module_dir] if self.target.module_dir else []
                    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
                    logs.append((p.returncode, p.stdout + p.stderr))
            else:
                logs = self._in_container(tmp, len(configs), CONTAINER_DIR)
        return [None if rc == 0 else (refusal_line(log) or f"kamailio -c exited {rc}")
                for rc, log in logs]

    def _in_container(self, tmp: str, n: int, cdir: str) -> list[tuple[int, str]]:
        from kamleak.harness.stack import containers

        # One container for all: each config's output and exit code into its own files.
        script = (f'for i in $(seq 0 {n - 1}); do kamailio -c -f {cdir}/$i/kamailio.cfg '
                  f'> /tmp/out.$i 2>&1; echo "=== $i $?"; cat /tmp/out.$i; done')
        c = containers.run(self.client, self.target.image, role="kamailio", name_hint="cfgcheck",
                           entrypoint=["/bin/sh", "-c"], command=[script], mounts={tmp: cdir})
        try:
            c.wait(timeout=30 + 2 * n)
            out = containers.logs(c)
        finally:
            containers.remove(c)
        parts: dict[int, tuple[int, list[str]]] = {}
        current = None
        for line in out.splitlines():
            if line.startswith("=== "):
                _, i, rc = line.split()
                current = int(i)
                parts[current] = (int(rc), [])
            elif current is not None:
                parts[current][1].append(line)
        return [(parts[i][0], "\n".join(parts[i][1])) if i in parts else (-1, out[-500:])
                for i in range(n)]
