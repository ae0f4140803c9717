"""What every tool and adapter shares: atomic file writes, the config error, config lookup by name,
the ``--weights none`` rule, the walk from a parameter-name prefix to the encoder it names, and the
sizes suggested when an ``--img-size`` does not work.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Callable

import torch.nn as nn

__all__ = ["ConfigError", "atomic_write", "file_lock", "usable_cpus", "write_json", "is_random_init", "find_config", "find_submodule",
           "encoder_depth", "sizes_that_work", "check_override_value", "disk_full_message"]


class ConfigError(ValueError):
    """A config, an override, a device or a path given by the user does not work; the message names the
    file or key at fault. The command-line tools turn it into one line on stderr and exit status 2."""


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = True) -> Path:
    """Write ``path`` through ``write(file)`` into a temp file of the same folder, fsync it, then rename
    it over ``path`` and fsync the folder.

    A crash at any moment leaves the old file or the new one, never a torn one: readers (resume, the
    comparison's "this cell finished" test on ``metrics.json``) may take the file's existence as proof
    it is complete. Args: ``path`` the file to (re)place, its folder is created; ``write`` writes the
    content to the open file; ``binary`` opens it in ``"wb"`` (else ``"w"``, UTF-8). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; ``os.cpu_count()`` counts the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextlib.contextmanager
def file_lock(path: str | os.PathLike):
    """Hold an exclusive ``flock`` on ``path`` (created, folder too) for the ``with`` block: processes that
    would build the same cache (the demo's two pretrainings, its detection and segmentation cells) build it
    once, the others wait and then read it. The lock goes with the process, so a killed holder frees it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_json(obj, path: str | os.PathLike, *, indent: int | None = 1, allow_nan: bool = True) -> Path:
    """``json.dump(obj)`` to ``path`` through :func:`atomic_write`, with a final newline.

    Args: ``obj`` any JSON-serialisable value; ``indent`` as :func:`json.dump` (None: one line);
    ``allow_nan`` False refuses NaN / inf (strict JSON)."""
    def write(f):
        json.dump(obj, f, indent=indent, allow_nan=allow_nan)
        f.write("\n")
    return atomic_write(path, write, binary=False)


def is_random_init(weights: str | os.PathLike | None) -> bool:
    """Whether a ``--weights`` value asks for random init: ``none`` in any case, or empty.

    ``None`` (the flag not given) is not random init: each tool then falls back to its config."""
    return weights is not None and str(weights).strip().lower() in ("", "none")


def find_submodule(model: nn.Module, prefix: str) -> nn.Module:
    """The module a parameter-name prefix names: ``"backbone.vit."`` -> ``model.backbone.vit``;
    ``""`` -> ``model``. Raises :class:`ConfigError` naming the part that is not there."""
    mod = model
    for part in filter(None, prefix.rstrip(".").split(".")):
        child = getattr(mod, part, None)
        if not isinstance(child, nn.Module):
            raise ConfigError(f"{type(model).__name__} has no module {prefix.rstrip('.')!r} "
                              f"(no {part!r} in {type(mod).__name__})")
        mod = child
    return mod


def encoder_depth(model: nn.Module, prefix: str = "") -> int:
    """Number of blocks of the encoder at ``prefix`` in ``model``: its ``depth``, else ``len(blocks)``."""
    enc = find_submodule(model, prefix)
    depth = getattr(enc, "depth", None)
    if depth is None and hasattr(enc, "blocks"):
        depth = len(enc.blocks)
    if depth is None:
        raise ConfigError(f"{type(enc).__name__} at {prefix.rstrip('.') or 'the model root'!r} has neither "
                          f"'depth' nor 'blocks': give the encoder depth explicitly")
    return int(depth)


def find_config(name: str | os.PathLike, config_dir: str | os.PathLike) -> Path:
    """A config file given as a path, or as a bare name (``x`` / ``x.py``) in ``config_dir``.

    Raises :class:`ConfigError` listing the configs of ``config_dir`` (files starting with ``_`` are
    bases, not listed)."""
    config_dir = Path(config_dir)
    for cand in (Path(name), config_dir / name, config_dir / f"{name}.py"):
        if cand.is_file():
            return cand
    known = sorted(c.name for c in config_dir.glob("*.py") if not c.name.startswith("_"))
    raise ConfigError(f"config {str(name)!r} is neither a file nor one of {config_dir}: {', '.join(known)}")


# Config leaves that must be positive (or, for the second set, non-negative) whatever the framework.
POSITIVE_KEYS = ("max_iter", "max_iters", "total_batch_size", "batch_size", "val_interval", "interval", "period",
                 "lr", "epochs", "max_epochs")
NON_NEGATIVE_KEYS = ("num_workers", "eval_period", "log_period", "weight_decay", "warmup_iters")


def sizes_that_work(n: int, step: int, minimum: int) -> str:
    """The input sizes nearest ``n`` among the multiples of ``step`` that are at least ``minimum``, for
    an error message: ``sizes_that_work(50, 16, 32) == "48 or 64"``."""
    lo = max(minimum + -minimum % step, n // step * step)
    below = [s for s in (lo - step, lo) if minimum <= s < n]
    above = lo if lo > n else lo + step
    return " or ".join(str(s) for s in (below[-1:] + [above]))


def check_override_value(option: str, key: str, old, new):
    """A ``key=value`` override's value against the config's current one: same kind of value (an int
    stays an int; a float takes an int; a bool stays a bool; a number does not become a string), and
    counts / sizes / rates in range. Raises :class:`ConfigError` naming ``option``."""
    leaf = key.rsplit(".", 1)[-1]
    kind = None
    if isinstance(old, bool):
        kind = (bool,)
    elif isinstance(old, int):
        kind = (int,)
    elif isinstance(old, float):
        kind = (int, float)
    if kind and old is not None and (not isinstance(new, kind) or (isinstance(new, bool) and bool not in kind)):
        raise ConfigError(f"override {option!r}: {key} must be {'a bool' if kind == (bool,) else 'an integer' if kind == (int,) else 'a number'} "
                          f"(the config has {old!r}), got {new!r}")
    if isinstance(new, (int, float)) and not isinstance(new, bool):
        if leaf in POSITIVE_KEYS and not new > 0:
            raise ConfigError(f"override {option!r}: {key} must be > 0, got {new!r}")
        if leaf in NON_NEGATIVE_KEYS and not new >= 0:
            raise ConfigError(f"override {option!r}: {key} must be >= 0, got {new!r}")


def disk_full_message(e: BaseException, output_dir: str | os.PathLike | None = None) -> str | None:
    """For an ``OSError`` of a full disk or quota (ENOSPC, EDQUOT): one line saying which file could not
    be written and what is intact; None for any other error."""
    import errno

    if not isinstance(e, OSError) or e.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return None
    where = f" writing {e.filename}" if e.filename else ""
    folder = f" in {output_dir}" if output_dir else ""
    return (f"no space left on the device{where} ({e.strerror}). Files written before{folder} are intact "
            f"(checkpoints and metrics are written to a temp file and renamed): free space, then rerun with "
            f"--resume to continue from the last complete checkpoint")
