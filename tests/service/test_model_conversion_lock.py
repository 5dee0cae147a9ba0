"""The default model is converted once per data directory, whatever the number of processes
starting at once, and what a crashed conversion leaves behind is removed by the next one.

The GGUF dequantization itself (~20 s, 538 MB) is replaced by a small stand-in that writes a
``model.safetensors``; everything around it (``default_model_dir``, the file lock, the temp
directory and its rename) is the real code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from seal_engine.config import DEFAULT_MODEL_ID, EngineSettings
from seal_engine.core import model as model_mod

# A child process: waits for ``go``, then asks for the default model directory with the
# conversion replaced by one that takes ``delay`` seconds and records each call.
CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from seal_engine.config import EngineSettings
    from seal_engine.core import model as m

    data_dir, go, calls, delay = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])

    def fake_convert(gguf, out):
        with open(calls, "a") as f:
            f.write(f"{os.getpid()}\\n")
        (out / "partial.bin").write_bytes(b"x" * 1000)
        time.sleep(delay)
        (out / "model.safetensors").write_bytes(str(os.getpid()).encode())

    m._gguf_path = lambda: Path("/nonexistent/model.gguf")
    m._convert_gguf = fake_convert
    while not go.exists():
        time.sleep(0.01)
    target = m.default_model_dir(EngineSettings(data_dir=data_dir))
    print("DIR", target, flush=True)
""")


def _child(tmp_path: Path, data_dir: Path, delay: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir), str(tmp_path / "go"), str(tmp_path / "calls"), str(delay)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
    )


def _leftovers(models: Path) -> list[str]:
    return sorted(p.name for p in models.glob("*.tmp*"))


@pytest.fixture
def fake_conversion(monkeypatch):
    calls: list[Path] = []

    def fake_convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        (out / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(model_mod, "_gguf_path", lambda: Path("/nonexistent/model.gguf"))
    monkeypatch.setattr(model_mod, "_convert_gguf", fake_convert)
    return calls


@pytest.mark.timeout(180)
def test_two_processes_starting_at_once_convert_once(tmp_path):
    data_dir = tmp_path / "data"
    procs = [_child(tmp_path, data_dir, delay=1.5) for _ in range(2)]
    try:
        time.sleep(0.2)
        (tmp_path / "go").touch()  # both are past their imports, or about to be: they race
        outs = [p.communicate(timeout=150)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert [p.returncode for p in procs] == [0, 0], outs
    target = data_dir / "models" / DEFAULT_MODEL_ID
    # One conversion; the other process waited and reused its directory.
    calls = (tmp_path / "calls").read_text().split()
    assert len(calls) == 1, calls
    assert all(f"DIR {target}" in out for out in outs), outs
    assert (target / "model.safetensors").read_text() == calls[0]
    assert _leftovers(target.parent) == []


@pytest.mark.timeout(180)
def test_a_killed_conversion_is_cleaned_up_and_redone(tmp_path, fake_conversion):
    data_dir = tmp_path / "data"
    models = data_dir / "models"
    proc = _child(tmp_path, data_dir, delay=120)
    (tmp_path / "go").touch()
    try:
        deadline = time.monotonic() + 120
        while not list(models.glob("*.tmp*/partial.bin")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # mid-conversion, holding the lock
        proc.wait(10)
    assert _leftovers(models) == [f"{DEFAULT_MODEL_ID}.tmp{proc.pid}"]

    # The lock died with its holder: the next conversion runs, and removes the leftover.
    target = model_mod.default_model_dir(EngineSettings(data_dir=data_dir))
    assert target == models / DEFAULT_MODEL_ID and (target / "model.safetensors").read_bytes() == b"weights"
    assert len(fake_conversion) == 1
    assert _leftovers(models) == []


def test_stale_temp_dirs_and_a_partial_target_are_removed(tmp_path, fake_conversion):
    models = tmp_path / "models"
    stale = models / f"{DEFAULT_MODEL_ID}.tmp4242"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "model.safetensors").write_bytes(b"half")
    other = models / "another-model.tmp1"  # not this model's: left alone
    other.mkdir()
    (models / DEFAULT_MODEL_ID).mkdir()  # a directory without weights (not published by a conversion)
    (models / DEFAULT_MODEL_ID / "config.json").write_text("{}")

    target = model_mod.default_model_dir(EngineSettings(data_dir=tmp_path))
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]
    assert _leftovers(models) == ["another-model.tmp1"]
    # Converted now: later calls reuse the directory without converting again.
    assert model_mod.default_model_dir(EngineSettings(data_dir=tmp_path)) == target
    assert len(fake_conversion) == 1


def test_a_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    def broken(gguf: Path, out: Path) -> None:
        (out / "partial.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(model_mod, "_gguf_path", lambda: Path("/nonexistent/model.gguf"))
    monkeypatch.setattr(model_mod, "_convert_gguf", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        model_mod.default_model_dir(EngineSettings(data_dir=tmp_path))
    assert _leftovers(tmp_path / "models") == [] and not (tmp_path / "models" / DEFAULT_MODEL_ID).exists()


def test_a_lock_held_too_long_is_a_clear_error(tmp_path, fake_conversion):
    from filelock import FileLock

    target = tmp_path / "models" / DEFAULT_MODEL_ID
    target.parent.mkdir(parents=True)
    with FileLock(str(target.with_name(target.name + ".lock"))):
        with pytest.raises(model_mod.ModelNotFoundError, match="converting the model"):
            model_mod.convert_once(target, lambda out: None, timeout_s=0.3)
    assert fake_conversion == []
