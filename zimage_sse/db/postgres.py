"""The JobStore on PostgreSQL (psycopg 3's async API, a connection pool): one queue and history for
several web processes and workers (issue 16). zimage_sse.db.open_store imports this module only for a
postgresql:// URL, so the embedded default never imports psycopg.

Migrations are migrations/postgresql/NNN_name.sql, tracked in the table schema_version; each runs in a
transaction holding an advisory lock, so processes starting together apply each one once.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .base import JobStore
from .sql import ASCII_LOWER, MIGRATIONS_DIR, StoreUnavailable, Tx, like_pattern

PG_MIGRATIONS_DIR = MIGRATIONS_DIR / "postgresql"
# The key of the advisory lock that migrations hold (any constant that nothing else on the database
# uses): "zimage" in ASCII.
MIGRATION_LOCK = 0x7A696D616765
# Folds ASCII letters only, as SQLite's LIKE does (base.ASCII_LOWER); ILIKE and lower() would fold
# "É" too, by the database's locale.
_FOLD = "translate(prompt, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')"
_TRACKING = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
    " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)

Connection = psycopg.AsyncConnection[DictRow]


def redact(url: str) -> str:
    """The URL without its password, to name it in messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


@lru_cache(maxsize=512)
def placeholders(sql: str) -> str:
    """The store's `?` placeholders as psycopg's %s (a literal % doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _values(params: Sequence[Any]) -> list[Any]:
    # SQLite stores NaN as NULL, so its NOT NULL columns refuse it; PostgreSQL would keep NaN. Binding
    # None gives both backends the same rows and the same refusals.
    return [None if isinstance(v, float) and math.isnan(v) else v for v in params]


class _PgTx:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def select(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = await self._run(sql, params)
        return await cursor.fetchall()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return (await self._run(sql, params)).rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        async with self._conn.cursor() as cursor:
            await cursor.executemany(placeholders(sql), [_values(row) for row in rows])
            return cursor.rowcount

    async def _run(self, sql: str, params: Sequence[Any]) -> psycopg.AsyncCursor[DictRow]:
        if not params:
            # Without parameters the text goes as it is: a migration's several statements, its % signs.
            return await self._conn.execute(sql)
        return await self._conn.execute(placeholders(sql), _values(params))


class PgStore(JobStore):
    _ORDER = "seq"
    # seq, and the lease columns the queue across machines keeps (db/leases.py, migration 002).
    _HIDDEN = frozenset({"seq", "worker", "lease_until", "cancel_requested", "front"})
    # Recovery holds the running rows it reads until it commits: another process cannot finish or
    # claim one in between.
    _LOCK_ROWS = " FOR UPDATE"
    MIGRATIONS = PG_MIGRATIONS_DIR

    def __init__(self, pool: AsyncConnectionPool[Connection], url: str) -> None:
        self._pool = pool
        self.url = redact(url)

    @classmethod
    async def open(
        cls,
        url: str,
        migrations_dir: Path = PG_MIGRATIONS_DIR,
        *,
        min_size: int = 1,
        max_size: int = 8,
        wait_s: float = 10.0,
    ) -> PgStore:
        """Connect, migrate and return the store; StoreUnavailable names the URL when the server cannot
        be reached or refuses it (the pool alone would only time out, without saying why)."""
        name = redact(url)
        try:
            probe = await psycopg.AsyncConnection.connect(url, connect_timeout=max(1, round(wait_s)))
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot open the PostgreSQL store {name}: {exc}") from exc
        await probe.close()
        pool = AsyncConnectionPool(
            url,
            connection_class=Connection,
            kwargs={"autocommit": True, "row_factory": dict_row},
            min_size=min_size,
            max_size=max_size,
            timeout=wait_s,
            # A connection the server dropped (restart, failover) is replaced before it is handed out.
            check=AsyncConnectionPool.check_connection,
            open=False,
            name="zimage-sse",
        )
        try:
            await pool.open(wait=True, timeout=wait_s)
            store = cls(pool, url)
            await store.migrate(migrations_dir)
        except PoolTimeout as exc:
            await pool.close()
            raise StoreUnavailable(f"the PostgreSQL store {name} did not answer within {wait_s} s") from exc
        except BaseException:
            await pool.close()
            raise
        return store

    async def close(self) -> None:
        await self._pool.close()

    async def schema_version(self) -> int:
        rows = await self._fetch("SELECT to_regclass('schema_version') IS NOT NULL AS tracked", ())
        if not rows[0]["tracked"]:
            return 0
        rows = await self._fetch("SELECT COALESCE(MAX(version), 0) AS version FROM schema_version", ())
        return int(rows[0]["version"])

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        async with self._pool.connection() as conn:
            return await _PgTx(conn).select(sql, params)

    @asynccontextmanager
    async def _transaction(self, exclusive: bool = False) -> AsyncIterator[Tx]:
        async with self._pool.connection() as conn, conn.transaction():
            if exclusive:
                # Released at commit or rollback: a process that dies mid-migration leaves no lock.
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            yield _PgTx(conn)

    def _search(self, text: str) -> tuple[str, str]:
        return f"{_FOLD} LIKE ? ESCAPE '\\'", like_pattern(text).translate(ASCII_LOWER)

    async def _migration_version(self, tx: Tx) -> int:
        await tx.execute(_TRACKING)
        rows = await tx.select("SELECT COALESCE(MAX(version), 0) AS version FROM schema_version")
        return int(rows[0]["version"])

    async def _apply_migration(self, tx: Tx, number: int, name: str, script: str) -> None:
        await tx.execute(script)
        await tx.execute("INSERT INTO schema_version (version, name) VALUES (?, ?)", (number, name))
