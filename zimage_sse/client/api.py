"""The server's HTTP API as the terminal client calls it: connecting, submitting, reading a job, saving
its images, and the errors (each with its exit code) that any of them can end in.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from enum import IntEnum
from pathlib import Path
from typing import Any

import httpx

from .. import __version__


class ExitCode(IntEnum):
    """What `zimage-sse generate` and `watch` exit with; distinct so scripts can tell outcomes apart."""

    DONE = 0
    FAILED = 1  # the job failed on the server
    USAGE = 2  # argparse's own code for a bad command line
    INVALID = 3  # the server rejected the parameters (422)
    CANCELLED = 4  # the job was cancelled (by someone else: Ctrl-C is INTERRUPTED)
    UNREACHABLE = 5  # no connection to the server, or the stream was lost for good
    SERVER_ERROR = 6  # any other HTTP error: unknown job, unauthorised, 5xx
    CANNOT_SAVE = 7  # the image could not be written here
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)


class ClientError(Exception):
    exit_code = ExitCode.SERVER_ERROR


class Unreachable(ClientError):
    exit_code = ExitCode.UNREACHABLE


class StreamLost(Unreachable):
    """The feed dropped and did not come back within the retries."""


class Rejected(ClientError):
    """422: the server names each invalid field and why."""

    exit_code = ExitCode.INVALID

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("the server rejected the request")
        self.errors = errors


class HttpError(ClientError):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


def http_error(response: httpx.Response) -> ClientError:
    """The error a non-success answer stands for, with the server's own words where it gave any."""
    response.read()
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 422 and isinstance(body, dict) and isinstance(body.get("errors"), dict):
        return Rejected({str(k): str(v) for k, v in body["errors"].items()})
    if isinstance(body, dict) and "error" in body:
        detail = str(body["error"])
    elif isinstance(body, dict) and isinstance(body.get("errors"), dict):
        detail = "; ".join(f"{k}: {v}" for k, v in body["errors"].items())
    else:
        detail = response.text.strip()[:200] or response.reason_phrase
    return HttpError(
        response.status_code, f"{response.request.url} answered {response.status_code}: {detail}"
    )


# -- connection ----------------------------------------------------------------------------------


def server_url(value: str) -> str:
    """`gpu-box:8000` means `http://gpu-box:8000`; a trailing slash changes nothing."""
    value = value.strip().rstrip("/")
    return value if "://" in value else f"http://{value}"


def connect(server: str, token: str | None = None, **kwargs: Any) -> httpx.Client:
    """An HTTP client for one server; the bearer token goes on every request it makes."""
    headers = {"User-Agent": f"zimage-sse/{__version__}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(
        base_url=server_url(server),
        headers=headers,
        timeout=httpx.Timeout(30.0, connect=10.0),
        **kwargs,
    )


def request(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    try:
        return client.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        raise Unreachable(f"cannot reach the server at {client.base_url} ({describe_error(exc)})") from exc


def describe_error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def submit(client: httpx.Client, params: dict[str, Any]) -> dict[str, Any]:
    """POST /api/jobs; the job's snapshot, or Rejected with the server's reasons."""
    response = request(client, "POST", "/api/jobs", json=params)
    if response.status_code != 201:
        raise http_error(response)
    job: dict[str, Any] = response.json()
    return job


def get_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    response = request(client, "GET", f"/api/jobs/{job_id}")
    if response.status_code != 200:
        raise http_error(response)
    job: dict[str, Any] = response.json()
    return job


def image_paths(urls: list[str], out: Path | None) -> list[Path]:
    """Where each image goes: the server's names here or in directory `out`; file `out`; or for
    several images FILE-1.png, FILE-2.png …"""
    names = [Path(httpx.URL(url).path).name for url in urls]
    if out is None:
        return [Path(name) for name in names]
    if out.is_dir():
        return [out / name for name in names]
    if len(urls) == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{n}{out.suffix or '.png'}") for n in range(1, len(urls) + 1)]


def save_images(client: httpx.Client, urls: list[str], out: Path | None) -> list[Path]:
    paths = image_paths(urls, out)
    for url, path in zip(urls, paths, strict=True):
        response = request(client, "GET", url)
        if response.status_code != 200:
            raise http_error(response)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed, so an interrupted download never leaves half a PNG under the name.
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
            file.write(response.content)
        try:
            os.replace(file.name, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(file.name)
            raise
    return paths
