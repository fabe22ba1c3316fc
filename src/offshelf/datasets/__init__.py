"""Data that is available offline: real photographs and sets built from them (see `photos`)."""

from .photos import build_photo_set, build_wallpaper_set, real_photos, wallpapers

__all__ = ["build_photo_set", "build_wallpaper_set", "real_photos", "wallpapers"]
