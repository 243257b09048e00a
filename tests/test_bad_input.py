"""Hostile and unusual input (issue 8, "bad input"): refused with an ``ImgnbError`` that names the
cause, or stored, read back and run exactly as given, the same on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image

from imgnb import (
    DatabaseError,
    GenerationRequest,
    ImageQueue,
    InvalidJob,
    JobNotFound,
    JobStatus,
    NotADatabase,
)
from imgnb.core.merge import merge_patch
from imgnb.core.validation import MAX_JSON_BYTES, MAX_JSON_DEPTH, json_data, validate_job
from imgnb.gen.base import OnStep
from imgnb.store import SQLStore
from imgnb.store.schema import SCHEMA_VERSION
from imgnb.testing import FakeGenerator
from tests.fixtures.queues import back_to_schema, wait_until
from tests.test_store_contract import NOW, spec

MakeQueue = Callable[..., ImageQueue]


def nested(depth: int, leaf: Any = 1) -> Any:
    """``{"a": {"a": ... leaf}}``, ``depth`` dicts deep (built without recursion)."""
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def total(q: ImageQueue) -> int:
    return sum(q.counts().values())


def any_params(request: GenerationRequest, on_step: OnStep) -> list[Image.Image]:
    """A generator that takes any parameters: what matters here is what is stored and written."""
    on_step(1, 1)
    return [Image.new("RGB", (8, 8), (request.seed % 256, 0, 0))]


@contextlib.contextmanager
def unwritable(*paths: Path) -> Iterator[None]:
    """Make ``paths`` unwritable for this process: by mode, or as root (whom modes do not stop)
    with ``chattr +i``; skips where neither works."""
    modes = {p: p.stat().st_mode for p in paths}
    frozen: list[Path] = []
    try:
        for p in paths:
            p.chmod(modes[p] & ~0o222)
            if os.access(p, os.W_OK):
                chattr = shutil.which("chattr")
                if chattr is None or subprocess.run([chattr, "+i", str(p)], capture_output=True).returncode:
                    pytest.skip("cannot make a file unwritable here (root without chattr +i)")
                frozen.append(p)
        yield
    finally:
        for p in reversed(frozen):
            subprocess.run(["chattr", "-i", str(p)], check=True)
        for p, mode in modes.items():
            p.chmod(mode)


# -- limits on JSON (pure) -------------------------------------------------------------------------


def test_json_limits_are_exact_and_named() -> None:
    assert json_data("metadata", nested(MAX_JSON_DEPTH)) == nested(MAX_JSON_DEPTH)
    deep = rf"^metadata=\{{'a': .* is invalid; allowed: lists and dicts nested at most {MAX_JSON_DEPTH} deep$"
    with pytest.raises(InvalidJob, match=deep):
        json_data("metadata", nested(MAX_JSON_DEPTH + 1))
    fits = {"s": "x" * (MAX_JSON_BYTES - len('{"s":""}'))}
    assert json_data("params", fits) == fits
    big = rf"^params=.* allowed: at most {MAX_JSON_BYTES} bytes as JSON \(this is {MAX_JSON_BYTES + 1}\)$"
    with pytest.raises(InvalidJob, match=big):
        json_data("params", {"s": fits["s"] + "x"})
    with pytest.raises(InvalidJob, match=f"at most {MAX_JSON_BYTES} bytes"):  # counted in UTF-8 bytes
        json_data("params", {"s": "é" * (MAX_JSON_BYTES // 2)})
    with pytest.raises(InvalidJob, match=f"at most {MAX_JSON_BYTES} bytes"):  # refused before it is encoded
        json_data("params", {"many": [0] * 10**6})


@pytest.mark.parametrize("depth", [300, 985, 1000, 100_000])
def test_nesting_that_breaks_decoders_is_refused(depth: int) -> None:
    """~300: PostgreSQL's stack limit; ~985: Python's JSON decoder; 1,000: Python's repr."""
    value = nested(depth)
    for call in (
        lambda: validate_job("p", metadata=value, params={}),
        lambda: validate_job("p", params={"deep": value}),
        lambda: json_data("patch", value),
    ):
        with pytest.raises(InvalidJob, match=f"nested at most {MAX_JSON_DEPTH} deep"):
            call()
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(InvalidJob, match="nested at most"):
        json_data("metadata", loop)


