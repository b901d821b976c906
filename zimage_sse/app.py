"""create_app(settings): builds everything; the lifespan owns start and stop. Nothing happens at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from . import images
from .broadcaster import Broadcaster
from .config import Settings
from .db import Store
from .history import Retention
from .jobs import JobManager
from .metrics import Metrics
from .routes import api, auth, history, openapi, ops, pages, reports, streams
from .security import security_middleware
from .templating import make_templates

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
STATIC_DIR = ROOT / "static"
VENDOR_DIR = ROOT / "node_modules" / "htmx.org" / "dist"


def create_app(settings: Settings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The worker is the only module that imports torch; the web tier never touches it.
        from .worker import Worker

        settings.images_dir.mkdir(parents=True, exist_ok=True)
        for name in images.remove_partials(settings.images_dir):
            logger.warning("removed %s, left half-written when the server last stopped", name)
        store = await Store.open(settings.db_path)
        worker = Worker(
            settings.model,
            settings.model_cache,
            settings.images_dir,
            settings.device,
            settings.dtype,
            preview_every=settings.preview_every,
            cpu_nice=settings.cpu_worker_nice,
        )
        manager = JobManager(
            store,
            worker,
            Broadcaster(settings.subscriber_queue),
            replay_events=settings.replay_events,
            unload_after=settings.unload_after,
            max_queue=settings.max_queue,
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
            "serving model %r on %s (%s), data in %s",
            settings.model,
            worker.device,
            worker.dtype_name,
            settings.data_dir,
        )
        try:
            yield
        finally:
            await retention.stop()
            await metrics.stop()
            await manager.stop()
            await store.close()

    if not (VENDOR_DIR / "htmx.min.js").exists():
        logger.error(
            "htmx is not installed in %s: run scripts/setup.sh (pages will not update live)", VENDOR_DIR
        )
    routes = [
        *pages.routes,
        *history.routes,
        *reports.routes,
        *api.routes,
        *streams.routes,
        *ops.routes,
        *auth.routes,
        *openapi.routes,
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
