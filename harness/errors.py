"""Errors kamleak reports to people.

Every error the harness raises on purpose is a `KamleakError`: one line that
names the cause and, where there is one, the fix.  The CLI prints it as is and
exits non-zero; the pytest plugin turns it into a test *error* (not a failure:
a failure is reserved for a leak verdict).
"""

from __future__ import annotations


class KamleakError(Exception):
    """A problem the user can act on: `cause` and an optional `fix`."""

    exit_code = 2

    def __init__(self, cause: str, fix: str | None = None):
        self.cause = cause.rstrip(".")
        self.fix = fix.rstrip(".") if fix else None
        super().__init__(self.line())

    def line(self) -> str:
        return f"{self.cause}; {self.fix}" if self.fix else self.cause


class DockerUnavailable(KamleakError):
    """No Docker engine answers and we may not (or cannot) start one."""


class ImageError(KamleakError):
    """An image is missing, cannot be built, or is not what we need."""


class ServerError(KamleakError):
    """Kamailio or Asterisk failed to start, refused its config or died."""

    def __init__(self, cause: str, fix: str | None = None, log: str = ""):
        super().__init__(cause, fix)
        self.log = log


class RPCError(KamleakError):
    """Kamailio's JSON-RPC endpoint could not answer a call properly."""


class ScenarioError(KamleakError):
    """A scenario could not be run to the point where a verdict is possible."""


class UsageError(KamleakError):
    """Bad input: unknown version, variant, option value, path..."""


class NotApplicable(Exception):
    """The variant cannot run on this Kamailio (it refused the config).

    Not a KamleakError: nothing to fix; the caller skips the variant.
    """