def test_values_are_shown_shortened_whatever_they_are() -> None:
    with pytest.raises(InvalidJob, match=r"^seed=<int of 16610 bits> is invalid"):
        validate_job("p", seed=10**5000, params={})
    with pytest.raises(InvalidJob, match=r"^prompt='x+\.\.\.x+\\x00' is invalid; allowed: text without NUL") as info:
        validate_job("x" * 10**6 + "\x00", params={})
    assert len(str(info.value)) < 200
    with pytest.raises(InvalidJob, match=r"^metadata=.* JSON-serialisable values"):
        validate_job("p", metadata={"when": {1, 2}}, params={})
    with pytest.raises(InvalidJob, match="keys that stay distinct"):
        validate_job("p", metadata={5: "a", "5": "b"}, params={})
    with pytest.raises(InvalidJob, match="dict keys that are text"):
        validate_job("p", metadata={(1, 2): "a"}, params={})


@pytest.mark.parametrize(
    ("target", "patch", "merged"),
    [  # RFC 7396, appendix A
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_follows_rfc_7396(target: Any, patch: Any, merged: Any) -> None:
    before = json.dumps(target)
    assert merge_patch(target, patch) == merged
    assert json.dumps(target) == before  # the target is not changed


# -- the queue keeps running ------------------------------------------------------------------------


def test_a_deep_patch_is_refused_and_later_jobs_still_run(make_queue: MakeQueue, db_url: str) -> None:
    q = make_queue(db_url, generator=FakeGenerator(steps=1))
    first = q.submit("first", metadata={"keep": 1})
    first.result(timeout=15)
    with pytest.raises(InvalidJob, match=rf"^patch=\{{'a': .* nested at most {MAX_JSON_DEPTH} deep$"):
        q.update_metadata(first.id, nested(985))
    assert q.get(first.id).metadata == {"keep": 1}
    assert q.submit("second").result(timeout=15)


def test_metadata_cannot_grow_past_the_limit_by_patches(make_queue: MakeQueue, db_url: str) -> None:
    q = make_queue(db_url, start=False)
    job = q.submit("x")
    chunk = "x" * (MAX_JSON_BYTES // 3)
    q.update_metadata(job.id, {"a": chunk})
    q.update_metadata(job.id, {"b": chunk})
    with pytest.raises(InvalidJob, match=rf"^metadata after this patch=.* at most {MAX_JSON_BYTES} bytes as JSON"):
        q.update_metadata(job.id, {"c": chunk})
    assert set(q.get(job.id).metadata) == {"a", "b"}
    assert set(q.update_metadata(job.id, {"a": None, "c": chunk}).metadata) == {"b", "c"}  # deleting makes room


@pytest.mark.parametrize(
    ("column", "text"),
    [("meta", "[" * 5000 + "]" * 5000), ("params", "{not json"), ("params", "[1, 2]"), ("images", '"x"')],
)
def test_a_row_that_cannot_be_decoded_fails_its_own_job_only(
    make_queue: MakeQueue, db_url: str, column: str, text: str
) -> None:
    q = make_queue(db_url, generator=FakeGenerator(steps=1), start=False)
    bad = q.submit("bad")
    with q.store.engine.begin() as conn:  # type: ignore[attr-defined]  # behind the store's back
        conn.execute(sa.text(f"UPDATE imgnb_job SET {column} = :text WHERE id = :id"), {"text": text, "id": bad.id})
    good = q.submit("good")
    q.start()
    assert good.result(timeout=15)
    wait_until(lambda: q.get(bad.id).status is JobStatus.ERROR)
    assert "imgnb cannot read this job's stored data" in (q.get(bad.id).error or "")
    assert [j.id for j in q.jobs()] == [bad.id, good.id]  # reading such a row never fails


def test_a_claim_skips_unreadable_batch_mates_and_frees_the_device(sql_store: SQLStore) -> None:
    store = sql_store

    def spoil(job_id: int) -> None:
        with store.engine.begin() as conn:
            conn.execute(sa.text("UPDATE imgnb_job SET params = '[' WHERE id = :id"), {"id": job_id})

    a, b, c = store.add([spec("a"), spec("b"), spec("c")], batch_keys=["k", "k", "k"], now=NOW)
    spoil(b.id)
    claimed = store.claim(owner="w", device="d", now=NOW, lease=10, batch_size=3)
    assert [r.id for r in claimed] == [a.id, c.id] and claimed[0].batch == claimed[1].batch
    assert store.get(b.id).status is JobStatus.ERROR
    (lone,) = store.add([spec("lone")], batch_keys=[None], now=NOW)
    spoil(lone.id)
    assert store.claim(owner="w", device="e", now=NOW, lease=10) == []
    assert store.get(lone.id).status is JobStatus.ERROR
    (fine,) = store.add([spec("fine")], batch_keys=[None], now=NOW)
    assert [r.id for r in store.claim(owner="other", device="e", now=NOW, lease=10)] == [fine.id]  # lock freed


# -- every error is an ImgnbError naming its cause ------------------------------------------------------


def test_unstorable_input_is_refused_the_same_on_both_databases(make_queue: MakeQueue, db_url: str) -> None:
    q = make_queue(db_url, start=False)
    job = q.submit("kept")
    nul, surrogate = "text without NUL", "text without lone surrogates"
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: q.submit("a \ud800 fox"), surrogate),
        (lambda: q.submit("a \x00 fox"), nul),
        (lambda: q.submit("fox", group="\udcff"), surrogate),
        (lambda: q.submit("fox", group="g\x00"), nul),
        (lambda: q.submit("fox", group="g" * 201), "at most 200 characters"),
        (lambda: q.submit("fox", metadata={"k": "\x00"}), nul),
        (lambda: q.submit("fox", metadata={"k\x00": 1}), nul),
        (lambda: q.submit("fox", metadata={"k": ["\ud800"]}), r"^metadata\['k'\]\[0\]='\\ud800' is invalid"),
        (lambda: q.submit("fox", style="\x00"), nul),
        (lambda: q.submit("fox", style="\udfff"), surrogate),
        (
            lambda: q.submit_batch([{"prompt": "o"}, {"prompt": "x", "y": "\x00"}]),
            r"^batch item 1: params\['y'\]=.*NUL",
        ),
        (lambda: q.submit("fox", timeout=10**400), r"timeout=.* seconds > 0"),
        (lambda: q.submit_batch(5), r"items=5 is invalid"),  # type: ignore[arg-type]
        (lambda: q.update_metadata(job.id, {"k": "\x00"}), nul),
        (lambda: q.jobs(group="\ud800"), surrogate),
        (lambda: q.get("1"), r"job_id='1' is invalid; allowed: an integer"),  # type: ignore[arg-type]
    ]
    for call, message in cases:
        with pytest.raises(InvalidJob, match=message):
            call()
    assert total(q) == 1 and q.get(job.id).metadata == {}
    assert q.submit("fox", group="g" * 200).group == "g" * 200


def test_ids_no_job_can_have_are_not_found(make_queue: MakeQueue, db_url: str) -> None:
    q = make_queue(db_url, start=False)
    for bad_id in (2**70, 2**63, 0, -1, 10**5000):
        for call in (q.get, q.cancel, q.retry, lambda i: q.update_metadata(i, {})):
            with pytest.raises(JobNotFound, match=r"^no job with id "):
                call(bad_id)
    with pytest.raises(JobNotFound, match=f"^no job with id {2**70}$"):
        q.get(2**70)


def test_a_full_disk_is_a_database_error(make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, start=False)
    q.submit("first")
    engine = q.store.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
    sa.event.listen(engine, "connect", lambda dbapi, _: dbapi.execute(f"PRAGMA max_page_count = {pages}"))
    engine.dispose()
    with pytest.raises(DatabaseError, match=r"jobs\.db failed: database or disk is full"):
        q.submit_batch([{"prompt": "x" * 4000}] * 50)
    assert total(q) == 1


def test_missing_tables_and_rows_are_database_errors(sql_store: SQLStore, db_url: str) -> None:
    store = sql_store
    (job,) = store.add([spec()], batch_keys=[None], now=NOW)
    with store.engine.begin() as conn:  # behind the store's back
        conn.execute(sa.text("DROP TABLE imgnb_job"))
    add = lambda: store.add([spec()], batch_keys=[None], now=NOW)  # noqa: E731
    for call in (add, lambda: store.get(job.id), store.list_jobs, lambda: store.changes_since(0)):
        with pytest.raises(DatabaseError, match=r"failed: (no such table: |relation .)imgnb_job"):
            call()
    with store.engine.begin() as conn:  # the counts live in a table of their own
        conn.execute(sa.text("DROP TABLE imgnb_count"))
    with pytest.raises(DatabaseError, match=r"failed: (no such table: |relation .)imgnb_count"):
        store.counts()
    with store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM imgnb_meta"))
    for call in (add, store.queued_snapshot, lambda: SQLStore(db_url), lambda: ImageQueue(db_url)):
        with pytest.raises(DatabaseError, match=r"lost imgnb's bookkeeping row .*imgnb_meta is empty"):
            call()


def test_a_folder_that_cannot_be_made_is_a_database_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DatabaseError, match=r"^cannot create the folder .*file/sub for the database .*: Not a dir"):
        ImageQueue(tmp_path / "file" / "sub" / "jobs.db")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere" / "deeper")
    with pytest.raises(DatabaseError, match=r"^cannot create the folder"):
        ImageQueue(tmp_path / "link" / "sub" / "jobs.db")
    (tmp_path / "locked").mkdir()
    with unwritable(tmp_path / "locked"), pytest.raises(DatabaseError, match=r"^cannot create the folder"):
        ImageQueue(tmp_path / "locked" / "sub" / "jobs.db")


