"""``python -m etha.agent [--] CMD ARGS...``: see :mod:`etha.agent.agent`."""

from __future__ import annotations

import sys

from etha.agent.agent import main

if __name__ == "__main__":
    sys.exit(main())
