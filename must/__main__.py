"""``python -m must``: the same command line as ``must``."""

import sys

from must.cli import main

sys.exit(main())
