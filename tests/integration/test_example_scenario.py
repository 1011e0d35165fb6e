"""The README's "Write your own scenario" example runs outside the checkout.

Copied to a temporary directory (no conftest, no pyproject of ours), run by
pytest as a user would: the plugin comes from the installed package's entry
point, and its markers are registered (an unknown mark is an error here).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "test_my_scenario.py"


def test_the_documented_example_passes_outside_the_checkout(tmp_path, kamleak_images):
    work = tmp_path / "my-project"
    work.mkdir()
    shutil.copy(EXAMPLE, work / EXAMPLE.name)
    assert ROOT not in work.parents
    env = {k: v for k, v in os.environ.items() if k not in ("KAMLEAK_RUN_DIR_NAME", "PYTHONPATH")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", EXAMPLE.name, "--kamailio-version", "6.1.5",
         "--transport", "ws", "-W", "error::pytest.PytestUnknownMarkWarning",
         "-p", "no:cacheprovider", "--rootdir", str(work)],
        cwd=work, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout and "PytestUnknownMarkWarning" not in proc.stdout
