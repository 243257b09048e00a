"""``python -m imgnb worker ...`` / ``python -m imgnb status ...``: the same as the ``imgnb`` script."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
