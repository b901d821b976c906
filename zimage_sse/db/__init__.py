"""All SQL lives in this package and in migrations/: the JobStore (base.py, every query written once)
on SQLite (sqlite.py, the embedded default) or PostgreSQL (postgres.py, for several processes, with
leases.py its queue across machines: claims, leases, reaping).

The reports read through the `report_*` methods, which take a `ReportFilter` and return plain rows
(zimage_sse/reports.py makes the tables). postgres.py, and with it psycopg, is imported only when a
postgresql:// store is opened, so the embedded default never loads it.
"""

from __future__ import annotations

from pathlib import Path

from .base import JobStore
from .reports import ReportFilter
from .sql import JOB_COLUMNS, MIGRATIONS_DIR, StoreUnavailable, migrations
from .sqlite import Store

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


async def open_store(location: str | Path) -> JobStore:
    """The store a setting names: a postgresql:// URL opens PostgreSQL, anything else is the path of
    an SQLite file. Raises StoreUnavailable, naming the URL, when PostgreSQL cannot be reached."""
    if is_postgres_url(location):
        from .postgres import PgStore

        return await PgStore.open(str(location))
    return await Store.open(Path(location))


__all__ = [
    "JOB_COLUMNS",
    "MIGRATIONS_DIR",
    "JobStore",
    "ReportFilter",
    "Store",
    "StoreUnavailable",
    "is_postgres_url",
    "migrations",
    "open_store",
]
