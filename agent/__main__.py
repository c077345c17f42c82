"""``python -m agent run --config PATH``: the same as ``edgefleet agent run``."""

import sys

from edgefleet.shared.cli import main

sys.exit(main(["agent", *sys.argv[1:]]))
