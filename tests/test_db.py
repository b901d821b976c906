"""The SQLite store (zimage_sse/db.py) on a real database file: migrations and the one write per job."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from zimage_sse.db import MIGRATIONS_DIR, Store, migrations

# What this release ships, and the number the next release's migration would take.
SHIPPED = len(migrations())
NEXT = SHIPPED + 1

JOB_ID = "0123456789abcdef"


def job_row(job_id: str = JOB_ID, **overrides: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "created_at": 1_700_000_000.0,
        "status": "queued",
        "prompt": "a lighthouse in a storm",
        "negative_prompt": "",
        "width": 256,
        "height": 256,
        "steps": 4,
        "guidance": 0.0,
        "seed": 42,
        "num_images": 1,
        "model": "tiny",
        **overrides,
    }


def plain(path: Path) -> sqlite3.Connection:
    """A second, ordinary connection: what any other reader of the file sees."""
    return sqlite3.connect(path)


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "zimage-sse.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(db_path)
    yield opened
    await opened.close()


@pytest.fixture
def extended_migrations(tmp_path: Path) -> Path:
    """The real migrations plus a second one, as a later release would ship it."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(path, directory / path.name)
    (directory / f"{NEXT:03d}_test.sql").write_text("ALTER TABLE jobs ADD COLUMN note TEXT;\n")
    return directory


# -- migrations --------------------------------------------------------------------------------


