"""Image files: one PNG per image, in a folder per database, carrying how it was made.

Each PNG holds, as text chunks, the job's prompt, seed and every generation parameter, plus what
the generator put in the image's ``info`` (model, scheduler), and an ``imgnb`` chunk with all of it
as JSON, so an image found alone on disk can be reproduced.

PNG text is Latin-1 (``tEXt``) or UTF-8 (``iTXt``), under a Latin-1 keyword of 1 to 79 characters:
other text goes into ``iTXt``, and a parameter whose name cannot be a keyword (``ключ``) is found in
the ``imgnb`` chunk only. Validation has already refused what UTF-8 cannot hold.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo

from ..core.records import GenerationRequest

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["delete_images", "load_images", "save_images"]

log = logging.getLogger("imgnb")


def _is_keyword(name: str) -> bool:
    """A PNG text chunk's keyword: 1 to 79 printable Latin-1 characters."""
    return 0 < len(name) < 80 and all(" " <= c <= "~" or "\xa1" <= c <= "\xff" for c in name)


def png_text(request: GenerationRequest, image: Image) -> dict[str, str]:
    """Keyword -> text for the PNG's text chunks."""
    own = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    text = dict(own)
    text.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in request.params.items()})
    text.update(prompt=request.prompt, seed=str(request.seed), job_id=str(request.job_id))
    text = {k: v for k, v in text.items() if _is_keyword(k)}
    text["imgnb"] = json.dumps(
        {
            "job_id": request.job_id,
            "prompt": request.prompt,
            "seed": request.seed,
            "params": request.params,
            **own,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return text


def _png_info(text: dict[str, str]) -> PngInfo:
    info = PngInfo()
    for key, value in text.items():
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            info.add_itxt(key, value)
        else:
            info.add_text(key, value)
    return info


def save_images(folder: Path, request: GenerationRequest, images: Sequence[Image]) -> list[str]:
    """Write the images of one job; returns their absolute paths. Each file is written under a
    temporary name and renamed, so a crash never leaves a half-written PNG under the final name.
    The folder is made by the first write that finds it missing (not looked for at each job).

    The PNG is encoded in memory and written with one system call: PIL's own file handling (a
    look for the file, a buffered file object) took half of a small image's 0.3 ms here."""
    where = os.path.abspath(folder)
    paths = []
    for k, image in enumerate(images):
        encoded = io.BytesIO()
        image.save(encoded, format="PNG", pnginfo=_png_info(png_text(request, image)))
        stem = os.path.join(where, f"job{request.job_id:06d}_{k}")
        path, tmp = stem + ".png", stem + ".tmp"
        try:
            _write(tmp, encoded.getbuffer())
        except FileNotFoundError:
            os.makedirs(where, exist_ok=True)
            _write(tmp, encoded.getbuffer())
        os.replace(tmp, path)
        paths.append(path)
    return paths


def _write(path: str, data: memoryview) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)


def load_images(paths: Sequence[str]) -> list[Image]:
    images = []
    for path in paths:
        with PILImage.open(path) as im:
            im.load()
            images.append(im.copy() if im.mode == "RGB" else im.convert("RGB"))
    return images


def delete_images(paths: Sequence[str]) -> int:
    """Delete the image files of pruned jobs; returns how many were deleted. One already gone is
    skipped, and one that cannot be deleted is logged, not raised: the jobs are gone already."""
    deleted = 0
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("imgnb: could not delete the image %s of a pruned job: %s", path, exc.strerror)
            continue
        deleted += 1
    return deleted
