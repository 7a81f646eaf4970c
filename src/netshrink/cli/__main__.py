"""`python -m netshrink.cli`: the same as the `netshrink` command."""

import sys

from . import main

sys.exit(main())
