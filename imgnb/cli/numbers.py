"""The argparse ``type`` of the commands' integer options: one message for every such option."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["integer"]


def integer(least: int) -> Callable[[str], int]:
    """``type=integer(1)``: an integer >= ``least``, else a usage error saying so (exit status 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {least}")
        return value

    return parse
