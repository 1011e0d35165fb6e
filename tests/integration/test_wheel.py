"""kamleak as a user installs it: the wheel built from this checkout, in a
fresh venv outside it (no editable install, no checkout on sys.path), runs a
real gate and the pytest plugin from another directory (issue 14).
"""

from __future__ import annotations

import configparser
import fcntl
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kamleak.harness.errors import DockerUnavailable
from kamleak.harness.stack import engine, images

ROOT = Path(__file__).resolve().parents[2]
CONTEXTS = ("asterisk", "kamailio", "kamailio-builder", "kamailio-runtime")


def _git_files(*paths: str) -> list[str]:
    """The files a commit of the working tree would hold (tracked or new, not ignored)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z", "--", *paths],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return sorted(f for f in out.split("\0") if f and (ROOT / f).is_file())


def _env() -> dict[str, str]:
    """The user's environment, not this test run's (no xdist worker, no venv, no PYTHONPATH)."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "KAMLEAK_RUN_DIR_NAME", "PYTEST_ADDOPTS")
    return {k: v for k, v in os.environ.items()
            if k not in drop and not k.startswith("PYTEST_XDIST") and k != "PYTEST_CURRENT_TEST"}


def _once(tmp_path_factory, name: str, make) -> Path:
    """NAME made by make(dir) once per run: xdist workers share their base
    temp's parent, and a lock there makes the others wait and reuse it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    where = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (where / ".done").exists():
            shutil.rmtree(where, ignore_errors=True)
            where.mkdir()
            make(where)
            (where / ".done").touch()
    return where


def _build_wheel(tmp: Path) -> None:
    # From a copy of the tree: a build in the checkout would leave build/
    # there, and stale files in build/lib ride along into later wheels.
    src = tmp / "src"
    for f in _git_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "-w", str(tmp / "dist"), str(src)],
                          capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (tmp / "build.log").write_text(proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    """The wheel built from the working tree, and what the build said."""
    tmp = _once(tmp_path_factory, "kamleak-wheel", _build_wheel)
    built = sorted((tmp / "dist").glob("kamleak-*.whl"))
    assert len(built) == 1, built
    return built[0], (tmp / "build.log").read_text()


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel and its dependencies (pip's own index and cache)."""
    def make(where: Path) -> None:
        # --without-pip: this interpreter's pip installs into it (`pip --python`),
        # which skips bootstrapping a second pip.
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(where / "bin" / "python"),
                               "install", "-q", str(wheel[0])],
                              capture_output=True, text=True, timeout=900, env=_env())
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    where = _once(tmp_path_factory, "kamleak-venv", make)
    assert ROOT not in where.parents
    return where


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A working directory outside the checkout, as a user's would be."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    assert ROOT not in work.parents
    return work


def _site_packages(venv: Path) -> Path:
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True, env=_env()).stdout
    return Path(out.strip()).resolve()


@pytest.fixture(scope="module")
def docker_engine():
    """The engine the real-stack tests use; without one they skip, before any venv is built."""
    try:
        return engine.client()
    except DockerUnavailable as exc:
        pytest.skip(f"no Docker engine: {exc.line()}")


def test_the_wheel_carries_the_package_and_nothing_else(wheel):
    path, build_log = wheel
    # setuptools warns when a folder of docker/ is data it would one day drop.
    assert "Warning" not in build_log, build_log[-3000:]
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        entry_points = configparser.ConfigParser()
        entry_points.read_string(z.read("kamleak-0.1.0.dist-info/entry_points.txt").decode())
    assert {n.split("/")[0] for n in names} == {"kamleak", "kamleak-0.1.0.dist-info"}
    # Every image build context, file for file as the checkout has it.
    assert {n for n in names if n.startswith("kamleak/docker/")} == \
        {f"kamleak/{f}" for f in _git_files("docker")}
    # Every module, and the harness's kamailio.cfg.
    code = {f"kamleak/{f}" for f in _git_files("harness", "scenarios") if f.endswith(".py")}
    assert code - names == set()
    assert "kamleak/harness/stack/kamailio/kamailio.cfg" in names
    assert entry_points["console_scripts"]["kamleak"] == "kamleak.harness.tools.cli:main"
    assert entry_points["pytest11"]["kamleak"] == "kamleak.harness.plugin"


def test_installed_names_and_contexts_are_the_package_s(venv, elsewhere):
    site = _site_packages(venv)
    py = str(venv / "bin" / "python")
    probe = ("import kamleak.harness, kamleak.scenarios\n"
             "from kamleak.harness.stack import images\n"
             "print(kamleak.harness.__file__); print(kamleak.scenarios.__file__)\n"
             "print(images.DOCKER_DIR)\n"
             f"for c in {CONTEXTS!r}:\n"
             "    print(images.ImageSpec('t', images.DOCKER_DIR / c, 'b').context_hash('b'))\n")
    proc = subprocess.run([py, "-c", probe], cwd=elsewhere, capture_output=True, text=True,
                          env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    harness, scenarios, docker_dir, *hashes = proc.stdout.split("\n")[:3 + len(CONTEXTS)]
    for p in (harness, scenarios, docker_dir):
        assert Path(p).resolve().is_relative_to(site), p
        assert not Path(p).resolve().is_relative_to(ROOT), p
    # An image built from the checkout is current for the installed package, and back.
    assert hashes == [images.ImageSpec("t", images.DOCKER_DIR / c, "b").context_hash("b")
                      for c in CONTEXTS]
    # No generic top-level names: those belong to other packages (docker is the SDK's).
    for generic in ("harness", "scenarios"):
        proc = subprocess.run([py, "-c", f"import {generic}"], cwd=elsewhere,
                              capture_output=True, text=True, env=_env())
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, proc.stderr


def test_the_installed_gate_runs_from_elsewhere(docker_engine, venv, elsewhere):
    # The checkout builds what is missing (under the build lock); the installed
    # package must then find every image current, not build its own.
    images.build_all(docker_engine, [images.asterisk_spec(), images.kamailio_spec("6.1.5")])
    proc = subprocess.run([str(venv / "bin" / "kamleak"), "check", "--kamailio-version", "6.1.5"],
                          cwd=elsewhere, capture_output=True, text=True, timeout=600, env=_env())
    out = proc.stdout + proc.stderr
    # Debian's 6.1.5 carries the t_unref() change: the default story is clean, exit 0.
    assert proc.returncode == 0, out[-3000:]
    assert "kamleak check: CLEAN" in proc.stdout, out[-3000:]
    assert "building kamleak/" not in out, out[-3000:]


TINY_TEST = '''\
import random

import pytest

import kamleak.harness

pytestmark = [pytest.mark.kamailio, pytest.mark.asterisk]


def test_a_call_through_the_installed_fixtures(kamailio, ua_factory, transport):
    assert "site-packages" in kamleak.harness.__file__
    ua = ua_factory(kamailio.url(transport))
    dialog = ua.invite(f"sip:{random.randrange(10**7, 10**8)}@127.0.0.1", timeout=15)
    assert dialog.state == "confirmed"
    assert dialog.bye(timeout=15).status == 200
'''


def test_the_installed_plugin_runs_a_test_from_elsewhere(docker_engine, venv, elsewhere):
    (elsewhere / "test_tiny.py").write_text(TINY_TEST)
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pytest", "test_tiny.py", "--kamailio-version", "6.1.5",
         "--transport", "ws", "-W", "error::pytest.PytestUnknownMarkWarning",
         "-p", "no:cacheprovider", "--rootdir", str(elsewhere)],
        cwd=elsewhere, capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout, proc.stdout[-3000:]
