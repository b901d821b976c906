"""The /reports page and its data as JSON and CSV under /api/reports (zimage_sse/reports.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import charts, reports
from ..curves import Curve
from ..params import InvalidRequest
from ..reports import POINTS, Report, seconds_text
from ..templating import render
from .api import manager_of

CSV_SUFFIX = ".csv"

Row = Mapping[str, Any]


async def _report(request: Request) -> tuple[reports.Filters, Report]:
    filters = reports.parse_filters(request.query_params)
    return filters, await reports.build(manager_of(request).store, filters)


async def all_reports(request: Request) -> Response:
    """GET /api/reports: every report under the same filters."""
    filters, report = await _report(request)
    return JSONResponse(
        {"filters": filters.params(), "reports": {name: table.as_json() for name, table in report.items()}}
    )


async def one_report(request: Request) -> Response:
    """GET /api/reports/{name} as JSON, /api/reports/{name}.csv as a CSV download."""
    name = str(request.path_params["name"])
    section = name.removesuffix(CSV_SUFFIX)
    if section not in reports.SECTIONS:
        return JSONResponse(
            {"error": f"no report named {section!r}; there are {', '.join(reports.SECTIONS)}"},
            status_code=404,
        )
    _, report = await _report(request)
    table = report[section]
    if name.endswith(CSV_SUFFIX):
        return Response(
            table.as_csv(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="zimage-sse-{section}.csv"'},
        )
    return JSONResponse(table.as_json())


async def reports_page(request: Request) -> Response:
    store = manager_of(request).store
    context: dict[str, Any] = {
        "form": {k: request.query_params.get(k, "") for k in ("model", "device", "since", "until", "bucket")},
        "known": await reports.choices(store),
        "errors": {},
        "buckets": reports.BUCKETS,
        "points": POINTS,
    }
    status = 200
    try:
        filters, report = await _report(request)
    except InvalidRequest as exc:
        context["errors"], status = exc.errors, 422
    else:
        query = filters.params()
        context.update(sections=page_sections(report), report=report, query=query, bucket=filters.bucket)
    return render(request, "reports.html", context, status)


def series_label(row: Row) -> str:
    return " · ".join(str(row[c]) for c in reports.SERIES_COLUMNS)


def by_series(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """Rows by "model · device · dtype", in their order."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(series_label(row), []).append(row)
    return groups


def _percent(value: float) -> str:
    return f"{value:g} %"


def page_sections(report: Report) -> dict[str, Any]:
    """What the page draws for each report: charts (by model · device · dtype) and pivoted tables."""
    return {
        "step_times": [
            _step_time_group(i, series, rows, report) for i, (series, rows) in _enum(report, "step-times")
        ],
        "step_profile": [
            _profile_group(i, series, rows) for i, (series, rows) in _enum(report, "step-profile")
        ],
        "phases": [_phase_group(i, series, rows) for i, (series, rows) in _enum(report, "phases")],
        "eta": _eta_section(report["eta-accuracy"].rows),
        "speed": _speed_chart(report["speed"].rows, report["speed"].title),
        "throughput": _throughput_chart(report["throughput"].rows, report["throughput"].title),
        "gpu": [_gpu_group(i, series, rows) for i, (series, rows) in _enum(report, "gpu")],
    }


def _enum(report: Report, name: str) -> list[tuple[int, tuple[str, list[Row]]]]:
    return list(enumerate(by_series(report[name].rows).items()))


def _step_time_group(index: int, series: str, rows: list[Row], report: Report) -> dict[str, Any]:
    fit = next((c for c in report["step-times"].extra["curves"] if series_label(c) == series), None)
    curve = None if fit is None else Curve(fit["a"], fit["b"], fit["c"])
    chart = charts.xy_chart(
        f"chart-step-times-{index}",
        f"Step time by size: {series}",
        "For each size, the median time of a denoising step (dot), the middle half of the steps (box) and "
        "the fastest and slowest step (whiskers), each job's first step left out"
        + ("; the line is the ETA engine's fitted cost model." if curve else "."),
        x_label="image tokens (W/16 × H/16 × images)",
        y_label="seconds per step",
        y_format=seconds_text,
        boxes=[
            charts.Box(
                float(r["tokens"]),
                r["min_s"],
                r["q1_s"],
                r["median_s"],
                r["q3_s"],
                r["max_s"],
                f"{r['size']}: median {seconds_text(r['median_s'])}",
            )
            for r in rows
        ],
        curve=curve,
        curve_name="cost model a + b·T + c·T² (one image)",
    )
    return {"series": series, "chart": chart, "rows": rows, "curve": fit}


