"""Where adapter files live and how they are published.

An adapter of tenant ``t`` lives in ``{storage}/{t}/{adapter_id}``; a job writes it first
to a private directory under ``{storage}/.tmp`` and renames that into place, so a reader
never sees a half-written adapter. An RL run's policy checkpoints live under
``{storage}/_policies/{run_id}``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from seal_service.db.models import Adapter
from seal_service.db.session import session_scope
from seal_service.settings import Settings

# Written by the worker beside the adapter files: which job produced the directory.
JOB_MARKER = "seal_job.json"
# Written by the engine's save_result: what the run produced (strategy, self-edits, metrics).
RECORD = "seal_record.json"


def adapter_dir(settings: Settings, tenant: str, adapter_id: str) -> Path:
    return settings.resolved_storage_dir / tenant / adapter_id


def tmp_root(settings: Settings) -> Path:
    return settings.resolved_storage_dir / ".tmp"


def new_tmp_dir(settings: Settings, adapter_id: str) -> Path:
    """A fresh private path (not created) for one attempt at writing ``adapter_id``."""
    return tmp_root(settings) / f"{adapter_id}-{uuid.uuid4().hex[:8]}"


def policy_dir(settings: Settings, run_id: str, iteration: int) -> Path:
    """The policy checkpoint that iteration ``iteration`` of RL run ``run_id`` trains."""
    return settings.resolved_storage_dir / "_policies" / run_id / f"iter{iteration + 1}"


def remove_unregistered(settings: Settings, tenant: str, adapter_id: str) -> None:
    """Drop leftovers of a job that will never register its adapter."""
    url = settings.resolved_database_url
    with session_scope(url) as s:
        registered = s.get(Adapter, adapter_id) is not None
    if not registered:
        shutil.rmtree(adapter_dir(settings, tenant, adapter_id), ignore_errors=True)
    for tmp in tmp_root(settings).glob(f"{adapter_id}-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, final: Path) -> None:
    """Atomically put ``tmp`` at ``final`` (replacing a leftover from an earlier attempt)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)


def fsync_dir(path: Path) -> None:
    """Flush every file in ``path`` to disk (before a rename makes them visible)."""
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())
