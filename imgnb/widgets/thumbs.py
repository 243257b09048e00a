"""Small thumbnails of stored images, for the widgets and the static HTML.

PNG for the card and the board; JPEG for the sweep grid, whose thousand thumbnails must stay small.
Cached by path, modification time, size and format: a board redrawn ten times a second must not
decode the same full-size image again each time.
"""

from __future__ import annotations

import base64
import io
import os
from functools import lru_cache

from PIL import Image

__all__ = ["THUMBNAIL_SIZE", "preview_jpeg", "thumbnail_png", "thumbnail_uri"]

THUMBNAIL_SIZE = 128


def thumbnail_png(path: str, size: int = THUMBNAIL_SIZE) -> bytes | None:
    """PNG bytes of the image at ``path``, shrunk to fit ``size`` x ``size``; None if unreadable."""
    return _cached(path, size, "PNG")


def _cached(path: str, size: int, fmt: str) -> bytes | None:
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return None
    return _thumbnail(path, mtime, size, fmt)


@lru_cache(maxsize=256)
def _thumbnail(path: str, mtime: int, size: int, fmt: str) -> bytes | None:
    try:
        with Image.open(path) as im:
            im.thumbnail((size, size))
            out = io.BytesIO()
            if fmt == "JPEG":  # a 64 px photo in about 1 KB, a seventh of its PNG
                im.convert("RGB").save(out, format="JPEG", quality=70, optimize=True)
            else:
                im.save(out, format=fmt)
    except (OSError, ValueError):
        return None
    return out.getvalue()


def thumbnail_uri(path: str, size: int = THUMBNAIL_SIZE, fmt: str = "PNG") -> str | None:
    """The thumbnail as a ``data:`` URI (``fmt`` "PNG" or "JPEG"), for HTML that must stand alone
    (nbviewer, exports) or go into a widget's HTML."""
    data = _cached(path, size, fmt)
    return None if data is None else f"data:image/{fmt.lower()};base64," + base64.b64encode(data).decode("ascii")


def preview_jpeg(image: Image.Image, size: int = THUMBNAIL_SIZE) -> bytes:
    """A live preview as small JPEG bytes: sent a few times a second while a job runs, so a few KB
    each (a PNG of a noisy latent is several times larger)."""
    small = image.copy()
    small.thumbnail((size, size))
    out = io.BytesIO()
    small.convert("RGB").save(out, format="JPEG", quality=80)
    return out.getvalue()
