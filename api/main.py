"""The FastAPI application factory: ``create_app(settings)``.

Run it with ``seal serve`` (API plus, in embedded mode, a local worker), or with
``uvicorn --factory api.main:create_app`` (settings from the environment).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from api import errors, openapi
from api.backends import InferenceService, RuntimeLoras, make_backend
from api import limits
from api.limits import Limits, generation_slot
from api.middleware import BodySizeLimit
from api.routes import adaptations, admin, aliases, completions, documents, health, lora_adapters, models, tasks
from seal_service.db.migrate import upgrade_head
from seal_service.db.session import configure_pool, session_factory
from seal_service.settings import Settings, get_settings

log = logging.getLogger("seal.api")

DESCRIPTION = """
Self-adapting language models (SEAL) as a service.

* `POST /v1/adaptations` with documents: the model writes self-edits, a LoRA adapter is
  trained on them (and evaluated on your questions), then registered.
* Query the base model or any of your adapters through the OpenAI-compatible
  `/v1/chat/completions` and `/v1/completions` (`model` = an id from `/v1/models`).

Authenticate with `Authorization: Bearer <key>` (`seal keys create --tenant T`).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    from seal_service.queue import make_celery

    inference = InferenceService(settings)  # the model is loaded on first use (local backend only)
    backend = make_backend(settings, inference)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        settings.ensure_dirs()
        if settings.auto_migrate:
            await asyncio.to_thread(upgrade_head, settings.resolved_database_url)
        await backend.start()
        if settings.api_preload_model:
            backend.preload()
        try:
            yield
        finally:
            await backend.stop()

    # /docs and /redoc are served with local assets by api.openapi (FastAPI's pages load a CDN).
    app = FastAPI(title="seal", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.settings = settings
    configure_pool(settings.resolved_database_url, size=settings.db_pool_size, overflow=settings.db_max_overflow,
                   timeout_s=settings.db_pool_timeout_s)
    app.state.sessionmaker = session_factory(settings.resolved_database_url)
    app.state.limits = Limits(settings)
    app.state.celery = make_celery(settings)
    app.state.inference = inference
    app.state.backend = backend
    app.state.runtime_loras = RuntimeLoras()
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    errors.install(app)
    limits.install(app)
    for module in (health, adaptations, tasks, documents, models, aliases, lora_adapters, admin):
        app.include_router(module.router)
    # Generation holds an admission slot (and is charged to the tenant's token budget) until its response is sent.
    app.include_router(completions.router, dependencies=[Depends(generation_slot)])
    openapi.install(app, settings)  # after every router: documents their error responses
    return app
