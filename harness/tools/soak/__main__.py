from __future__ import annotations

import sys

from kamleak.harness.tools.soak.cli import main

sys.exit(main())
