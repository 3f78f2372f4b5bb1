"""``python -m spoold.cli``: the spoold command, as the tests and the daemon's children run it."""

import sys

from spoold.cli import main

sys.exit(main())
