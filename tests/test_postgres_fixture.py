"""The throwaway PostgreSQL server really works: tables, writes, reads, visibility across connections."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.postgres


def test_session_database_round_trip(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE IF NOT EXISTS fixture_probe (id serial PRIMARY KEY, name text)"))
            conn.execute(sa.text("INSERT INTO fixture_probe (name) VALUES ('a'), ('b')"))
        with engine.connect() as conn:
            names = conn.execute(sa.text("SELECT name FROM fixture_probe ORDER BY id")).scalars().all()
            assert names[-2:] == ["a", "b"]
            assert conn.execute(sa.text("SELECT current_database()")).scalar_one() == "imgnb_test"
    finally:
        engine.dispose()


def test_two_connections_see_each_others_commits(pg_db_url: str) -> None:
    engine = sa.create_engine(pg_db_url)
    try:
        with engine.connect() as writer, engine.connect() as reader:
            assert writer.connection.dbapi_connection is not reader.connection.dbapi_connection
            writer.execute(sa.text("CREATE TABLE jobs (id int PRIMARY KEY, status text NOT NULL)"))
            writer.execute(sa.text("INSERT INTO jobs VALUES (1, 'queued')"))
            writer.commit()
            assert reader.execute(sa.text("SELECT status FROM jobs WHERE id = 1")).scalar_one() == "queued"
            reader.rollback()

            # An uncommitted write stays invisible to the other connection until it commits.
            writer.execute(sa.text("UPDATE jobs SET status = 'running' WHERE id = 1"))
            assert reader.execute(sa.text("SELECT status FROM jobs WHERE id = 1")).scalar_one() == "queued"
            reader.rollback()
            writer.commit()
            assert reader.execute(sa.text("SELECT status FROM jobs WHERE id = 1")).scalar_one() == "running"
            reader.rollback()

            # And the other way round.
            reader.execute(sa.text("INSERT INTO jobs VALUES (2, 'queued')"))
            reader.commit()
            assert writer.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one() == 2
            writer.rollback()
    finally:
        engine.dispose()


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_database(pg_db_url: str, run: int) -> None:
    # Both runs create the same table: the second would fail if it saw the first one's database.
    engine = sa.create_engine(pg_db_url)
    try:
        with engine.begin() as conn:
            tables = conn.execute(
                sa.text("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            ).scalar_one()
            assert tables == 0
            conn.execute(sa.text("CREATE TABLE only_mine (run int)"))
            conn.execute(sa.text("INSERT INTO only_mine VALUES (:run)"), {"run": run})
    finally:
        engine.dispose()
