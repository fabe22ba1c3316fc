"""Near-duplicates in a collection: a threshold calibrated on the user's own images, range search, groups that
do not chain, incremental runs, and moves that can be undone. See docs/dedup.md.

    report = dedup(["photos/"], "feats/")                  # DedupReport: threshold, groups, calibration, ...
    report = dedup(["photos/"], "feats/", move_to="dups/") # also moves the duplicates, with a log
    restore("dups/offshelf-dedup-....json")                # puts them back, and back into the store
"""

from offshelf.dedup.calibrate import DEFAULT_TARGET_PRECISION, Calibration, calibrate, copy_edits, precision_threshold
from offshelf.dedup.groups import KEEP_POLICIES, Group, form_groups, keep_order
from offshelf.dedup.pairs import exact_pairs, index_pairs
from offshelf.dedup.run import DedupReport, dedup, restore

__all__ = [
    "DEFAULT_TARGET_PRECISION", "KEEP_POLICIES", "Calibration", "DedupReport", "Group", "calibrate", "copy_edits",
    "dedup", "exact_pairs", "form_groups", "index_pairs", "keep_order", "precision_threshold", "restore",
]
