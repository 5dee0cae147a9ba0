"""The adaptation job body: an idempotent state machine over the job row.

A delivery of the task (first, duplicate, or again after its worker died) goes:

1. **claim** (:mod:`workers.adaptation.claim`): one conditional UPDATE turns ``queued``
   (or ``running`` whose lease has expired, i.e. whose worker died) into ``running`` for
   this worker. A job that is finished, cancelled, or held by a live worker is left alone.
2. **work** under a lease that a thread renews (:mod:`workers.adaptation.lease`); progress
   is written to the row. A cancel request or a lost lease stops the work at the next
   progress report.
3. **publish** (:mod:`seal_service.storage`): the adapter files are written to a temporary
   directory and renamed into ``{storage}/{tenant}/{adapter_id}`` (the id is derived from
   the job id).
4. **register** (:mod:`workers.adaptation.register`): one transaction that first flips the
   job to ``succeeded`` (only if this worker still holds it) and then upserts the
   self-edits and the adapter row.

So a SIGKILL anywhere leaves at most an unregistered directory that the next delivery
replaces (or registers, when it is already complete), never a second adapter, and an
adapter row exists only once its files are in place.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seal_engine.errors import SealError
from seal_service.db.models import CANCELLED, FAILED, SUCCEEDED
from seal_service.db.session import session_scope
from seal_service.settings import Settings
from seal_service.storage import JOB_MARKER, adapter_dir, fsync_dir, new_tmp_dir, publish, remove_unregistered
from workers.adaptation.claim import JobSpec, claim
from workers.adaptation.lease import STAGES, STAGES_NO_EVAL, Lease
from workers.adaptation.lineage import engine_parent, read_parent
from workers.adaptation.register import Produced, complete_record, mark_failed, register
from workers.engine import load_model
from workers.errors import JobCancelled, JobError, LeaseLost, error_code, readable
from workers.identity import worker_identity

log = logging.getLogger("seal.worker")

AdaptFn = Callable[..., Any]
BundleFn = Callable[[Settings], Any]
SaveFn = Callable[[Any, Path], Path]


def _engine_adapt() -> AdaptFn:
    from seal_engine.knowledge.adapt import adapt

    return adapt


def _engine_save(result: Any, directory: Path) -> Path:
    from seal_engine.knowledge.adapt import save_result

    return save_result(result, directory)


def _takes_keyword(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` can be called with keyword ``name``.

    The optional extras (``judge``, ``policy``) are passed to an adapt function only when
    it takes them: stand-ins injected through ``run_adaptation(adapt_fn=...)`` (and older
    engine versions) may not.
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def run_adaptation(
    settings: Settings,
    job_id: str,
    *,
    worker: str | None = None,
    adapt_fn: AdaptFn | None = None,
    bundle_fn: BundleFn | None = None,
    save_fn: SaveFn | None = None,
) -> str:
    """Run (or resume, or skip) job ``job_id``. Returns what happened: the final status or "skipped".

    ``adapt_fn``, ``bundle_fn`` and ``save_fn`` replace the engine's adapt, model loading and
    save_result (tests pass stand-ins); None means the engine's own.
    """
    worker = worker or worker_identity()
    bundle_fn = bundle_fn or load_model
    save_fn = save_fn or _engine_save
    spec = claim(settings, job_id, worker)
    if spec is None:
        return "skipped"
    log.info("job %s: attempt %d on %s", job_id, spec.attempts, worker)
    final = adapter_dir(settings, spec.tenant_id, spec.adapter_id)
    tmp = new_tmp_dir(settings, spec.adapter_id)
    try:
        with Lease(settings, job_id, worker) as lease:
            record = complete_record(final, job_id)
            if record is not None:
                # An earlier attempt published the files and died before registering them.
                log.info("job %s: registering the adapter an earlier attempt left complete", job_id)
                produced = Produced.from_record(record)
            else:
                produced = _work(settings, spec, lease, tmp, final, adapt_fn, bundle_fn, save_fn)
            lease.progress("registering", 0.99, force=True)
            if register(settings, spec, worker, produced, final):
                log.info("job %s: adapter %s ready", job_id, spec.adapter_id)
                _drop_dead_attempts(settings, spec)
                return SUCCEEDED
            lease.touch()
            lease.check()
            raise LeaseLost()
    except JobCancelled:
        log.info("job %s cancelled", job_id)
        _cleanup(settings, spec, tmp)
        return CANCELLED
    except LeaseLost:
        log.warning("job %s: lost the lease (another worker took it over)", job_id)
        shutil.rmtree(tmp, ignore_errors=True)
        return "lost"
    except Exception as e:  # everything else is a failed job with a reason
        reason = readable(e)
        log.exception("job %s failed: %s", job_id, reason)
        details = e.details() if isinstance(e, SealError) else None
        mark_failed(settings, job_id, worker, reason, error_code(e), metrics=details)
        _cleanup(settings, spec, tmp)
        return FAILED


def _drop_dead_attempts(settings: Settings, spec: JobSpec) -> None:
    """Remove the temporary directories of earlier attempts that died while saving (SIGKILL, out
    of memory): nothing else ever would. The adapter is registered, so its directory stays."""
    try:
        remove_unregistered(settings, spec.tenant_id, spec.adapter_id)
    except Exception:  # the job has succeeded; leftovers are not worth failing it
        log.warning("job %s: could not remove leftovers of earlier attempts", spec.id, exc_info=True)


def _cleanup(settings: Settings, spec: JobSpec, tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    remove_unregistered(settings, spec.tenant_id, spec.adapter_id)


def _work(settings: Settings, spec: JobSpec, lease: Lease, tmp: Path, final: Path,
          adapt_fn: AdaptFn | None, bundle_fn: BundleFn, save_fn: SaveFn) -> Produced:
    """A document job: self-edits -> training -> (evaluation) -> files; a task job goes to _work_task."""
    from seal_engine.config import LoraSettings
    from seal_engine.knowledge.documents import Document, Question

    lease.progress("loading_model", 0.0, force=True)
    bundle = bundle_fn(settings)
    if getattr(bundle, "model_id", spec.base_model) != spec.base_model:
        raise JobError(f"this worker serves {bundle.model_id!r} but the job is for {spec.base_model!r}")
    adapt_fn = adapt_fn or _engine_adapt()  # the function itself, so that _takes_keyword reads its signature
    extra: dict[str, Any] = {}
    if settings.judge.enabled and _takes_keyword(adapt_fn, "judge"):
        # Grade evaluation questions with the LLM judge too (SEAL_JUDGE__BASE_URL / __MODEL).
        from seal_engine.core.grading import LLMJudge

        extra["judge"] = LLMJudge(settings.judge)
    if spec.policy_id is not None:
        # Self-edits (or task recipes) written by a trained policy, an adapter on the generator.
        # A document engine whose adapt() takes no ``policy`` fails the job rather than
        # silently writing self-edits with the base model.
        if spec.task is None and not _takes_keyword(adapt_fn, "policy"):
            raise JobError(f"policy checkpoint {spec.policy_id} cannot be applied by this engine version")
        if not spec.policy_path:
            raise JobError(f"policy checkpoint {spec.policy_id} has no stored weights")
        from seal_engine.core.lora import load_adapter

        extra["policy"] = load_adapter(spec.policy_path)
    if spec.task is not None:
        return _work_task(settings, spec, lease, tmp, final, bundle, extra.get("policy"))
    if not spec.documents:
        raise JobError("the job has no documents (were they deleted?)")
    docs = [Document(text=text, title=title) for _id, title, text in spec.documents]
    questions = [Question(q["question"], q["answer"]) for q in spec.eval_questions] or None
    lora = LoraSettings.model_validate(spec.lora)
    recipe = settings.recipe.model_copy(update=spec.recipe)
    parent = None
    if spec.parent_id is not None:
        if not _takes_keyword(adapt_fn, "parent"):
            raise JobError("this engine version cannot train from a parent adapter")
        with session_scope(settings.resolved_database_url) as s:
            parent = read_parent(s, spec.parent_id, spec.tenant_id, settings.reward_grader)
        extra["parent"] = engine_parent(parent, recipe.rehearse, recipe.continue_parent)
    max_forgetting = spec.max_forgetting if spec.max_forgetting is not None else recipe.max_forgetting
    # The recipe's training knobs and the retention gate, for an engine that takes them.
    for name, value in [*recipe.adapt_kwargs().items(), ("measure_forgetting", True),
                        ("max_forgetting", max_forgetting)]:
        if _takes_keyword(adapt_fn, name):
            extra[name] = value
        elif name in spec.recipe or (name == "relevance_quantile" and spec.recipe.get("relevance")):
            raise JobError(f"this engine version cannot apply {name!r}")  # asked for by the request

    lease.progress("self_edits", 0.0, force=True)
    result = adapt_fn(
        bundle, docs, settings, strategy=spec.strategy, template=spec.template, k=spec.num_self_edits,
        lora=lora, questions=questions, seed=spec.seed,
        progress=lease.engine_progress(STAGES if questions or (parent and parent.questions) else STAGES_NO_EVAL),
        **extra,
    )
    return _save_and_publish(spec, lease, tmp, final, result, save_fn, lora.model_dump())


def _save_and_publish(spec: JobSpec, lease: Lease, tmp: Path, final: Path, result: Any,
                      save_fn: SaveFn, lora: dict[str, Any]) -> Produced:
    """Write the result's files (with the job marker) to ``tmp``, then rename them to ``final``."""
    lease.check()
    lease.progress("saving", 0.985, force=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    save_fn(result, tmp)
    (tmp / JOB_MARKER).write_text(json.dumps({"job_id": spec.id, "adapter_id": spec.adapter_id,
                                              "tenant_id": spec.tenant_id, "base_model": spec.base_model}))
    fsync_dir(tmp)
    lease.check()
    publish(tmp, final)
    metrics = json.loads(json.dumps(result.metrics(), default=str))
    return Produced(result.strategy, list(result.prompts), list(result.self_edits), metrics, lora)


def _work_task(settings: Settings, spec: JobSpec, lease: Lease, tmp: Path, final: Path, bundle: Any,
               policy: Any) -> Produced:
    """A few-shot task job: recipe(s) -> test-time training -> (held-out grades) -> files."""
    from seal_engine.fewshot.adapt import adapt_task, save_task_result
    from seal_engine.fewshot.datasets import task_from_json
    from seal_engine.fewshot.recipes import Recipe

    assert spec.task is not None
    task = task_from_json(spec.task["task"])
    recipe = Recipe(**spec.task["recipe"]) if spec.task.get("recipe") else None
    fewshot = settings.fewshot.model_copy(update={"lora": settings.fewshot.lora.model_copy(update=spec.lora)})

    lease.progress("self_edits", 0.0, force=True)
    result = adapt_task(bundle, task, fewshot, k=spec.num_self_edits, recipe=recipe, policy=policy,
                        seed=spec.seed or 0, progress=lease.engine_progress(STAGES))
    return _save_and_publish(spec, lease, tmp, final, result, save_task_result, fewshot.lora.model_dump())
