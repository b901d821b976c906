"""The backends against the interface contracts in tests/contract/: the embedded ones, and the
PostgreSQL store on a real server (the Redis bus will subclass the same classes)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from zimage_sse.broadcaster import Broadcaster
from zimage_sse.db import JobStore, Store
from zimage_sse.db.postgres import PgStore
from zimage_sse.service.bus import MemoryBus
from zimage_sse.service.queue import MemoryQueue

from .contract.bus import BusContract
from .contract.queue import QueueContract
from .contract.store import Opener, StoreContract


class TestMemoryQueue(QueueContract):
    @pytest.fixture
    def queue(self) -> MemoryQueue:
        return MemoryQueue()


class TestMemoryBus(BusContract):
    @pytest.fixture
    def bus(self) -> MemoryBus:
        return MemoryBus(Broadcaster(256), replay_events=self.REPLAY)


class TestSqliteStore(StoreContract):
    IntegrityError = sqlite3.IntegrityError

    @pytest.fixture
    def opener(self, tmp_path: Path) -> Opener:
        async def open_store() -> JobStore:
            return await Store.open(tmp_path / "contract.db")

        return open_store


class TestPostgresStore(StoreContract):
    """The same contract on a real PostgreSQL server (tests/postgres.py), a new database each test."""

    IntegrityError = psycopg.IntegrityError

    @pytest.fixture
    def opener(self, postgres_url: str) -> Opener:
        async def open_store() -> JobStore:
            return await PgStore.open(postgres_url)

        return open_store
