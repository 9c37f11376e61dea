"""``python -m autocomp``: the same as the ``autocomp`` command."""

import sys

from autocomp.cli import main

sys.exit(main())
