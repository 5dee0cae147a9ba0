"""The FastAPI application factory: ``create_app(settings)``.

Run it with ``seal serve`` (API plus, in embedded mode, a local worker), or with
``uvicorn --factory api.main:create_app`` (settings from the environment).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors
from api.backends import InferenceService, RuntimeLoras, make_backend
from api.middleware import BodySizeLimit
from api.routes import adaptations, admin, completions, documents, health, lora_adapters, models, tasks
from seal_service.db.migrate import upgrade_head
from seal_service.db.session import session_factory
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

    app = FastAPI(title="seal", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.sessionmaker = session_factory(settings.resolved_database_url)
    app.state.celery = make_celery(settings)
    app.state.inference = inference
    app.state.backend = backend
    app.state.runtime_loras = RuntimeLoras()
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    errors.install(app)
    for module in (health, adaptations, tasks, documents, models, completions, lora_adapters, admin):
        app.include_router(module.router)
    return app
