"""``precision=auto``: the training precision chosen by timing the real step, cached per machine and model.

Device type alone is a poor guide: bf16 autocast is 1.6x faster than fp32 for a ViT-B step on a CPU
with AMX, but 1.1-1.9x *slower* for the demo's tiny ``vit_mini_patch4`` on a CPU without it
(``benchmarks/README.md``). So :func:`probe_precision` times one forward + backward of the actual
model at the actual batch in each candidate precision and keeps the fastest. The decision is cached
in ``$MAE_CACHE_DIR/precision.json`` (default ``~/.cache/mae-transfer``) under a key naming the machine
(CPU model and flags or GPU name, torch version, thread count) and the model (class, parameter count,
batch shape), so a second run on the same machine starts at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

logger = logging.getLogger("mae_transfer.precision")

__all__ = ["PRECISIONS", "candidates", "choose_precision", "machine_key", "probe_precision", "autocast",
           "cache_path", "cached_choice", "kept_rng", "read_decision", "write_decision"]

PRECISIONS = ("fp32", "bf16", "fp16")


def autocast(precision: str, device_type: str):
    """The autocast context for ``precision`` (``fp32``: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@contextlib.contextmanager
def kept_rng():
    """Run the body, then put the torch (CPU and CUDA), numpy and python RNG states back: drawing the
    probe's batch through a data loader's augmentations must not change the run that follows."""
    import random

    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def candidates(device: torch.device) -> list[str]:
    """The precisions worth timing on ``device``: fp32 and bf16; on a CUDA GPU without bf16, fp16
    (with a grad scaler) instead of bf16."""
    if device.type == "cuda":
        return ["fp32", "bf16"] if torch.cuda.is_bf16_supported() else ["fp32", "fp16"]
    return ["fp32", "bf16"]


def choose_precision(times: dict[str, float], margin: float = 0.05) -> str:
    """The fastest precision of ``times`` (precision -> seconds per step). A reduced precision must be
    at least ``margin`` (a fraction) faster than fp32 to be chosen: a tie is not worth the rounding."""
    if "fp32" not in times:
        raise ValueError(f"the probe must time fp32, got {sorted(times)}")
    best = min(times, key=times.get)
    if best != "fp32" and times[best] > times["fp32"] * (1.0 - margin):
        return "fp32"
    return best


def machine_key(device: torch.device) -> str:
    """A short string naming what the speed of a precision depends on: the CPU model and its flags
    (AMX, avx512_bf16) or the GPU name, the torch version and the thread count."""
    if device.type == "cuda":
        hw = torch.cuda.get_device_name(device)
    else:
        hw = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            info = Path("/proc/cpuinfo").read_text()
            lines = {ln.split(":", 1)[0].strip(): ln.split(":", 1)[1].strip() for ln in info.splitlines() if ":" in ln}
            flags = hashlib.sha1(lines.get("flags", "").encode()).hexdigest()[:10]
            hw = f"{lines.get('model name', hw)} flags:{flags}"
    return f"{device.type}|{hw}|torch {torch.__version__}|threads {torch.get_num_threads()}"


def cache_path() -> Path:
    """``$MAE_CACHE_DIR/precision.json``, default ``~/.cache/mae-transfer/precision.json``."""
    root = os.environ.get("MAE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mae-transfer")
    return Path(root) / "precision.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # a missing or corrupt cache only costs a new probe


def _write_cache(path: Path, key: str, entry: dict):
    """Add ``entry`` under ``key``, atomically (temporary file + rename), so concurrent runs never
    leave a torn file; a read-only home only costs a warning."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[key] = entry
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".precision-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)  # a failed write leaves the old cache as it was, and no temporary file
            raise
    except OSError as e:
        logger.warning("precision cache %s not written (%s)", path, e)


def _time_step(step: Callable[[], torch.Tensor], precision: str, device: torch.device) -> float:
    """Seconds of one call of ``step`` (returns the loss; its backward, in fp32, is taken here) under
    ``precision``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with autocast(precision, device.type):
        loss = step()
    loss.float().backward()
    sync()
    return time.perf_counter() - t0


def read_decision(device: torch.device, key: str) -> dict | None:
    """Any measured decision cached for this machine under ``key`` (e.g. the attention form of
    :mod:`mae_transfer.models.vit`), or None."""
    hit = _read_cache(cache_path()).get(f"{machine_key(device)}|{key}")
    return hit if isinstance(hit, dict) else None


def write_decision(device: torch.device, key: str, entry: dict):
    """Cache ``entry`` (``{"choice", "times"}``) for this machine under ``key``; see :func:`read_decision`."""
    _write_cache(cache_path(), f"{machine_key(device)}|{key}", {**entry, "when": time.strftime("%Y-%m-%d %H:%M:%S")})


def cached_choice(device: torch.device, shape_key: str) -> dict | None:
    """The cached decision ``{"choice", "times", "when"}`` for this machine and ``shape_key``, or None."""
    hit = read_decision(device, shape_key)
    return hit if hit is not None and hit.get("choice") in PRECISIONS else None


def probe_precision(model: torch.nn.Module, step: Callable[[], torch.Tensor], device: torch.device,
                    shape_key: str, repeats: int = 3, use_cache: bool = True) -> tuple[str, dict[str, float]]:
    """Time ``step`` (one forward of ``model`` at the real batch, returning the scalar loss) in each
    precision of :func:`candidates` and return ``(choice, times)`` (seconds per forward + backward).

    One warm-up call per precision, then ``repeats`` rounds that time each precision once, interleaved
    so that load from other processes hits every precision alike; the fastest call of each is kept
    (interference only ever adds time). The model's gradients are cleared afterwards and its buffers
    restored, so the probe leaves no trace in training; the caller keeps RNG states
    (:func:`kept_rng`) if it needs exact reproducibility.

    Args:
        model: the model being trained (its gradients are set to None after the probe).
        step: runs the forward and returns the loss; called under autocast by the probe.
        device: where the model lives.
        shape_key: names the model and batch (e.g. class, parameter count, batch shape) for the cache.
        repeats: timed calls per precision after its warm-up.
        use_cache: read and write the decision cache (``$MAE_CACHE_DIR``).
    """
    path = cache_path()
    if use_cache:
        hit = cached_choice(device, shape_key)
        if hit is not None:
            logger.info("precision auto: %s (cached in %s; measured %s)", hit["choice"], path,
                        ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in hit.get("times", {}).items()))
            return hit["choice"], hit.get("times", {})
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    order = candidates(device)
    for p in order:
        _time_step(step, p, device)  # warm-up: allocations, oneDNN / cuBLAS kernel selection
    times = {p: [] for p in order}
    for r in range(repeats):
        for p in order if r % 2 == 0 else order[::-1]:
            times[p].append(_time_step(step, p, device))
    best = {p: min(t) for p, t in times.items()}
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(buffers[k])
    choice = choose_precision(best)
    logger.info("precision auto: %s (one forward + backward: %s)", choice,
                ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in best.items()))
    if use_cache:
        write_decision(device, shape_key, {"choice": choice, "times": best})
    return choice, best
