"""Images kamleak builds: Kamailio per Debian version, the Asterisk PBX.

Builds run offline: base images (`debian:<suite>-slim`) that are missing are
seeded with debootstrap + `docker import` under the same name when no
registry is to be used; packages come from Debian's archive over the host
network.  An image is rebuilt only when its build context changed: the
context's hash is stored as a label and compared first.
"""

from __future__ import annotations

import concurrent.futures
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from kamleak.harness import progress
from kamleak.harness.errors import ImageError, UsageError

# harness/stack/images.py -> the folder holding harness/ and docker/: the
# checkout, or site-packages/kamleak in an installed wheel (pyproject.toml
# ships docker/ as the package data kamleak.docker).
ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "docker"
LABEL_CONTEXT = "org.kamleak.context"

# The Kamailio versions kamleak can build, and the Debian suite carrying each.
KAMAILIO_SUITES: dict[str, str] = {"5.6.3": "bookworm", "6.0.1": "trixie", "6.1.5": "sid"}
_ALIASES = {"5.6": "5.6.3", "6.0": "6.0.1", "6.1": "6.1.5",
            "bookworm": "5.6.3", "trixie": "6.0.1", "sid": "6.1.5"}


def canonical_version(v: str) -> str:
    v = v.strip()
    v = _ALIASES.get(v, v)
    if v not in KAMAILIO_SUITES:
        known = ", ".join(KAMAILIO_SUITES)
        raise UsageError(f"unknown Kamailio version '{v}'",
                         f"pick one of {known}, or test an image of any other build (--kamailio-image)")
    return v


@dataclass
class ImageSpec:
    """One image we can build: what, from where, on which base."""

    tag: str
    context: Path
    base: str
    buildargs: dict[str, str] = field(default_factory=dict)
    title: str = ""
    version: str | None = None     # the Kamailio version the image must report (`kamailio -v`)

    def context_hash(self, base_id: str) -> str:
        h = hashlib.sha256()
        for path in sorted(self.context.rglob("*")):
            if path.is_file():
                h.update(str(path.relative_to(self.context)).encode() + b"\0")
                h.update(path.read_bytes() + b"\0")
        for k, v in sorted(self.buildargs.items()):
            h.update(f"{k}={v}\0".encode())
        h.update(base_id.encode())
        return h.hexdigest()[:16]


# Debian's packages, named as Debian's: Debian patches them (6.1.5 carries a
# t_unref() change upstream has on master only), so they are not upstream
# releases.  Upstream builds are kamleak/kamailio-src (harness/stack/source_build.py).
DEBIAN_REPO = "kamleak/kamailio-debian"
_OLD_REPO = "kamleak/kamailio"       # before the rename: retagged, not rebuilt


def kamailio_spec(version: str) -> ImageSpec:
    version = canonical_version(version)
    suite = KAMAILIO_SUITES[version]
    return ImageSpec(tag=f"{DEBIAN_REPO}:{version}", context=DOCKER_DIR / "kamailio",
                     base=f"debian:{suite}-slim", buildargs={"SUITE": suite},
                     title=f"kamailio {version} (Debian {suite})", version=version)


def asterisk_spec() -> ImageSpec:
    return ImageSpec(tag="kamleak/asterisk:22", context=DOCKER_DIR / "asterisk",
                     base="debian:sid-slim", title="asterisk 22")


# --------------------------------------------------------------------------
# Progress: one prefixed line per build step; details only when verbose.

_print_lock = threading.Lock()


def _say(title: str, text: str) -> None:
    with _print_lock:
        print(f"kamleak: [{title}] {text}", file=sys.stderr, flush=True)


def _verbose() -> bool:
    return os.environ.get("KAMLEAK_VERBOSE", "") not in ("", "0")


# --------------------------------------------------------------------------
# Base images

def debian_mirror() -> str:
    """The Debian mirror to debootstrap from: the one this host's apt uses."""
    env = os.environ.get("KAMLEAK_DEBIAN_MIRROR")
    if env:
        return env
    candidates: list[str] = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for m in re.finditer(r"^URIs:\s*(\S+)", Path(path).read_text(), re.M):
            candidates.append(m.group(1))
    if os.path.exists("/etc/apt/sources.list"):
        for m in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", Path("/etc/apt/sources.list").read_text(), re.M):
            candidates.append(m.group(1))
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian"):
            return uri
    raise ImageError("cannot tell which Debian mirror to seed base images from",
                     "set KAMLEAK_DEBIAN_MIRROR to a Debian archive URL")


