"""The JobStore on SQLite (the embedded default): one aiosqlite connection per process, WAL mode,
migrations/NNN_name.sql applied at open and tracked by PRAGMA user_version."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiosqlite

from .base import JobStore
from .sql import MIGRATIONS_DIR, Tx, like_pattern


def statements(script: str) -> Iterator[str]:
    """A migration's statements one by one (executescript would commit the open transaction first).
    sqlite3.complete_statement knows a ; inside a string, a comment or a trigger body."""
    parts = script.split(";")
    statement = ""
    for index, part in enumerate(parts):
        statement += part
        if index < len(parts) - 1:
            statement += ";"
            if sqlite3.complete_statement(statement):
                yield statement
                statement = ""
    if statement.strip():
        yield statement  # a trailing comment, or a last statement without its ;


class _SqliteTx:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def select(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        async with self._conn.execute(sql, params) as cursor:
            return [dict(row) for row in await cursor.fetchall()]

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._conn.execute(sql, params) as cursor:
            return cursor.rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        async with self._conn.executemany(sql, rows) as cursor:
            return cursor.rowcount


class Store(JobStore):
    _ORDER = "rowid"
    MIGRATIONS = MIGRATIONS_DIR

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        # One connection serves every task: a write's statements and its commit must not interleave
        # with another task's, or one commit would take half of the other's job end with it.
        self._writing = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, migrations_dir: Path = MIGRATIONS_DIR) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path)
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute("PRAGMA synchronous=NORMAL")
        store = cls(conn)
        try:
            await store.migrate(migrations_dir)
        except BaseException:
            await conn.close()
            raise
        return store

    @classmethod
    async def open_readonly(cls, path: Path) -> Store:
        """An existing database, read only and unmigrated: `zimage-sse report` must never change it."""
        conn = await aiosqlite.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        return cls(conn)

    async def close(self) -> None:
        await self._conn.close()

    async def schema_version(self) -> int:
        return await self._migration_version(_SqliteTx(self._conn))

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        return await _SqliteTx(self._conn).select(sql, params)

    @asynccontextmanager
    async def _transaction(self, exclusive: bool = False) -> AsyncIterator[Tx]:
        async with self._writing:
            try:
                if exclusive:
                    # Takes the database's write lock now, before the version is read: another
                    # process migrating at the same moment waits here (busy timeout) instead.
                    await self._conn.execute("BEGIN IMMEDIATE")
                yield _SqliteTx(self._conn)
                await self._conn.commit()
            except BaseException:
                await self._conn.rollback()
                raise

    def _search(self, text: str) -> tuple[str, str]:
        # LIKE ignores the case of ASCII letters only, which is the semantics every backend keeps.
        return "prompt LIKE ? ESCAPE '\\'", like_pattern(text)

    async def _migration_version(self, tx: Tx) -> int:
        rows = await tx.select("PRAGMA user_version")
        return int(rows[0]["user_version"]) if rows else 0

    async def _apply_migration(self, tx: Tx, number: int, name: str, script: str) -> None:
        for statement in statements(script):
            await tx.execute(statement)
        await tx.execute(f"PRAGMA user_version = {int(number)}")