def _profile_group(index: int, series: str, rows: list[Row]) -> dict[str, Any]:
    sizes: dict[str, dict[int, Row]] = {}
    for row in rows:
        sizes.setdefault(row["size"], {})[row["step"]] = row
    steps = sorted({row["step"] for row in rows})
    chart = charts.xy_chart(
        f"chart-step-profile-{index}",
        f"Time per step index: {series}",
        "The median time of each denoising step, by its index in the job, one line per size.",
        x_label="step",
        y_label="median seconds",
        y_format=seconds_text,
        x_format=lambda v: f"{v:g}",
        series=[
            charts.Series(size, [(float(s), r["median_s"]) for s, r in by_step.items()])
            for size, by_step in sizes.items()
        ],
    )
    table = [(step, [sizes[size].get(step) for size in sizes]) for step in steps]
    return {"series": series, "chart": chart, "sizes": list(sizes), "table": table}


def _phase_group(index: int, series: str, rows: list[Row]) -> dict[str, Any]:
    chart = charts.bar_chart(
        f"chart-phases-{index}",
        f"Phases by size: {series}",
        "Median seconds of encoding, denoising, decoding and saving for each size, stacked.",
        value_label="seconds",
        value_format=seconds_text,
        bars=[charts.Bar(r["size"], [(p, r[f"{p}_s"] or 0.0) for p in reports.PHASES]) for r in rows],
    )
    return {"series": series, "chart": chart, "rows": rows}


def _eta_section(rows: Sequence[Row]) -> dict[str, Any]:
    groups: dict[tuple[str, str], dict[str, Row]] = {}
    for row in rows:
        groups.setdefault((row["scope"], row["group"]), {})[row["point"]] = row
    days = [group for scope, group in groups if scope == "day"]
    chart = charts.xy_chart(
        "chart-eta",
        "ETA error over time",
        "Mean absolute percentage error of the predicted total run time, per day, one line for each "
        "point of the job at which the prediction was made.",
        x_label="day (UTC)",
        y_label="mean abs. error",
        y_format=_percent,
        categories=days,
        series=[
            charts.Series(
                f"at {point}",
                [
                    (float(i), groups[("day", day)][point]["mape_percent"])
                    for i, day in enumerate(days)
                    if groups[("day", day)][point]["mape_percent"] is not None
                ],
            )
            for point in POINTS
        ],
    )
    return {"chart": chart if days else None, "groups": groups}


def _speed_chart(rows: Sequence[Row], title: str) -> charts.Chart | None:
    """The speed per period, one line per model · device · dtype."""
    if not rows:
        return None
    periods = sorted({row["period"] for row in rows})
    place = {period: float(i) for i, period in enumerate(periods)}
    return charts.xy_chart(
        "chart-speed",
        title,
        "The median job's steady step time ÷ its size's usual one, per period: 1 is the device's usual"
        " pace over these jobs, 1.25 a quarter slower. The ETA engine scales every prediction by the"
        " newest jobs' speed.",
        x_label="period (UTC)",
        y_label="speed (time ÷ usual)",
        y_format=lambda v: f"{v:.2f}",
        categories=periods,
        series=[
            charts.Series(series, [(place[r["period"]], float(r["speed"])) for r in group])
            for series, group in by_series(rows).items()
        ],
    )


def _throughput_chart(rows: Sequence[Row], title: str) -> charts.Chart | None:
    if not rows:
        return None
    return charts.bar_chart(
        "chart-throughput",
        title,
        "Jobs that ended in each period, by how they ended; periods without jobs are left out.",
        value_label="jobs",
        value_format=lambda v: f"{v:g}",
        bars=[charts.Bar(r["period"], [(s, float(r[s])) for s in reports.ENDED]) for r in rows],
    )


def _gpu_group(index: int, series: str, rows: list[Row]) -> dict[str, Any]:
    read = [r for r in rows if r["util_mean_median"] is not None]
    chart = charts.bar_chart(
        f"chart-gpu-{index}",
        f"GPU utilisation by size: {series}",
        "Median of each job's mean GPU utilisation while it ran, by size.",
        value_label="utilisation",
        value_format=_percent,
        bars=[charts.Bar(r["size"], [("mean utilisation", r["util_mean_median"])]) for r in read],
    )
    return {"series": series, "chart": chart if read else None, "rows": rows}


routes = [
    Route("/reports", reports_page, methods=["GET"]),
    Route("/api/reports", all_reports, methods=["GET"]),
    Route("/api/reports/{name}", one_report, methods=["GET"]),
]
