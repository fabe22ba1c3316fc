"""Data that is available offline: real photographs, Fashion-MNIST and Open Clip Art (see docs/datasets.md)."""

from .fashion_mnist import FASHION_MNIST_CLASSES, fashion_mnist
from .labeled import LabeledSet, datasets_root
from .openclipart import OPENCLIPART_CATEGORIES, openclipart, openclipart_categories
from .photos import build_photo_set, build_wallpaper_set, real_photos, wallpapers

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
