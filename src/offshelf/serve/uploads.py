"""Uploaded images: the format sniffed from the bytes, server-made file names, and thumbnails of stored items."""

from __future__ import annotations

import io
import re
import threading
from collections import OrderedDict

from PIL import Image

from offshelf.images import decode_image, read_file

UPLOADS_DIR = "uploads"
_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "TIFF": "tif", "JPEG2000": "jp2"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
NAME_CHARS = 48


def sniff_extension(data: bytes) -> str:
    """The file extension of the format Pillow finds in the bytes (never the client's content type)."""
    with Image.open(io.BytesIO(data)) as image:
        fmt = image.format or "bin"
    return _EXTENSIONS.get(fmt, fmt.lower())


def upload_name(sha256: str, extension: str, name: str | None = None) -> str:
    """A server-made file name: the content's sha256 (hex) prefix, then the client's name in safe letters.

    The client's name can never choose a folder or the extension: only its last path component is kept, without
    its extension; every character other than letters, digits, `.`, `_` and `-` becomes `-`, leading and trailing
    dots and dashes are dropped, and the length is capped.
    """
    digest = sha256[:16]
    stem = ""
    if name:
        base = re.split(r"[\\/]", name)[-1]  # the last component only: a client never names a folder
        base = base.rsplit(".", 1)[0] if "." in base[1:] else base
        stem = _UNSAFE.sub("-", base).strip("-.")[:NAME_CHARS]
    return f"{digest}-{stem}.{extension}" if stem else f"{digest}.{extension}"


def make_thumbnail(path: str, size: int, max_pixels: int) -> bytes:
    """A JPEG at most `size` pixels on its long side; ImageDecodeError if the file is gone or unreadable."""
    image = decode_image(read_file(path).data, min_size=size, max_pixels=max_pixels)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, optimize=True)
    return out.getvalue()


class ThumbnailCache:
    """Thumbnails kept in memory, least recently used dropped first beyond `max_bytes`; thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...]) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: tuple[object, ...], data: bytes) -> None:
        with self._lock:
            if key in self._items or len(data) > self.max_bytes:
                return
            self._items[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)
