"""Shared pytest configuration for imgnb's tests.

Fixtures that start outside services live in ``tests/fixtures/`` and are loaded as plugins here:

- ``tests.fixtures.postgres``: ``postgres_server``, ``postgres_url``, ``pg_db_url``
- ``tests.fixtures.jupyterlab``: ``jupyterlab_server``, ``chromium_executable``, ``lab_browser``, ``lab``
- ``tests.fixtures.queues``: ``db_url`` (SQLite and PostgreSQL), ``db_path``, ``make_queue``, ``store``
- ``tests.fixtures.pipelines``: ``tiny_pipelines`` (one tiny pipeline per family, built once per run)

Add fixtures of your own below the plugin list, or in a module of their own under ``tests/fixtures/``.
"""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.jupyterlab",
    "tests.fixtures.queues",
    "tests.fixtures.pipelines",
]
