"""The database tables (SQLModel), shared by the SQLite and PostgreSQL stores.

Times are epoch seconds (float) so that both databases compare and index them the same way.
``params``, ``meta`` and ``images`` are JSON text written and read by imgnb itself, not the
databases' JSON types: PostgreSQL's JSONB rewrites numbers (``1e16`` comes back as an integer), and
text reads back byte for byte the same from either database.
``revision`` stamps every row with the number of the write transaction that last changed it:
other processes read ``WHERE revision > last_seen`` to see what changed, without rescanning.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from ..core.ordering import RUN_ORDER
from ..core.states import JobStatus
from ..core.validation import MAX_GROUP_LENGTH, MAX_MODEL_LENGTH

__all__ = [
    "COUNT_ROWS",
    "COUNT_TRIGGERS",
    "SCHEMA_VERSION",
    "SQLITE_STATUS_TRIGGER",
    "CountRow",
    "DeviceRow",
    "JobRow",
    "MetaRow",
]

# 2: JSON columns are text on PostgreSQL too (they were JSONB); 3: model, passed_over; 4: counts, history indexes;
# 5: PostgreSQL revisions from a sequence; 6: the lowest run-order number is a counter, not an index,
# and the finish-time index holds finished jobs only; 7: the work counter of SQLite's headless workers;
# 8: the run-order index holds queued jobs only
SCHEMA_VERSION = 8


class MetaRow(SQLModel, table=True):
    """One row: the schema version and the two counters every writer shares."""

    __tablename__ = "imgnb_meta"

    id: int = Field(default=1, primary_key=True)
    schema_version: int
    revision: int = 0  # bumped by every write transaction on SQLite (PostgreSQL: the sequence imgnb_revision)
    next_seq: int = 0  # the run-order number the next submitted job gets
    low_seq: int = 0  # no stored job's number is below it: a job moved to the front gets the ones under it
    # SQLite: the revision of the last write that may give a worker work (not a claim, finish,
    # progress or renewal: see SQLStore._bump), which headless workers watch (PostgreSQL: a channel)
    work_revision: int = 0


FINISHED = sa.text("finished_at IS NOT NULL")  # the jobs ``imgnb_job_finished`` holds
# the jobs ``imgnb_job_run_order`` holds; a query must state it, not bind it (see SQLStore's _IS_QUEUED)
QUEUED_LITERAL = f"'{JobStatus.QUEUED.value}'"
QUEUED_ONLY = f"status = {QUEUED_LITERAL}"


class JobRow(SQLModel, table=True):
    __tablename__ = "imgnb_job"
    __table_args__ = (
        # the claim and the queued listing walk this index in run order. Of queued jobs only, so that
        # a finish never touches it and a claim, a cancel or a retry changes one entry, not two;
        # status leads all the same: without it SQLite's planner chose the status index and a sort
        sa.Index(
            "imgnb_job_run_order",
            "status",
            *(sa.text(f"{n} DESC") if d else n for n, d in RUN_ORDER),
            sqlite_where=sa.text(QUEUED_ONLY),
            postgresql_where=sa.text(QUEUED_ONLY),
        ),
        sa.Index("imgnb_job_revision", "revision"),
        sa.Index("imgnb_job_group", "group_name"),
        # a page of one status by id, newest or oldest first, reads the page and not the table
        sa.Index("imgnb_job_status_id", "status", "id"),
        # pruning by age or "keep the last N", and the board's "recently finished": of finished jobs
        # only, so that submits, claims and retries never touch it (a tenth of a bulk retry's statement)
        sa.Index("imgnb_job_finished", "finished_at", "id", sqlite_where=FINISHED, postgresql_where=FINISHED),
        {"sqlite_autoincrement": True},  # never hand out a used id again, even after deletes
    )

    id: int | None = Field(
        default=None,
        sa_column=sa.Column(sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    )
    seq: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    status: str = Field(max_length=16)
    priority: int
    group_name: str | None = Field(default=None, max_length=MAX_GROUP_LENGTH)
    prompt: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    params: str = Field(sa_column=sa.Column(sa.Text, nullable=False))  # JSON
    seed: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    meta: str = Field(sa_column=sa.Column(sa.Text, nullable=False))  # JSON
    timeout: float | None = None
    max_retries: int
    attempts: int = 0
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    progress: float = 0.0
    images: str = Field(sa_column=sa.Column(sa.Text, nullable=False))  # JSON list of paths
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    run_at: float
    owner: str | None = Field(default=None, max_length=200)
    device: str | None = Field(default=None, max_length=200)
    lease_until: float | None = None
    cancel_requested: bool = False
    batch_key: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    batch: str | None = Field(default=None, max_length=200)
    model: str | None = Field(default=None, max_length=MAX_MODEL_LENGTH)  # NULL: the queue's only or first model
    # claims that took a later job of its priority first (model affinity): at most the affinity
    passed_over: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    revision: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))


class DeviceRow(SQLModel, table=True):
    """The lock of one device: at most one job runs on it at a time, across processes."""

    __tablename__ = "imgnb_device"

    name: str = Field(primary_key=True, max_length=200)  # "host/cuda:0"
    owner: str | None = Field(default=None, max_length=200)
    lease_until: float | None = None


class CountRow(SQLModel, table=True):
    """How many jobs are in each status, so a count costs the same at a million jobs as at ten
    (``GROUP BY status`` took 45 to 100 ms over a million rows on SQLite, measured here). Every
    status has its row from the start. ``SQLStore.add``, the one place jobs are inserted, counts
    its batch with one statement; the triggers below count every change of status and every
    delete, inside the write that makes it, whatever code makes it. (A row trigger on insert cost
    a quarter of the submit rate on SQLite, and a statement trigger runs per row of an executemany
    on PostgreSQL: hence the one statement in ``add``.)"""

    __tablename__ = "imgnb_count"

    status: str = Field(primary_key=True, max_length=16)
    n: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))


COUNT_ROWS = "INSERT INTO imgnb_count (status, n) VALUES " + ", ".join(f"('{s.value}', 0)" for s in JobStatus)
"""Every status's row, at zero (for a new database, and before a count is taken)."""

