import sys

from etha.cli import main

sys.exit(main())
