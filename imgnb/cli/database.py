"""Opening the database named on the command line, with every refusal as one line.

The store already turns a database that cannot be opened into a named ``DatabaseError``; what is
left for the command line is the text before that: a URL SQLAlchemy cannot parse, a database kind
it has no dialect for, a driver that is not installed. Messages never show a password.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from ..errors import DatabaseError, NotADatabase, SchemaVersionError
from ..store import SQLStore
from .failures import BadArgument, StartFailed
from .text import one_line

__all__ = ["open_store"]


def _is_url(db: str) -> bool:
    return "://" in db  # as SQLStore reads it: anything else is an SQLite file path


def _label(db: str) -> str:
    if not _is_url(db):
        return db
    try:
        return sa.make_url(db).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):  # an unparsable URL or port
        return "the database URL given"


def open_store(db: str, *, create: bool) -> SQLStore:
    """The store of ``db``. With ``create=False`` a missing SQLite file is refused rather than
    created (a typo must not leave an empty database behind)."""
    if not create and not _is_url(db) and not Path(db).expanduser().exists():
        raise BadArgument(f"no database at {db}")
    label = _label(db)
    try:
        return SQLStore(db)
    except (NotADatabase, SchemaVersionError) as exc:  # the wrong file or version: starting again cannot help
        raise BadArgument(one_line(str(exc))) from None
    except DatabaseError as exc:  # cannot connect, or the server refused: it may answer later
        raise StartFailed(one_line(str(exc))) from None
    except sa.exc.NoSuchModuleError as exc:
        raise BadArgument(f"cannot open {label}: {one_line(str(exc))}") from None
    except (sa.exc.ArgumentError, ValueError):  # unparsable; SQLAlchemy's message repeats the URL, password included
        raise BadArgument(
            f"{label} is not an SQLite file path or a URL like postgresql+psycopg://user@host/db"
        ) from None
    except OSError as exc:  # the file's folder cannot be made or read
        raise StartFailed(f"cannot open {label}: {one_line(str(exc))}") from None
    except ImportError as exc:
        raise BadArgument(
            f"cannot open {label}: its driver is not installed ({one_line(str(exc))}); "
            "for PostgreSQL use postgresql+psycopg://... with `pip install imgnb[postgres]`"
        ) from None
