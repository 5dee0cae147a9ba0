"""Faults (issue 14): the production wiring (Postgres, Redis, the API and Celery workers as
processes) under worker SIGKILLs at random moments, an API restart and a Redis restart.

Whatever is killed, every job ends ``succeeded`` (or ``failed`` with a reason), a succeeded job
has exactly one adapter row and one complete directory, nothing is left ``running``/``queued``
and no file is left over (no unregistered directory, nothing under ``storage/.tmp``).

Jobs are the real tiny model with little work: the ``passage`` strategy (no sampling), a few
epochs, a retention gate of 2 probes that cannot reject (``max_forgetting`` 1.0), no relevance check.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from seal_cli.commands.service import worker_argv
from seal_service.db.models import AdaptationJob, Adapter
from seal_service.db.session import session_scope
from seal_service.storage import JOB_MARKER
from tests.conftest import TEST_DATA_DIR
from tests.support.service import (
    Proc,
    api_client,
    bearer,
    free_port,
    fresh_postgres_database,
    new_key,
    require_postgres,
    require_redis,
    seal_cli,
    service_env,
    service_settings,
    wait_for,
    wait_http,
)

# A Redis database of its own (13: the kill test, 12: tests/cli/test_worker.py): its short
# visibility timeout touches no one else's messages.
REDIS_DB = "redis://127.0.0.1:6379/11"
TERMINAL = ("succeeded", "failed", "cancelled")
TENANT = "faults"

# A dead worker's job is re-sent within seconds (recovery sweep every 2 s; its message back after
# 8 s); a small retention gate and no tenant limits (20 jobs at once from one tenant).
FAST: dict[str, Any] = dict(
    visibility_timeout_s=8, restore_interval_s=1, job_lease_s=10, recovery_interval_s=2, worker_heartbeat_s=1,
    forgetting_probes=2, forgetting_prompts=1, forgetting_probe_tokens=8, api_preload_model=False,
    tenant_max_active_jobs=0, tenant_requests_per_min=0, tenant_tokens_per_min=0,
)

PLACES = ["Quillon", "Verrapath", "Ostmere", "Kaldrun", "Penwhistle", "Arbelox", "Mirrowen", "Tassebrook",
          "Yendral", "Corvanth", "Haldimoor", "Sivrenne", "Brakkestad", "Ulmaquay", "Feronde", "Glimmerholt",
          "Nastrow", "Oberlinne", "Zephyrine", "Druvelak"]
PEOPLE = ["Ilse Marrowby", "Tomasz Quenet", "Adaeze Fulbright", "Ravi Oxenholt", "Mireille Tannock",
          "Kofi Ashgrove", "Linnea Vospar", "Dario Pellucci", "Sunniva Harrowgate", "Emeka Strand"]


def document(i: int) -> dict[str, str]:
    """A short made-up document, different for every ``i``."""
    place, person = PLACES[i % len(PLACES)], PEOPLE[i % len(PEOPLE)]
    year = 1871 + 7 * i
    return {"title": f"The {place} lighthouse",
            "text": f"The {place} lighthouse was designed by {person} and first lit in {year}. "
                    f"Its lamp burned whale oil until {year + 30}, when the keepers of {place} switched to kerosene."}


def job_body(i: int, epochs: int) -> dict[str, Any]:
    return {"documents": [document(i)], "strategy": "passage", "num_self_edits": 1, "lora": {"epochs": epochs},
            "max_forgetting": 1.0, "name": f"fault-{i}", "seed": i}


@dataclass
class Stack:
    """Settings for this process, the environment of the subprocesses, and where their logs go."""

    settings: Any
    env: dict[str, str]
    tmp: Path

    @property
    def url(self) -> str:
        return self.settings.resolved_database_url

    def worker(self, name: str) -> Proc:
        return Proc(worker_argv(self.settings, "info", hostname=f"{name}@%h"), self.env, self.tmp / f"{name}.log")


def make_stack(tmp_path: Path, db_url: str, broker: str, **extra: Any) -> Stack:
    values = dict(FAST, database_url=db_url, broker_url=broker, task_queue=f"seal-faults-{uuid.uuid4().hex[:8]}",
                  storage_dir=tmp_path / "adapters", **extra)
    # No relevance calibration either: what is under test is the job's life, not what the adapter serves.
    settings = service_settings(tmp_path, TEST_DATA_DIR, recipe={"relevance": False}, **values)
    env = service_env(data_dir=TEST_DATA_DIR, state_dir=tmp_path, torch_threads=1, recipe__relevance="false", **values)
    return Stack(settings, env, tmp_path)


def jobs_in_db(url: str) -> list[AdaptationJob]:
    with session_scope(url) as s:
        rows = list(s.scalars(select(AdaptationJob)))
        s.expunge_all()
        return rows


def holder_pid(worker: str | None) -> int | None:
    """The pid in a lease holder's ``host:pid:boot``."""
    try:
        return int(worker.split(":")[1]) if worker else None
    except (IndexError, ValueError):
        return None


