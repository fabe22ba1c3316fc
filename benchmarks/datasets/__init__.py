"""Data that is available offline: real photographs, Fashion-MNIST and Open Clip Art (see docs/datasets.md)."""

from benchmarks.datasets.fashion_mnist import FASHION_MNIST_CLASSES, fashion_mnist
from benchmarks.datasets.labeled import LabeledSet, datasets_root
from benchmarks.datasets.openclipart import OPENCLIPART_CATEGORIES, openclipart, openclipart_categories
from benchmarks.datasets.photos import build_photo_set, build_wallpaper_set, wallpapers
from offshelf.images import real_photos

__all__ = [
    "FASHION_MNIST_CLASSES",
    "OPENCLIPART_CATEGORIES",
    "LabeledSet",
    "build_photo_set",
    "build_wallpaper_set",
    "datasets_root",
    "fashion_mnist",
    "openclipart",
    "openclipart_categories",
    "real_photos",
    "wallpapers",
]
