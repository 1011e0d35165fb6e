"""`kamleak`: the command line.

Every failure the user can act on ends as one line on stderr and a non-zero
exit; no traceback reaches the user (KAMLEAK_DEBUG=1 shows it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import containers, engine, images
from .errors import KamleakError


def _say(msg: str) -> None:
    print(f"kamleak: {msg}", file=sys.stderr, flush=True)


def cmd_setup(args) -> int:
    """Engine up, leftovers reaped, images built: everything a run needs."""
    t0 = time.monotonic()
    client = engine.client(start=args.start_engine or None)
    _say(f"engine: {engine.engine_summary(client)}")
    containers.reap_leftovers(client, log=_say)
    versions = args.version or list(images.KAMAILIO_SUITES)
    specs = [images.asterisk_spec()] + [images.kamailio_spec(v) for v in versions]
    tags = images.build_all(client, specs)
    _say(f"ready in {time.monotonic() - t0:.0f} s: {', '.join(tags)}")
    return 0


def cmd_images(args) -> int:
    client = engine.client()
    for spec in [images.asterisk_spec()] + [images.kamailio_spec(v) for v in images.KAMAILIO_SUITES]:
        state = "up to date" if images.is_current(client, spec) else "needs a build"
        print(f"{spec.tag:28} {spec.base:22} {state}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kamleak",
                                description="Leak-detection harness for real Kamailio (tm, issue 4140).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("setup", help="start/find the Docker engine and build the images")
    s.add_argument("--version", action="append",
                   help="Kamailio version(s) to build (default: all)")
    s.add_argument("--start-engine", action="store_true", default=None,
                   help="start a private dockerd if none answers (needs root)")
    s.set_defaults(func=cmd_setup)
    i = sub.add_parser("images", help="list the images kamleak builds and whether they are current")
    i.set_defaults(func=cmd_images)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KamleakError as exc:
        if os.environ.get("KAMLEAK_DEBUG"):
            raise
        _say(exc.line())
        return exc.exit_code
    except KeyboardInterrupt:
        containers.remove_all_live()
        _say("interrupted; our containers were removed")
        return 130


if __name__ == "__main__":
    sys.exit(main())