async def test_migrations_build_the_schema_on_an_empty_database(store: Store, db_path: Path) -> None:
    shipped = len(list(MIGRATIONS_DIR.glob("*.sql")))
    assert shipped >= 1

    assert await store.schema_version() == shipped
    with plain(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (shipped,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"jobs", "step_timings", "phase_timings"} <= tables


async def test_a_new_migration_keeps_existing_data(
    store: Store, db_path: Path, extended_migrations: Path
) -> None:
    await store.insert_job(job_row())

    assert await store.migrate(extended_migrations) == NEXT

    job = await store.get_job(JOB_ID)
    assert job is not None
    assert job["prompt"] == "a lighthouse in a storm"
    assert job["seed"] == 42
    assert job["note"] is None
    with plain(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (NEXT,)
        assert "note" in columns(conn, "jobs")
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (1,)


async def test_migrating_again_changes_nothing(
    store: Store, db_path: Path, extended_migrations: Path
) -> None:
    await store.insert_job(job_row())
    await store.migrate(extended_migrations)

    # Re-running the new migration would fail ("duplicate column name"), so success means it was skipped.
    assert await store.migrate(extended_migrations) == NEXT
    reopened = await Store.open(db_path, extended_migrations)
    try:
        assert await reopened.schema_version() == NEXT
        assert [job["id"] for job in await reopened.list_jobs()] == [JOB_ID]
    finally:
        await reopened.close()
    with plain(db_path) as conn:
        assert columns(conn, "jobs").count("note") == 1


async def test_a_gap_in_migration_numbers_raises(store: Store, db_path: Path, tmp_path: Path) -> None:
    directory = tmp_path / "gappy"
    directory.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(path, directory / path.name)
    (directory / f"{NEXT + 1:03d}_skipped_one.sql").write_text("CREATE TABLE notes (text TEXT);\n")

    with pytest.raises(RuntimeError, match="without gaps"):
        await store.migrate(directory)

    assert await store.schema_version() == SHIPPED
    with plain(db_path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "notes" not in tables


async def test_a_failing_migration_leaves_nothing_half_applied(
    store: Store, db_path: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "broken"
    directory.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(path, directory / path.name)
    (directory / f"{NEXT:03d}_broken.sql").write_text(
        "CREATE TABLE notes (text TEXT);\nALTER TABLE no_such_table ADD COLUMN x TEXT;\n"
    )

    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        await store.migrate(directory)
    await store.insert_job(job_row())  # a later commit must not save half of the failed migration

    assert await store.schema_version() == SHIPPED
    with plain(db_path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone() == (1,)
    assert "notes" not in tables


async def test_open_refuses_a_broken_migration_set(db_path: Path, tmp_path: Path) -> None:
    directory = tmp_path / "gap"
    directory.mkdir()
    (directory / "002_alone.sql").write_text("CREATE TABLE notes (text TEXT);\n")

    with pytest.raises(RuntimeError, match="without gaps"):
        await Store.open(db_path, directory)


# -- finish_job --------------------------------------------------------------------------------


async def test_finish_job_writes_status_and_every_timing(store: Store, db_path: Path) -> None:
    await store.insert_job(job_row())
    await store.mark_started(JOB_ID, 1_700_000_001.0, "cpu", "float32")
    # Deliberately unsorted, so step order cannot be confused with any ordering by value.
    step_s = [0.9, 0.3, 0.5, 0.4]
    phases = {"loading": 1.5, "encoding": 0.1, "denoising": 2.1, "decoding": 0.25, "saving": 0.05}

    await store.finish_job(
        JOB_ID,
        status="done",
        finished_at=1_700_000_005.0,
        images=[f"{JOB_ID}-0.png"],
        step_s=step_s,
        phases=phases,
        warm_up=True,
    )

    assert await store.step_timings(JOB_ID) == step_s
    assert await store.phase_timings(JOB_ID) == phases
    job = await store.get_job(JOB_ID)
    assert job is not None
    assert (job["status"], job["finished_at"], job["images"], job["warm_up"], job["error"]) == (
        "done",
        1_700_000_005.0,
        [f"{JOB_ID}-0.png"],
        1,
        None,
    )
    with plain(db_path) as conn:
        steps = conn.execute(
            "SELECT step, seconds FROM step_timings WHERE job_id = ? ORDER BY step", (JOB_ID,)
        )
        assert steps.fetchall() == [(1, 0.9), (2, 0.3), (3, 0.5), (4, 0.4)]
        stored = dict(conn.execute("SELECT phase, seconds FROM phase_timings WHERE job_id = ?", (JOB_ID,)))
        assert stored == phases
        assert conn.execute("SELECT status FROM jobs WHERE id = ?", (JOB_ID,)).fetchone() == ("done",)


async def test_finish_job_records_a_failure_reason(store: Store) -> None:
    await store.insert_job(job_row())
    await store.mark_started(JOB_ID, 1_700_000_001.0, "cpu", "float32")

    await store.finish_job(JOB_ID, status="failed", finished_at=1_700_000_002.0, error="ValueError: boom")

    job = await store.get_job(JOB_ID)
    assert job is not None
    assert (job["status"], job["error"], job["images"], job["warm_up"]) == (
        "failed",
        "ValueError: boom",
        [],
        None,
    )
    assert await store.step_timings(JOB_ID) == []
    assert await store.phase_timings(JOB_ID) == {}


@pytest.mark.parametrize(
    ("step_s", "phases"),
    [
        ([0.2, 0.2, 0.2], {"encoding": 0.1, "upscaling": 1.0}),  # the CHECK constraint rejects the phase
        ([0.2, float("nan"), 0.2], {"encoding": 0.1}),  # SQLite stores NaN as NULL: NOT NULL rejects it
    ],
    ids=["unknown-phase", "nan-step"],
)
async def test_a_failed_finish_job_writes_nothing(
    store: Store, db_path: Path, step_s: list[float], phases: dict[str, float]
) -> None:
    await store.insert_job(job_row())
    await store.mark_started(JOB_ID, 1_700_000_001.0, "cpu", "float32")

    with pytest.raises(sqlite3.IntegrityError):
        await store.finish_job(
            JOB_ID,
            status="done",
            finished_at=1_700_000_005.0,
            images=["x-0.png"],
            step_s=step_s,
            phases=phases,
        )

    job = await store.get_job(JOB_ID)
    assert job is not None
    assert (job["status"], job["finished_at"], job["images"]) == ("running", None, [])
    assert await store.step_timings(JOB_ID) == []
    assert await store.phase_timings(JOB_ID) == {}
    with plain(db_path) as conn:
        assert conn.execute("SELECT status FROM jobs").fetchall() == [("running",)]
        assert conn.execute("SELECT count(*) FROM step_timings").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM phase_timings").fetchone() == (0,)

    # The connection is usable afterwards: the job can still be finished properly.
    await store.finish_job(JOB_ID, status="failed", finished_at=1_700_000_006.0, error="could not save")
    job = await store.get_job(JOB_ID)
    assert job is not None
    assert (job["status"], job["error"]) == ("failed", "could not save")
