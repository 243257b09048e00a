"""``SQLStore``: the Store over SQLAlchemy, for SQLite files and PostgreSQL servers alike.

Every write transaction takes a revision first and stamps the rows it changes with it; a reader
that saw revision N has seen every change up to N. How, per database:

- SQLite: the ``imgnb_meta`` row's counter. It costs nothing there: ``BEGIN IMMEDIATE`` already
  serialises writers, so revisions are committed in the order they were handed out.
- PostgreSQL: the sequence ``imgnb_revision``, so that writers do not queue on one row (with the
  counter row, 8 worker processes claimed and finished fewer jobs per second than 1: each held
  the row across its round trips). Revisions then commit out of order, so readers read only up to
  a *watermark*: below the revision of every write still in flight. A write registers itself
  before it draws its revision, with a shared advisory lock keyed by a lower bound of that revision
  (``_PG_DRAW``); a reader reads how far the sequence has gone, then the lowest registered bound
  (``_watermark``). A row's revision only grows (the trigger ``imgnb_job_restamp`` gives a row
  changed by a transaction that drew its revision earlier a new one). Writes that read then
  write a row lock it first (``FOR UPDATE``); rows are locked devices first, jobs by id, so two
  writers never deadlock. Each write announces its revision at commit (``NOTIFY imgnb``) for
  listeners (``listen``), and again on ``imgnb_work`` unless it only took or settled work (a
  claim, a finish, progress, a lease renewal): a headless worker listens there alone, and so
  is not woken by the other workers' claims and finishes, two per job each.

Every database failure leaves this class as a ``DatabaseError`` naming its cause (``_guarded``).
A row imgnb cannot decode (written by something else, or by an older imgnb without limits) reads as
empty and fails its own job when claimed; it never stops the claim or the watcher.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..core.affinity import Waiting, pick
from ..core.editing import EDITABLE_STATUSES, Place, Renumbering, check_editable, check_target, move_before, new_seqs
from ..core.merge import merge_patch
from ..core.ordering import RUN_ORDER, OrderKey, order_key, order_keys
from ..core.records import AddedJobs, BulkChange, Claim, Finish, JobRecord, JobSpec, RemovedJob, requeued
from ..core.retry import has_runs_left
from ..core.revisions import Run, unread_spans
from ..core.states import FINAL_STATUSES, JobStatus, check_transition
from ..core.validation import MAX_MODEL_LENGTH, json_data, validate_group, validate_job_id
from ..errors import DatabaseError, DatabaseURLError, JobNotFound, NotADatabase, SchemaVersionError
from .base import Store
from .engine import READ_ONLY, is_read_only, make_engine, to_url
from .notify import Listener, VersionWatcher
from .prepared import Prepared, Row
from .schema import (
    COUNT_ROWS,
    COUNT_TRIGGERS,
    QUEUED_LITERAL,
    SCHEMA_VERSION,
    SQLITE_STATUS_TRIGGER,
    CountRow,
    DeviceRow,
    JobRow,
    MetaRow,
)

__all__ = ["SQLStore"]

job = JobRow.__table__  # type: ignore[attr-defined]
counters = MetaRow.__table__  # type: ignore[attr-defined]
device_lock = DeviceRow.__table__  # type: ignore[attr-defined]
job_count = CountRow.__table__  # type: ignore[attr-defined]

_PG_INIT_LOCK = 0x1AB9  # advisory lock: two processes creating the schema at once take turns
_CHANNEL = "imgnb"  # PostgreSQL: every write transaction announces its revision here at commit
_WORK_CHANNEL = "imgnb_work"  # and here, unless quiet: it may give a worker work or a running job a stop
_IN_FLIGHT_KEYS = 0x1AB9 << 48  # PostgreSQL: advisory locks on keys + bound mark writes in flight

# PostgreSQL: the revisions' sequence, and the trigger that keeps a row's revision growing
_PG_REVISIONS = (  # as they run in a migration too: idempotent
    "CREATE SEQUENCE IF NOT EXISTS imgnb_revision",
    """CREATE OR REPLACE FUNCTION imgnb_job_restamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.revision < OLD.revision THEN
        NEW.revision := nextval('imgnb_revision');
    END IF;
    RETURN NEW;
