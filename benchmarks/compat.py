#!/usr/bin/env python
"""Model upgrades without re-indexing: cross-model retrieval M(new mapped, old) against M(old, old) and
M(new, new) on copy detection and Open Clip Art class retrieval, per alignment method, and its curve over the
number of training pairs (the same as `offshelf bench compat`; protocol in offshelf/bench/compat.py and
docs/upgrade.md). Descriptors come from the shared benchmark stores of `offshelf bench retrieval`.
"""

import sys

from offshelf.bench.compat import main

if __name__ == "__main__":
    sys.exit(main())
