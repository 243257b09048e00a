"""Opening the database named on the command line, with every refusal as one line.

The store already turns a database that cannot be opened into a named ``DatabaseError``; what is
left for the command line is the text before that: a URL SQLAlchemy cannot parse, a database kind
it has no dialect for, a driver that is not installed. Messages never show a password.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DatabaseError, DatabaseURLError, NotADatabase, SchemaVersionError
from ..store import SQLStore
from .failures import BadArgument, StartFailed
from .text import one_line

__all__ = ["open_store"]


def _is_url(db: str) -> bool:
    return "://" in db  # as SQLStore reads it: anything else is an SQLite file path


def open_store(db: str, *, create: bool) -> SQLStore:
    """The store of ``db``. With ``create=False`` a missing SQLite file is refused rather than
    created (a typo must not leave an empty database behind)."""
    if not create and not _is_url(db) and not Path(db).expanduser().exists():
        raise BadArgument(f"no database at {db}")
    try:
        return SQLStore(db)
    except (NotADatabase, SchemaVersionError, DatabaseURLError) as exc:  # starting again cannot help
        raise BadArgument(one_line(str(exc))) from None
    except DatabaseError as exc:  # cannot connect, the server refused, a folder it cannot make
        raise StartFailed(one_line(str(exc))) from None
