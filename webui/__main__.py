"""``python -m webui``: the same as the ``spoold-webui`` command."""

import sys

from webui.server import main

sys.exit(main())