def check_outcome(stack: Stack, jobs: list[AdaptationJob]) -> list[AdaptationJob]:
    """Nothing left running, one ready adapter row and one complete directory per succeeded job,
    none for the others, no leftover file. Returns the succeeded jobs."""
    statuses = Counter(j.status for j in jobs)
    assert set(statuses) <= {"succeeded", "failed"}, statuses
    for j in jobs:
        if j.status == "failed":
            assert j.error_code and j.error, (j.id, j.error_code, j.error)
        assert j.lease_until is None, (j.id, j.status, j.lease_until)
    succeeded = [j for j in jobs if j.status == "succeeded"]
    with session_scope(stack.url) as s:
        adapters = {a.id: (a.job_id, a.status, a.tenant_id, a.storage_path) for a in s.scalars(select(Adapter))}
    tenant_dir = stack.settings.resolved_storage_dir / TENANT
    assert len({j.adapter_id for j in succeeded}) == len(succeeded)
    assert adapters == {j.adapter_id: (j.id, "ready", TENANT, str(tenant_dir / j.adapter_id)) for j in succeeded}
    # Exactly the registered adapters' directories: no unregistered one, no `.x.old-*` left by a publish.
    present = sorted(p.name for p in tenant_dir.iterdir())
    assert present == sorted(adapters), present
    for j in succeeded:
        files = {p.name for p in (tenant_dir / j.adapter_id).iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", JOB_MARKER} <= files, (j.id, files)
        assert json.loads((tenant_dir / j.adapter_id / JOB_MARKER).read_text())["job_id"] == j.id
    tmp_root = stack.settings.resolved_storage_dir / ".tmp"
    leftovers = sorted(p.name for p in tmp_root.iterdir()) if tmp_root.exists() else []
    assert not leftovers, f"left under storage/.tmp: {leftovers}"
    return succeeded


def finished(job: Callable[[str], dict[str, Any]], ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Each job once all are terminal; on timeout, fails with where each one is."""
    last: dict[str, dict[str, Any]] = {}

    def check() -> bool:
        last.update({i: job(i) for i in ids})
        return all(j["status"] in TERMINAL for j in last.values())

    try:
        wait_for(check, timeout, 0.5, what="the jobs to finish")
    except TimeoutError as e:
        where = [(j["name"], j["status"], j["progress"], j["attempts"]) for j in last.values()]
        raise AssertionError(f"{e}: {where}") from None
    return last


class Api:
    """``seal serve --no-worker`` on a fixed port, restartable; requests retried while it is down."""

    def __init__(self, stack: Stack, key: str) -> None:
        self.stack = stack
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.base, headers=bearer(key), timeout=60)
        self.procs: list[Proc] = []
        self.retries = 0
        self.ambiguous = 0  # sent, then the connection dropped before an answer
        self.start()

    def start(self) -> None:
        n = len(self.procs)
        proc = Proc(seal_cli("serve", "--port", str(self.port), "--no-worker", "--log-level", "warning"),
                    self.stack.env, self.stack.tmp / f"api{n}.log")
        self.procs.append(proc)
        wait_http(self.base + "/healthz", 120, proc)

    def restart(self) -> tuple[float, float]:
        """SIGTERM (graceful), then the same command on the same port: (seconds to stop, seconds down)."""
        t = time.monotonic()
        self.procs[-1].stop(30)
        stopped = time.monotonic() - t
        self.start()
        return stopped, time.monotonic() - t

    def request(self, method: str, path: str, *, within_s: float = 120, **kw: Any) -> httpx.Response:
        deadline = time.monotonic() + within_s
        for _ in range(2000):
            try:
                return self.client.request(method, path, **kw)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as e:
                self.retries += 1
                if not isinstance(e, httpx.ConnectError):
                    self.ambiguous += 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.client.close()
        for p in self.procs:
            p.stop(30)


@pytest.fixture
def postgres_redis(tmp_path: Path) -> Iterator[Stack]:
    admin = require_postgres()
    require_redis(REDIS_DB)
    with fresh_postgres_database(admin) as url:
        stack = make_stack(tmp_path, url, REDIS_DB)
        yield stack
        import redis

        r = redis.Redis.from_url(REDIS_DB)
        queue = stack.settings.task_queue
        r.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}", "unacked", "unacked_index",
                 "unacked_mutex")


JOBS, KILLS, OUTSTANDING, EPOCHS = 20, 5, 8, 2


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_twenty_jobs_survive_five_worker_kills_and_an_api_restart(postgres_redis: Stack) -> None:
    """Two workers take 20 jobs, posted 8 at a time. 5 times, once enough jobs are done, a worker
    holding a job is SIGKILLed 0-2.5 s later (mid-training, gate, saving, between jobs; one kill
    waits for it to be saving its adapter) and a new worker is started; the API is stopped (SIGTERM)
    and started again on its port while jobs are being posted, the client retrying meanwhile.
    Every job ends succeeded (one killed at all 3 attempts may fail as ``worker_lost``), once, its
    attempts one more than the kills that hit it, and a resumed job's adapter serves a completion."""
    stack = postgres_redis
    rng = random.Random(20260414)
    # Kill k once this many jobs are done; restart the API once this many are (posting goes on until ~12).
    kill_after = sorted(rng.sample(range(1, JOBS - 6), KILLS))
    # One kill waits for its victim to write the adapter (saving, publishing, registering): the
    # window where a death can leave files behind. The others fall a random while after the choice.
    at_saving = rng.randrange(KILLS)
    restart_after = rng.randint(3, 7)
    key = new_key(stack.settings, TENANT)
    api = Api(stack, key)
    workers: list[Proc] = []
    interrupted: Counter[str] = Counter()  # job id -> kills that hit it while its worker held it
    kills: list[dict[str, Any]] = []
    restart: dict[str, Any] = {}
    try:
        workers += [stack.worker("w0"), stack.worker("w1")]
        posted = 0

        def post(i: int) -> None:
            r = api.request("POST", "/v1/adaptations", json=job_body(i, EPOCHS))
            assert r.status_code == 202, r.text

        def restart_api() -> None:
            try:
                restart["down_s"] = api.restart()
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                restart["error"] = e

        restarter = threading.Thread(target=restart_api, name="api-restart")
        pending: tuple[Proc, float | None] | None = None  # (victim, when); None: when it saves
        done_at_kill = -1
        deadline = time.monotonic() + 360
        for _ in range(100_000):
            assert time.monotonic() < deadline, [(j.name, j.status, j.stage, j.attempts) for j in jobs_in_db(stack.url)]
            jobs = jobs_in_db(stack.url)
            done = sum(j.status in TERMINAL for j in jobs)
            if posted == JOBS and done == len(jobs) and len(kills) == KILLS and restart:
                break
            if posted < JOBS and posted - done < OUTSTANDING:
                post(posted)
                posted += 1
                continue
            if not restart and not restarter.is_alive() and done >= restart_after:
                restarter.start()
            # At least one job finishes between two kills, so that they spread over the run.
            if len(kills) < KILLS and done >= max(kill_after[len(kills)], done_at_kill + 1):
                live = {w.pid: w for w in workers if w.alive()}
                if pending is None:
                    busy = [live[p] for j in jobs if j.status == "running" and (p := holder_pid(j.worker)) in live]
                    if busy:
                        pending = (rng.choice(busy), None if len(kills) == at_saving
                                   else time.monotonic() + rng.uniform(0.0, 2.5))
                elif (time.monotonic() >= pending[1] if pending[1] is not None else any(
                        j.status == "running" and holder_pid(j.worker) == pending[0].pid
                        and j.stage in ("saving", "registering") for j in jobs)):
                    victim = pending[0]
                    os.kill(victim.pid, signal.SIGKILL)
                    victim.proc.wait(10)  # reaped: its lease holder now reads as dead
                    hit = [j for j in jobs_in_db(stack.url)
                           if j.status == "running" and holder_pid(j.worker) == victim.pid]
                    for j in hit:
                        interrupted[j.id] += 1
                    kills.append({"pid": victim.pid, "at_done": done, "hit": [(j.name, j.stage) for j in hit]})
                    workers.append(stack.worker(f"w{len(workers)}"))
                    pending, done_at_kill = None, done
            # Fast while waiting for a victim to save: that stage lasts a fraction of a second.
            time.sleep(0.02 if pending is not None and pending[1] is None else 0.1)
        restarter.join(150)
        assert "error" not in restart, restart
        stop_s, down_s = restart["down_s"]
        print(f"\nkills: {kills}\nAPI stopped in {stop_s:.1f} s, down {down_s:.1f} s; "
              f"client retries {api.retries} (ambiguous {api.ambiguous})")

        # The API (the restarted process) reports every job as the database has it.
        listed = api.request("GET", "/v1/adaptations", params={"limit": 100})
        assert listed.status_code == 200, listed.text
        by_id = {j["id"]: j for j in listed.json()["data"]}
        jobs = jobs_in_db(stack.url)
        assert set(by_id) == {j.id for j in jobs}
        # One job per name, unless a POST was cut off after the server had it (then retried).
        names = Counter(j.name for j in jobs)
        assert set(names) == {f"fault-{i}" for i in range(JOBS)}
        assert len(jobs) <= JOBS + api.ambiguous, names
        failed = [by_id[j.id] for j in jobs if j.status != "succeeded"]
        for f in failed:
            print(f"failed {f['name']}: {f['error']} (attempts {f['attempts']})")
            # The one way a job may fail here: killed at every attempt.
            assert f["status"] == "failed" and f["error"]["code"] == "worker_lost" and f["error"]["message"], f
            assert f["attempts"] == stack.settings.max_job_attempts, f
        succeeded = check_outcome(stack, jobs)
        assert len(succeeded) >= JOBS - 2, Counter(j.status for j in jobs)
        assert sum(interrupted.values()) >= 3, kills  # most kills land on a job at work
        for j in succeeded:
            out = by_id[j.id]
            assert out["adapter_id"] == j.adapter_id and out["error"] is None
            # One attempt per kill that hit it, plus the one that finished: no spurious takeover.
            assert out["attempts"] == 1 + interrupted[j.id], (out["name"], out["attempts"], interrupted[j.id])

        # An adapter of a job that was killed and resumed serves a completion through the restarted API.
        resumed = next((j for j in succeeded if interrupted[j.id]), succeeded[0])
        r = api.request("POST", "/v1/chat/completions", json={
            "model": resumed.adapter_id, "messages": [{"role": "user", "content": "Who designed the lighthouse?"}],
            "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == resumed.adapter_id and isinstance(r.json()["choices"][0]["message"]["content"], str)
    finally:
        for w in workers:
            w.stop(30)
        api.close()


class RedisServer:
    """A private ``redis-server`` on a free port, memory only: a restart loses every message."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.procs: list[Proc] = []

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.tmp)]
        self.procs.append(Proc(argv, dict(os.environ), self.tmp / f"redis{len(self.procs)}.log"))
        import redis

        wait_for(lambda: redis.Redis.from_url(self.url, socket_connect_timeout=1).ping(), 20, 0.1, what="redis-server")

    def kill(self) -> None:
        self.procs[-1].kill()

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.stop()


LONG_EPOCHS = 24


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_redis_restart_mid_job(tmp_path: Path) -> None:
    """Redis dies (SIGKILL: every message lost) while two workers train a job each and a third job
    waits in the queue; one worker is SIGKILLed during the outage; Redis comes back empty on the
    same port. The surviving worker reconnects and finishes its job; the dead worker's job and the
    queued one, whose messages died with Redis, are sent again by the recovery sweep from the
    database and succeed; a job POSTed during the outage gets a 503 ``queue_unavailable`` at once
    (and is failed, not left queued); one POSTed after it runs normally."""
    admin = require_postgres()
    server = RedisServer(tmp_path)
    server.start()
    workers: list[Proc] = []
    try:
        with fresh_postgres_database(admin) as url:
            # A queued job with no worker for 5 s is sent again (a lost message); default 900 s.
            stack = make_stack(tmp_path, url, server.url, requeue_after_s=5)
            h = bearer(new_key(stack.settings, TENANT))
            workers += [stack.worker("a"), stack.worker("b")]
            with _stopped_at_exit(workers), api_client(stack.settings) as client:
                wait_for(lambda: client.get("/readyz").json()["checks"]["worker"].get("workers") == 2, 180, 0.5,
                         what="two ready workers")

                def post(i: int, epochs: int) -> httpx.Response:
                    return client.post("/v1/adaptations", headers=h, json=job_body(i, epochs))

                def job(job_id: str) -> dict[str, Any]:
                    return client.get(f"/v1/adaptations/{job_id}", headers=h).json()

                def training(job_id: str) -> bool:
                    return (j := job(job_id))["status"] == "running" and j["progress"]["stage"] == "training"

                lost, survives = (r.json()["id"] for r in (post(0, LONG_EPOCHS), post(1, LONG_EPOCHS)))
                waiting = post(2, EPOCHS).json()["id"]
                wait_for(lambda: training(lost) and training(survives), 120, 0.2, what="both jobs training")
                assert job(waiting)["status"] == "queued"  # its message is in Redis only
                holder = holder_pid(next(j.worker for j in jobs_in_db(stack.url) if j.id == lost))
                victim = next(w for w in workers if w.pid == holder)
                survivor = next(w for w in workers if w is not victim)

                server.kill()
                down = time.monotonic()
                victim.kill()  # SIGKILL, reaped: the job's holder reads as dead
                r = post(3, EPOCHS)
                answered_s = time.monotonic() - down
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "queue_unavailable" and r.json()["error"]["message"], r.text
                assert answered_s < 15, answered_s
                ready = client.get("/readyz")
                assert ready.status_code == 503 and ready.json()["checks"]["broker"]["ok"] is False, ready.text
                # The survivor's recovery sweep tries to re-send the dead worker's job while Redis is down.
                wait_for(lambda: f"could not re-send job {lost}" in survivor.log(200_000), 20, 0.2,
                         what="a re-send during the outage")
                server.start()
                outage_s = time.monotonic() - down
                assert job(survives)["status"] == "running", job(survives)  # the outage fell mid-job

                refused = next(j for j in client.get("/v1/adaptations", headers=h, params={"limit": 10}).json()["data"]
                               if j["name"] == "fault-3")
                assert refused["status"] == "failed" and refused["error"]["code"] == "queue_unavailable", refused

                # After the outage the API's producer reconnects: a new job is accepted and runs.
                r = post(4, EPOCHS)
                assert r.status_code == 202, r.text
                after = r.json()["id"]
                final = finished(job, [lost, survives, waiting, after], 120)
                print(f"\nRedis down {outage_s:.1f} s; POST during it answered in {answered_s:.2f} s\n"
                      + "\n".join(f"{j['name']}: {j['status']} attempts {j['attempts']}" for j in final.values()))
                for j in final.values():
                    assert j["status"] == "succeeded", (j, survivor.log())
                # The dead worker's job ran again once; the others never lost their worker.
                assert [final[i]["attempts"] for i in (lost, survives, waiting, after)] == [2, 1, 1, 1], final
                assert survivor.alive() and client.get("/readyz").status_code == 200
                log = survivor.log(400_000)
                assert f"re-sent job {waiting}" in log and f"re-sent job {lost}" in log
            jobs = jobs_in_db(stack.url)
            assert len(jobs) == 5
            succeeded = check_outcome(stack, jobs)
            assert {j.id for j in succeeded} == {lost, survives, waiting, after}
    finally:
        server.close()


@contextmanager
def _stopped_at_exit(procs: list[Proc]) -> Iterator[None]:
    """Stop ``procs`` on the way out (before their database is dropped)."""
    try:
        yield
    finally:
        for p in procs:
            p.stop(30)
