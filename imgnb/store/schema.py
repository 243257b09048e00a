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
from ..core.validation import MAX_GROUP_LENGTH

__all__ = ["SCHEMA_VERSION", "DeviceRow", "JobRow", "MetaRow"]

SCHEMA_VERSION = 3  # 2: JSON as text on PostgreSQL (was JSONB); 3: PostgreSQL revisions from a sequence


class MetaRow(SQLModel, table=True):
    """One row: the schema version and the two counters every writer shares."""

    __tablename__ = "imgnb_meta"

    id: int = Field(default=1, primary_key=True)
    schema_version: int
    revision: int = 0  # bumped by every write transaction on SQLite (PostgreSQL: the sequence imgnb_revision)
    next_seq: int = 0  # the run-order number the next submitted job gets


class JobRow(SQLModel, table=True):
    __tablename__ = "imgnb_job"
    __table_args__ = (
        # the claim and the queued listing walk this index in run order
        sa.Index("imgnb_job_run_order", "status", *(sa.text(f"{n} DESC") if d else n for n, d in RUN_ORDER)),
        sa.Index("imgnb_job_revision", "revision"),
        sa.Index("imgnb_job_group", "group_name"),
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
    revision: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))


class DeviceRow(SQLModel, table=True):
    """The lock of one device: at most one job runs on it at a time, across processes."""

    __tablename__ = "imgnb_device"

    name: str = Field(primary_key=True, max_length=200)  # "host/cuda:0"
    owner: str | None = Field(default=None, max_length=200)
    lease_until: float | None = None