def test_unusable_paths_and_urls_are_database_errors(tmp_path: Path) -> None:
    for db, message in [
        (f"{tmp_path}/a\x00b.db", "cannot be a file name: it holds a NUL character"),
        ("postgresql+nosuchdriver://u@h/db", "cannot open postgresql\\+nosuchdriver://u@h/db: NoSuchModuleError"),
        ("nosuch://", "is not a database URL|cannot open"),
    ]:
        with pytest.raises(DatabaseError, match=message):
            ImageQueue(db)


def test_a_generator_error_holding_unstorable_text_is_stored(make_queue: MakeQueue, db_url: str) -> None:
    def broken(request: GenerationRequest, on_step: OnStep) -> list[Image.Image]:
        raise ValueError("bad \x00 byte and a lone \udc80 from a file name")

    q = make_queue(db_url, generator=broken)
    job = q.submit("x", max_retries=0)
    wait_until(lambda: q.get(job.id).status is JobStatus.ERROR)
    assert q.get(job.id).error == "ValueError: bad \\x00 byte and a lone \\udc80 from a file name"


# -- what is accepted runs, and reads back exactly ---------------------------------------------------


def test_text_png_cannot_hold_as_latin1_is_written_as_itxt(make_queue: MakeQueue, db_path: str) -> None:
    q = make_queue(db_path, generator=any_params)
    params = {"ключ": 1, "style": "日本画", "note": "café", "n" * 100: "long name"}
    job = q.submit("кот в сапогах 🐈", **params)
    job.result(timeout=15)
    assert job.status is JobStatus.COMPLETE
    with Image.open(job.images[0]) as png:
        text = dict(png.text)  # type: ignore[attr-defined]
    assert (text["prompt"], text["style"], text["note"]) == ("кот в сапогах 🐈", "日本画", "café")
    assert "ключ" not in text and "n" * 100 not in text  # no PNG keyword can spell them
    assert json.loads(text["imgnb"])["params"] == params
    with pytest.raises(InvalidJob, match="lone surrogates"):
        q.submit("x", style="\udc80")


