"""What Kamailio to test: a version we build, any image, or a local binary.

A target knows how to get ready (build or check the image, check the binary)
and how to start a Kamailio with a given config.  The pytest plugin
parametrizes tests over the targets given on the command line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from dataclasses import dataclass, field

from kamleak.harness.errors import ImageError, UsageError
from kamleak.harness.stack import images
from kamleak.harness.stack.kamailio import ContainerKamailio, KamailioConfig, LocalKamailio


@dataclass(frozen=True)
class Target:
    kind: str          # "version" (Debian's) | "source" (upstream git) | "image" | "binary"
    ref: str           # "6.0.1" | "5.8.5", "master", a commit | "ghcr.io/...:5.8.5-bookworm" | "/path/kamailio"
    module_dir: str | None = None
    source: str | None = None      # kind "source": a git URL, clone or .tar.gz (None: the default)
    config: str | None = None      # kind "source": the user's config, whose modules are built too
    _checked: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def id(self) -> str:
        if self.kind == "version":
            return "debian-" + self.ref
        if self.kind == "source":
            import re
            return "src:" + (self.ref[:10] if re.fullmatch(r"[0-9a-f]{11,40}", self.ref) else self.ref)
        if self.kind == "image":
            return self.ref.rsplit("/", 1)[-1]
        return "bin:" + os.path.basename(os.path.dirname(os.path.abspath(self.ref))) + "/" + \
            os.path.basename(self.ref)

    @property
    def image(self) -> str | None:
        if self.kind == "version":
            return images.kamailio_spec(self.ref).tag
        if self.kind == "source":
            return self._checked.get("image")     # known once prepare() built or found it
        return self.ref if self.kind == "image" else None

    @property
    def provenance(self):
        """Where this Kamailio comes from (kamleak.harness.knowledge answers what it contains)."""
        from kamleak.harness.knowledge import Provenance
        if self.kind == "version":
            return Provenance.debian(self.ref)
        if self.kind == "source":
            if "built" not in self._checked:
                from kamleak.harness.stack import source_build
                src = source_build.Source(self.source)
                res = src.resolve(self.ref)
                self._checked["resolved"] = (res, str(src.mirror))
                return Provenance.upstream(res.commit, str(src.mirror), name=res.name)
            b = self._checked["built"]
            return Provenance.upstream(b.commit, self._checked["mirror"], b.version,
                                       name=self._checked["name"])
        return Provenance.unknown(f"the image {self.ref}" if self.kind == "image"
                                  else f"the binary {self.ref}")

    def prepare(self, client) -> None:
        """Build our image, or check a foreign image/binary contains Kamailio."""
        if self._checked.get("ok"):
            return
        if self.kind == "version":
            images.build(client, images.kamailio_spec(self.ref))
        elif self.kind == "source":
            from kamleak.harness.stack import source_build
            src = source_build.Source(self.source)
            built = source_build.build(client, self.ref, source=src,
                                       modules=source_build.modules_for(self.config))
            res = src.resolve(self.ref)
            self._checked.update(image=built.tag, built=built, mirror=str(src.mirror), name=res.name)
        elif self.kind == "image":
            if not images.has_kamailio(client, self.ref):
                raise ImageError(f"image {self.ref} has no kamailio binary in its PATH",
                                 "pass an image that contains Kamailio and its modules")
        else:
            check_binary(self.ref)
        self._checked["ok"] = True

    def kamailio(self, client, config: KamailioConfig, run_dir, name_hint: str = "k"):
        if self.kind == "binary":
            return LocalKamailio(self.ref, config, run_dir, module_dir=self.module_dir)
        return ContainerKamailio(client, self.image, config, run_dir, name_hint=name_hint)

    @property
    def needs_docker(self) -> bool:
        return self.kind != "binary"


def check_binary(path: str) -> str:
    """The version line of a local kamailio binary; a clear error otherwise."""
    if not os.path.exists(path):
        found = shutil.which(path)
        if not found:
            raise UsageError(f"Kamailio binary {path} not found",
                             "pass the path of a built kamailio (e.g. src/kamailio)")
        path = found
    if not os.access(path, os.X_OK):
        raise UsageError(f"{path} is not executable", "pass the kamailio binary itself")
    try:
        out = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"{path} does not run: {exc}", "pass a kamailio binary") from None
    first = (out.stdout or out.stderr).strip().splitlines()[:1]
    if not first or "kamailio" not in first[0].lower():
        raise UsageError(f"{path} is not Kamailio (`-v` printed {first[0][:60] if first else 'nothing'!r})",
                         "pass the kamailio binary")
    return first[0]


def parse_targets(versions=(), images_=(), binaries=(), module_dir=None, refs=(),
                  source=None, config=None) -> list[Target]:
    """Targets from option values; each value may be comma-separated."""
    def split(values):
        out = []
        for v in values or ():
            out += [x.strip() for x in str(v).split(",") if x.strip()]
        return out

    targets: list[Target] = []
    for v in split(versions):
        targets.append(Target("version", images.canonical_version(v)))
    for i in split(images_):
        targets.append(Target("image", i))
    for b in split(binaries):
        targets.append(Target("binary", b, module_dir=module_dir))
    for r in split(refs):
        targets.append(Target("source", r, source=source, config=config))
    if not targets:
        targets = [Target("version", v) for v in images.KAMAILIO_SUITES]
    seen, unique = set(), []
    for t in targets:
        if t.id not in seen:
            seen.add(t.id)
            unique.append(t)
    return unique


def add_option(p, names: tuple[str, ...], **kw) -> None:
    """One option under its name in kamleak's vocabulary (the pytest plugin's:
    pytest options are global, so they carry a prefix), plus its older short
    names as hidden aliases so existing scripts keep working."""
    name, *aliases = names
    p.add_argument(name, **kw)
    for alias in aliases:
        p.add_argument(alias, dest=kw.get("dest") or name.lstrip("-").replace("-", "_"),
                       **{k: v for k, v in kw.items() if k in ("action", "type", "choices")},
                       default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_one_target_options(p) -> None:
    """--kamailio-version | --kamailio-image | --kamailio-ref (one of them) and
    --kamailio-source, for commands that run one Kamailio (soak, explore);
    `one_target(args)` reads them back."""
    g = p.add_mutually_exclusive_group()
    add_option(g, ("--kamailio-version", "--version"), dest="version", default=None, metavar="V",
               help="a Kamailio version kamleak builds (default 6.0.1)")
    add_option(g, ("--kamailio-image", "--image"), dest="image", default=None, metavar="IMAGE",
               help="any image with a kamailio binary (never pulled)")
    g.add_argument("--kamailio-ref", default=None, metavar="REF",
                   help="Kamailio built from source at a tag, branch or commit (e.g. 5.8.5)")
    add_source_option(p.add_argument)


def one_target(args, default_version: str = "6.0.1") -> Target:
    """The Target `add_one_target_options` gave."""
    if args.image:
        return Target("image", args.image)
    if args.kamailio_ref:
        # The user's config's modules are built too (a source build has only what is asked for).
        return Target("source", args.kamailio_ref, source=args.kamailio_source,
                      config=getattr(args, "config", None))
    return Target("version", images.canonical_version(args.version or default_version))


def add_source_option(add, what: str = "where --kamailio-ref builds come from") -> None:
    """--kamailio-source, one definition for the CLI's parsers (ADD: `p.add_argument`)
    and pytest's (ADD: `group.addoption`, the same signature)."""
    from kamleak.harness.stack.source_build import DEFAULT_SOURCE, SOURCE_ENV

    add("--kamailio-source", default=None, metavar="URL|PATH",
        help=f"{what}: a git URL, a local clone or a .tar.gz of one (default: ${SOURCE_ENV}, "
             f"else {DEFAULT_SOURCE.removeprefix('https://').removesuffix('.git')})")
