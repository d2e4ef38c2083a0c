"""``python -m nightact.cli``: the same as the ``nightact`` command."""

import sys

from nightact.cli import main

sys.exit(main())
