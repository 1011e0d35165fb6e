"""Kamailio built from upstream source: any tag, branch or commit.

A *source* is a git URL (default: upstream's GitHub repository), a local
clone (bare or not) or a .tar.gz of a bare repository (the offline copy in
../shared/kamailio-src).  kamleak keeps a bare mirror of it in its cache
(`$XDG_CACHE_HOME/kamleak` or `~/.cache/kamleak`) and resolves refs there
with the host's `git`; tarballs are extracted once and used as they are.

The build runs in a builder container (no compiler on the host), without a
network, on `git archive <commit>`; it compiles only the modules the config
under test loads and keeps a ccache on a Docker volume.  The result is a
runtime image laid out like upstream's Debian packages (/usr/sbin/kamailio,
/usr/lib/x86_64-linux-gnu/kamailio/modules), labelled with the commit and
reused when it exists.  An image is never named after a version its binary
does not report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from kamleak.harness import progress
from kamleak.harness.errors import ImageError, UsageError
from kamleak.harness.stack import containers, images
from kamleak.harness.stack.kamailio.cfg import parse, read_config, tested_defines
from kamleak.harness.stack.kamailio.config import BODY
from kamleak.harness.stack.kamailio.server import refusal_line
from kamleak.harness.stack.kamailio.user_config import HARNESS_DEFINES

DEFAULT_SOURCE = "https://github.com/kamailio/kamailio.git"
SOURCE_ENV = "KAMLEAK_KAMAILIO_SOURCE"
REPO = "kamleak/kamailio-src"
CCACHE_VOLUME = "kamleak-ccache"
BUILD_CPUS = 1.5          # polite on a shared 2-core box

LABEL_COMMIT = "org.kamleak.commit"
LABEL_DESCRIBE = "org.kamleak.describe"
LABEL_MODULES = "org.kamleak.modules"
LABEL_SOURCE = "org.kamleak.source"
LABEL_VERSION = "org.kamleak.kamailio-version"
LABEL_REF = "org.kamleak.ref"
LABEL_SUITE = "org.kamleak.suite"     # the Debian suite of its builder and runtime


# A compiler's or linker's error line: "main.c:3353:2: error: #error …", "ld: … undefined reference".
_DIAGNOSTIC = re.compile(r":\d+(:\d+)?: (fatal )?error: |: undefined reference to |^(make|gmake)(\[\d+\])?: \*\*\* ")

class BuildError(ImageError):
    """A source build failed; `log` holds the tail of the build log."""

    def __init__(self, cause: str, fix: str | None = None, log: str = ""):
        super().__init__(cause, fix)
        self.log = log


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = Path(base) / "kamleak"
    d.mkdir(parents=True, exist_ok=True)
    return d


def source_location(explicit: str | None = None) -> str:
    """--kamailio-source, else $KAMLEAK_KAMAILIO_SOURCE, else upstream's GitHub."""
    return (explicit or os.environ.get(SOURCE_ENV) or DEFAULT_SOURCE).strip()


def _need_git() -> str:
    git = shutil.which("git")
    if not git:
        raise UsageError("building Kamailio from source needs git on this host (not found in PATH)",
                         "install it (apt-get install git) or test a version/image instead")
    return git


