"""Admin endpoints (admin keys only; 403 for others): tenants, keys, workers, jobs, self-edit policies, RL runs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api.deps import AdminDep, DbDep, SettingsDep
from api.schemas import AdaptationList, KeyCreate, KeyOut, PolicyList, PolicyOut, RLRunCreate, TenantOut, WorkerOut
from api.schemas.admin import KeyInfo, KeyList
from api.schemas.jobs import JobStatus
from api.services import admin, jobs, policies, rl_runs

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get("/tenants", response_model=list[TenantOut], summary="Tenants and how many keys each has")
def list_tenants(db: DbDep, _admin: AdminDep) -> list[TenantOut]:
    return admin.list_tenants(db=db)


@router.post("/keys", response_model=KeyOut, status_code=201, summary="A new key (the tenant is created if needed)")
def new_key(body: KeyCreate, db: DbDep, _admin: AdminDep) -> KeyOut:
    return admin.new_key(db=db, body=body)


@router.get("/keys", response_model=KeyList, summary="Keys (never the keys themselves), oldest first")
def list_keys(db: DbDep, _admin: AdminDep,
              tenant: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
              include_revoked: bool = False) -> KeyList:
    return admin.keys(db=db, tenant=tenant, include_revoked=include_revoked)


@router.delete("/keys/{key_id}", response_model=KeyInfo,
               summary="Revoke a key: refused (401) from the next request on; any tenant's, not the caller's own")
def revoke_key(key_id: Annotated[str, Path(max_length=64)], db: DbDep, who: AdminDep) -> KeyInfo:
    return admin.revoke(db=db, key_id=key_id, caller_key_id=who.key_id)


@router.get("/workers", response_model=list[WorkerOut],
            summary="Workers, their last heartbeat and status (alive, or lost: no heartbeat for a while)")
def list_workers(db: DbDep, settings: SettingsDep, _admin: AdminDep) -> list[WorkerOut]:
    return admin.list_workers(db=db, settings=settings)


@router.get("/jobs", response_model=AdaptationList, summary="Jobs of every tenant, newest first")
def list_jobs(db: DbDep, _admin: AdminDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
              status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
              ) -> AdaptationList:
    rows = jobs.list_jobs(db=db, tenant_id=None, limit=limit, status=status)
    return AdaptationList(data=[jobs.job_out(j) for j in rows])


@router.get("/policies", response_model=PolicyList, summary="Self-edit policy checkpoints, newest first")
def list_policies(db: DbDep, _admin: AdminDep, limit: Annotated[int, Query(ge=1, le=500)] = 100,
                  rl_run_id: Annotated[str | None, Query(max_length=64)] = None) -> PolicyList:
    rows = policies.list_policies(db=db, limit=limit, rl_run_id=rl_run_id)
    return PolicyList(data=[policies.policy_out(p) for p in rows])


@router.post("/policies/{checkpoint}/promote", response_model=PolicyOut,
             summary="Make a checkpoint the default self-edit writer for new adaptations of its base model")
def promote_policy(checkpoint: str, db: DbDep, _admin: AdminDep) -> PolicyOut:
    return policies.policy_out(policies.promote_policy(db=db, checkpoint=checkpoint))


# --- RL runs ---------------------------------------------------------------------------------


@router.post("/rl-runs", status_code=202, summary="Start a ReST-EM run that trains the self-edit policy")
def create_rl_run(body: RLRunCreate, request: Request, db: DbDep, settings: SettingsDep, who: AdminDep) -> JSONResponse:
    run = rl_runs.create_run(db=db, settings=settings, celery=request.app.state.celery, tenant_id=who.tenant_id,
                             body=body)
    return JSONResponse(rl_runs.rl_run_out(db=db, run=run), status_code=202,
                        headers={"Location": f"/v1/admin/rl-runs/{run.id}"})


@router.get("/rl-runs", summary="RL runs, newest first")
def list_rl_runs(db: DbDep, _admin: AdminDep, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    return {"object": "list", "data": rl_runs.list_runs(db=db, limit=limit)}


@router.get("/rl-runs/{run_id}", summary="Status, per-iteration metrics and the reward curve")
def get_rl_run(run_id: str, db: DbDep, _admin: AdminDep) -> dict[str, Any]:
    return rl_runs.rl_run_out(db=db, run=rl_runs.get_run(db=db, run_id=run_id))


@router.get("/rl-runs/{run_id}/samples", summary="Every sampled self-edit with its prompt, policy, seeds and reward terms")
def list_rl_samples(run_id: str, db: DbDep, _admin: AdminDep,
                    iteration: Annotated[int | None, Query(ge=0)] = None) -> dict[str, Any]:
    return {"object": "list", "data": rl_runs.list_samples(db=db, run_id=run_id, iteration=iteration)}


@router.get("/rl-runs/{run_id}/events", summary="Server-sent events: the run's state whenever it changes")
async def rl_run_events(run_id: str, request: Request, db: DbDep, _admin: AdminDep) -> StreamingResponse:
    rl_runs.get_run(db=db, run_id=run_id)  # 404 before the stream starts
    events = rl_runs.run_events(sessionmaker=request.app.state.sessionmaker, run_id=run_id,
                                is_disconnected=request.is_disconnected)
    return StreamingResponse(events, media_type="text/event-stream")


@router.post("/rl-runs/{run_id}/cancel", summary="Stop a run (finished evaluations and checkpoints are kept)")
def cancel_rl_run(run_id: str, db: DbDep, _admin: AdminDep) -> dict[str, Any]:
    return rl_runs.rl_run_out(db=db, run=rl_runs.cancel_run(db=db, run_id=run_id))


@router.post("/rl-runs/{run_id}/resume", status_code=202,
             summary="Continue a cancelled, failed or stalled run from its last completed evaluation")
def resume_rl_run(run_id: str, request: Request, db: DbDep, settings: SettingsDep, _admin: AdminDep) -> dict[str, Any]:
    run = rl_runs.resume_run(db=db, settings=settings, celery=request.app.state.celery, run_id=run_id)
    return rl_runs.rl_run_out(db=db, run=run)