# SQLite: row triggers, each change one update of two counter rows (an upsert for a status that
# has no row: one written by something other than imgnb).
_SQLITE_ADD = "INSERT INTO imgnb_count (status, n) VALUES (NEW.status, 1) ON CONFLICT (status) DO UPDATE SET n = n + 1;"
_SQLITE_TAKE = "UPDATE imgnb_count SET n = n - 1 WHERE status = OLD.status;"
# PostgreSQL: statement triggers over the transition tables: a bulk change of 100,000 jobs updates
# each counter once, not 100,000 times. Counter rows are upserted in status order, one lock order.
# They count into parts, one per session modulo 16 (imgnb_count_part), added to imgnb_count when
# read: a counter row is locked until its transaction ends, and with one row per status every
# claim and finish of every process took turns on the 'processing' row (8 worker processes
# claimed fewer jobs a second than 1, measured here).
_PG_COUNT_PARTS = (
    "CREATE TABLE IF NOT EXISTS imgnb_count_part (status VARCHAR(16) NOT NULL, part INTEGER NOT NULL,"
    " n BIGINT NOT NULL, PRIMARY KEY (status, part))"
)
_PG_COUNT_FUNCTION = """
CREATE OR REPLACE FUNCTION imgnb_count_rows() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
  IF TG_OP = 'DELETE' THEN
    INSERT INTO imgnb_count_part AS c (status, part, n)
      SELECT status, mod(pg_backend_pid(), 16), -count(*) FROM old_rows GROUP BY status ORDER BY status
      ON CONFLICT (status, part) DO UPDATE SET n = c.n + EXCLUDED.n;
  ELSE
    -- most updates change no status (progress, leases): one cheap look, and nothing more
    PERFORM 1 FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id WHERE n.status <> o.status LIMIT 1;
    IF NOT FOUND THEN
      RETURN NULL;
    END IF;
    INSERT INTO imgnb_count_part AS c (status, part, n)
      SELECT status, mod(pg_backend_pid(), 16), sum(k) FROM (
        SELECT status, 1 AS k FROM new_rows UNION ALL SELECT status, -1 AS k FROM old_rows
      ) AS moved GROUP BY status HAVING sum(k) <> 0 ORDER BY status
      ON CONFLICT (status, part) DO UPDATE SET n = c.n + EXCLUDED.n;
  END IF;
  RETURN NULL;
END
$body$
"""


def _pg_trigger(event: str, tables: str) -> tuple[str, str]:
    name = f"imgnb_count_{event.lower()}"
    return (
        f"DROP TRIGGER IF EXISTS {name} ON imgnb_job",
        f"CREATE TRIGGER {name} AFTER {event} ON imgnb_job REFERENCING {tables}"
        " FOR EACH STATEMENT EXECUTE FUNCTION imgnb_count_rows()",
    )


SQLITE_STATUS_TRIGGER = (
    "imgnb_count_update",
    "CREATE TRIGGER IF NOT EXISTS imgnb_count_update AFTER UPDATE OF status ON imgnb_job"
    f" WHEN OLD.status IS NOT NEW.status BEGIN {_SQLITE_TAKE} {_SQLITE_ADD} END",
)
"""SQLite: the row trigger that counts changes of status: its name, and the statement making it."""

# the statements that keep imgnb_count, by dialect; each may run again harmlessly
COUNT_TRIGGERS: dict[str, tuple[str, ...]] = {
    "sqlite": (
        "DROP TRIGGER IF EXISTS imgnb_count_insert",
        SQLITE_STATUS_TRIGGER[1],
        f"CREATE TRIGGER IF NOT EXISTS imgnb_count_delete AFTER DELETE ON imgnb_job BEGIN {_SQLITE_TAKE} END",
    ),
    "postgresql": (
        _PG_COUNT_PARTS,
        _PG_COUNT_FUNCTION,
        "DROP TRIGGER IF EXISTS imgnb_count_insert ON imgnb_job",
        *_pg_trigger("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
        *_pg_trigger("DELETE", "OLD TABLE AS old_rows"),
    ),
}