def _git(repo: Path, *args: str, check: bool = True, timeout: float = 600) -> str:
    proc = subprocess.run([_need_git(), "-C", str(repo), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, args, proc.stdout, proc.stderr)
    return proc.stdout.strip()


def _is_url(s: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", s)) or bool(re.match(r"^[\w.-]+@[\w.-]+:", s))


def _key(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()[:12]


def _first_line(text: str) -> str:
    lines = [x.strip() for x in (text or "").strip().splitlines() if x.strip()]
    return (lines[-1] if lines else "?")[:200]


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A ref of a source, resolved to a commit."""

    ref: str
    commit: str
    tag: str | None        # the release tag the commit is, if any (exactly)
    describe: str          # `git describe --tags` (or the short commit)
    label: str | None = None   # a dirty working tree: "wt-<hash of its content>"

    @property
    def short(self) -> str:
        return self.commit[:10]

    @property
    def name(self) -> str:
        """What an image and a target are named after: the tag, else the commit."""
        return self.label or self.tag or self.short


class Source:
    """A Kamailio git source and kamleak's bare mirror of it."""

    def __init__(self, location: str | None = None):
        self.location = source_location(location)
        self.kind = ("url" if _is_url(self.location)
                     else "tarball" if re.search(r"\.(tar\.gz|tgz|tar)$", self.location) else "path")
        if self.kind != "url":
            self.location = os.path.abspath(os.path.expanduser(self.location))
        self._mirror: Path | None = None
        self._fetched = False

    # -- the mirror ----------------------------------------------------------

    @property
    def mirror(self) -> Path:
        if self._mirror is None:
            self._mirror = self._open()
        return self._mirror

    def _lock(self, name: str):
        locks = cache_dir() / "locks"
        locks.mkdir(exist_ok=True)
        f = open(locks / f"{name}.lock", "w")
        fcntl.flock(f, fcntl.LOCK_EX)
        return contextlib.closing(f)

    def _open(self) -> Path:
        _need_git()
        srcdir = cache_dir() / "sources"
        srcdir.mkdir(exist_ok=True)
        if self.kind == "tarball":
            return self._extract(srcdir)
        if self.kind == "path":
            if not os.path.exists(self.location):
                raise UsageError(f"Kamailio source {self.location} does not exist",
                                 "pass a git clone of Kamailio, a .tar.gz of one, or a git URL "
                                 "(--kamailio-source)")
            probe = subprocess.run([_need_git(), "-C", self.location, "rev-parse", "--git-dir"],
                                   capture_output=True, text=True)
            if probe.returncode != 0:
                raise UsageError(f"Kamailio source {self.location} is not a git repository",
                                 "pass a git clone of Kamailio (bare or not), a .tar.gz of a bare "
                                 "one, or a git URL (--kamailio-source)")
        mirror = srcdir / f"{_key(self.location)}.git"
        with self._lock(mirror.name):
            if not (mirror / "HEAD").exists():
                tmp = srcdir / f"{mirror.name}.tmp{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                progress.say(f"[source] mirroring {self.location} into {mirror}")
                with progress.Ticker(f"mirroring {self.location}"):
                    proc = subprocess.run([_need_git(), "clone", "--quiet", "--mirror",
                                           self.location, str(tmp)], capture_output=True, text=True,
                                          env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
                if proc.returncode != 0:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise self._unreachable(proc.stderr)
                os.replace(tmp, mirror)
                self._fetched = True
        return mirror

    def _unreachable(self, stderr: str) -> UsageError:
        if self.kind == "url":
            return UsageError(f"cannot reach the Kamailio source {self.location} "
                              f"({_first_line(stderr)})",
                              "point kamleak at a local clone or a .tar.gz of one: "
                              f"--kamailio-source PATH (or {SOURCE_ENV}=PATH)")
        return UsageError(f"cannot read the Kamailio source {self.location} ({_first_line(stderr)})",
                          "pass a git clone of Kamailio (--kamailio-source)")

    def _extract(self, srcdir: Path) -> Path:
        """A tarball of a bare repository, extracted once (keyed by path, size, mtime)."""
        try:
            st = os.stat(self.location)
        except OSError:
            raise UsageError(f"Kamailio source {self.location} does not exist",
                             "pass a .tar.gz of a bare Kamailio repository, a clone or a URL") from None
        dest = srcdir / f"tar-{_key(f'{self.location}:{st.st_size}:{int(st.st_mtime)}')}"
        with self._lock(dest.name):
            if not (dest / ".kamleak-extracted").exists():
                shutil.rmtree(dest, ignore_errors=True)
                tmp = Path(f"{dest}.tmp{os.getpid()}")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                t0 = time.monotonic()
                proc = subprocess.run(["tar", "-xf", self.location, "-C", str(tmp)],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise UsageError(f"cannot extract the Kamailio source {self.location} "
                                     f"({_first_line(proc.stderr)})",
                                     "pass a .tar.gz of a bare git repository of Kamailio")
                (tmp / ".kamleak-extracted").write_text(self.location + "\n")
                os.replace(tmp, dest)
                progress.say(f"[source] extracted {os.path.basename(self.location)} in "
                             f"{time.monotonic() - t0:.1f} s")
        for cand in [dest, *sorted(dest.iterdir()), *sorted(dest.glob("*/*"))]:
            if cand.is_dir() and (cand / "HEAD").is_file() and (cand / "objects").is_dir():
                return cand
            if (cand / ".git" / "HEAD").is_file():
                return cand / ".git"
        raise UsageError(f"{self.location} holds no git repository",
                         "pass a .tar.gz of a bare git repository of Kamailio")

    def fetch(self) -> bool:
        """Update the mirror from the source (not for tarballs); False if unreachable."""
        if self.kind == "tarball" or self._fetched:
            return True
        proc = subprocess.run([_need_git(), "-C", str(self.mirror), "fetch", "--quiet", "--prune",
                               "--tags", "origin"], capture_output=True, text=True,
                              env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
        self._fetched = proc.returncode == 0
        self._fetch_error = proc.stderr
        return self._fetched

    # -- refs ----------------------------------------------------------------

    def _rev(self, ref: str) -> str | None:
        out = subprocess.run([_need_git(), "-C", str(self.mirror), "rev-parse", "--verify", "--quiet",
                              f"{ref}^{{commit}}"], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else None

    def _is_tag(self, ref: str) -> bool:
        return subprocess.run([_need_git(), "-C", str(self.mirror), "show-ref", "--verify", "--quiet",
                               f"refs/tags/{ref}"]).returncode == 0

    def resolve(self, ref: str) -> Resolved:
        """REF (tag, branch, commit) -> a commit of a Kamailio tree."""
        ref = ref.strip()
        if not ref or ref.startswith("-") or re.search(r"\s", ref):
            raise UsageError(f"'{ref}' is not a git ref", "give a tag (e.g. 5.8.5), a branch or a commit")
        commit = None
        # Tags and full commit hashes do not move: no fetch needed when present.
        if self._is_tag(ref) or re.fullmatch(r"[0-9a-f]{40}", ref):
            commit = self._rev(ref)
        if commit is None:
            reached = self.fetch()
            commit = self._rev(ref)
            if commit is None and not reached and self.kind == "url":
                raise self._unreachable(getattr(self, "_fetch_error", ""))
            if commit is not None and not reached:
                progress.say(f"[source] {self.location} unreachable; using the cached mirror's {ref}")
        if commit is None:
            raise UsageError(f"unknown Kamailio ref '{ref}' in {self.location}",
                             "give a tag (e.g. 5.8.5), a branch (master, 5.8) or a commit of that "
                             f"repository (list them: git -C {self.mirror} tag)")
        self.check_tree(commit, ref)
        tag = ref if self._is_tag(ref) else None
        if tag is None:
            exact = _git(self.mirror, "tag", "--points-at", commit, check=False).split()
            releases = sorted(t for t in exact if re.fullmatch(r"\d+\.\d+\.\d+", t))
            tag = releases[0] if releases else None
        describe = _git(self.mirror, "describe", "--tags", "--always", "--abbrev=10", commit,
                        check=False) or commit[:10]
        return Resolved(ref, commit, tag, describe)

    def check_tree(self, commit: str, ref: str = "") -> None:
        for path in ("src/Makefile.defs", "src/modules/tm/t_lookup.c"):
            if subprocess.run([_need_git(), "-C", str(self.mirror), "cat-file", "-e",
                               f"{commit}:{path}"], capture_output=True).returncode != 0:
                raise UsageError(f"{self.location} at {ref or commit[:10]} is not a Kamailio tree "
                                 f"(no {path})",
                                 "point --kamailio-source at a clone of github.com/kamailio/kamailio")

    def ci_suite(self, commit: str) -> str:
        return ci_suite(self.mirror, commit)

    def modules_in_tree(self, commit: str) -> set[str]:
        out = _git(self.mirror, "ls-tree", "--name-only", f"{commit}:src/modules", check=False)
        return set(out.split())

    def archive(self, commit: str, dest: Path) -> None:
        with open(dest, "wb") as f:
            proc = subprocess.run([_need_git(), "-C", str(self.mirror), "archive", "--format=tar",
                                   "--prefix=src/", commit], stdout=f, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise ImageError(f"git archive {commit[:10]} failed: {_first_line(proc.stderr.decode())}",
                             f"check the mirror {self.mirror}")


# --------------------------------------------------------------------------
# Which modules to build: those the config under test loads.

def config_modules(text: str, path: str = "kamailio.cfg") -> set[str]:
    """Every module a config loads, across all its #!ifdef branches.

    The one config preprocessor+parser (stack/kamailio/cfg.py) is run once with no
    define, once with all, and once with each alone: the union covers every
    branch of configs like the harness's (flat #!ifdef blocks).
    """
    names = sorted(tested_defines(text))
    combos = [set(), set(names)] + [{n} for n in names]
    mods: set[str] = set()
    for combo in combos:
        cfg, _ = parse(text, defines={n: "" for n in combo}, path=path)
        mods |= set(cfg.modules)
    return {m for m in mods if re.fullmatch(r"[\w-]+", m)}


def modules_for(config_path: str | None = None) -> list[str]:
    """The harness's config's modules, plus those of the user's config if any."""
    mods = config_modules(BODY.read_text(), str(BODY))
    if config_path:
        # The user's config runs as it is, with its own #!defines and kamleak's
        # (KAMLEAK: a KEMI example's database branches are #!ifndef KAMLEAK): only the
        # branches it takes (the stock config's WITH_MYSQL branch would need MySQL's headers).
        cfg, _ = parse(read_config(config_path), defines=HARNESS_DEFINES, path=config_path)
        mods |= {m for m in cfg.modules if re.fullmatch(r"[\w-]+", m)}
    return sorted(mods)


def modules_hash(modules: list[str]) -> str:
    return hashlib.sha256(" ".join(sorted(modules)).encode()).hexdigest()[:8]


# --------------------------------------------------------------------------
# The build

# The Debian suite upstream's CI builds a commit on: the build matrix of its
# .github/workflows/main.yml (`distribution:`), bookworm until e6812e83
# ("github: switch to trixie", 2025-08-27; master, and 6.1 from 6.1.0 on:
# `git tag --contains e6812e83`).  A commit gets the suite of the newest move
# it contains, so 5.8.x and 6.0.x build on bookworm (OpenSSL 3.0) and 6.1.x and
# master on trixie (OpenSSL 3.5): since 84d09d568e master's tls.so needs
# OpenSSL >= 3.2, and since d139f421 a tls.so built on < 3.2 refuses >= 3.2.
CI_SUITE = "bookworm"
CI_MOVES: tuple[tuple[str, str], ...] = (("e6812e83f32b90a8d92b42adfe0d6f30a124e777", "trixie"),)


def ci_suite(repo: Path | str, commit: str) -> str:
    """The suite upstream's CI used for COMMIT of the git repository REPO."""
    for moved, suite in CI_MOVES:
        # 0: an ancestor; 1: not; 128: REPO does not have it (nor, then, does COMMIT).
        if subprocess.run([_need_git(), "-C", str(repo), "merge-base", "--is-ancestor", moved, commit],
                          capture_output=True).returncode == 0:
            return suite
    return CI_SUITE


def builder_spec(suite: str) -> images.ImageSpec:
    return images.ImageSpec(tag=f"kamleak/kamailio-builder:{suite}",
                            context=images.DOCKER_DIR / "kamailio-builder",
                            base=f"debian:{suite}-slim", buildargs={"SUITE": suite},
                            title=f"kamailio builder ({suite})")


def runtime_spec(suite: str) -> images.ImageSpec:
    return images.ImageSpec(tag=f"kamleak/kamailio-runtime:{suite}",
                            context=images.DOCKER_DIR / "kamailio-runtime",
                            base=f"debian:{suite}-slim", buildargs={"SUITE": suite},
                            title=f"kamailio runtime ({suite})")


@dataclasses.dataclass(frozen=True)
class Built:
    tag: str
    commit: str
    describe: str
    version: str           # what `kamailio -v` reports, e.g. "5.8.5"
    modules: tuple[str, ...]
    source: str
    reused: bool


def image_tag(res: Resolved, modules: list[str]) -> str:
    return f"{REPO}:{res.name}-{modules_hash(modules)}"


def _version_of(text: str) -> str | None:
    m = re.search(r"version:\s*kamailio\s+(\S+)", text)
    return m.group(1) if m else None


def _existing(client, tag: str, res: Resolved, modules: list[str], suite: str):
    import docker.errors
    try:
        img = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    lab = img.labels or {}
    # Images from before the suite was chosen per commit carry no suite: bookworm.
    if lab.get(LABEL_COMMIT) == res.commit and lab.get(LABEL_MODULES) == ",".join(modules) \
            and lab.get(LABEL_SUITE, CI_SUITE) == suite:
        return img
    return None


def build(client, ref: str, *, source: Source | str | None = None,
          modules: list[str] | None = None) -> Built:
    """Build (or reuse) the image of REF from SOURCE with MODULES."""
    src = source if isinstance(source, Source) else Source(source)
    res = src.resolve(ref)
    present = src.modules_in_tree(res.commit)
    wanted = sorted(modules if modules is not None else modules_for())
    missing = [m for m in wanted if m not in present]
    mods = [m for m in wanted if m in present]
    tag = image_tag(res, mods)
    title = f"kamailio {res.name}"
    suite = src.ci_suite(res.commit)
    img = _existing(client, tag, res, mods, suite)
    if img is not None:
        lab = img.labels
        return Built(tag, res.commit, lab.get(LABEL_DESCRIBE, res.describe),
                     lab.get(LABEL_VERSION, "?"), tuple(mods), src.location, True)
    with src._lock("build-" + tag.replace("/", "_").replace(":", "_")):
        img = _existing(client, tag, res, mods, suite)     # a parallel run built it meanwhile
        if img is not None:
            return Built(tag, res.commit, img.labels.get(LABEL_DESCRIBE, res.describe),
                         img.labels.get(LABEL_VERSION, "?"), tuple(mods), src.location, True)
        if missing:
            progress.say(f"[{title}] not in this tree, not built: {', '.join(missing)}")
        return _build(client, src, res, mods, tag, title, suite)


class WorkTree:
    """The working tree of a Kamailio checkout, built as it is (a `git bisect
    run` step).  Clean, it is its HEAD commit: the same image as
    `--kamailio-ref <HEAD>`.  With changes, the files as they are on disk
    (tracked and untracked, not ignored), named by a hash of their content."""

    def __init__(self, path: str):
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isdir(path):
            raise UsageError(f"{path} is not a directory",
                             "pass the top of a Kamailio checkout (--kamailio-tree .)")
        try:
            top = _git(Path(path), "rev-parse", "--show-toplevel", timeout=30)
        except subprocess.CalledProcessError:
            raise UsageError(f"{path} is not in a git checkout",
                             "pass a git checkout of Kamailio (--kamailio-tree)") from None
        for rel in ("src/Makefile.defs", "src/modules/tm/t_lookup.c"):
            if not os.path.isfile(os.path.join(top, rel)):
                raise UsageError(f"{top} is not a Kamailio tree (no {rel})",
                                 "pass a checkout of github.com/kamailio/kamailio")
        self.location = top
        self.head = _git(Path(top), "rev-parse", "HEAD")
        self.changes = [x for x in _git(Path(top), "status", "--porcelain").splitlines() if x.strip()]
        self._tar: Path | None = None

    @property
    def dirty(self) -> bool:
        return bool(self.changes)

    def resolve(self) -> Resolved:
        top = Path(self.location)
        describe = _git(top, "describe", "--tags", "--always", "--abbrev=10", "HEAD", check=False) \
            or self.head[:10]
        if not self.dirty:
            exact = _git(top, "tag", "--points-at", "HEAD", check=False).split()
            releases = sorted(t for t in exact if re.fullmatch(r"\d+\.\d+\.\d+", t))
            return Resolved("HEAD", self.head, releases[0] if releases else None, describe)
        digest = hashlib.sha256(self._tarball().read_bytes()).hexdigest()[:10]
        return Resolved("working tree", self.head, None, describe + "-dirty", label=f"wt-{digest}")

    def ci_suite(self, commit: str = "") -> str:
        return ci_suite(self.location, self.head)

    def modules_in_tree(self, commit: str = "") -> set[str]:
        return set(os.listdir(os.path.join(self.location, "src", "modules")))

    def _tarball(self) -> Path:
        """The files as they are, in a tar made reproducible (sorted, one mtime:
        HEAD's, as `git archive` does) so the same content gets the same name."""
        if self._tar is None:
            top = Path(self.location)
            mtime = int(_git(top, "show", "-s", "--format=%ct", "HEAD") or 0)
            names = sorted(set(_git(top, "ls-files", "-z", "--cached", "--others",
                                    "--exclude-standard").split("\0")) - {""})
            fd, name = tempfile.mkstemp(prefix="kamleak-worktree-", suffix=".tar")
            os.close(fd)
            self._tar = Path(name)
            with tarfile.open(self._tar, "w", format=tarfile.PAX_FORMAT) as tar:
                for rel in names:
                    full = top / rel
                    if not os.path.lexists(full) or (full.is_dir() and not full.is_symlink()):
                        continue                 # deleted in the tree; submodule dirs
                    info = tar.gettarinfo(str(full), arcname="src/" + rel)
                    info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
                    if info.isreg():
                        with open(full, "rb") as f:
                            tar.addfile(info, f)
                    else:
                        tar.addfile(info)
        return self._tar

    def archive(self, commit: str, dest: Path) -> None:
        if not self.dirty:
            with open(dest, "wb") as f:
                proc = subprocess.run([_need_git(), "-C", self.location, "archive", "--format=tar",
                                       "--prefix=src/", self.head], stdout=f, stderr=subprocess.PIPE)
            if proc.returncode != 0:
                raise ImageError(f"git archive HEAD failed in {self.location}: "
                                 f"{_first_line(proc.stderr.decode())}")
            return
        shutil.copyfile(self._tarball(), dest)

    def close(self) -> None:
        if self._tar is not None:
            self._tar.unlink(missing_ok=True)
            self._tar = None


def build_tree(client, path: str, *, modules: list[str] | None = None) -> tuple[Built, WorkTree]:
    """Build (or reuse) the image of a checkout's working tree, as it is."""
    wt = WorkTree(path)
    try:
        res = wt.resolve()
        present = wt.modules_in_tree()
        wanted = sorted(modules if modules is not None else modules_for())
        mods = [m for m in wanted if m in present]
        tag = image_tag(res, mods)
        suite = wt.ci_suite()
        img = _existing(client, tag, res, mods, suite)
        if img is not None:
            return Built(tag, res.commit, img.labels.get(LABEL_DESCRIBE, res.describe),
                         img.labels.get(LABEL_VERSION, "?"), tuple(mods), wt.location, True), wt
        return _build(client, wt, res, mods, tag, f"kamailio {res.name}", suite), wt
    finally:
        wt.close()


def _build(client, src: Source, res: Resolved, mods: list[str], tag: str, title: str,
           suite: str) -> Built:
    import docker.errors
    t_all = time.monotonic()
    progress.say(f"[{title}] building {res.describe} ({res.short}) from {src.location}: "
                 f"{len(mods)} modules on Debian {suite}, as upstream's CI does")
    builder, runtime = builder_spec(suite), runtime_spec(suite)
    images.build(client, builder)
    images.build(client, runtime)
    try:
        client.volumes.get(CCACHE_VOLUME)
    except docker.errors.NotFound:
        client.volumes.create(CCACHE_VOLUME, labels={"org.kamleak.managed": "1"})
    logdir = cache_dir() / "build-logs"
    logdir.mkdir(exist_ok=True)
    logpath = logdir / f"{res.name}-{modules_hash(mods)}.log"
    with tempfile.TemporaryDirectory(prefix="kamleak-srcbuild-") as tmp:
        tmp = Path(tmp)
        t0 = time.monotonic()
        src.archive(res.commit, tmp / "src.tar")
        container = containers.create(
            client, builder.tag, role="builder", name_hint=res.name.replace("/", "_"),
            command=[" ".join(mods)], network_mode="none", nano_cpus=int(BUILD_CPUS * 1e9),
            environment={"JOBS": "2"}, working_dir="/src",
            volumes={CCACHE_VOLUME: {"bind": "/ccache", "mode": "rw"}})
        try:
            with open(tmp / "src.tar", "rb") as f:
                container.put_archive("/", f)
            progress.say(f"[{title}] source: git archive {res.short} "
                         f"({(tmp / 'src.tar').stat().st_size / 1e6:.0f} MB) "
                         f"in {time.monotonic() - t0:.1f} s")
            version, ccache = _run_build(container, title, logpath)
            bits, _ = container.get_archive("/out/usr")
            with open(tmp / "tree.tar", "wb") as f:
                for chunk in bits:
                    f.write(chunk)
        finally:
            containers.remove(container)
        if res.tag and version != res.tag:
            raise BuildError(f"{src.location} tag {res.tag} builds a kamailio that reports version "
                             f"{version}; kamleak does not name an image after a version it does "
                             "not contain", "check the tag in that repository")
        t0 = time.monotonic()
        labels = {LABEL_COMMIT: res.commit, LABEL_DESCRIBE: res.describe,
                  LABEL_MODULES: ",".join(mods), LABEL_SOURCE: src.location,
                  LABEL_VERSION: version or "?", LABEL_REF: res.ref, LABEL_SUITE: suite,
                  "org.kamleak.managed": "1",
                  "org.kamleak.role": "kamailio"}
        (tmp / "Dockerfile").write_text(
            f"FROM {runtime.tag}\nADD tree.tar /\n"
            'ENTRYPOINT ["kamailio"]\nCMD ["-DD", "-E", "-f", "/etc/kamailio/kamailio.cfg"]\n')
        (tmp / "src.tar").unlink()
        try:
            for chunk in client.api.build(path=str(tmp), tag=tag, labels=labels, decode=True, rm=True,
                                          forcerm=True, pull=False, network_mode="none"):
                if "error" in chunk:
                    raise BuildError(f"making the image {tag} failed: {chunk['error'].strip()}")
        except docker.errors.APIError as exc:
            raise BuildError(f"making the image {tag} failed: {_first_line(str(exc))}") from None
    # The image itself must report what its name says, and load every module it
    # built on its runtime's libraries (a tls.so may want another OpenSSL).
    reported, refused = _probe(client, tag, mods)
    if reported != version or refused:
        client.images.remove(tag, force=True)
        if refused:
            raise BuildError(f"{refused} on Debian {suite}'s runtime ({res.describe})",
                             "see the build log " + str(logpath))
        raise BuildError(f"the image of {res.describe} reports version {reported}, its build "
                         f"said {version}", "see the build log " + str(logpath))
    progress.say(f"[{title}] image {tag} in {time.monotonic() - t0:.1f} s "
                 f"(kamailio -v: {version}); total {time.monotonic() - t_all:.0f} s")
    return Built(tag, res.commit, res.describe, version, tuple(mods), src.location, False)


def _run_build(container, title: str, logpath: Path) -> tuple[str, str]:
    """Start the builder, print one line per phase with its time; the version it built."""
    tail: list[str] = []
    diagnostics: list[str] = []
    phase, t_phase, version, ccache = "start", time.monotonic(), "", ""
    container.start()
    with open(logpath, "w") as log, progress.Ticker(f"[{title}] compiling") as _:
        buf = b""
        for chunk in container.logs(stream=True, follow=True):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip()
                log.write(line + "\n")
                tail = (tail + [line])[-25:]
                if _DIAGNOSTIC.search(line) and len(diagnostics) < 5:
                    diagnostics.append(line)
                if line.startswith("@@kamleak phase "):
                    new = line.split()[-1]
                    if phase != "start":
                        progress.say(f"[{title}] {phase}: {time.monotonic() - t_phase:.1f} s")
                    phase, t_phase = new, time.monotonic()
                elif line.startswith("@@kamleak version "):
                    version = _version_of(line) or ""
                elif line.startswith("@@kamleak ccache "):
                    ccache = line[len("@@kamleak ccache "):]
    rc = container.wait().get("StatusCode", 1)
    if rc != 0:
        # The compiler's first diagnostic (with -j2 it need not be near the end),
        # else make's own "***" line; never a file name that merely says "error".
        errors = diagnostics or [x for x in tail if "***" in x and "@@kamleak" not in x]
        last = (errors[0] if errors else (tail[-1] if tail else "no output"))[:200]
        text = "\n".join(tail[-15:])
        progress.say(f"[{title}] build log tail ({logpath}):\n" + "\n".join("    " + x for x in tail[-15:]))
        raise BuildError(f"building Kamailio {title.split()[-1]} failed in '{phase}': {last}",
                         f"full log: {logpath}", log=text)
    progress.say(f"[{title}] ccache: " + _ccache_summary(ccache))
    return version, ccache


def _ccache_summary(stats: str) -> str:
    hits = re.search(r"Hits:\s*(\d+)\s*/\s*(\d+)", stats) or re.search(r"cache hit \(direct\)\s*(\d+)", stats)
    if hits and hits.lastindex == 2:
        return f"{hits.group(1)}/{hits.group(2)} hits"
    return stats[:120] or "?"


# Kamailio's loader: "could not open module </usr/lib/.../tls.so>: ...: undefined symbol: X".
_NO_LOAD = re.compile(r"could not open module <([^>]*)>: (.*)$", re.M)


def load_refusal(log: str) -> str | None:
    """`kamailio -c` on a config of loadmodule lines: why a module does not load, or None."""
    m = _NO_LOAD.search(log)
    if m:
        path, why = m.group(1), m.group(2).strip()
        why = why[len(path) + 2:] if why.startswith(path + ": ") else why
        return f"{os.path.basename(path)} does not load: {why}"
    return refusal_line(log)


def _probe(client, tag: str, mods: list[str]) -> tuple[str | None, str | None]:
    """(`kamailio -v`'s version, why a built module does not load or None), in one container.

    `kamailio -c` dlopen()s every module with RTLD_NOW and runs its mod_register,
    and exits before any mod_init, so the modules load alone, in any order."""
    # A route too: upstream 5.8.5's `kamailio -c` segfaults (exit 139) on a config with
    # no request_route (measured: `loadmodule "tm.so"` alone), whatever the modules.
    cfg = "".join(f'loadmodule "{m}.so"\\n' for m in mods) + "request_route { drop; }\\n"
    script = (f"kamailio -v; printf '{cfg}' > /tmp/load.cfg; "
              "kamailio -c -f /tmp/load.cfg > /tmp/load.log 2>&1; echo \"@@load $?\"; cat /tmp/load.log")
    out = client.containers.run(tag, entrypoint=["/bin/sh", "-c"], command=[script],
                                network_mode="none", remove=True, stdout=True, stderr=True,
                                labels={"org.kamleak.run": "probe"}).decode("utf-8", "replace")
    head, _, log = out.partition("@@load ")
    rc, _, log = log.partition("\n")
    return _version_of(head), None if rc.strip() == "0" else (load_refusal(log) or
                                                            f"kamailio -c exited {rc.strip()}")

