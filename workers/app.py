"""The worker's Celery application: ``celery -A workers.app worker --pool solo`` runs a worker.

The app itself (broker, options, task names) is the service's (:mod:`seal_service.queue`);
this module only builds it from the environment with the task bodies included.
"""

from __future__ import annotations

from seal_service.queue import make_celery
from seal_service.settings import get_settings

app = make_celery(get_settings(), include_tasks=True)
