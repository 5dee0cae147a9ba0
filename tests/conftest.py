"""Shared fixtures. The real tiny model is loaded once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Under pytest-xdist (scripts/test.sh runs two workers) the test processes share the cores: one torch
# thread each, and for every process they start (read by torch when it first starts its pool), so
# two workers never oversubscribe the machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ.get("SEAL_TEST_THREADS_PER_WORKER", "1")

# One converted copy of the default model, reused across test runs on this machine.
TEST_DATA_DIR = Path(os.environ.get("SEAL_TEST_DATA_DIR", Path.home() / ".cache" / "seal-test"))
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# The longest modules (minutes each on 2 cores) go to the xdist workers first, so that the run does not
# end with one worker on a long module while the other has nothing left (--dist loadfile hands out
# modules in collection order).
LONGEST_FIRST = ("tests/reliability/test_faults.py", "tests/cli/test_e2e.py", "tests/api/test_lineage.py",
                 "tests/engine/knowledge/test_adapt.py", "tests/engine/fewshot/test_ttt.py",
                 "tests/service/test_rl_embedded.py", "tests/workers/test_worker_kill.py", "tests/api/test_rl_runs.py",
                 "tests/engine/knowledge/test_forgetting.py", "tests/engine/rl/test_loop.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: the rest keep order


def pytest_collection_finish(session: pytest.Session) -> None:
    # pytest-xdist schedules tests by id: two tests with one id would silently run as one.
    seen: set[str] = set()
    twice = sorted({item.nodeid for item in session.items if item.nodeid in seen or seen.add(item.nodeid)})
    if twice:
        raise pytest.UsageError(f"{len(twice)} test ids name more than one test: {twice[:5]}")


@pytest.fixture(scope="session")
def engine_settings():
    from seal_engine.config import EngineSettings

    return EngineSettings(data_dir=TEST_DATA_DIR, retention_probes=16)


@pytest.fixture(scope="session")
def bundle(engine_settings):
    from seal_engine.core.model import get_model

    return get_model(engine_settings)


@pytest.fixture(scope="session")
def squad_dev() -> Path:
    path = SHARED_DATA / "squad" / "dev.json"
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(scope="session")
def fp32_bundle(engine_settings):
    """A float32 copy of the model, for numerical equivalence tests."""
    from seal_engine.core.model import load_model

    return load_model(engine_settings.model_copy(update={"dtype": "float32"}))


def drift_noise(bundle) -> float:  # noqa: ANN001
    """Answer drift (nats/token) that is rounding, not change: bfloat16 rounds differently from one batch
    arrangement to another (~1e-3 measured for an adapter whose update is ~0); float32 agrees to 1e-4."""
    import torch

    return 1e-3 if bundle.dtype == torch.float32 else 1e-2