def base_policy() -> str:
    """`seed` (debootstrap), `pull` (registry) or `auto`."""
    p = os.environ.get("KAMLEAK_BASE_IMAGES", "auto").lower()
    if p not in ("auto", "seed", "pull"):
        raise UsageError(f"KAMLEAK_BASE_IMAGES={p} is not one of auto, seed, pull",
                         "unset it or pick one of those")
    if p == "auto":
        # Root with debootstrap at hand (CI, `make setup`): never ask a registry.
        return "seed" if os.geteuid() == 0 and shutil.which("debootstrap") else "pull"
    return p


def ensure_base(client: docker.DockerClient, ref: str) -> str:
    try:
        return client.images.get(ref).id
    except docker.errors.ImageNotFound:
        pass
    if base_policy() == "pull":
        _say(ref, "pulling base image")
        try:
            return client.images.pull(ref).id
        except docker.errors.DockerException as exc:
            if not (os.geteuid() == 0 and shutil.which("debootstrap")):
                raise ImageError(f"base image {ref} is missing and cannot be pulled ({_short(exc)})",
                                 "run `make setup` as root to seed it with debootstrap") from None
    return seed_base(client, ref)


_seed_locks: dict[str, threading.Lock] = {}


def seed_base(client: docker.DockerClient, ref: str) -> str:
    """debootstrap --variant=minbase SUITE, then `docker import` as REF."""
    m = re.fullmatch(r"debian:([a-z]+)-slim", ref)
    if not m:
        raise ImageError(f"base image {ref} is missing and kamleak only seeds debian:<suite>-slim",
                         f"pull or build {ref} yourself")
    suite = m.group(1)
    lock = _seed_locks.setdefault(ref, threading.Lock())
    with lock:
        try:
            return client.images.get(ref).id
        except docker.errors.ImageNotFound:
            pass
        if os.geteuid() != 0 or not shutil.which("debootstrap"):
            raise ImageError(f"base image {ref} is missing; seeding it needs root and debootstrap",
                             "run `make setup` as root, or pull it: `docker pull " + ref + "`")
        mirror = debian_mirror()
        t0 = time.monotonic()
        _say(ref, f"seeding with debootstrap --variant=minbase {suite} (about a minute)")
        with tempfile.TemporaryDirectory(prefix=f"kamleak-seed-{suite}-", dir="/var/tmp") as tmp, \
                progress.Ticker(f"debootstrap {suite}"):
            root = os.path.join(tmp, "root")
            proc = subprocess.run(["debootstrap", "--variant=minbase", suite, root, mirror],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0:
                tail = proc.stdout.strip().splitlines()[-1:] or ["?"]
                raise ImageError(f"debootstrap {suite} failed: {tail[0]}",
                                 "check that the Debian archive is reachable (KAMLEAK_DEBIAN_MIRROR)")
            # A slim base: no package cache, no indexes (every build updates).
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for f in glob.glob(os.path.join(root, junk, "*")):
                    if os.path.isfile(f):
                        os.unlink(f)
            tarball = os.path.join(tmp, "root.tar")
            subprocess.run(["tar", "-C", root, "-cf", tarball, "."], check=True)
            repo, tag = ref.split(":")
            client.api.import_image_from_file(tarball, repository=repo, tag=tag)
        _say(ref, f"seeded in {time.monotonic() - t0:.0f} s")
        return client.images.get(ref).id


# --------------------------------------------------------------------------
# Builds

def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:200] if text else exc.__class__.__name__


def is_current(client: docker.DockerClient, spec: ImageSpec) -> bool:
    try:
        base_id = client.images.get(spec.base).id
        img = client.images.get(spec.tag)
    except docker.errors.ImageNotFound:
        return False
    return (img.labels or {}).get(LABEL_CONTEXT) == spec.context_hash(base_id)