END
$$""",
    "DROP TRIGGER IF EXISTS imgnb_job_restamp ON imgnb_job",
    "CREATE TRIGGER imgnb_job_restamp BEFORE UPDATE ON imgnb_job FOR EACH ROW EXECUTE FUNCTION imgnb_job_restamp()",
)

_HISTORY_INDEXES = ("imgnb_job_status_id", "imgnb_job_finished")


_DIALECTS = {"postgresql": postgresql.dialect, "sqlite": sqlite.dialect}  # to write migrations' DDL


def _create_index(name: str, dialect: str) -> str:
    """The statement making the declared index ``name`` (``schema.JobRow``), if it does not exist."""
    (index,) = (ix for ix in job.indexes if ix.name == name)
    return str(sa.schema.CreateIndex(index, if_not_exists=True).compile(dialect=_DIALECTS[dialect]()))


def _history_schema(dialect: str) -> tuple[str, ...]:
    """Schema 4, from the declarations in ``schema``: the counts table, its triggers, its first
    counts, and the indexes that make pages, pruning and moves cheap. Each statement may run again."""
    return (
        str(sa.schema.CreateTable(job_count, if_not_exists=True).compile(dialect=_DIALECTS[dialect]())),
        *COUNT_TRIGGERS[dialect],
        "DELETE FROM imgnb_count",
        *(("DELETE FROM imgnb_count_part",) if dialect == "postgresql" else ()),  # the recount below is whole
        COUNT_ROWS,
        "UPDATE imgnb_count SET n = (SELECT count(*) FROM imgnb_job WHERE imgnb_job.status = imgnb_count.status)",
        *(_create_index(name, dialect) for name in _HISTORY_INDEXES),
    )


# from version N to N + 1, by dialect: statements run in the upgrade transaction
_MIGRATIONS: dict[int, dict[str, tuple[str, ...]]] = {
    1: {  # JSON becomes imgnb's own text on PostgreSQL; metadata merges move to Python
        "postgresql": (
            "ALTER TABLE imgnb_job ALTER COLUMN params TYPE text USING params::text,"
            " ALTER COLUMN meta TYPE text USING meta::text, ALTER COLUMN images TYPE text USING images::text",
            "DROP FUNCTION IF EXISTS imgnb_jsonb_merge(jsonb, jsonb)",
        ),
        "sqlite": (),  # its JSON columns held text already
    },
    2: {  # jobs name their model; model affinity counts the claims that passed each job over
        dialect: (
            f"ALTER TABLE imgnb_job ADD COLUMN model VARCHAR({MAX_MODEL_LENGTH})",
            "ALTER TABLE imgnb_job ADD COLUMN passed_over INTEGER NOT NULL DEFAULT 0",
        )
        for dialect in ("postgresql", "sqlite")
    },
    3: {dialect: _history_schema(dialect) for dialect in ("postgresql", "sqlite")},  # counts, history indexes
    4: {  # PostgreSQL's revisions come from a sequence (see the module's docstring), numbered on;
        # its counts are kept in parts (schema.CountRow)
        "postgresql": (
            *COUNT_TRIGGERS["postgresql"],
            *_PG_REVISIONS,
            "SELECT setval('imgnb_revision', greatest(m.revision, j.revision, s.last_value, 1))"
            " FROM imgnb_meta m, (SELECT coalesce(max(revision), 0) AS revision FROM imgnb_job) j, imgnb_revision s",
        ),
        "sqlite": (),
    },
    5: {  # the lowest run-order number: a counter, where an index on seq cost every write of a job
        # (a tenth of a bulk retry's statement at 100,000 jobs) to serve moves to the front; the
        # finish-time index holds finished jobs only (another tenth)
        dialect: (
            "ALTER TABLE imgnb_meta ADD COLUMN low_seq INTEGER NOT NULL DEFAULT 0",
            "UPDATE imgnb_meta SET low_seq = (SELECT coalesce(min(seq), 0) FROM imgnb_job)",
            "DROP INDEX IF EXISTS imgnb_job_seq",
            "DROP INDEX IF EXISTS imgnb_job_finished",
            _create_index("imgnb_job_finished", dialect),
        )
        for dialect in ("postgresql", "sqlite")
    },
    6: {  # SQLite: the last write that may give a worker work, for headless workers (see _bump)
        dialect: (
            "ALTER TABLE imgnb_meta ADD COLUMN work_revision INTEGER NOT NULL DEFAULT 0",
            "UPDATE imgnb_meta SET work_revision = revision",
        )
        for dialect in ("postgresql", "sqlite")
    },
    7: {  # the run-order index holds queued jobs only (see schema.JobRow)
        dialect: ("DROP INDEX IF EXISTS imgnb_job_run_order", _create_index("imgnb_job_run_order", dialect))
        for dialect in ("postgresql", "sqlite")
    },
}

# Hot-path statements are built once, with bound parameters: building a statement with many
# values costs SQLAlchemy about 3x the time of running it on SQLite (measured here).
B = sa.bindparam  # parameters are named b_<name>: SQLAlchemy reserves column names in UPDATE


def _args(**values: Any) -> dict[str, Any]:
    return {f"b_{k}": v for k, v in values.items()}


_QUEUED = JobStatus.QUEUED.value
# queued, as the partial run-order index's condition says it (schema.QUEUED_ONLY): the planners
# use that index only for a query that states its condition, never for a bound parameter
_IS_QUEUED = job.c.status == sa.literal_column(QUEUED_LITERAL)
_PROCESSING = JobStatus.PROCESSING.value
_RUN_ORDER = tuple(job.c[name].desc() if descending else job.c[name].asc() for name, descending in RUN_ORDER)
_LAST_TO_RUN_FIRST = tuple(job.c[name].asc() if descending else job.c[name].desc() for name, descending in RUN_ORDER)
_FINAL = sorted(s.value for s in FINAL_STATUSES)
_WAITING = sorted(s.value for s in EDITABLE_STATUSES)
_NEWEST_FINISHED = (job.c.finished_at.desc(), job.c.id.desc())


def _finished(statuses: Collection[str], group: str | None, *, by_finish_time: bool = True) -> list[Any]:
    """The test for finished jobs of ``statuses`` (and ``group``). Read by finish time, they should
    come from ``imgnb_job_finished``; given ``status IN (...)``, SQLite's planner walks the status
    index and sorts every finished job instead (0.7 to 0.9 s at a million, measured here), so the
    status is then tested in a form no index serves (``status || ''``). One group's own index is
    the shorter walk: with a group the status is tested plainly."""
    finished = [job.c.finished_at.is_not(None)] if by_finish_time else []  # the index holds these only
    if group is None:
        return [*finished, job.c.status.concat("").in_(statuses) if by_finish_time else job.c.status.in_(statuses)]
    return [*finished, job.c.status.in_(statuses), job.c.group_name == validate_group(group)]


def _newest_finished(statuses: Collection[str], group: str | None, *columns: Any) -> sa.Select[Any]:
    """Finished jobs newest first, from the newest end of ``imgnb_job_finished``: a page costs the page."""
    query = sa.select(*columns).where(*_finished(statuses, group))
    return query.order_by(*_NEWEST_FINISHED)


_BUMP = {  # SQLite, by ``quiet``: a write that may give a worker work says so in work_revision
    quiet: sa.update(counters)
    .values(revision=counters.c.revision + 1, **({} if quiet else {"work_revision": counters.c.revision + 1}))
    .returning(counters.c.revision)
    for quiet in (False, True)
}
_TAKE_SEQ = sa.update(counters).values(next_seq=counters.c.next_seq + B("b_n")).returning(counters.c.next_seq)
_TAKE_LOW_SEQ = sa.update(counters).values(low_seq=counters.c.low_seq - B("b_n")).returning(counters.c.low_seq)
_REVISION = sa.select(counters.c.revision)
_WORK_REVISION = sa.select(counters.c.work_revision)
_GET = sa.select(job).where(job.c.id == B("b_id"))
_CHANGED = (
    sa.select(job).where(job.c.revision > B("b_rev"), job.c.revision <= B("b_upto")).order_by(job.c.revision, job.c.id)
)
_GET_LOCKED = _GET.with_for_update()  # in a write that reads, then writes, the row


def _pg_draw(*channels: str) -> sa.TextClause:
    """PostgreSQL: register as in flight (lower bound: the sequence's last value - 1), then draw,
    and announce the revision on ``channels`` at commit. OFFSET 0 keeps each step a subquery
    evaluated before the next."""
    announce = "".join(f", pg_notify('{channel}', drawn.revision::text)" for channel in channels)
    return sa.text(
        f"SELECT drawn.revision{announce} FROM ("
        " SELECT nextval('imgnb_revision') AS revision FROM ("
        "  SELECT pg_advisory_xact_lock_shared(:keys + last_value - 1) FROM imgnb_revision OFFSET 0"
        " ) AS registered OFFSET 0) AS drawn"
    )


_PG_DRAW = {False: _pg_draw(_CHANNEL, _WORK_CHANNEL), True: _pg_draw(_CHANNEL)}  # by ``quiet``
_PG_HANDED_OUT = sa.text(  # and whether the bookkeeping row is there, as SQLite's counter read tells
    "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END AS handed_out,"
    " EXISTS (SELECT 1 FROM imgnb_meta) AS kept FROM imgnb_revision"
)
_PG_IN_FLIGHT = sa.text(
    "SELECT min(((classid::bigint << 32) | objid::bigint) - :keys) AS bound FROM pg_locks"
    " WHERE locktype = 'advisory' AND objsubid = 1"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND classid::bigint BETWEEN (:keys >> 32) AND (:keys >> 32) + 65535"
)
_ADDED = (  # the columns ``add`` writes, each its own parameter: rows go to the driver's executemany as they are
    "seq", "status", "priority", "group_name", "prompt", "params", "seed", "meta", "timeout", "max_retries",
    "attempts", "progress", "images", "created_at", "updated_at", "run_at", "cancel_requested", "batch_key", "model",
    "passed_over", "revision",
)  # fmt: skip
_ADDED_BINDS = tuple(f"b_{name}" for name in _ADDED)
_INSERT = sa.insert(job).values(dict(zip(_ADDED, (B(name) for name in _ADDED_BINDS), strict=True)))
_INSERT_CHUNK = 32  # rows per statement of a big add: binding 32 rows at once is a fifth faster than one by one
_CHUNK_BINDS = tuple(f"{bind}_{i}" for i in range(_INSERT_CHUNK) for bind in _ADDED_BINDS)  # row by row
_INSERT_ROWS = sa.insert(job).values(
    [{name: B(f"{bind}_{i}") for name, bind in zip(_ADDED, _ADDED_BINDS, strict=True)} for i in range(_INSERT_CHUNK)]
)
_COUNT_ADDED = sa.update(job_count).where(job_count.c.status == B("b_status")).values(n=job_count.c.n + B("b_n"))
_COUNTS: dict[str, sa.Executable] = {
    "sqlite": sa.select(job_count.c.status, job_count.c.n),
    "postgresql": sa.text(
        "SELECT status, sum(n) AS n FROM (SELECT status, n FROM imgnb_count"
        " UNION ALL SELECT status, n FROM imgnb_count_part) AS counted GROUP BY status"
    ),
}
_IDS_OF_REVISION = sa.select(job.c.id, job.c.seq).where(job.c.revision == B("b_rev"))
_OF_REVISION = sa.select(job).where(job.c.revision == B("b_rev")).order_by(job.c.seq)  # what one write changed
_RENUMBER_BINDS = ("b_seq", "b_now", "b_rev", "b_id")  # a move's renumbering, a row per job
_RENUMBER = (
    sa.update(job).where(job.c.id == B("b_id")).values(seq=B("b_seq"), updated_at=B("b_now"), revision=B("b_rev"))
)
_ID_RANGE_OF_REVISION = sa.select(
    sa.func.min(job.c.id).label("low"), sa.func.max(job.c.id).label("high"), sa.func.count().label("n")
).where(job.c.revision == B("b_rev"))
_LOCK_DEVICE = (
    sa.update(device_lock)
    .where(
        device_lock.c.name == B("b_device"),
        sa.or_(
            device_lock.c.owner.is_(None), device_lock.c.owner == B("b_owner"), device_lock.c.lease_until < B("b_now")
        ),
    )
    .values(owner=B("b_owner"), lease_until=B("b_until"))
)
_RUNNING = {
    "status": _PROCESSING,
    "owner": B("b_owner"),
    "device": B("b_device"),
    "lease_until": B("b_until"),
    "attempts": job.c.attempts + 1,
    "started_at": B("b_now"),
    "updated_at": B("b_now"),
    "progress": 0.0,
    "cancel_requested": False,
    "batch": None,
    "revision": B("b_rev"),
}


@functools.cache
def _eligible(served: int | None) -> sa.ColumnElement[bool]:
    """Queued, and for a device that runs ``served`` named models, with no model or one of them,
    bound as ``b_m0``, ``b_m1``... (not an expanding list: the claim runs prepared, see ``Prepared``)."""
    queued: sa.ColumnElement[bool] = _IS_QUEUED
    if served is None:
        return queued
    names: list[sa.BindParameter[str]] = [B(f"b_m{i}") for i in range(served)]
    unnamed = job.c.model.is_(None)
    return sa.and_(queued, sa.or_(unnamed, job.c.model.in_(names)) if names else unnamed)


def _served_args(serves: Sequence[str] | None) -> dict[str, Any]:
    return {f"b_m{i}": name for i, name in enumerate(serves or ())}


@functools.cache
def _claim_head(served: int | None) -> sa.Update:
    return (
        sa.update(job)
        .where(
            job.c.id
            == sa.select(job.c.id)
            .where(_eligible(served))
            .order_by(*_RUN_ORDER)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        .values(**_RUNNING)
        .returning(*job.c)
    )


@functools.cache
def _window(served: int | None) -> sa.Select[Any]:
    """The head of the queue, as model affinity reads it."""
    return (
        sa.select(job.c.id, job.c.priority, job.c.model, job.c.passed_over)
        .where(_eligible(served))
        .order_by(*_RUN_ORDER)
        .limit(B("b_n"))
        .with_for_update(skip_locked=True)
    )


_CLAIM_ID = sa.update(job).where(job.c.id == B("b_id"), _IS_QUEUED).values(**_RUNNING).returning(*job.c)
_PASS_OVER = (  # not a change others need to see: the revision stays
    sa.update(job).where(job.c.id.in_(B("b_ids", expanding=True))).values(passed_over=job.c.passed_over + 1)
)
_CLAIM_MATES = (
    sa.update(job)
    .where(
        job.c.id.in_(
            sa.select(job.c.id)
            .where(_IS_QUEUED, job.c.batch_key == B("b_key"), job.c.attempts == 0)
            .order_by(*_RUN_ORDER)
            .limit(B("b_n"))
            .with_for_update(skip_locked=True)
        )
    )
    .values(**_RUNNING)
    .returning(*job.c)
)
_FINISH = (
    sa.update(job)
    .where(job.c.id == B("b_id"), job.c.owner == B("b_owner"), job.c.status == _PROCESSING)
    .values(
        status=B("b_status"),
        updated_at=B("b_now"),
        lease_until=None,
        error=B("b_error"),
        run_at=sa.func.coalesce(B("b_run_at", type_=sa.Float), job.c.run_at),
        finished_at=B("b_finished_at", type_=sa.Float),
        images=B("b_images", type_=sa.Text),
        progress=sa.func.coalesce(B("b_progress", type_=sa.Float), job.c.progress),
        revision=B("b_rev"),
    )
    .returning(*job.c)
)
_SET_PROGRESS = (
    sa.update(job)
    .where(job.c.id == B("b_id"), job.c.owner == B("b_owner"), job.c.status == _PROCESSING)
    .values(progress=B("b_progress"), updated_at=B("b_now"), revision=B("b_rev"))
)


# JSON as stored: ASCII (any database encoding holds it), compact, no NaN. Made once: json.dumps with
# options builds an encoder per call.
_dumps = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
_EMPTY = {"{}": dict, "[]": list}  # most rows: decoded without the decoder


def _loads(text: object, kind: type[dict[str, Any]] | type[list[Any]]) -> tuple[Any, str | None]:
    """A stored JSON column and None, or an empty ``kind`` and why it cannot be read."""
    if _EMPTY.get(text) is kind:  # type: ignore[call-overload]
        return kind(), None
    try:
        value = json.loads(text)  # type: ignore[arg-type]
    except (TypeError, ValueError, RecursionError) as exc:
        return kind(), f"{type(exc).__name__}: {exc}"[:200]
    if not isinstance(value, kind):
        return kind(), f"a JSON {type(value).__name__} where a {kind.__name__} belongs"
    return value, None


def _storable(text: str | None) -> str | None:
    """A message as both databases can store it: a generator's error may hold NUL or lone surrogates."""
    if text is None:
        return None
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _record(row: sa.Row[Any]) -> JobRecord:
    return _decode(row._mapping["id"], row._mapping)[0]


def _decode(job_id: int, m: Mapping[Any, Any]) -> tuple[JobRecord, str | None]:
    """The record of a row, and None or what of it cannot be read (read as empty)."""
    params, params_problem = _loads(m["params"], dict)
    metadata, meta_problem = _loads(m["meta"], dict)
    images, images_problem = _loads(m["images"], list)
    problems = [
        f"{name}: {p}"
        for name, p in (("params", params_problem), ("metadata", meta_problem), ("images", images_problem))
        if p is not None
    ]
    record = JobRecord(
        id=job_id,
        seq=m["seq"],
        status=JobStatus(m["status"]),
        priority=m["priority"],
        group=m["group_name"],
        prompt=m["prompt"],
        params=params,
        seed=m["seed"],
        metadata=metadata,
        timeout=m["timeout"],
        max_retries=m["max_retries"],
        attempts=m["attempts"],
        error=m.get("error"),
        progress=m["progress"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        started_at=m.get("started_at"),
        finished_at=m.get("finished_at"),
        run_at=m["run_at"],
        images=tuple(images),
        owner=m.get("owner"),
        device=m.get("device"),
        lease_until=m.get("lease_until"),
        cancel_requested=bool(m["cancel_requested"]),
        batch=m.get("batch"),
        model=m.get("model"),
        revision=m["revision"],
    )
    return record, "; ".join(problems) or None


def _requeued(now: float) -> dict[str, Any]:
    """``core.records.requeued`` as stored, with the claims passed over reset too."""
    values = {**requeued(now), "status": _QUEUED, "images": "[]", "passed_over": 0}
    return {name: values[name] for name in _REQUEUED_COLUMNS}


_REQUEUED_COLUMNS = (*requeued(0.0), "passed_over")


def _failed(*, grouped: bool) -> list[sa.ColumnElement[bool]]:
    """The jobs in error (of the group ``b_group``)."""
    failed = [job.c.status == JobStatus.ERROR.value]
    if grouped:
        failed.append(job.c.group_name == B("b_group"))
    return failed


def _failed_span(*, grouped: bool) -> sa.Select[Any]:
    """How many jobs are in error (of the group ``b_group``), and the lowest and highest ``seq``."""
    return sa.select(
        sa.func.count().label("n"), sa.func.min(job.c.seq).label("low"), sa.func.max(job.c.seq).label("high")
    ).where(*_failed(grouped=grouped))


def _requeue_failed(*, grouped: bool, renumber: bool) -> sa.Update:
    """Every job in error (of the group ``b_group``) with ``seq`` from ``b_low`` to ``b_high`` back
    in the queue, in their old order; returns each one's id, new ``seq`` and priority.

    ``renumber``: numbered ``b_before + 1``, ``b_before + 2``, ... Else each ``seq`` moves by
    ``b_shift``: a fifth of the statement's time at 100,000 jobs went to the numbering (a window
    over the rows, joined back). The range keeps a job that failed after the span was read out of
    it: it stays in error, and no new number lands outside the numbers handed out."""
    failed = [*_failed(grouped=grouped), job.c.seq.between(B("b_low"), B("b_high"))]
    values: dict[str, Any] = {name: B(f"b_{name}") for name in _REQUEUED_COLUMNS}
    if not renumber:
        return (
            sa.update(job)
            .where(*failed)
            .values(seq=job.c.seq + B("b_shift"), revision=B("b_rev"), **values)
            .returning(job.c.id, job.c.seq, job.c.priority)
        )
    ranked = (
        sa.select(job.c.id, (sa.func.row_number().over(order_by=(job.c.seq, job.c.id)) + B("b_before")).label("s"))
        .where(*failed)
        .subquery()
    )
    return (
        sa.update(job)
        .where(job.c.id == ranked.c.id)
        .values(seq=ranked.c.s, revision=B("b_rev"), **values)
        .returning(job.c.id, job.c.seq, job.c.priority)
    )


_FAILED_SPAN = {grouped: _failed_span(grouped=grouped) for grouped in (False, True)}
_REQUEUE_FAILED = {
    (grouped, renumber): _requeue_failed(grouped=grouped, renumber=renumber)
    for grouped in (False, True)
    for renumber in (False, True)
}
_CANCELLED_COLUMNS = ("status", "finished_at", "error", "updated_at", "revision")


def _cancel_waiting(*, grouped: bool) -> sa.Update:
    """Every job of one or two waiting statuses (``b_s1``, ``b_s2``: the same one twice for one),
    of the group ``b_group``, cancelled; returns each one's id. Two fixed parameters, not an
    ``IN`` list, so that it runs prepared: SQLAlchemy's result wrapping cost a tenth of the write
    at 100,000 jobs."""
    where = [job.c.status.in_([B("b_s1"), B("b_s2")])]
    if grouped:
        where.append(job.c.group_name == B("b_group"))
    return (
        sa.update(job).where(*where).values({name: B(f"b_{name}") for name in _CANCELLED_COLUMNS}).returning(job.c.id)
    )


_CANCEL_WAITING = {grouped: _cancel_waiting(grouped=grouped) for grouped in (False, True)}


class SQLStore(Store):
    """Jobs in an SQLite file or a PostgreSQL database, created and upgraded on open.

    An SQLite file this process may not write is opened read-only (``read_only``): reading and
    watching work, a change raises ``DatabaseError``, and no job is claimed from it.
    """

    def __init__(self, db: str | Path | sa.URL) -> None:
        self.url = db if isinstance(db, sa.URL) else to_url(db)
        self.read_only = is_read_only(self.url)
        try:
            self.engine = make_engine(self.url, read_only=self.read_only)
        except (sa.exc.SQLAlchemyError, ImportError) as exc:  # an unknown or missing driver
            where = self.url.render_as_string(hide_password=True)
            raise DatabaseURLError(f"cannot open {where}: {type(exc).__name__}: {exc}") from None
        self.dialect = self.engine.dialect.name
        self._name = str(self.url.database) if self.dialect == "sqlite" else self.url.render_as_string(True)
        self._reader = self.engine.execution_options(**{READ_ONLY: True})
        self._driver_error: type[Exception] = self.engine.dialect.loaded_dbapi.Error  # from Prepared statements
        self._prepared: dict[sa.Executable, Prepared] = {}
        self._own_backends: set[int] = set()  # PostgreSQL: this store's sessions, whose writes it does not announce
        self._listeners: list[Listener | VersionWatcher] = []
        if self.dialect == "postgresql":
            sa.event.listen(self.engine, "connect", self._opened)
            sa.event.listen(self.engine, "close", self._closed)
        self._devices: set[str] = set()  # lock rows known to exist
        # SQLite: one connection kept open for write transactions (see _connection)
        self._kept: sa.Connection | None = None
        self._kept_lock = threading.Lock()
        self._kept_stale = False  # the pool was disposed of: the kept connection goes with it
        sa.event.listen(self.engine, "engine_disposed", self._pool_disposed)
        try:
            self._prepare()
        except BaseException:
            self.engine.dispose()
            raise

    def __repr__(self) -> str:
        return f"SQLStore({self.url.render_as_string(hide_password=True)!r})"

    # -- failures -------------------------------------------------------------------------------

    @contextmanager
    def _guarded(self, *, opening: bool = False) -> Iterator[None]:
        """The one place where a database failure (disk full, a table gone, a server down) becomes
        an ``ImgnbError``: every transaction below runs inside it."""
        try:
            yield
        except (sa.exc.SQLAlchemyError, sqlite3.Error, self._driver_error) as exc:  # the driver's own: raw cursors
            raise self._failure(exc, opening=opening) from exc

    def _failure(self, exc: Exception, *, opening: bool) -> DatabaseError:
        cause = getattr(exc, "orig", None) or exc
        text = " ".join(str(cause).split())[:300] or type(cause).__name__
        code = getattr(cause, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            untouched = "; it was left untouched" if opening else ""
            return NotADatabase(f"{self._name} cannot be used as an imgnb database ({text}){untouched}")
        if opening:
            return DatabaseError(f"cannot open {self._name}: {text}")
        return DatabaseError(f"the database {self._name} failed: {text}")

    def _damaged(self) -> DatabaseError:
        return DatabaseError(
            f"{self._name} has lost imgnb's bookkeeping row (the table imgnb_meta is empty): "
            "it was changed by something other than imgnb"
        )

    def _read_only_error(self) -> DatabaseError:
        return DatabaseError(
            f"{self._name} is read-only (this process may not write the file): its jobs can be read and "
            "watched, but nothing can be submitted or changed"
        )

    # -- schema ---------------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Create or upgrade the schema. An intact database of this version is only read."""
        with self._guarded(opening=True), self._reader.begin() as conn:
            version = self._version(conn)
        if self.dialect == "sqlite" and not self.read_only:
            self._use_wal(new=version is None)
        if version == SCHEMA_VERSION:
            return
        if self.read_only:
            raise (
                DatabaseError(f"{self._name} is empty and read-only: imgnb cannot create its tables in it")
                if version is None
                else SchemaVersionError(
                    f"{self._name} has schema version {version} and is read-only: open it once with write "
                    f"access to upgrade it to {SCHEMA_VERSION}. The database was not changed."
                )
            )
        with self._guarded(opening=True), self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_INIT_LOCK)))
            version = self._version(conn)  # again: another process may have been first
            if version is None:
                for table in (counters, job, device_lock, job_count):
                    table.create(conn, checkfirst=True)
                for statement in (COUNT_ROWS, *COUNT_TRIGGERS[self.dialect]):
                    conn.exec_driver_sql(statement)
                conn.execute(
                    sa.insert(counters).values(
                        id=1, schema_version=SCHEMA_VERSION, revision=0, next_seq=0, low_seq=0, work_revision=0
                    )
                )
                if self.dialect == "postgresql":
                    for statement in _PG_REVISIONS:
                        conn.exec_driver_sql(statement)
                return
            for step in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step][self.dialect]:
                    conn.exec_driver_sql(statement)
            if version != SCHEMA_VERSION:
                conn.execute(sa.update(counters).values(schema_version=SCHEMA_VERSION))

    def _version(self, conn: sa.Connection) -> int | None:
        """The schema version, or None for a database without imgnb's tables. Refuses, unchanged,
        what imgnb cannot open: another application's SQLite file, a newer or unknown schema."""
        if not sa.inspect(conn).has_table(counters.name):
            if self.dialect == "sqlite":
                names = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite%'")
                found = sorted(str(n) for n in names.scalars())
                if found:
                    raise NotADatabase(
                        f"{self._name} is another application's SQLite database (it holds {', '.join(found[:5])}"
                        f"{', ...' if len(found) > 5 else ''}, not imgnb's tables); it was left untouched"
                    )
            return None
        version = conn.execute(sa.select(counters.c.schema_version)).scalar()
        if version is None:
            raise self._damaged()
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self!r} has schema version {version}, newer than this imgnb understands "
                f"({SCHEMA_VERSION}); upgrade imgnb to open it. The database was not changed."
            )
        if any(step not in _MIGRATIONS for step in range(version, SCHEMA_VERSION)):
            raise SchemaVersionError(
                f"{self!r} has schema version {version} and this imgnb has no upgrade from it "
                f"to {SCHEMA_VERSION}. The database was not changed."
            )
        return int(version)

    def _use_wal(self, *, new: bool) -> None:
        """WAL mode, stored in the file: set once, outside any transaction (SQLite requires it).
        A new file also gets incremental auto-vacuum, which SQLite takes only before the first
        table and before WAL: pages freed by a prune can then be given back (``_give_back_pages``)."""
        with self._guarded(opening=True):
            raw = self.engine.raw_connection()
            try:
                cursor = raw.cursor()
                if new:
                    cursor.execute("PRAGMA auto_vacuum = INCREMENTAL")
                if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    cursor.execute("PRAGMA journal_mode = WAL")
                cursor.close()
            finally:
                raw.close()

    # -- transactions ---------------------------------------------------------------------------

    @contextmanager
    def _write(self, *, quiet: bool = False) -> Iterator[tuple[sa.Connection, int]]:
        """One write transaction and its revision number; the counters row is locked first.
        ``quiet``: it only takes or settles work (see ``_bump``)."""
        with self._transaction() as conn:
            yield conn, self._bump(conn, quiet=quiet)

    @contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        """One write transaction, for writes that take their revisions themselves (``_bump``)."""
        if self.read_only:
            raise self._read_only_error()
        with self._guarded(), self._connection() as conn, conn.begin():
            yield conn

    @contextmanager
    def _connection(self) -> Iterator[sa.Connection]:
        """A connection for one write transaction. SQLite: the store's kept one when no other
        thread has it: checking one out of the pool and back for every transaction took about
        60 us of a claim's or a finish's 110 (measured here). Dropped after a database failure, so
        the next write starts afresh. PostgreSQL always takes the pool's, which pings it first: a
        server can drop a kept session."""
        if self.dialect != "sqlite" or not self._kept_lock.acquire(blocking=False):
            with self.engine.connect() as conn:
                yield conn
            return
        try:
            if self._kept is not None and self._kept_stale:
                self._kept.close()
                self._kept = None
            if self._kept is None:
                self._kept_stale = False
                self._kept = self.engine.connect()
            try:
                yield self._kept
            except (sa.exc.SQLAlchemyError, sqlite3.Error):  # a database failure: not a refusal
                self._kept.close()
                self._kept = None
                raise
        finally:
            self._kept_lock.release()

    def _pool_disposed(self, _engine: sa.Engine) -> None:
        """The engine's pool was replaced (``engine.dispose()``): the next write opens a new
        connection, with the settings connections get now."""
        self._kept_stale = True

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self._guarded(), self._reader.begin() as conn:
            yield conn

    def _fast(self, statement: sa.Executable) -> Prepared:
        """``statement`` compiled once for this database, to run on the driver's cursor (hot paths)."""
        prepared = self._prepared.get(statement)
        if prepared is None:
            prepared = self._prepared[statement] = Prepared(statement, self.engine.dialect)
        return prepared

    def _bump(self, conn: sa.Connection, *, quiet: bool = False) -> int:
        """This write transaction's revision: the first statement of every write. Unless ``quiet``
        it is also a work write, for work-only listeners (PostgreSQL: announced on the work channel
        too; SQLite: kept as ``work_revision``): a claim, a finish, progress or a renewal can
        neither give another worker work nor stop its job."""
        if self.dialect == "postgresql":
            drawn = self._fast(_PG_DRAW[quiet]).rows(conn, {"keys": _IN_FLIGHT_KEYS})
            return int(drawn[0]["revision"])
        rows = self._fast(_BUMP[quiet]).rows(conn, {})
        if not rows:
            raise self._damaged()
        return int(rows[0]["revision"])

    def _revision(self, conn: sa.Connection) -> int:
        """The revision up to which every change is committed and can be read."""
        if self.dialect == "postgresql":
            return self._watermark(conn)
        rows = self._fast(_REVISION).rows(conn, {})
        if not rows:
            raise self._damaged()
        return int(rows[0]["revision"])

    def _watermark(self, conn: sa.Connection) -> int:
        """PostgreSQL: how far the sequence has gone, held below the bound of every write still in
        flight. Read in this order: a write that drew a revision before the first read had
        registered before it too, so the second read sees its bound."""
        (sequence,) = self._fast(_PG_HANDED_OUT).rows(conn, {})
        if not sequence["kept"]:
            raise self._damaged()
        handed_out = int(sequence["handed_out"])
        bound = self._fast(_PG_IN_FLIGHT).rows(conn, {"keys": _IN_FLIGHT_KEYS})[0]["bound"]
        return handed_out if bound is None else min(handed_out, int(bound))

    def _take_seq(self, conn: sa.Connection, n: int) -> int:
        """Reserve ``n`` consecutive run-order numbers after every one handed out; returns the first. The
        one place numbers at the end are made."""
        taken = conn.execute(_TAKE_SEQ, _args(n=n)).scalar()
        if taken is None:
            raise self._damaged()
        return int(taken) - n

    def _take_low_seq(self, conn: sa.Connection, n: int) -> int:
        """Reserve ``n`` consecutive run-order numbers below every one handed out; returns the bound
        they end under (``new_seqs``'s ``lowest``). The one place numbers below the others are made."""
        taken = conn.execute(_TAKE_LOW_SEQ, _args(n=n)).scalar()
        if taken is None:
            raise self._damaged()
        return int(taken) + n

    def _ids_of(self, conn: sa.Connection, rev: int, first_seq: int, n: int) -> list[int]:
        """The ids of the ``n`` rows ``add`` just inserted at revision ``rev``, in ``seq`` order. The
        database hands out ids in insert order, so they are one range unless another session took
        ids in between (PostgreSQL); only then are they read one by one."""
        (span,) = self._fast(_ID_RANGE_OF_REVISION).rows(conn, _args(rev=rev))
        if span["n"] == n and span["high"] - span["low"] + 1 == n:
            return list(range(span["low"], span["high"] + 1))
        id_of_seq = {r["seq"]: r["id"] for r in self._fast(_IDS_OF_REVISION).rows(conn, _args(rev=rev))}
        return [id_of_seq[first_seq + i] for i in range(n)]

    def _one(self, conn: sa.Connection, job_id: int, *, lock: bool = False) -> JobRecord:
        """One job; ``lock``: locked until the transaction ends (a write that reads, then writes it)."""
        rows = self._fast(_GET_LOCKED if lock else _GET).rows(conn, _args(id=job_id))
        if not rows:
            raise JobNotFound(f"no job with id {job_id}")
        return _decode(job_id, rows[0])[0]

    def _lock_order(self, conn: sa.Connection) -> None:
        """PostgreSQL: take the run-order counter's row, as ``_take_seq`` does, for a write that
        reads the order before it hands out numbers. Rows are locked before it, as by every write
        that takes both."""
        if self.dialect == "postgresql":
            conn.execute(sa.select(counters.c.next_seq).with_for_update())

    def _lock_jobs(self, conn: sa.Connection, where: Any, params: Mapping[str, Any] | None = None) -> None:
        """PostgreSQL: lock the jobs matching ``where`` in id order before a write changes several,
        the order every such write follows, so that two of them never wait on each other (``params``:
        the values of ``where``'s bound parameters). (SQLite's write lock is the whole database already.)"""
        if self.dialect == "postgresql":
            conn.execute(sa.select(job.c.id).where(where).order_by(job.c.id).with_for_update(), dict(params or {}))

    @contextmanager
    def _counted_once(self, conn: sa.Connection) -> Iterator[collections.Counter[str] | None]:
        """SQLite: a bulk change of status, counted once at its end rather than row by row. The
        block tells the yielded counter how many jobs left or entered each status; the row trigger
        is dropped for the block and made again after it, all in the write's transaction (a
        failure rolls the drop back too). No other writer can see the gap: SQLite's write lock is
        the whole database. At 100,000 jobs the trigger's two statements a row took an eighth of a
        bulk retry. PostgreSQL's triggers count once a statement already: None there."""
        if self.dialect != "sqlite":
            yield None
            return
        name, create = SQLITE_STATUS_TRIGGER
        conn.exec_driver_sql(f"DROP TRIGGER {name}")
        moved: collections.Counter[str] = collections.Counter()
        yield moved
        for status, n in moved.items():
            if n:
                self._fast(_COUNT_ADDED).rowcount(conn, _args(status=status, n=n))
        conn.exec_driver_sql(create)

    @staticmethod
    def _update_one(conn: sa.Connection, job_id: int, *where: Any, **values: Any) -> JobRecord | None:
        row = conn.execute(sa.update(job).where(job.c.id == job_id, *where).values(**values).returning(*job.c)).first()
        return None if row is None else _record(row)

    def _claim_next(
        self,
        conn: sa.Connection,
        args: dict[str, Any],
        loaded: Collection[str | None],
        affinity: int,
        serves: Sequence[str] | None,
    ) -> Row | None:
        """Claim the job ``core.affinity.pick`` chooses among those this device may run: the head,
        or with affinity one for a loaded model a few places behind it, counting a pass for each
        job it goes past."""
        served = None if serves is None else len(serves)
        if affinity <= 0 or not loaded:
            return next(iter(self._fast(_claim_head(served)).rows(conn, args)), None)
        window = conn.execute(_window(served), {"b_n": affinity + 1, **_served_args(serves)}).all()
        if not window:
            return None
        k = pick([Waiting(r.priority, r.model, r.passed_over) for r in window], loaded=loaded, affinity=affinity)
        row = next(iter(self._fast(_CLAIM_ID).rows(conn, {**args, "b_id": window[k].id})), None)
        if k:
            conn.execute(_PASS_OVER, {"b_ids": [r.id for r in window[:k]]})
        return row

    @staticmethod
    def _fail_unreadable(conn: sa.Connection, job_id: int, problem: str, *, now: float, rev: int) -> None:
        """End a claimed job whose row cannot be decoded: it could never run, and must not block others."""
        conn.execute(
            sa.update(job)
            .where(job.c.id == job_id)
            .values(
                status=JobStatus.ERROR.value,
                error=_storable(f"imgnb cannot read this job's stored data ({problem}); it was not run"),
                finished_at=now,
                updated_at=now,
                lease_until=None,
                progress=0.0,
                batch=None,
                revision=rev,
            )
        )

    # -- Store ----------------------------------------------------------------------------------

    def add(self, specs: Sequence[JobSpec], *, batch_keys: Sequence[str | None], now: float) -> AddedJobs:
        if not specs:
            return AddedJobs(specs, [], first_seq=0, revision=0, now=now)
        with self._write() as (conn, rev):
            first = self._take_seq(conn, len(specs))
            # one tuple per row, in _ADDED's order (the driver's, on SQLite), JSON of empty dicts not
            # encoded: 100,000 rows are built here
            rows = [
                (
                    first + i,
                    _QUEUED,
                    spec.priority,
                    spec.group,
                    spec.prompt,
                    _dumps(spec.params) if spec.params else "{}",
                    spec.seed,
                    _dumps(spec.metadata) if spec.metadata else "{}",
                    spec.timeout,
                    spec.max_retries,
                    0,
                    0.0,
                    "[]",
                    now,
                    now,
                    now,
                    False,
                    key,
                    spec.model,
                    0,
                    rev,
                )
                for i, (spec, key) in enumerate(zip(specs, batch_keys, strict=True))
            ]
            # a plain executemany: RETURNING with ordered rows would insert one row per statement.
            # Only this transaction's rows carry its revision, so their ids are found by it.
            whole = len(rows) - len(rows) % _INSERT_CHUNK
            if whole:
                flat = list(itertools.chain.from_iterable(rows[:whole]))
                width = len(_CHUNK_BINDS)
                chunks = [flat[i : i + width] for i in range(0, len(flat), width)]
                self._fast(_INSERT_ROWS).many(conn, _CHUNK_BINDS, chunks)
            self._fast(_INSERT).many(conn, _ADDED_BINDS, rows[whole:])
            self._fast(_COUNT_ADDED).rowcount(conn, _args(status=_QUEUED, n=len(rows)))  # inserts are counted here
            ids = self._ids_of(conn, rev, first, len(rows))
        return AddedJobs(specs, ids, first_seq=first, revision=rev, now=now)

    def get(self, job_id: int) -> JobRecord:
        job_id = validate_job_id(job_id)
        with self._read() as conn:
            return self._one(conn, job_id)

    def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        group: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[JobRecord]:
        query = sa.select(job)
        status = None if status is None else JobStatus(status)
        if status is JobStatus.QUEUED:  # in run order, from the run-order index
            query = query.where(_IS_QUEUED).order_by(*(_LAST_TO_RUN_FIRST if newest_first else _RUN_ORDER))
        else:
            if status is not None:
                query = query.where(job.c.status == status.value)
            query = query.order_by(job.c.id.desc() if newest_first else job.c.id)
        if group is not None:
            query = query.where(job.c.group_name == validate_group(group))
        if limit is not None or offset:
            query = query.limit(limit).offset(offset)
        with self._read() as conn:
            return [_record(r) for r in conn.execute(query)]

    def counts(self) -> dict[JobStatus, int]:
        """From ``imgnb_count`` (and on PostgreSQL its parts), kept by triggers: the same cost at
        any number of jobs."""
        with self._read() as conn:
            found = {status: n for status, n in conn.execute(_COUNTS[self.dialect])}
        return {s: int(found.get(s.value, 0)) for s in JobStatus}

    def queued_snapshot(self) -> tuple[int, list[tuple[int, OrderKey]]]:
        with self._read() as conn:
            revision = self._revision(conn)
            rows = conn.execute(sa.select(job.c.id, *(job.c[name] for name, _ in RUN_ORDER)).where(_IS_QUEUED))
            return revision, [(r.id, order_key(**r._mapping)) for r in rows]

    def changes_since(self, revision: int, *, applied: Sequence[Run] = ()) -> tuple[int, list[JobRecord]]:
        with self._read() as conn:
            current = self._revision(conn)
            changed = self._fast(_CHANGED)
            return current, [
                _decode(r["id"], r)[0]
                for after, upto in unread_spans(revision, current, applied)
                for r in changed.rows(conn, _args(rev=after, upto=upto))
            ]

    def claim(
        self,
        *,
        owner: str,
        device: str,
        now: float,
        lease: float,
        batch_size: int = 1,
        loaded: Collection[str | None] = (),
        affinity: int = 0,
        serves: Collection[str] | None = None,
    ) -> list[JobRecord]:
        return self._finish_then_claim([], Claim(owner, device, now, lease, batch_size, loaded, affinity, serves))[1]

    def finish_and_claim(
        self, finishes: Sequence[Finish], claim: Claim
    ) -> tuple[list[JobRecord | None], list[JobRecord]]:
        """SQLite: one transaction when the claim takes a job (else the claim is rolled back, and
        the finishes stored again alone). A finish and a claim took 0.28 ms a job as two commits
        and 0.19 ms as one (measured here). PostgreSQL: each its own: writers do not queue on one
        lock there, and a finish's row held across the claim's would lock jobs out of id order
        (see the module's docstring). Never through ``finish`` or ``claim``: a subclass that notes
        what they store would note these twice."""
        for f in finishes:
            check_transition(JobStatus.PROCESSING, f.status)
        if self.dialect == "sqlite":
            return self._finish_then_claim(finishes, claim)
        return [self._finish_alone(f) for f in finishes], self._finish_then_claim([], claim)[1]

    def _finish_then_claim(
        self, finishes: Sequence[Finish], claim: Claim
    ) -> tuple[list[JobRecord | None], list[JobRecord]]:
        """``finishes``, then the claim, in one transaction when the claim writes anything. When it
        does not, nothing of it is kept: the lock and the revision stay as they were, and the
        finishes are stored alone."""
        if self.read_only:
            return [self._finish_alone(f) for f in finishes], []  # refused there
        if claim.device not in self._devices:  # its own transaction: the claim below may roll back
            insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
            with self._guarded(), self.engine.begin() as conn:
                conn.execute(insert(device_lock).values(name=claim.device).on_conflict_do_nothing())
            self._devices.add(claim.device)  # device rows are never deleted
        with self._guarded(), self._connection() as conn, conn.begin() as txn:
            finished = [self._finish_in(conn, f) for f in finishes]
            claimed = self._claim_in(conn, claim)
            if claimed is not None:
                return finished, claimed  # committed on the way out
            txn.rollback()
        return [self._finish_alone(f) for f in finishes], []

    def _claim_in(self, conn: sa.Connection, claim: Claim) -> list[JobRecord] | None:
        """The claim, in ``conn``'s transaction; None when it must be rolled back (the device is
        held by a live owner, or nothing is eligible): then it changed nothing worth keeping."""
        owner, device, now, lease, batch_size, loaded, affinity, serves = claim
        rev = self._bump(conn, quiet=True)
        served = None if serves is None else sorted(serves)
        args = {**_args(owner=owner, device=device, now=now, until=now + lease, rev=rev), **_served_args(served)}
        if not self._fast(_LOCK_DEVICE).rowcount(conn, args):
            return None
        failed = False
        while (head := self._claim_next(conn, args, loaded, affinity, served)) is not None:
            first, problem = _decode(head["id"], head)
            if problem is None:
                break
            self._fail_unreadable(conn, first.id, problem, now=now, rev=rev)
            failed = True
        if head is None:
            if not failed:
                return None
            conn.execute(  # keep the failures, give the lock back
                sa.update(device_lock)
                .where(device_lock.c.name == device, device_lock.c.owner == owner)
                .values(owner=None, lease_until=None)
            )
            return []
        claimed = [first]
        key = head["batch_key"]
        if batch_size > 1 and key is not None and first.attempts == 1:
            mates = []
            for row in conn.execute(_CLAIM_MATES, {**args, **_args(key=key, n=batch_size - 1)}).all():
                mate, problem = _decode(row._mapping["id"], row._mapping)
                if problem is None:
                    mates.append(mate.id)
                else:
                    self._fail_unreadable(conn, mate.id, problem, now=now, rev=rev)
            if mates:
                label = f"{device}#{first.id}"
                rows = conn.execute(
                    sa.update(job).where(job.c.id.in_([first.id, *mates])).values(batch=label).returning(*job.c)
                ).all()
                claimed = sorted((_record(r) for r in rows), key=lambda r: r.order_key)
        return claimed

    def renew(self, *, owner: str, device: str, job_ids: Sequence[int], now: float, lease: float) -> set[int]:
        with self._write(quiet=True) as (conn, rev):
            conn.execute(
                sa.update(device_lock)
                .where(device_lock.c.name == device, device_lock.c.owner == owner)
                .values(lease_until=now + lease)
            )
            if not job_ids:
                return set()
            held = sa.and_(job.c.id.in_(list(job_ids)), job.c.owner == owner, job.c.status == _PROCESSING)
            self._lock_jobs(conn, held)
            rows = conn.execute(
                sa.update(job)
                .where(held)
                .values(lease_until=now + lease, revision=rev)  # watchers see the lease move
                .returning(job.c.id, job.c.cancel_requested)
            ).all()
            return {r.id for r in rows if r.cancel_requested}

    def release_device(self, *, owner: str, device: str) -> None:
        with self._write() as (conn, _rev):
            conn.execute(
                sa.update(device_lock)
                .where(device_lock.c.name == device, device_lock.c.owner == owner)
                .values(owner=None, lease_until=None)
            )

    def set_progress(self, job_id: int, *, owner: str, progress: float, now: float) -> None:
        with self._write(quiet=True) as (conn, rev):
            self._fast(_SET_PROGRESS).rowcount(conn, _args(id=job_id, owner=owner, progress=progress, now=now, rev=rev))

    def finish(
        self,
        job_id: int,
        *,
        owner: str,
        status: JobStatus,
        now: float,
        error: str | None = None,
        images: Sequence[str] = (),
        run_at: float | None = None,
    ) -> JobRecord | None:
        check_transition(JobStatus.PROCESSING, status)
        return self._finish_alone(Finish(job_id, owner, status, now, error, images, run_at))

    def _finish_alone(self, finish: Finish) -> JobRecord | None:
        with self._transaction() as conn:
            return self._finish_in(conn, finish)

    def _finish_in(self, conn: sa.Connection, finish: Finish) -> JobRecord | None:
        """``finish``, in ``conn``'s transaction: its own revision, a work write if the job goes
        back to the queue."""
        status = finish.status
        final = status is not JobStatus.PENDING
        now = finish.now
        args = _args(
            id=finish.job_id,
            owner=finish.owner,
            status=status.value,
            now=now,
            error=_storable(finish.error),
            run_at=None if final else (now if finish.run_at is None else finish.run_at),
            finished_at=now if final else None,
            images=_dumps(list(finish.images)),
            progress=1.0 if status is JobStatus.COMPLETE else None if final else 0.0,
            rev=self._bump(conn, quiet=status is not JobStatus.QUEUED),
        )
        rows = self._fast(_FINISH).rows(conn, args)
        return _decode(finish.job_id, rows[0])[0] if rows else None

    def cancel(self, job_id: int, *, now: float) -> JobRecord:
        job_id = validate_job_id(job_id)
        with self._write() as (conn, rev):
            current = self._one(conn, job_id, lock=True)
            if current.status is JobStatus.PROCESSING:
                values: dict[str, Any] = {"cancel_requested": True}
            else:
                check_transition(current.status, JobStatus.CANCELLED)
                values = {"status": JobStatus.CANCELLED.value, "finished_at": now, "error": None}
            updated = self._update_one(conn, job_id, updated_at=now, revision=rev, **values)
            assert updated is not None  # the row is locked by this transaction
            return updated

    def requeue(self, job_id: int, *, now: float) -> JobRecord:
        job_id = validate_job_id(job_id)
        with self._write() as (conn, rev):
            check_transition(self._one(conn, job_id, lock=True).status, JobStatus.QUEUED)
            seq = self._take_seq(conn, 1)
            updated = self._update_one(
                conn,
                job_id,
                seq=seq,
                **_requeued(now),
                revision=rev,
            )
            assert updated is not None
            return updated

    def promote_due(self, *, now: float) -> list[JobRecord]:
        if self.read_only:
            return []
        due = sa.and_(job.c.status == JobStatus.PENDING.value, job.c.run_at <= now)
        with self._read() as conn:
            if conn.execute(sa.select(job.c.id).where(due).limit(1)).first() is None:
                return []
        with self._write() as (conn, rev):
            self._lock_jobs(conn, due)
            rows = conn.execute(
                sa.update(job)
                .where(due)
                .values(status=JobStatus.QUEUED.value, updated_at=now, revision=rev)
                .returning(*job.c)
            ).all()
            return [_record(r) for r in rows]

    def recover_stalled(self, *, now: float) -> list[JobRecord]:
        if self.read_only:
            return []
        stalled = sa.and_(job.c.status == _PROCESSING, job.c.lease_until < now)
        with self._read() as conn:
            if conn.execute(sa.select(job.c.id).where(stalled).limit(1)).first() is None:
                return []
        with self._write() as (conn, rev):
            return self._recover(conn, stalled, now=now, rev=rev, why="stopped responding")

    def holders(self) -> set[str]:
        with self._read() as conn:
            running = sa.select(job.c.owner).where(job.c.status == _PROCESSING)
            locking = sa.select(device_lock.c.owner).where(device_lock.c.owner.is_not(None))
            return {owner for (owner,) in conn.execute(sa.union(running, locking)) if owner is not None}

    def recover_owners(self, owners: Collection[str], *, now: float) -> list[JobRecord]:
        if not owners or self.read_only:
            return []
        dead = list(owners)
        with self._write() as (conn, rev):
            conn.execute(
                sa.update(device_lock).where(device_lock.c.owner.in_(dead)).values(owner=None, lease_until=None)
            )
            held = sa.and_(job.c.status == _PROCESSING, job.c.owner.in_(dead))
            return self._recover(conn, held, now=now, rev=rev, why="died (its process is gone)")

    def _recover(self, conn: sa.Connection, where: Any, *, now: float, rev: int, why: str) -> list[JobRecord]:
        """Put the jobs matching ``where`` back at their old place, or in error once their retries
        are spent: the one rule for a worker that was lost, by lease or by a dead process."""
        recovered = []
        for row in conn.execute(sa.select(job).where(where).order_by(job.c.id).with_for_update()).all():
            lost = _record(row)
            said = f"its worker {lost.owner} {why} during attempt {lost.attempts}"
            values: dict[str, Any] = (
                {"status": _QUEUED, "error": f"{said}; re-queued"}
                if has_runs_left(attempts=lost.attempts, max_retries=lost.max_retries)
                else {"status": JobStatus.ERROR.value, "error": f"{said}; no retries left", "finished_at": now}
            )
            updated = self._update_one(
                conn, lost.id, where, lease_until=None, progress=0.0, updated_at=now, revision=rev, **values
            )
            if updated is not None:
                recovered.append(updated)
        return recovered

    def abandon(self, *, owner: str, now: float) -> list[JobRecord]:
        if self.read_only:
            return []
        with self._read() as conn:  # closing a queue that holds nothing does not write
            running = sa.select(job.c.id).where(job.c.owner == owner, job.c.status == JobStatus.PROCESSING.value)
            locks = sa.select(device_lock.c.name).where(device_lock.c.owner == owner)
            holds = conn.execute(running.limit(1)).first() or conn.execute(locks.limit(1)).first()
        if holds is None:
            return []
        with self._write() as (conn, rev):
            conn.execute(
                sa.update(device_lock).where(device_lock.c.owner == owner).values(owner=None, lease_until=None)
            )
            held = sa.and_(job.c.owner == owner, job.c.status == JobStatus.PROCESSING.value)
            self._lock_jobs(conn, held)
            rows = conn.execute(
                sa.update(job)
                .where(held)
                .values(
                    status=JobStatus.QUEUED.value,
                    attempts=job.c.attempts - 1,
                    lease_until=None,
                    progress=0.0,
                    started_at=None,
                    updated_at=now,
                    revision=rev,
                )
                .returning(*job.c)
            ).all()
            return [_record(r) for r in rows]

    def update_metadata(self, job_id: int, patch: Mapping[str, Any]) -> JobRecord:
        """Read, merge in Python and write in one transaction, the row locked from the read on, so
        concurrent patches all land."""
        job_id = validate_job_id(job_id)
        with self._write() as (conn, rev):
            stored = conn.execute(sa.select(job.c.meta).where(job.c.id == job_id).with_for_update()).scalar()
            if stored is None:
                raise JobNotFound(f"no job with id {job_id}")
            current, problem = _loads(stored, dict)
            if problem is not None:
                raise DatabaseError(f"job {job_id}'s stored metadata cannot be read ({problem}); it was left unchanged")
            merged = json_data("metadata after this patch", merge_patch(current, dict(patch)))
            updated = self._update_one(conn, job_id, meta=_dumps(merged), revision=rev)
            assert updated is not None  # the row is locked by this transaction
            return updated

    def listen(self, callback: Callable[[int | None], None], *, work_only: bool = False) -> Callable[[], None]:
        """PostgreSQL: a ``LISTEN`` session of its own (``notify.Listener``), on the work channel
        alone when ``work_only``. An SQLite file: a connection of its own that watches ``PRAGMA
        data_version`` (``notify.VersionWatcher``) and reads the revision, or ``work_revision``,
        when it moves; it hears this store's own writes too. An in-memory SQLite database has no
        other process."""
        cargs, cparams = self.engine.dialect.create_connect_args(self.engine.url)
        if self.dialect == "sqlite":
            cparams = {**cparams, "check_same_thread": False}  # opened here, used in the watcher's thread

        def connect() -> Any:
            return self.engine.dialect.connect(*cargs, **cparams)

        listener: Listener | VersionWatcher
        if self.dialect == "postgresql":
            channel = _WORK_CHANNEL if work_only else _CHANNEL
            listener = Listener(connect, channel, callback, ignore=self._own_backends)
        elif self.url.database and self.url.database != ":memory:":
            revision_sql = str((_WORK_REVISION if work_only else _REVISION).compile(dialect=self.engine.dialect))
            listener = VersionWatcher(connect, revision_sql, callback)
        else:
            return super().listen(callback, work_only=work_only)
        self._listeners.append(listener)
        return listener.stop

    def _opened(self, dbapi_connection: Any, _record: Any) -> None:
        self._own_backends.add(dbapi_connection.info.backend_pid)

    def _closed(self, dbapi_connection: Any, _record: Any) -> None:
        self._own_backends.discard(dbapi_connection.info.backend_pid)

    def default_images_dir(self) -> Path:
        """``runs/jobs.db`` keeps its images in ``runs/jobs-images/``; a server database in
        ``./imgnb-images/<database name>/``."""
        database = self.url.database
        if self.dialect == "sqlite" and database:
            path = Path(database)
            return path.with_name(f"{path.stem}-images")
        return Path("imgnb-images") / (database or "default")

    def close(self) -> None:
        for listener in self._listeners:
            listener.stop()
        with self._kept_lock:
            if self._kept is not None:
                self._kept.close()
                self._kept = None
        self.engine.dispose()

    # -- history: pages, pruning, editing waiting jobs ------------------------------------------

    def recently_finished(self, *, limit: int, group: str | None = None) -> list[JobRecord]:
        with self._read() as conn:
            return [_record(r) for r in conn.execute(_newest_finished(_FINAL, group, job).limit(limit))]

    def prune(
        self,
        *,
        statuses: Collection[JobStatus],
        group: str | None,
        finished_before: float | None,
        keep_last: int | None,
    ) -> list[RemovedJob]:
        if not set(statuses) <= FINAL_STATUSES:
            raise ValueError(f"only finished jobs are pruned, not {sorted(set(statuses) - FINAL_STATUSES)}")
        values = sorted(s.value for s in statuses)
        where = _finished(values, group, by_finish_time=finished_before is not None or bool(keep_last))
        with self._write() as (conn, _rev):
            if finished_before is not None:
                where.append(job.c.finished_at < finished_before)
            if keep_last:  # the newest of those pruned is older than the last one kept
                newest = _newest_finished(values, group, job.c.finished_at, job.c.id)
                last_kept = conn.execute(newest.offset(keep_last - 1).limit(1)).first()
                if last_kept is None:
                    return []
                where.append(sa.tuple_(job.c.finished_at, job.c.id) < sa.tuple_(*last_kept))
            rows = conn.execute(sa.delete(job).where(*where).returning(job.c.id, job.c.status, job.c.images)).all()
        if rows and self.dialect == "sqlite":
            self._give_back_pages()
        return [RemovedJob(id=r.id, status=JobStatus(r.status), images=tuple(_loads(r.images, list)[0])) for r in rows]

    def _give_back_pages(self) -> None:
        """Return the pages a prune freed to the file system (PostgreSQL's autovacuum makes them
        reusable by itself). A file made before schema 4 has no auto-vacuum: its first prune turns
        it on with a one-time ``VACUUM``, which rewrites the file (seconds for a million jobs)."""
        with self._guarded():
            raw = self.engine.raw_connection()
            try:
                cursor = raw.cursor()
                mode = cursor.execute("PRAGMA auto_vacuum").fetchone()[0]
                cursor.close()
                # executescript runs a pragma to its end; execute() would free one page per call
                script = "PRAGMA auto_vacuum = INCREMENTAL; VACUUM;" if mode == 0 else "PRAGMA incremental_vacuum;"
                raw.driver_connection.executescript(script)  # type: ignore[union-attr]
            finally:
                raw.close()

    def cancel_all(self, *, statuses: Collection[JobStatus], group: str | None, now: float) -> BulkChange:
        if not set(statuses) <= EDITABLE_STATUSES:
            raise ValueError(
                f"only waiting jobs are cancelled in bulk, not {sorted(set(statuses) - EDITABLE_STATUSES)}"
            )
        waiting = sorted(s.value for s in statuses) or [""]  # none: a status no job has
        where = [job.c.status.in_(waiting)]
        grouped = {} if group is None else {"group": validate_group(group)}
        if group is not None:
            where.append(job.c.group_name == grouped["group"])
        values = {"status": JobStatus.CANCELLED, "finished_at": now, "error": None, "updated_at": now}
        with self._write() as (conn, rev), self._counted_once(conn) as moved:
            self._lock_jobs(conn, sa.and_(*where))
            if moved is not None:  # what leaves each waiting status, read before the change
                by_status = sa.select(job.c.status, sa.func.count()).where(*where).group_by(job.c.status)
                moved.subtract({status: n for status, n in conn.execute(by_status)})
            stored = {**values, "status": JobStatus.CANCELLED.value, "revision": rev}
            rows = self._fast(_CANCEL_WAITING[group is not None]).tuples(
                conn, _args(s1=waiting[0], s2=waiting[-1], **grouped, **stored)
            )
            if moved is not None:
                moved[JobStatus.CANCELLED.value] += len(rows)
        return BulkChange(ids=tuple(sorted(job_id for (job_id,) in rows)), revision=rev, values=values)

    def requeue_failed(self, *, group: str | None, now: float) -> BulkChange:
        """The failed jobs keep their order and gaps, all moved past the last ``seq`` handed out,
        when they lie close together (the usual case: jobs that failed together); spread out
        (more than twice as many numbers as jobs), they are numbered anew, so that retrying a
        few old failures again and again never makes the numbers grow faster than the jobs."""
        grouped = {} if group is None else {"group": validate_group(group)}
        with self._write() as (conn, rev):
            self._lock_jobs(conn, sa.and_(*_failed(grouped=group is not None)), _args(**grouped))
            (span,) = self._fast(_FAILED_SPAN[group is not None]).rows(conn, _args(**grouped))
            if not span["n"]:
                return BulkChange(ids=(), revision=rev, values=requeued(now), keys=())
            n, low, high = int(span["n"]), int(span["low"]), int(span["high"])
            renumber = high - low + 1 > 2 * n
            first = self._take_seq(conn, n if renumber else high - low + 1)  # fresh numbers, in the jobs' old order
            moved = {"before": first - 1} if renumber else {"shift": first - low}
            with self._counted_once(conn) as counted:
                rows = self._fast(_REQUEUE_FAILED[group is not None, renumber]).tuples(
                    conn, _args(low=low, high=high, rev=rev, **moved, **grouped, **_requeued(now))
                )
                if counted is not None:
                    counted.update({JobStatus.ERROR.value: -len(rows), _QUEUED: len(rows)})
        slots: list[tuple[int, int] | None] = [None] * (max((seq for _, seq, _ in rows), default=first - 1) - first + 1)
        for job_id, seq, priority in rows:  # placed by seq: first, first + 1, ...
            slots[seq - first] = (job_id, priority)
        ids, priorities, seqs = [], [], []
        for offset, slot in enumerate(slots):
            if slot is not None:
                ids.append(slot[0])
                priorities.append(slot[1])
                seqs.append(first + offset)
        keys = order_keys(priority=priorities, seq=seqs)
        return BulkChange(ids=tuple(ids), revision=rev, values=requeued(now), keys=tuple(keys))

    def set_priority(self, job_id: int, priority: int, *, now: float) -> JobRecord:
        job_id = validate_job_id(job_id)
        with self._write() as (conn, rev):
            current = self._one(conn, job_id, lock=True)
            check_editable(job_id, current.status, "given another priority")
            if current.priority == priority:
                return current
            seq = self._take_seq(conn, 1)
            updated = self._update_one(conn, job_id, priority=priority, seq=seq, updated_at=now, revision=rev)
            assert updated is not None  # the row is locked by this transaction
            return updated

    def move(self, job_id: int, *, to: Place | int, now: float) -> list[JobRecord]:
        job_id = validate_job_id(job_id)
        with self._write() as (conn, rev):
            target_id = None if isinstance(to, Place) else validate_job_id(to)
            self._lock_jobs(conn, job.c.id.in_([job_id] if target_id is None else [job_id, target_id]))
            self._lock_order(conn)  # moves take turns with every write that hands out run-order numbers
            current = self._one(conn, job_id)
            check_editable(job_id, current.status, "moved")
            if target_id is None:
                plan = Renumbering((job_id,), below=to is Place.FRONT)
            else:
                target = self._one(conn, target_id)
                check_target(job_id, current.priority, target.id, target.status, target.priority)
                order = conn.execute(
                    sa.select(job.c.id)
                    .where(job.c.status.in_(_WAITING), job.c.priority == current.priority)
                    .order_by(job.c.seq, job.c.id)
                ).scalars()
                plan = move_before(list(order), job_id, target.id)
            if not plan.ids:
                return []
            lowest = self._take_low_seq(conn, len(plan.ids)) if plan.below else 0
            taken = 0 if plan.below else self._take_seq(conn, len(plan.ids))
            seqs = new_seqs(plan, lowest=lowest, taken=taken)
            self._fast(_RENUMBER).many(conn, _RENUMBER_BINDS, [(seq, now, rev, i) for i, seq in seqs.items()])
            rows = self._fast(_OF_REVISION).rows(conn, _args(rev=rev))  # the renumbered, in their new order
        return [_decode(row["id"], row)[0] for row in rows]
