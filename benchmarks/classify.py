#!/usr/bin/env python
"""The paper's recognition table on the offline data (the same as `offshelf bench classify`; protocol in
offshelf/bench/classify.py and docs/classification.md). Results: benchmarks/results/paper_table.*"""

import sys

from offshelf.bench.classify import main

if __name__ == "__main__":
    sys.exit(main(prog="benchmarks/classify.py"))