def build(client: docker.DockerClient, spec: ImageSpec) -> str:
    """Build `spec` unless an image of the same context already exists."""
    if not spec.context.is_dir():
        raise ImageError(f"build context {spec.context} not found",
                         "reinstall kamleak: its wheel ships docker/ as kamleak/docker")
    base_id = ensure_base(client, spec.base)
    digest = spec.context_hash(base_id)
    try:
        img = client.images.get(spec.tag)
        if (img.labels or {}).get(LABEL_CONTEXT) == digest:
            return spec.tag
    except docker.errors.ImageNotFound:
        if _adopt_old_name(client, spec, digest):
            return spec.tag
    t0 = time.monotonic()
    _say(spec.title, f"building {spec.tag} from {spec.base}")
    last: list[str] = []
    try:
        stream = client.api.build(
            path=str(spec.context), tag=spec.tag, buildargs=spec.buildargs, decode=True,
            network_mode="host", rm=True, forcerm=True, pull=False,
            labels={LABEL_CONTEXT: digest, "org.kamleak.managed": "1"})
        for chunk in stream:
            if "error" in chunk:
                raise ImageError(f"building {spec.tag} failed: {chunk['error'].strip()}",
                                 "see the build output above; rerun with KAMLEAK_VERBOSE=1")
            line = (chunk.get("stream") or "").rstrip()
            if not line:
                continue
            last = (last + [line])[-20:]
            if line.startswith("Step ") and (progress.interactive() or _verbose()):
                _say(spec.title, line[:110])
            elif _verbose():
                _say(spec.title, "  " + line[:200])
    except docker.errors.APIError as exc:
        raise ImageError(f"building {spec.tag} failed: {_short(exc)}",
                         "see the output above; rerun with KAMLEAK_VERBOSE=1") from None
    if spec.version:
        check_version(client, spec)
    _say(spec.title, f"built {spec.tag} in {time.monotonic() - t0:.0f} s")
    return spec.tag


def _adopt_old_name(client, spec: ImageSpec, digest: str) -> bool:
    """An image built under the old name from the same context: tag it, do not rebuild."""
    if not spec.tag.startswith(DEBIAN_REPO + ":"):
        return False
    try:
        old = client.images.get(_OLD_REPO + ":" + spec.tag.split(":", 1)[1])
    except docker.errors.ImageNotFound:
        return False
    if (old.labels or {}).get(LABEL_CONTEXT) != digest:
        return False
    check_version(client, spec, image=old.id)
    repo, tag = spec.tag.split(":", 1)
    old.tag(repo, tag)
    return True


def check_version(client, spec: ImageSpec, image: str | None = None) -> None:
    """The built binary must report the version the image is named after
    (Debian sid moves on: its 6.1.5 will one day be 6.1.6)."""
    out = client.containers.run(image or spec.tag, entrypoint=["kamailio"], command=["-v"],
                                network_mode="none", remove=True, stdout=True, stderr=True,
                                labels={"org.kamleak.run": "probe"}).decode("utf-8", "replace")
    m = re.search(r"version:\s*kamailio\s+(\S+)", out)
    got = m.group(1) if m else "nothing"
    if got != spec.version and not got.startswith(spec.version + "-"):
        if image is None:
            client.images.remove(spec.tag, force=True)
        suite = spec.buildargs.get("SUITE", "?")
        raise ImageError(f"Debian {suite} now ships Kamailio {got}, not {spec.version}: kamleak will "
                         f"not name an image {spec.tag} that does not contain {spec.version}",
                         "build it from upstream source instead (--kamailio-ref "
                         f"{spec.version}), or update KAMAILIO_SUITES in harness/stack/images.py")


def build_all(client: docker.DockerClient, specs: list[ImageSpec], workers: int = 3) -> list[str]:
    """Seed the bases (in parallel), then build the images (in parallel).

    One process at a time builds (a file lock): xdist workers or parallel
    runs wait for the first one and then find the images current.
    """
    import fcntl
    lock_path = os.path.join(tempfile.gettempdir(), "kamleak-images.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _build_all(client, specs, workers)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_all(client: docker.DockerClient, specs: list[ImageSpec], workers: int) -> list[str]:
    if all(is_current(client, s) for s in specs):
        return [s.tag for s in specs]
    bases = sorted({s.base for s in specs})
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(bases) or 1) as pool:
        for f in [pool.submit(ensure_base, client, b) for b in bases]:
            f.result()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return [f.result() for f in [pool.submit(build, client, s) for s in specs]]


def has_kamailio(client: docker.DockerClient, image: str) -> str | None:
    """The path of `kamailio` inside IMAGE, or None.  Used for user images.

    Never pulls: `containers.run` would fetch a missing image from a registry
    behind the user's back; we say how to get it instead.
    """
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise ImageError(f"image {image} not found on this Docker engine",
                         f"pull or build it first (`docker pull {image}`)") from None
    try:
        out = client.containers.run(image, entrypoint=["/bin/sh", "-c"],
                                    command=["command -v kamailio || true"],
                                    network_mode="host", remove=True, stdout=True, stderr=False,
                                    labels={"org.kamleak.run": "probe"})
    except docker.errors.ImageNotFound:
        raise ImageError(f"image {image} not found",
                         f"pull it first (`docker pull {image}`) or check the name") from None
    except docker.errors.DockerException as exc:
        raise ImageError(f"cannot run image {image}: {_short(exc)}",
                         "pass an image that contains a kamailio binary") from None
    path = out.decode().strip()
    return path or None
