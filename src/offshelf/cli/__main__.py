"""`python -m offshelf.cli`: the same as the `offshelf` command."""

import sys

from offshelf.cli import main

sys.exit(main())
