"""The PostgreSQL store (zimage_sse/db/postgres.py) on a real server: what the contract in
tests/contract/store.py does not cover: its migrations table, a URL it cannot open, `serve --store`
end to end, and that the embedded default never imports its client."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from zimage_sse.db import StoreUnavailable, migrations, open_store
from zimage_sse.db.postgres import PG_MIGRATIONS_DIR, PgStore, redact

from .conftest import ROOT, Server, follow, free_port, submit
from .contract.store import row
from .postgres import PostgresServer

SHIPPED = len(list(PG_MIGRATIONS_DIR.glob("*.sql")))


def copy_migrations(directory: Path, extra: dict[str, str]) -> Path:
    directory.mkdir()
    for path in PG_MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(path, directory / path.name)
    for name, script in extra.items():
        (directory / name).write_text(script)
    return directory


def tracked(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url) as conn:
        return [
            (int(v), str(n)) for v, n in conn.execute("SELECT version, name FROM schema_version ORDER BY 1")
        ]


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {str(r[0]) for r in rows}


async def test_each_migration_is_recorded_once_and_a_new_one_keeps_the_data(
    postgres_url: str, tmp_path: Path
) -> None:
    store = await PgStore.open(postgres_url)
    try:
        assert tracked(postgres_url) == [(n, path.name) for n, path in migrations(PG_MIGRATIONS_DIR)]
        await store.insert_job(row("a", 1.0, prompt="100% sure"))
        directory = copy_migrations(
            tmp_path / "next",
            # A literal % in a migration is kept as it is (no parameters go with a script).
            {f"{SHIPPED + 1:03d}_note.sql": "ALTER TABLE jobs ADD COLUMN note TEXT DEFAULT '5%';\n"},
        )
        assert await store.migrate(directory) == SHIPPED + 1
        # Applying it again would fail ("column already exists"): success means it was skipped.
        assert await store.migrate(directory) == SHIPPED + 1
        job = await store.get_job("a")
        assert job is not None and (job["prompt"], job["note"]) == ("100% sure", "5%")
        assert "seq" not in job  # the store's own ordering column stays inside
        assert tracked(postgres_url)[-1] == (SHIPPED + 1, f"{SHIPPED + 1:03d}_note.sql")
    finally:
        await store.close()


async def test_a_failing_migration_leaves_nothing_half_applied(postgres_url: str, tmp_path: Path) -> None:
    store = await PgStore.open(postgres_url)
    try:
        directory = copy_migrations(
            tmp_path / "broken",
            {f"{SHIPPED + 1:03d}_broken.sql": "CREATE TABLE notes (t TEXT);\nALTER TABLE nope ADD x TEXT;\n"},
        )
        with pytest.raises(psycopg.errors.UndefinedTable, match="nope"):
            await store.migrate(directory)
        assert await store.schema_version() == SHIPPED
        assert "notes" not in tables(postgres_url)
        gap = copy_migrations(
            tmp_path / "gap", {f"{SHIPPED + 2:03d}_skipped.sql": "CREATE TABLE notes (t TEXT);"}
        )
        with pytest.raises(RuntimeError, match="without gaps"):
            await store.migrate(gap)
        assert "notes" not in tables(postgres_url)
    finally:
        await store.close()


async def test_a_server_that_does_not_answer_is_named_without_its_password() -> None:
    url = f"postgresql://zimage:secret@127.0.0.1:{free_port()}/jobs"
    with pytest.raises(StoreUnavailable) as raised:
        await open_store(url)
    message = str(raised.value)
    assert f"postgresql://zimage:***@127.0.0.1:{url.split(':')[3]}" in message
    assert "secret" not in message
    assert "refused" in message.lower()


async def test_a_database_that_does_not_exist_is_named(postgres_server: PostgresServer) -> None:
    with pytest.raises(StoreUnavailable, match='database "no_such_db" does not exist'):
        await PgStore.open(postgres_server.url("no_such_db"))
    with pytest.raises(StoreUnavailable, match="notaport"):
        await PgStore.open("postgresql://127.0.0.1:notaport/jobs")


def test_redact_keeps_everything_but_the_password() -> None:
    assert redact("postgresql://u:p%40ss@db.example:5433/jobs?sslmode=require") == (
        "postgresql://u:***@db.example:5433/jobs?sslmode=require"
    )
    assert redact("postgresql://db/jobs") == "postgresql://db/jobs"


def test_the_embedded_default_never_imports_psycopg(tmp_path: Path) -> None:
    """`make run` (SQLite) loads no PostgreSQL client: it starts as fast and as simply as before."""
    script = (
        "import asyncio, sys\n"
        "from zimage_sse import app, cli\n"
        "from zimage_sse.db import open_store\n"
        f"store = asyncio.run(open_store({str(tmp_path / 'z.db')!r}))\n"
        "asyncio.run(store.close())\n"
        "print(sorted(m for m in sys.modules if m.startswith('psycopg')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_a_server_on_postgresql_keeps_the_history_for_the_next_one(
    postgres_url: str, make_server: Callable[..., Server]
) -> None:
    first = make_server(store=postgres_url)
    with first.client() as client:
        job = submit(client, prompt="a lighthouse on postgres")
        assert follow(client, job["id"])[-1].event == "done"
    first.stop()
    # Another server with a data directory of its own: the job and its timings come from PostgreSQL.
    second = make_server(store=postgres_url)
    assert second.data_dir != first.data_dir
    with second.client() as client:
        stored = client.get(f"/api/jobs/{job['id']}").json()
        assert (stored["status"], stored["params"]["prompt"]) == ("done", "a lighthouse on postgres")
        assert stored["phases"]["denoising"] > 0  # its timings too
        history = client.get("/history", params={"q": "LIGHTHOUSE ON"})
        assert history.status_code == 200 and job["id"] in history.text
        assert client.get("/reports").status_code == 200


def test_serve_with_an_unreachable_store_exits_naming_it(tmp_path: Path) -> None:
    url = f"postgresql://zimage:secret@127.0.0.1:{free_port()}/jobs"
    where = ["--data-dir", str(tmp_path), "--port", str(free_port())]
    done = subprocess.run(
        [sys.executable, "-m", "zimage_sse", "serve", "--store", url, "--model", "tiny", *where],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3
    output = done.stdout + done.stderr
    assert "cannot open the PostgreSQL store postgresql://zimage:***@127.0.0.1:" in output
    assert "secret" not in output
    assert "Traceback" not in output, "a user gets one line saying what is wrong, not a traceback"
