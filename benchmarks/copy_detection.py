#!/usr/bin/env python
"""Retrieval benchmarks: copy detection (Copydays-style), class-level retrieval on Open Clip Art, and bytes
per vector vs mAP (the same as `offshelf bench retrieval`; protocol in offshelf/bench/retrieval.py and
docs/retrieval.md). Descriptors are cached in the shared benchmark stores, so later runs take minutes.
"""

import sys

from offshelf.bench.retrieval import main

if __name__ == "__main__":
    sys.exit(main())
