"""The terminal client: submit a job, follow its SSE feed with a progress bar, save its images.

Plain httpx and tqdm against the HTTP API, so it works with a remote server and starts in a blink:
nothing here (or on the CLI path to it) imports torch, diffusers or the server's modules.

- `sse`: the wire format, lines in and messages out;
- `api`: the HTTP calls (connect, submit, read a job, save its images) and the errors they end in;
- `feed`: one job's events in order, across dropped connections;
- `display`: what the terminal shows, as lines or a tqdm bar;
- `commands`: `generate` and `watch`, and the exit code of each outcome.
"""

from .api import (
    ClientError,
    ExitCode,
    HttpError,
    Rejected,
    StreamLost,
    Unreachable,
    connect,
    get_job,
    http_error,
    image_paths,
    save_images,
    server_url,
    submit,
)
from .commands import follow, generate, watch
from .display import BarDisplay, Display, JobView, Terminal
from .feed import JobEvent, JobFeed
from .sse import Message, SseParser

__all__ = [
    "BarDisplay",
    "ClientError",
    "Display",
    "ExitCode",
    "HttpError",
    "JobEvent",
    "JobFeed",
    "JobView",
    "Message",
    "Rejected",
    "SseParser",
    "StreamLost",
    "Terminal",
    "Unreachable",
    "connect",
    "follow",
    "generate",
    "get_job",
    "http_error",
    "image_paths",
    "save_images",
    "server_url",
    "submit",
    "watch",
]
