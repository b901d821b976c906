"""Reports against a database filled by real tiny-model jobs: the numbers are recomputed here from the
raw step_timings / phase_timings rows with sqlite3 and statistics, then looked for in the JSON, the CSV,
the `zimage-sse report` output and the /reports page."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from zimage_sse import charts
from zimage_sse.curves import Curve
from zimage_sse.db import Store
from zimage_sse.eta import EtaModel
from zimage_sse.reports import SECTIONS, Filters, build, seconds_text
from zimage_sse.service import job_record

from .conftest import ROOT, Server, follow, read_sse, start_server, submit

# (width, height, steps) of the done jobs: three sizes, different step counts, repeats.
JOBS = [(256, 256, 4), (256, 256, 4), (256, 256, 6), (512, 512, 8), (512, 512, 8), (384, 256, 3)]


@dataclass
class History:
    server: Server
    db: Path
    cancelled: int


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[History]:
    server = start_server(tmp_path_factory.mktemp("reports"), models_dir)
    try:
        with server.client() as client:
            for width, height, steps in JOBS:
                job = submit(client, width=width, height=height, steps=steps)
                assert follow(client, job["id"])[-1].event == "done"
            # A running job cancelled after some steps and one cancelled while queued behind it: both
            # count in throughput, and neither one's steps may enter the step-time figures.
            running = submit(client, width=512, height=512, steps=100)
            queued = submit(client, width=256, height=256, steps=4)
            assert client.post(f"/api/jobs/{queued['id']}/cancel").status_code == 202
            with client.stream("GET", f"/api/jobs/{running['id']}/events") as response:
                lines = response.iter_lines()
                read_sse(lines, until=lambda e: e.event == "step" and e.json()["step"] >= 3)
                assert client.post(f"/api/jobs/{running['id']}/cancel").status_code == 202
                assert read_sse(lines)[-1].event == "cancelled"
        yield History(server, server.data_dir / "zimage-sse.db", cancelled=2)
    finally:
        server.stop()


def rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    with closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute(sql, params))


def size_of(row: sqlite3.Row) -> str:
    return f"{row['width']}x{row['height']}"


def expected_steps(db: Path) -> dict[str, dict[str, Any]]:
    """Per size, from the raw rows: steady steps (each done job's first left out) and per-index medians."""
    by_size: dict[str, dict[str, Any]] = {}
    for row in rows(
        db,
        "SELECT j.id, j.width, j.height, s.step, s.seconds FROM step_timings s JOIN jobs j ON j.id = s.job_id"
        " WHERE j.status = 'done'",
    ):
        size = by_size.setdefault(size_of(row), {"jobs": set(), "steady": [], "by_step": {}})
        size["jobs"].add(row["id"])
        if row["step"] > 1:
            size["steady"].append(row["seconds"])
        size["by_step"].setdefault(row["step"], []).append(row["seconds"])
    return by_size


async def engine_curve(db: Path, key: tuple[str, str, str]) -> Curve | None:
    """The step-cost curve of an EtaModel loaded the way the server loads one at start."""
    store = await Store.open(db)
    try:
        return EtaModel(job_record(row) for row in await store.timing_history()).step_curve(key)
    finally:
        await store.close()


def api(history: History, path: str, **params: str) -> Any:
    with history.server.client() as client:
        response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_step_times_and_profile_are_the_medians_of_the_recorded_steps(history: History) -> None:
    expected = expected_steps(history.db)
    assert set(expected) == {"256x256", "512x512", "384x256"}
    table = api(history, "/api/reports/step-times")
    got = {row["size"]: row for row in table["rows"]}
    assert set(got) == set(expected)
    for size, want in expected.items():
        row = got[size]
        assert row["jobs"] == len(want["jobs"])
        assert row["steps"] == len(want["steady"])
        assert row["median_s"] == pytest.approx(statistics.median(want["steady"]), abs=1e-6)
        assert row["min_s"] == pytest.approx(min(want["steady"]), abs=1e-6)
        assert row["max_s"] == pytest.approx(max(want["steady"]), abs=1e-6)
        assert row["min_s"] <= row["q1_s"] <= row["median_s"] <= row["q3_s"] <= row["max_s"]
    # The cancelled 100-step job's steps are not in there: 256² has 3+3+5 steady steps, 512² 7+7.
    assert got["256x256"]["steps"] == 11 and got["512x512"]["steps"] == 14
    # The cost model is the one the ETA engine fits when it loads this history at start (it may decline
    # to fit one, when noisy medians would make the cost fall with size): the same curve, or none.
    curve = asyncio.run(engine_curve(history.db, ("tiny", "cpu", "float32")))
    if curve is None:
        assert table["curves"] == [] and all(row["curve_s"] is None for row in table["rows"])
    else:
        [fit] = table["curves"]
        assert (fit["a"], fit["b"], fit["c"]) == pytest.approx((curve.a, curve.b, curve.c), rel=1e-9)
        for row in table["rows"]:
            assert row["curve_s"] == pytest.approx(curve(row["tokens"]), abs=1e-6)

    profile = api(history, "/api/reports/step-profile")["rows"]
    for size, want in expected.items():
        mine = {row["step"]: row for row in profile if row["size"] == size}
        assert sorted(mine) == sorted(want["by_step"])
        for step, values in want["by_step"].items():
            assert mine[step]["jobs"] == len(values)
            assert mine[step]["median_s"] == pytest.approx(statistics.median(values), abs=1e-6)


def test_phases_loads_throughput_and_eta_match_the_database(history: History) -> None:
    report = api(history, "/api/reports")["reports"]
    assert list(report) == list(SECTIONS)

    phases: dict[tuple[str, str], list[float]] = {}
    for row in rows(
        history.db,
        "SELECT j.width, j.height, p.phase, p.seconds FROM phase_timings p JOIN jobs j ON j.id = p.job_id"
        " WHERE j.status = 'done'",
    ):
        phases.setdefault((size_of(row), row["phase"]), []).append(row["seconds"])
    for row in report["phases"]["rows"]:
        for phase in ("encoding", "denoising", "decoding", "saving"):
            want = statistics.median(phases[(row["size"], phase)])
            assert row[f"{phase}_s"] == pytest.approx(want, abs=1e-6), (row["size"], phase)

    loads: dict[str, float] = {}
    for row in rows(history.db, "SELECT load_id, seconds FROM model_loads"):
        loads[row["load_id"]] = loads.get(row["load_id"], 0.0) + row["seconds"]
    total = next(r for r in report["loads"]["rows"] if r["component"] == "total")
    assert total["loads"] == len(loads) == 1
    assert total["median_s"] == pytest.approx(statistics.median(loads.values()), abs=1e-6)

    ended = rows(history.db, "SELECT status, num_images FROM jobs")
    throughput = report["throughput"]["rows"]
    assert sum(r["done"] for r in throughput) == len(JOBS)
    assert sum(r["cancelled"] for r in throughput) == history.cancelled
    assert sum(r["failed"] for r in throughput) == 0
    assert sum(r["images"] for r in throughput) == sum(
        r["num_images"] for r in ended if r["status"] == "done"
    )

    predictions = rows(
        history.db, "SELECT predicted_total_s, actual_total_s FROM eta_predictions WHERE point = 0"
    )
    errors = [
        abs(p["predicted_total_s"] - p["actual_total_s"]) / p["actual_total_s"]
        for p in predictions
        if p["predicted_total_s"] is not None
    ]
    overall = next(
        r for r in report["eta-accuracy"]["rows"] if r["scope"] == "overall" and r["point"] == "0%"
    )
    assert overall["jobs"] == len(errors) and overall["none"] == len(predictions) - len(errors)
    assert overall["mape_percent"] == pytest.approx(100 * statistics.fmean(errors), abs=0.01)

    # On a CPU nothing reads a GPU: the numbers are unknown, not zero.
    gpu = report["gpu"]
    assert gpu["readings"] == 0
    assert all(r["util_mean_median"] is None and r["with_readings"] == 0 for r in gpu["rows"])


def test_every_csv_parses_to_the_json(history: History) -> None:
    with history.server.client() as client:
        for name in SECTIONS:
            table = client.get(f"/api/reports/{name}").json()
            response = client.get(f"/api/reports/{name}.csv")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/csv")
            assert f"zimage-sse-{name}.csv" in response.headers["content-disposition"]
            parsed = list(csv.DictReader(io.StringIO(response.text)))
            assert parsed == [
                {c: "" if r[c] is None else str(r[c]) for c in table["columns"]} for r in table["rows"]
            ]
            assert len(parsed) == len(table["rows"]) and (name == "eta-accuracy" or parsed), name


def report_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zimage_sse", "report", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_report_command_prints_the_numbers_without_a_server(history: History) -> None:
    expected = expected_steps(history.db)
    done = report_cli("--data-dir", str(history.server.data_dir))
    assert done.returncode == 0, done.stderr
    for size, want in expected.items():
        line = next(line for line in done.stdout.splitlines() if f" {size} " in line)
        assert seconds_text(statistics.median(want["steady"])) in line, line
        assert f" {len(want['steady'])} " in line
    assert "no GPU readings" in done.stdout

    as_json = json.loads(report_cli("--data-dir", str(history.server.data_dir), "--json").stdout)
    assert as_json == api(history, "/api/reports")
    as_csv = report_cli("--data-dir", str(history.server.data_dir), "--csv", "step-times")
    with history.server.client() as client:
        assert as_csv.stdout == client.get("/api/reports/step-times.csv").text


def test_report_command_says_what_is_wrong(tmp_path: Path, history: History) -> None:
    missing = report_cli("--data-dir", str(tmp_path))
    assert missing.returncode == 1 and "no database at" in missing.stderr and not missing.stdout
    assert not (tmp_path / "zimage-sse.db").exists()  # looking did not create one
    bad = report_cli("--data-dir", str(history.server.data_dir), "--since", "last tuesday")
    assert bad.returncode == 2 and "--since must be a date" in bad.stderr
    two = report_cli("--data-dir", str(history.server.data_dir), "--csv")
    assert two.returncode == 2 and "--csv prints one report" in two.stderr


def test_the_page_shows_the_numbers_with_svg_charts(history: History) -> None:
    expected = expected_steps(history.db)
    with history.server.client() as client:
        page = client.get("/reports")
    assert page.status_code == 200
    html = page.text
    main = html[html.index("<main>") :]
    assert main.count("<svg") >= 5 and "<title" in main and "<desc" in main
    assert "<script" not in main and " style=" not in main  # readable without JavaScript, CSP-friendly
    for size, want in expected.items():
        assert f">{seconds_text(statistics.median(want['steady']))}<" in main, size
    assert "No GPU readings" in main
    assert 'href="/api/reports/step-times.csv"' in main


def test_filters_narrow_and_an_empty_selection_says_so(history: History) -> None:
    everything = api(history, "/api/reports")["reports"]
    assert api(history, "/api/reports", model="tiny")["reports"] == everything
    # A job cancelled while queued never ran on a device: a device filter leaves it out, nothing else.
    on_cpu = api(history, "/api/reports", device="cpu")["reports"]
    assert {k: v for k, v in on_cpu.items() if k != "throughput"} == {
        k: v for k, v in everything.items() if k != "throughput"
    }
    assert sum(r["cancelled"] for r in on_cpu["throughput"]["rows"]) == history.cancelled - 1
    for params in ({"model": "no-such-model"}, {"device": "cuda:7"}, {"until": "2001-01-01"}):
        report = api(history, "/api/reports", **params)["reports"]
        assert all(table["rows"] == [] for table in report.values()), params
        with history.server.client() as client:
            html = client.get("/reports", params=params).text
        main = html[html.index("<main>") :]
        assert "No jobs or model loads match these filters" in main
        assert "<svg" not in main and "numbers-table" not in main  # no zeros standing in for nothing


def test_dates_select_jobs_by_when_they_ended(tmp_path: Path, history: History) -> None:
    # A copy of the database with the 512² jobs moved three days back: the date filters split them off.
    copy = tmp_path / "zimage-sse.db"
    with closing(sqlite3.connect(history.db)) as source, closing(sqlite3.connect(copy)) as target:
        source.backup(target)
        target.execute("UPDATE jobs SET finished_at = finished_at - 3 * 86400 WHERE width = 512")
        target.commit()
    first = min(r["finished_at"] for r in rows(copy, "SELECT finished_at FROM jobs WHERE width != 512"))
    today = datetime.fromtimestamp(first, tz=UTC).date()
    before = str(today - timedelta(days=1))

    def sizes(*args: str) -> set[str]:
        done = report_cli("--data-dir", str(tmp_path), "--json", "step-times", *args)
        assert done.returncode == 0, done.stderr
        return {row["size"] for row in json.loads(done.stdout)["reports"]["step-times"]["rows"]}

    assert sizes() == {"256x256", "384x256", "512x512"}
    assert sizes("--until", before) == {"512x512"}
    assert sizes("--since", str(today)) == {"256x256", "384x256"}
    assert sizes("--since", str(today - timedelta(days=3)), "--until", str(today - timedelta(days=3))) == {
        "512x512"
    }


def test_bad_filters_are_named(history: History) -> None:
    cases = {
        "since": {"since": "2024-13-01"},
        "until": {"since": "2024-05-02", "until": "2024-05-01"},
        "bucket": {"bucket": "week"},
        "model": {"model": "x" * 1001},
    }
    with history.server.client() as client:
        for field, params in cases.items():
            for path in ("/api/reports", "/api/reports/step-times.csv"):
                response = client.get(path, params=params)
                assert response.status_code == 422, (path, params)
                assert list(response.json()["errors"]) == [field]
            page = client.get("/reports", params=params)
            assert page.status_code == 422 and f"<strong>{field}</strong>" in page.text
        unknown = client.get("/api/reports/nonsense")
        assert unknown.status_code == 404 and "step-times" in unknown.json()["error"]


def test_throughput_per_hour_adds_up_to_the_days(history: History) -> None:
    days = api(history, "/api/reports/throughput")["rows"]
    hours = api(history, "/api/reports/throughput", bucket="hour")["rows"]
    assert all(len(row["period"]) == len("2024-05-01 13:00") for row in hours)
    for key in ("jobs", "done", "cancelled", "images"):
        assert sum(r[key] for r in hours) == sum(r[key] for r in days)


async def test_gpu_readings_are_summarised_by_size(tmp_path: Path) -> None:
    """Readings as the worker stores them on a GPU (the CPU here has none): written through the Store."""
    store = await Store.open(tmp_path / "zimage-sse.db")
    try:
        for index, (util_start, util_mean, peak) in enumerate(
            [(10.0, 80.0, 900.0), (30.0, 90.0, 1200.0), (None, 95.0, 1000.0)]
        ):
            job_id = f"{index:016x}"
            await store.insert_job(
                {
                    "id": job_id,
                    "created_at": 1.0e9,
                    "status": "queued",
                    "prompt": "p",
                    "negative_prompt": "",
                    "width": 1024,
                    "height": 1024,
                    "steps": 2,
                    "guidance": 0.0,
                    "seed": 1,
                    "num_images": 1,
                    "model": "m",
                }
            )
            await store.mark_started(job_id, 1.0e9 + index, "cuda:0", "bfloat16", util_start)
            await store.finish_job(
                job_id,
                status="done",
                finished_at=1.0e9 + index + 1,
                step_s=[0.2, 0.1],
                gpu_util_mean=util_mean,
                gpu_mem_peak_mb=peak,
            )
        gpu = (await build(store, Filters()))["gpu"]
    finally:
        await store.close()
    assert gpu.extra["readings"] == 3
    [row] = gpu.rows
    assert row["device"] == "cuda:0" and row["with_readings"] == 3
    assert (
        row["util_mean_median"] == 90.0
        and row["util_start_median"] == 20.0
        and row["mem_peak_max_mb"] == 1200.0
    )


def test_chart_axes_reach_past_the_data() -> None:
    for high in (0.0037, 0.1189, 7.0, 95.0, 2304.0):
        ticks = charts.nice_ticks(high)
        assert ticks[0] == 0 and ticks[-1] >= high and len(ticks) <= 7
        steps = {round(b - a, 9) for a, b in pairwise(ticks)}
        assert len(steps) == 1, ticks


def test_throughput_page_link_keeps_the_filters(history: History) -> None:
    with history.server.client() as client:
        html = client.get("/reports", params={"model": "tiny", "bucket": "hour"}).text
    assert 'href="/api/reports/throughput.csv?model=tiny&amp;bucket=hour"' in html
    assert "Throughput per hour" in html


async def test_the_device_speed_per_day_shows_a_slow_day_next_to_its_eta_error(tmp_path: Path) -> None:
    """Day one at the usual pace, day two half as fast again across two sizes, written through the
    Store as the service writes them; the report puts each day's speed beside its ETA error at 0 %."""
    store = await Store.open(tmp_path / "zimage-sse.db")
    day = 86400.0
    start = 1.0e9 - 1.0e9 % day  # a UTC midnight
    try:
        for index in range(12):
            slow = index >= 6
            width = 512 if index % 2 else 1024
            step = (0.1 if width == 512 else 0.4) * (1.5 if slow else 1.0)
            at = start + (day if slow else 0.0) + index * 60
            job_id = f"{index:016x}"
            await store.insert_job(
                {
                    "id": job_id,
                    "created_at": at,
                    "status": "queued",
                    "prompt": "p",
                    "negative_prompt": "",
                    "width": width,
                    "height": width,
                    "steps": 4,
                    "guidance": 0.0,
                    "seed": 1,
                    "num_images": 1,
                    "model": "m",
                }
            )
            await store.mark_started(job_id, at, "cuda:0", "bfloat16", None)
            actual = 4 * step
            await store.finish_job(
                job_id,
                status="done",
                finished_at=at + actual,
                step_s=[step * 1.2, step, step, step],
                warm_up=False,
                eta_points={0.0: 4 * (0.1 if width == 512 else 0.4)},  # predicted at the usual pace
                actual_total_s=actual,
            )
        speed = (await build(store, Filters()))["speed"]
    finally:
        await store.close()
    first, second = speed.rows
    assert (first["period"], second["period"]) == ("2001-09-09", "2001-09-10")
    assert first["jobs"] == second["jobs"] == 6 and first["device"] == "cuda:0"
    assert second["speed"] / first["speed"] == pytest.approx(1.5, rel=0.01)
    assert second["slowest"] == second["fastest"] == second["speed"]  # every job that day alike
    assert first["eta_mape_at_0_percent"] == pytest.approx(0.0, abs=0.01)
    assert second["eta_mape_at_0_percent"] == pytest.approx(100 * (1 - 1 / 1.5), abs=0.01)
    assert first["eta_jobs"] == second["eta_jobs"] == 6
