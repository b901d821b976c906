"""Command line: `zimage-sse serve [--host --port --model --device --dtype --data-dir]`.

Every option also comes from the environment (ZIMAGE_SSE_HOST, ZIMAGE_SSE_MODEL, …); an option given
on the command line wins.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import Settings


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
    serve.add_argument("--device", help="auto (cuda when available), cuda, cuda:1, cpu")
    serve.add_argument("--dtype", help="auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16, float16")
    serve.add_argument("--data-dir", type=Path, help="database, images and built models (default ./data)")
    serve.add_argument(
        "--models-dir", type=Path, help="where embedded models are built (default DATA_DIR/models)"
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = Settings.from_env().with_overrides(
            host=args.host,
            port=args.port,
            model=args.model,
            device=args.device,
            dtype=args.dtype,
            data_dir=args.data_dir,
            models_dir=args.models_dir,
        )
    except ValueError as exc:
        print(f"zimage-sse: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from .app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
