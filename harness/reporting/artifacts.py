"""The per-run artifact tree (SIPssert-style).

    <root>/<YYYYmmdd-HHMMSS>-<run id>/<test id>/kamailio.log, asterisk.log,
        kamailio.cfg, sip-trace.txt, rpc/<snapshot>.json, verdict.json,
        timeline.png, capture.pcap
    <root>/<YYYYmmdd-HHMMSS>-<run id>/summary.json, report.html
    <root>/latest -> the newest run

A test's files are written when its report is made (the containers still
exist then): for failures and errors always, for passes only when asked
(`--keep-artifacts`).  Old runs are pruned by count.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from kamleak.harness.errors import UsageError
from kamleak.harness.stack.containers import RUN_ID


def _safe(name: str) -> str:
    """A test id as a directory name: `tests/gate/x.py::test_a[5.6.3-ws]` -> `x.test_a[5.6.3-ws]`."""
    path, _, rest = name.partition("::")
    stem = Path(path).stem
    cleaned = re.sub(r"[^A-Za-z0-9._\[\]+-]+", "_", f"{stem}.{rest}" if rest else stem)
    return cleaned[:150]


def check_writable(directory: str | os.PathLike | None, option: str) -> None:
    """Refuse an output directory (OPTION's value) that could not be written, before
    anything starts rather than after a whole run: try it in the nearest existing
    directory (access() says yes to root, and the directory may not exist yet)."""
    import tempfile

    if directory is None:
        return
    root = Path(directory)
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        why = f"{probe} is not a directory"
    else:
        try:
            tempfile.TemporaryDirectory(dir=probe, prefix=".kamleak-probe-").cleanup()
            return
        except OSError as exc:
            why = f"cannot write in {probe} ({exc.strerror or exc})"
    raise UsageError(f"{option} {root}: {why}", "pass a directory you can write to")


def run_files(kam, pbx_log: str) -> dict[str, str]:
    """One run's logs and the config as run (KAM: the Kamailio, before it stops; None: never
    started): what gate/check --artifacts and an explore finding keep, by the same names."""
    files = {"asterisk.log": pbx_log}
    if kam is not None:
        files |= {"kamailio.log": kam.log(), "kamailio.cfg": kam.config.render()}
    return files


def save_logs(directory: Path, kam, pbx_log: str) -> Path:
    """run_files() into DIRECTORY: what is left to read when there is no verdict."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in run_files(kam, pbx_log).items():
        (directory / name).write_text(text)
    return directory


class ArtifactStore:
    def __init__(self, root: str | os.PathLike, keep_runs: int = 10):
        self.root = Path(root)
        self.keep_runs = keep_runs
        # xdist workers share the controller's run directory (named in the env).
        name = os.environ.get("KAMLEAK_RUN_DIR_NAME") or f"{time.strftime('%Y%m%d-%H%M%S')}-{RUN_ID[:6]}"
        self.run_dir = self.root / name
        self._created = False

    def check_writable(self) -> None:
        """Fail before any test runs if the evidence could not be written."""
        check_writable(self.root, "--kamleak-artifacts")

    def _ensure(self) -> None:
        if self._created:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        latest = self.root / "latest"
        try:
            if latest.is_symlink() or latest.exists():
                latest.unlink()
            latest.symlink_to(self.run_dir.name)
        except OSError:
            pass  # a filesystem without symlinks: the tree is still there
        self._created = True
        self.prune()

    def prune(self) -> None:
        runs = sorted(p for p in self.root.iterdir()
                      if p.is_dir() and not p.is_symlink() and re.match(r"\d{8}-\d{6}-", p.name))
        for old in runs[:-self.keep_runs] if self.keep_runs > 0 else []:
            if old != self.run_dir:
                shutil.rmtree(old, ignore_errors=True)

    def test_dir(self, nodeid: str) -> Path:
        self._ensure()
        d = self.run_dir / _safe(nodeid)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def write(self, directory: Path, name: str, content) -> Path:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, (dict, list)):
            path.write_text(json.dumps(content, indent=2, default=str))
        else:
            path.write_text(str(content))
        return path

    def write_summary(self, records: list[dict], name: str = "summary.json") -> Path:
        self._ensure()
        return self.write(self.run_dir, name, records)
