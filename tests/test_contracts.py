"""The embedded backends against the interface contracts in tests/contract/ (the PostgreSQL and Redis
backends subclass the same classes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from zimage_sse.broadcaster import Broadcaster
from zimage_sse.db import Store
from zimage_sse.service.bus import MemoryBus
from zimage_sse.service.queue import MemoryQueue

from .contract.bus import BusContract
from .contract.queue import QueueContract
from .contract.store import StoreContract


class TestMemoryQueue(QueueContract):
    @pytest.fixture
    def queue(self) -> MemoryQueue:
        return MemoryQueue()


class TestMemoryBus(BusContract):
    @pytest.fixture
    def bus(self) -> MemoryBus:
        return MemoryBus(Broadcaster(256), replay_events=self.REPLAY)


class TestSqliteStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[Store]:
        store = await Store.open(tmp_path / "contract.db")
        yield store
        await store.close()
