"""``python -m etha.kvstore.server``: an alias of ``python -m etha.master``, the rendezvous
master, kept for the images built before it moved (their master pods run this module)."""

from __future__ import annotations

import sys

from etha.master.__main__ import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
