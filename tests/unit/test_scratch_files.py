"""What kamleak writes to $TMPDIR: one shared name-files directory, reapable scratch dirs."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from kamleak.harness.stack import containers


def test_name_files_are_shared_written_once_and_stay_on_loopback(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(containers, "_net_files", None)
    files = containers.loopback_name_files()
    assert os.path.dirname(files["hosts"]) == str(tmp_path / f"kamleak-net-{os.getuid()}")
    hosts = open(files["hosts"]).read()
    assert hosts.startswith("127.0.0.1\tlocalhost ") and "::1\tlocalhost" in hosts
    assert open(files["resolv.conf"]).read().startswith("nameserver 127.0.0.1\n")
    before = os.stat(files["hosts"]).st_mtime_ns
    monkeypatch.setattr(containers, "_net_files", None)       # another process, same content
    assert containers.loopback_name_files() == files
    assert os.stat(files["hosts"]).st_mtime_ns == before       # not rewritten
    assert sorted(os.listdir(tmp_path)) == [f"kamleak-net-{os.getuid()}"]


def test_scratch_dirs_of_dead_processes_are_reaped_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    mine = containers.workdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    gone = tmp_path / f"{containers.WORKDIR_PREFIX}{dead}-abc"
    (gone / "kamailio-0-x").mkdir(parents=True)
    other = tmp_path / "kamleak-images.lock"
    other.write_text("")
    assert containers.reap_workdirs() == 1
    assert os.path.isdir(mine) and not gone.exists() and other.exists()
