"""Command line: `zimage-sse serve` runs the service; `generate` and `watch` are its terminal client.

Every option of `serve` also comes from the environment (ZIMAGE_SSE_HOST, ZIMAGE_SSE_MODEL, …); an
option given on the command line wins. `generate PROMPT` and `watch JOB_ID` (zimage_sse/client/)
import no torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import logs, report_cli
from .config import Settings

CLIENT_PARAMS = ("width", "height", "steps", "seed", "guidance", "negative_prompt", "num_images")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zimage-sse", description=__doc__.splitlines()[0] if __doc__ else None
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the web service")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument(
        "--model", help="tiny, demo (embedded, random weights), a checkpoint directory, or a hub id"
    )
    serve.add_argument(
        "--device",
        help="auto (every CUDA device, else the CPU) or a list, a worker each: cuda:0,cuda:2 or cpu:0,cpu:1",
    )
    serve.add_argument("--dtype", help="auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16, float16")
    serve.add_argument("--data-dir", type=Path, help="database, images and built models (default ./data)")
    serve.add_argument(
        "--store",
        help="the job history: a postgresql://user@host/db URL; default: the SQLite file in DATA_DIR",
    )
    serve.add_argument(
        "--models-dir", type=Path, help="where embedded models are built (default DATA_DIR/models)"
    )
    serve.add_argument(
        "--preload",
        action="store_true",
        default=None,
        help="load the model at start instead of with the first job (ZIMAGE_SSE_PRELOAD=1)",
    )
    serve.add_argument(
        "--unload-after",
        type=float,
        help="unload the model after this many seconds without jobs (default 0: never)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--log-format",
        default=os.environ.get("ZIMAGE_SSE_LOG_FORMAT", "text"),
        choices=["text", "json"],
        help="text lines, or one JSON object a line; both name the job on every line about one",
    )

    generate = commands.add_parser(
        "generate",
        help="submit a job, show its progress, save its image(s)",
        description="Submit a job, follow it with a progress bar, and save its image(s); "
        "prints the saved path(s). Parameters left out take the server's defaults.",
    )
    generate.add_argument("prompt", help="what to draw")
    _client_options(generate)
    generate.add_argument("--width", type=int, help="pixels (the server's default: 1024)")
    generate.add_argument("--height", type=int, help="pixels (the server's default: 1024)")
    generate.add_argument("--steps", type=int, help="denoising steps (the server's default: 8)")
    generate.add_argument("--seed", type=int, help="random seed (random when left out, and recorded)")
    generate.add_argument("--guidance", type=float, help="guidance scale (Turbo: 0)")
    generate.add_argument("--negative-prompt", help="what not to draw")
    generate.add_argument("--num-images", type=int, help="images in the batch (several: FILE-1.png, …)")
    generate.add_argument(
        "--out",
        type=Path,
        help="where to save the image (several: FILE-1.png, FILE-2.png …; a directory: the server's "
        "names in it; default: the server's name in the current directory)",
    )

    watch = commands.add_parser(
        "watch",
        help="follow any job to its end",
        description="Follow a job with a progress bar; with --out, save its image(s) if it ends done "
        "(otherwise print their URLs).",
    )
    watch.add_argument("job_id", help="the job's id")
    _client_options(watch)
    watch.add_argument("--out", type=Path, help="save the image(s) here (as for generate)")

    report = commands.add_parser(
        "report",
        help="print the reports from the database (no server needed)",
        description="Step times, phases, model loads, ETA accuracy, throughput and GPU use, read from "
        "DATA_DIR/zimage-sse.db (read only).",
    )
    report_cli.add_arguments(report)

    info = commands.add_parser(
        "info",
        help="print the generation parameters a PNG carries",
        description="Print the parameters, model, revision and device a PNG from zimage-sse carries "
        "(or the `parameters` text of an AUTOMATIC1111 PNG). Exit status 1 when it carries none.",
    )
    info.add_argument("image", type=Path, help="a PNG file")
    info.add_argument("--json", action="store_true", help="one JSON object, as POST /api/jobs/from-png gives")
    return parser


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get("ZIMAGE_SSE_SERVER", "http://127.0.0.1:8000"),
        help="the service's URL (default: $ZIMAGE_SSE_SERVER or http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("ZIMAGE_SSE_TOKEN"),
        help="sent as `Authorization: Bearer TOKEN` on every request (default: $ZIMAGE_SSE_TOKEN)",
    )


def run_client(args: argparse.Namespace) -> int:
    from . import client

    try:
        with client.connect(args.server, args.token) as http:
            if args.command == "generate":
                params: dict[str, Any] = {"prompt": args.prompt}
                params.update({k: getattr(args, k) for k in CLIENT_PARAMS if getattr(args, k) is not None})
                return client.generate(http, params, out=args.out)
            return client.watch(http, args.job_id, out=args.out)
    except KeyboardInterrupt:
        # Ctrl-C outside a job's stream (submitting, downloading): nothing to cancel.
        print("zimage-sse: interrupted", file=sys.stderr)
        return client.ExitCode.INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("generate", "watch"):
        return run_client(args)
    if args.command == "report":
        return report_cli.run(args)
    if args.command == "info":
        from .repro import info

        return info(args.image, as_json=args.json)
    logs.configure(args.log_level, args.log_format)
    try:
        settings = Settings.from_env().with_overrides(
            host=args.host,
            port=args.port,
            model=args.model,
            device=args.device,
            dtype=args.dtype,
            data_dir=args.data_dir,
            store=args.store,
            preload=args.preload,
            unload_after=args.unload_after,
            models_dir=args.models_dir,
        )
    except ValueError as exc:
        print(f"zimage-sse: {exc}", file=sys.stderr)
        return 2
    from .pipeline import DeviceError, resolve_devices

    try:
        resolve_devices(settings.device)  # refused here, with what there is, not at the first job
    except DeviceError as exc:
        print(f"zimage-sse: --device {settings.device}: {exc}", file=sys.stderr)
        return 2
    if settings.store:
        problem = check_store(settings.store)
        if problem is not None:  # one line naming it, not a traceback from inside the server's start
            print(f"zimage-sse: --store: {problem}", file=sys.stderr)
            return 3
    from .app import create_app
    from .serving import serve

    # 3 when it never started, as uvicorn.run exits (STARTUP_FAILURE).
    return 0 if serve(create_app(settings), settings, args.log_level) else 3


def check_store(location: str) -> str | None:
    """Why the store `location` names cannot be opened (with its migrations applied), or None."""
    import asyncio

    from .db import StoreUnavailable, open_store

    async def check() -> None:
        store = await open_store(location)
        await store.close()

    try:
        asyncio.run(check())
    except StoreUnavailable as exc:
        return str(exc)
    return None


if __name__ == "__main__":
    sys.exit(main())