def test_numbers_read_back_the_same_from_both_databases(make_queue: MakeQueue, db_url: str) -> None:
    numbers = {"f": 1e300, "h": 1e16, "g": 1.816738184645291e279, "big": 10**30, "neg": -0.0, "tiny": 5e-324}
    q = make_queue(db_url, start=False)
    job = q.submit("numbers", metadata=numbers, **numbers)
    patched = q.update_metadata(job.id, {"p": numbers})
    stored = make_queue(db_url, start=False).get(job.id)  # as another process reads it

    def exactly(values: dict[str, Any]) -> dict[str, tuple[type, str]]:
        return {k: (type(values[k]), repr(values[k])) for k in numbers}

    for got in (stored.metadata, stored.metadata["p"], stored.params, patched.metadata["p"]):
        assert exactly(got) == exactly(numbers)


def test_a_handle_shows_what_was_stored(make_queue: MakeQueue, db_url: str) -> None:
    q = make_queue(db_url, start=False)
    md: dict[Any, Any] = {"t": (1, 2), 5: "x", "n": {"deep": [1]}}
    job = q.submit("p", metadata=md, size=(512, 512))
    (in_batch,) = q.submit_batch([{"prompt": "b", "metadata": md}])
    md["f"] = 1
    md["n"]["deep"].append(2)
    stored = {"t": [1, 2], "5": "x", "n": {"deep": [1]}}
    assert job.metadata == stored and in_batch.metadata == stored and job.params == {"size": [512, 512]}
    job.metadata["mine"] = 1
    job.params["size"].append(3)
    assert job.metadata == stored and job.params == {"size": [512, 512]}
    assert make_queue(db_url, start=False).get(job.id).metadata == stored


