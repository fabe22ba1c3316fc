"""Linear probes: the scikit-learn estimator, labels for a store's items, and the fit / predict / eval workflows."""

from offshelf.probe.estimator import LinearProbe, check_compatible, evaluate, load_probe, save_probe
from offshelf.probe.labels import LabelAlignment, LabelSource, align_labels, labels_from_folders, read_labels_csv
from offshelf.probe.workflows import eval_store_probe, fit_store_probe, labelled_features, predict_images, predict_store
from offshelf.probe.zeroshot import zero_shot_labels

__all__ = [
    "LabelAlignment",
    "LabelSource",
    "LinearProbe",
    "align_labels",
    "check_compatible",
    "eval_store_probe",
    "evaluate",
    "fit_store_probe",
    "labelled_features",
    "labels_from_folders",
    "load_probe",
    "predict_images",
    "predict_store",
    "read_labels_csv",
    "save_probe",
    "zero_shot_labels",
]
