import sys

from kamleak.harness.tools.soak.cli import main

sys.exit(main())