def test_a_version_1_database_is_upgraded(db_url: str) -> None:
    store = SQLStore(db_url)
    (job,) = store.add([spec(metadata={"a": {"x": 1}})], batch_keys=[None], now=NOW)
    with store.engine.begin() as conn:  # back to schema 1: JSONB and a merge function on PostgreSQL
        if store.dialect == "postgresql":
            conn.exec_driver_sql(
                "ALTER TABLE imgnb_job ALTER COLUMN params TYPE jsonb USING params::jsonb,"
                " ALTER COLUMN meta TYPE jsonb USING meta::jsonb, ALTER COLUMN images TYPE jsonb USING images::jsonb"
            )
            conn.exec_driver_sql(
                "CREATE FUNCTION imgnb_jsonb_merge(target jsonb, patch jsonb) RETURNS jsonb"
                " LANGUAGE sql AS 'SELECT target || patch'"
            )
        back_to_schema(conn, 5)
        for column in ("model", "passed_over"):  # added by schema 3
            conn.exec_driver_sql(f"ALTER TABLE imgnb_job DROP COLUMN {column}")
        conn.exec_driver_sql("UPDATE imgnb_meta SET schema_version = 1")
    store.close()
    upgraded = SQLStore(db_url)
    try:
        with upgraded.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT schema_version FROM imgnb_meta").scalar() == SCHEMA_VERSION
            if upgraded.dialect == "postgresql":
                types = conn.exec_driver_sql(
                    "SELECT data_type FROM information_schema.columns WHERE table_name = 'imgnb_job'"
                    " AND column_name IN ('params', 'meta', 'images')"
                ).scalars()
                assert list(types) == ["text"] * 3
                assert conn.exec_driver_sql("SELECT to_regproc('imgnb_jsonb_merge')").scalar() is None
        assert upgraded.get(job.id).params == {"steps": 2}
        merged = upgraded.update_metadata(job.id, {"a": {"y": 1e16}})
        assert merged.metadata == {"a": {"x": 1, "y": 1e16}} and isinstance(merged.metadata["a"]["y"], float)
    finally:
        upgraded.close()


