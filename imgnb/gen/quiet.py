"""Build pipelines without transformers' and diffusers' notices reaching the user's output.

Importing a diffusers pipeline class makes transformers log, once per process, notices such as
"``CLIPImageProcessor`` requires torchvision (not installed)": harmless for imgnb's tiny pipelines,
and a red box in the first cell of every notebook. ``quiet_logs()`` raises the two libraries' own
logger levels for the duration of a build and puts them back afterwards, so that the user's
logging configuration is what it was for everything, these two libraries included.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_logs"]


def _library_loggers() -> list[logging.Logger]:
    """The transformers and diffusers root loggers, after each library configured its own.

    Each library sets its root logger's level the first time one of its loggers is asked for. Were
    that first time inside ``quiet_logs()``, the library would overwrite the raised level and the
    exit would then restore a level from before the library set it up: ask first.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.get_logger()
    diffusers_logging.get_logger()
    return [logging.getLogger("transformers"), logging.getLogger("diffusers")]


@contextmanager
def quiet_logs() -> Iterator[None]:
    """Only errors from transformers and diffusers while the block runs; their levels restored after.

    Loggers are process-wide: a warning another thread logs through these two libraries during the
    block (a build takes well under a second) is dropped as well. A child logger the user set a
    level on explicitly keeps that level and still speaks.
    """
    loggers = _library_loggers()
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
