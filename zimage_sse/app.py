"""create_app(settings): builds everything; the lifespan owns start and stop. Nothing happens at import."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from . import frames, images
from .broadcaster import Broadcaster
from .config import Settings
from .db import open_store
from .history import Retention
from .metrics import Metrics
from .routes import a1111, api, auth, estimate, history, openai_images, openapi, ops, pages, reports, streams
from .routes import frames as frame_routes
from .security import security_middleware
from .service import JobService
from .templating import make_templates

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
STATIC_DIR = ROOT / "static"
VENDOR_DIR = ROOT / "node_modules" / "htmx.org" / "dist"


def cpu_shares(devices: list[str], threads: int = 0) -> dict[str, tuple[int, ...]]:
    """Several CPU workers split the cores this process may use: each gets its own (`threads` each, or
    an even share), so two jobs never fight over one core while another idles. One CPU worker gets
    none: it is not pinned and torch uses every core, as before."""
    if len(devices) < 2:
        return {}
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    share = threads or len(cores) // len(devices)
    if share < 1 or share * len(devices) > len(cores):
        return {}  # more workers than cores: leave the scheduler to share them
    return {device: tuple(cores[i * share : (i + 1) * share]) for i, device in enumerate(devices)}


def create_app(settings: Settings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The worker is the only module that imports torch; the web tier never touches it.
        from .pipeline import resolve_devices
        from .worker import Worker

        settings.images_dir.mkdir(parents=True, exist_ok=True)
        for name in images.remove_partials(settings.images_dir):
            logger.warning("removed %s, left half-written when the server last stopped", name)
        for name in frames.remove_partials(settings.frames_dir):
            logger.warning("removed frames/%s, left half-written when the server last stopped", name)
        kept = frames.Frames(
            settings.frames_dir, max_count=settings.frames_max, max_bytes=settings.frames_max_bytes
        )
        # A store that cannot be opened stops the start (exit 3) with a message naming it.
        store = await open_store(settings.store or settings.db_path)
        devices = resolve_devices(settings.device)
        cores = cpu_shares([d for d in devices if d.startswith("cpu")], settings.cpu_threads)
        workers = [
            Worker(
                settings.model,
                settings.model_cache,
                settings.images_dir,
                device,
                settings.dtype,
                preview_every=settings.preview_every,
                cpu_nice=settings.cpu_worker_nice,
                cpu_threads=settings.cpu_threads or len(cores.get(device, ())),
                cpu_cores=cores.get(device, ()),
            )
            for device in devices
        ]
        manager = JobService(
            store,
            workers,
            Broadcaster(settings.subscriber_queue),
            replay_events=settings.replay_events,
            unload_after=settings.unload_after,
            max_queue=settings.max_queue,
            frames=kept if settings.frames_max > 0 else None,
        )
        await manager.start()
        if settings.preload:
            manager.preload()
        app.state.manager = manager
        metrics = Metrics(manager)
        await metrics.start()
        app.state.metrics = metrics
        retention = Retention(manager, settings)
        await retention.start()
        logger.info(
            "serving model %r on %s, data in %s",
            settings.model,
            ", ".join(f"{worker.device} ({worker.dtype_name})" for worker in workers),
            settings.data_dir,
        )
        try:
            yield
        finally:
            await retention.stop()
            await metrics.stop()
            await manager.stop()
            await asyncio.to_thread(kept.close)
            await store.close()

    if not (VENDOR_DIR / "htmx.min.js").exists():
        logger.error(
            "htmx is not installed in %s: run scripts/setup.sh (pages will not update live)", VENDOR_DIR
        )
    routes = [
        *pages.routes,
        *history.routes,
        *frame_routes.routes,
        *reports.routes,
        *api.routes,
        *estimate.routes,
        *streams.routes,
        *ops.routes,
        *auth.routes,
        *openapi.routes,
        *openai_images.routes,
        *a1111.routes,
        Mount("/static/vendor", app=StaticFiles(directory=VENDOR_DIR, check_dir=False), name="vendor"),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=api.exception_handlers,
        middleware=security_middleware(settings),
    )
    app.state.settings = settings
    app.state.templates = make_templates()
    return app
