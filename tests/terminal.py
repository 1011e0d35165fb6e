"""What a test that presses Ctrl-C on kamleak needs of the child it starts."""

from __future__ import annotations

import signal


def interruptible() -> None:
    """Child setup (Popen's preexec_fn): SIGINT at its default, as at a terminal. A shell
    without job control starts background jobs with SIGINT ignored, and a Python started so
    never raises KeyboardInterrupt; these tests are about what kamleak does on Ctrl-C, not
    about how the suite itself was launched (a make test run as `cmd &` failed the explore
    and reduce Ctrl-C tests on this alone)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_when(proc, ready, *, timeout: float = 240.0) -> tuple[bytes, bytes]:
    """Read PROC's stderr until READY(stderr so far) holds (asked at least once a second), press
    Ctrl-C (SIGINT) and let it finish: (stdout, all of stderr).  The child is killed if the wait
    or its exit fails, so a failing test leaves no process behind."""
    import os
    import selectors
    import time

    err = b""
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while not ready(err):
            assert time.monotonic() < deadline and proc.poll() is None, err.decode()[-2000:]
            if sel.select(timeout=1):
                err += os.read(proc.stderr.fileno(), 65536)
        proc.send_signal(signal.SIGINT)
        out, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out, err + rest