# -- files ------------------------------------------------------------------------------------------


def test_a_read_only_file_is_opened_read_only(make_queue: MakeQueue, db_path: str, tmp_path: Path) -> None:
    q = make_queue(db_path, start=False)
    job = q.submit("kept", metadata={"a": 1})
    q.close()
    path = Path(db_path)
    before = path.read_bytes()
    with unwritable(path):
        ro = ImageQueue(db_path, images_dir=tmp_path / "images", generator=FakeGenerator())
        try:
            assert ro.store.read_only  # type: ignore[attr-defined]
            assert ro.get(job.id).metadata == {"a": 1} and [j.id for j in ro.jobs()] == [job.id]
            assert ro.counts()["queued"] == 1
            for call in (lambda: ro.submit("new"), lambda: ro.update_metadata(job.id, {}), lambda: ro.cancel(job.id)):
                with pytest.raises(DatabaseError, match=r"jobs\.db is read-only .*nothing can be submitted or changed"):
                    call()
        finally:
            ro.close()
    # unchanged, and no -wal/-shm left: made by a reader, they would stop the file's owner from writing
    assert path.read_bytes() == before and sorted(os.listdir(path.parent)) == ["jobs.db"]


def test_a_read_only_queue_watches_a_writer(
    make_queue: MakeQueue, db_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a writer on the file, the read-only reader shares its WAL index and sees its changes.
    (Read-only is forced here: a file unwritable for this process would be unwritable for the writer.)"""
    writer = make_queue(db_path, start=False)
    first = writer.submit("first")
    monkeypatch.setattr("imgnb.store.sql.is_read_only", lambda url: True)
    ro = make_queue(db_path, images_dir=tmp_path / "ro-images")
    assert ro.store.read_only  # type: ignore[attr-defined]
    watched = ro.get(first.id)
    second = writer.submit("second")
    writer.cancel(first.id)
    wait_until(lambda: watched.status is JobStatus.CANCELLED and ro.get(second.id).position == 1)


def test_a_read_only_file_in_a_read_only_folder_is_read(make_queue: MakeQueue, db_path: str, tmp_path: Path) -> None:
    q = make_queue(db_path, start=False)
    job = q.submit("kept")
    q.close()
    path = Path(db_path)
    with unwritable(path, path.parent):
        ro = ImageQueue(db_path, start=False, images_dir=tmp_path / "images")
        try:
            assert ro.get(job.id).prompt == "kept"
        finally:
            ro.close()
    assert sorted(os.listdir(path.parent)) == ["jobs.db"]


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_another_applications_database_is_refused_unchanged(tmp_path: Path, journal: str) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA journal_mode = {journal}")
        conn.execute("CREATE TABLE notes (t TEXT)")
        conn.execute("INSERT INTO notes VALUES ('mine')")
        conn.commit()
    before = path.read_bytes()
    message = r"app\.db is another application's SQLite database \(it holds notes, not imgnb's tables\); it was left"
    with pytest.raises(NotADatabase, match=message):
        ImageQueue(path)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["app.db"]


def test_opening_and_closing_an_intact_database_writes_nothing(
    make_queue: MakeQueue, db_url: str, tmp_path: Path
) -> None:
    make_queue(db_url, start=False).submit("kept")
    if "://" not in db_url:
        observer = sqlite3.connect(db_url)
        path = Path(db_url)

        def state() -> object:
            return observer.execute("PRAGMA data_version").fetchone(), path.read_bytes(), path.stat().st_mtime_ns
    else:
        engine = sa.create_engine(db_url)

        def state() -> object:
            with engine.connect() as conn:
                return conn.exec_driver_sql("SELECT xmin::text, revision FROM imgnb_meta").all()

    before = state()
    SQLStore(db_url).close()
    ImageQueue(db_url, images_dir=tmp_path / "images").close()  # a queue that watches, and holds nothing
    assert state() == before
    if "://" not in db_url:
        observer.close()
    else:
        engine.dispose()
