"""Model upgrades: maps between an old and a new model's spaces, fitting them, relative representations,
searching an old store with new-model queries, and the backfill that switches a store to the new model."""

from offshelf.upgrade.backfill import UpgradeJob, upgrade_in_background, upgrade_index
from offshelf.upgrade.fitting import evaluate_alignment, fit_alignment, paired_vectors
from offshelf.upgrade.maps import METHODS, AlignmentMap, load_alignment, save_alignment
from offshelf.upgrade.mixed import AlignedSearcher, MixedSearcher, aligned_search
from offshelf.upgrade.relative import RelativeRepresentation

__all__ = [
    "METHODS",
    "AlignedSearcher",
    "AlignmentMap",
    "MixedSearcher",
    "RelativeRepresentation",
    "UpgradeJob",
    "aligned_search",
    "evaluate_alignment",
    "fit_alignment",
    "load_alignment",
    "paired_vectors",
    "save_alignment",
    "upgrade_in_background",
    "upgrade_index",
]
