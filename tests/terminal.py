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
