"""`zimage-sse serve` under uvicorn, with a shutdown that drains the job manager first.

uvicorn's own shutdown closes the listening socket, waits for open connections, and only then runs
the lifespan's shutdown. Event streams never end on their own, so that order would hold the running
job's watchers until a timeout and then cut them off without a word. Here SIGTERM first drains the
manager (README "Restarts and shutdown"): submissions get 503 while the socket still listens, the
running job may finish within the grace period (else it is queued again), and every stream gets a
`shutdown` event and ends; then uvicorn's shutdown proceeds with nothing left to wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import uvicorn
from sse_starlette.sse import AppStatus
from starlette.applications import Starlette

from .config import Settings

# uvicorn's default graceful timeout is unbounded; ours comes after the drain has ended every stream,
# so only ordinary requests are still open then.
TIMEOUT_GRACEFUL_S = 5
FORCE_EXIT_POLL_S = 0.1  # as often as uvicorn's main loop looks at its own exit flags


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette, grace: float) -> None:
        super().__init__(config)
        self._app = app
        self._grace = grace

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        manager = getattr(self._app.state, "manager", None)
        if manager is not None:
            drain = asyncio.ensure_future(manager.drain(self._grace))
            # A second Ctrl-C (uvicorn's force_exit) stops waiting for the running job.
            while not drain.done() and not self.force_exit:
                await asyncio.wait({drain}, timeout=FORCE_EXIT_POLL_S)
        await super().shutdown(sockets)


def serve(app: Starlette, settings: Settings, log_level: str) -> bool:
    """Serve until SIGTERM or Ctrl-C; False when the server never started (the port is taken, say)."""
    # sse-starlette would cancel every stream the moment uvicorn sees the signal, before our drain could
    # let watchers see the running job finish and send them the `shutdown` event; we end them ourselves.
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        log_config=None,  # uvicorn's lines go through our handler and format too
        timeout_graceful_shutdown=TIMEOUT_GRACEFUL_S,
    )
    server = Server(config, app, settings.shutdown_grace)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return server.started
