"""Images: finding files, reading and decoding them, the views a model takes, edited copies, sample photos."""

from offshelf.images.decode import (
    DECODE_FORMATS,
    DEFAULT_MAX_PIXELS,
    JPEG_DECODERS,
    RESAMPLE_REDUCING_GAP,
    FileBytes,
    ImageDecodeError,
    JpegDecoder,
    dct_scale,
    decode_image,
    read_file,
)
from offshelf.images.find import IMAGE_EXTENSIONS, find_images
from offshelf.images.samples import real_photos
from offshelf.images.views import (
    RESAMPLE_FILTERS,
    ROTATION_DEGREES,
    VIEW_COUNTS,
    Augment,
    crop_boxes,
    fit_image,
    inscribed_scale,
    make_views,
    views_min_size,
)

__all__ = [
    "DECODE_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "JPEG_DECODERS",
    "RESAMPLE_FILTERS",
    "RESAMPLE_REDUCING_GAP",
    "ROTATION_DEGREES",
    "VIEW_COUNTS",
    "Augment",
    "FileBytes",
    "ImageDecodeError",
    "JpegDecoder",
    "crop_boxes",
    "dct_scale",
    "decode_image",
    "find_images",
    "fit_image",
    "inscribed_scale",
    "make_views",
    "read_file",
    "real_photos",
    "views_min_size",
]
