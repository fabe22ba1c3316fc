#!/usr/bin/env python
"""Embedding throughput: model-only vs the offshelf pipeline vs a naive loop (same as `offshelf bench embed`).

The method is described in `offshelf/bench/throughput.py`; results go to benchmarks/results/.
"""

import sys

from offshelf.bench.throughput import main

if __name__ == "__main__":
    sys.exit(main())
