"""`zimage-sse report`: the reports (zimage_sse/reports.py) in the terminal, read from the database file.

No server is needed, and the database is opened read only: a report never changes it. Text tables by
default, `--json` as GET /api/reports gives it, `--csv` one report as its CSV download.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import reports
from .config import Settings
from .db import Store
from .params import InvalidRequest
from .reports import Report, Table, seconds_text

# model_loads arrives in migrations/003; everything reports read is there from then on.
REQUIRED_SCHEMA = 3


class ReportError(Exception):
    """The database cannot be reported on; the message says why and what to do."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sections",
        nargs="*",
        metavar="REPORT",
        help=f"which reports (default all): {', '.join(reports.SECTIONS)}",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="where the database is (default $ZIMAGE_SSE_DATA_DIR or ./data)"
    )
    parser.add_argument("--model", help="only jobs of this model (as the server names it: tiny, a path …)")
    parser.add_argument("--device", help="only jobs on this device (cpu, cuda:0 …)")
    parser.add_argument("--since", help="only jobs that ended on or after this UTC date (YYYY-MM-DD)")
    parser.add_argument("--until", help="only jobs that ended on or before this UTC date (YYYY-MM-DD)")
    parser.add_argument("--bucket", choices=reports.BUCKETS, default="day", help="throughput per day or hour")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="JSON, as GET /api/reports answers")
    output.add_argument("--csv", action="store_true", help="one report as CSV (name it)")


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """0: printed; 1: no usable database; 2: bad filters or options (each named on stderr)."""
    sections: list[str] = list(dict.fromkeys(args.sections)) or list(reports.SECTIONS)
    unknown = [name for name in sections if name not in reports.SECTIONS]
    if unknown:
        print(
            f"zimage-sse report: no report named {unknown[0]!r}; there are {', '.join(reports.SECTIONS)}",
            file=sys.stderr,
        )
        return 2
    if args.csv and len(sections) != 1:
        print(
            f"zimage-sse report: --csv prints one report; name it ({', '.join(reports.SECTIONS)})",
            file=sys.stderr,
        )
        return 2
    try:
        filters = reports.parse_filters(vars(args))
        data_dir = args.data_dir if args.data_dir is not None else Settings.from_env().data_dir
    except InvalidRequest as exc:
        for field, reason in exc.errors.items():
            print(f"zimage-sse report: --{field} {reason}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"zimage-sse report: {exc}", file=sys.stderr)
        return 2
    path = data_dir / "zimage-sse.db"
    if not path.is_file():
        print(
            f"zimage-sse report: no database at {path} (serve there first, or pass --data-dir)",
            file=sys.stderr,
        )
        return 1
    try:
        report = asyncio.run(_build(path, filters))
    except ReportError as exc:
        print(f"zimage-sse report: {exc}", file=sys.stderr)
        return 1
    chosen = {name: report[name] for name in sections}
    if args.json:
        body = {"filters": filters.params(), "reports": {n: t.as_json() for n, t in chosen.items()}}
        json.dump(body, out, indent=2)
        out.write("\n")
    elif args.csv:
        out.write(chosen[sections[0]].as_csv())
    else:
        out.write(text(chosen, filters))
    return 0


async def _build(path: Path, filters: reports.Filters) -> Report:
    try:
        store = await Store.open_readonly(path)
    except sqlite3.Error as exc:
        raise ReportError(f"cannot open {path}: {exc}") from exc
    try:
        version = await store.schema_version()
        if version < REQUIRED_SCHEMA:
            raise ReportError(
                f"{path} is at schema version {version}, older than reports need ({REQUIRED_SCHEMA}): "
                "start `zimage-sse serve` on it once to upgrade it"
            )
        return await reports.build(store, filters)
    except sqlite3.Error as exc:
        raise ReportError(f"cannot read {path}: {exc}") from exc
    finally:
        await store.close()


def text(report: Report, filters: reports.Filters) -> str:
    """Each report as an aligned table under its title; an empty one says so."""
    chosen = ", ".join(f"{k}={v}" for k, v in filters.params().items()) or "none"
    parts = [f"zimage-sse report (filters: {chosen}; times UTC)"]
    for table in report.values():
        parts.append(
            f"\n{table.title}\n" + (_aligned(table) if table.rows else "  (no data for these filters)")
        )
        if table.name == "gpu" and table.rows and not table.extra["readings"]:
            parts.append("  no GPU readings: none of these jobs ran where NVML could read a GPU")
    return "\n".join(parts) + "\n"


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "–"
    if column.endswith("_s"):
        return seconds_text(float(value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _aligned(table: Table) -> str:
    header = [column.removesuffix("_s") for column in table.columns]
    cells = [[_cell(c, row.get(c)) for c in table.columns] for row in table.rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = [_line(header, widths), _line(["-" * w for w in widths], widths)]
    lines += [_line(row, widths) for row in cells]
    return "\n".join(lines)


def _line(values: Sequence[str], widths: Sequence[int]) -> str:
    return "  " + "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()
