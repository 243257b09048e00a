"""Opening databases: which SQLite builds carry the WAL-reset fix, and the settings we rely on."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from imgnb import JobStatus
from imgnb.core.records import Claim, Finish
from imgnb.store import SQLStore
from imgnb.store.engine import sqlite_has_wal_reset_fix, to_url
from tests.test_store_contract import NOW, spec


@pytest.mark.parametrize(
    ("version", "fixed"),
    [
        ("3.40.1", False),  # what Python links on this machine
        ("3.44.5", False),
        ("3.44.6", True),  # back-ported fix on the 3.44 branch
        ("3.45.0", False),  # later branches were affected again until their own fix
        ("3.50.6", False),
        ("3.50.7", True),
        ("3.51.2", False),
        ("3.51.3", True),
        ("3.53.0", True),
    ],
)
def test_wal_reset_fix_versions(version: str, fixed: bool) -> None:
    assert sqlite_has_wal_reset_fix(version) is fixed


def test_sqlite_settings(tmp_path: object) -> None:
    store = SQLStore(f"{tmp_path}/deep/er/jobs.db")  # WAL is set by the store, once the file is known to be imgnb's
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA mmap_size").scalar() == 0
    store.close()
    assert to_url("postgresql+psycopg://u@h/db").get_backend_name() == "postgresql"
    assert isinstance(to_url("x.db"), sa.URL)


def test_a_finish_and_the_claim_after_it_are_one_commit_on_sqlite(tmp_path: object) -> None:
    """A commit is most of what a finish or a claim costs a SQLite file: a worker's finishes
    that wait for its next claim go into the claim's."""
    store = SQLStore(f"{tmp_path}/jobs.db")
    commits: list[object] = []
    sa.event.listen(store.engine, "commit", commits.append)
    try:
        first, second, third = store.add([spec("a"), spec("b"), spec("c")], batch_keys=[None] * 3, now=NOW)
        store.claim(owner="w", device="d", now=NOW, lease=10)
        commits.clear()
        store.finish(first.id, owner="w", status=JobStatus.COMPLETE, now=NOW)
        store.claim(owner="w", device="d", now=NOW, lease=10)
        assert len(commits) == 2
        commits.clear()
        finished, claimed = store.finish_and_claim(
            [Finish(second.id, "w", JobStatus.COMPLETE, NOW)], Claim(owner="w", device="d", now=NOW, lease=10)
        )
        assert len(commits) == 1
        assert [r.id for r in claimed] == [third.id] and [r.status for r in finished if r] == [JobStatus.COMPLETE]
    finally:
        store.close()
