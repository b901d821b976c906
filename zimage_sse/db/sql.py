"""The pure parts every store backend shares: the job columns, the migration files, LIKE patterns,
row shaping, and the transaction protocol a backend implements."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{3})_[\w-]+\.sql$")
# SQLite's LIKE folds the case of ASCII letters only (sqlite.org/lang_expr.html#like); the PostgreSQL
# store folds exactly these, so "É" never matches "é" on either backend.
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

JOB_COLUMNS = (
    "id",
    "created_at",
    "started_at",
    "finished_at",
    "status",
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "steps",
    "guidance",
    "seed",
    "num_images",
    "model",
    "device",
    "dtype",
    "warm_up",
    "error",
    "images",
)


class StoreUnavailable(RuntimeError):
    """The store named in the settings cannot be opened (unreachable, refused, a wrong URL); the
    message names it, without its password."""


def migrations(directory: Path = MIGRATIONS_DIR) -> list[tuple[int, Path]]:
    """The NNN_name.sql files of a directory, in order; a gap in the numbers is refused."""
    found = []
    for path in sorted(directory.iterdir()):
        match = _MIGRATION_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    numbers = [n for n, _ in found]
    if numbers != list(range(1, len(numbers) + 1)):
        raise RuntimeError(f"migrations in {directory} must be numbered 001, 002, … without gaps: {numbers}")
    return found


def like_pattern(text: str) -> str:
    """A LIKE pattern (ESCAPE '\\') matching `text` literally anywhere: % and _ are not wildcards."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def shape_row(record: dict[str, Any], hidden: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A row as every caller sees it: images decoded from their JSON text, backend-only columns left out."""
    for name in hidden:
        record.pop(name, None)
    if "images" in record:
        record["images"] = json.loads(record["images"])
    return record


class Tx(Protocol):
    """One open transaction of a backend; SQL uses `?` placeholders."""

    async def select(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int: ...
