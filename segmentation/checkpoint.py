"""Every checkpoint mmengine reads for a segmentation run goes through the project's safe loader.

mmengine's own loader (``mmengine.runner.checkpoint._safe_torch_load``, used by every scheme of its
``CheckpointLoader``: ``--resume``, ``WORK_DIR/last_checkpoint``, ``load_from``, ``init_cfg`` pretrained,
test-time loading) retries with ``weights_only=False`` when the safe load fails, which runs whatever a
pickled payload holds. :func:`install_safe_loading` (done on importing :mod:`segmentation`) replaces it by
:func:`mae_transfer.checkpoint.load_file` with mmengine's own allow-list (numpy arrays, ``HistoryBuffer``):
a checkpoint holding anything else is refused with a :class:`~mae_transfer.checkpoint.CheckpointError`
naming the file.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from pathlib import Path

from mae_transfer.checkpoint import CheckpointError, load_file, save_checkpoint



def _warn(msg: str):
    """A warning on stderr (before the run's own logger exists) and in the current mmengine log."""
    import sys

    from mmengine.logging import print_log
    print(f"train_seg.py: warning: {msg}", file=sys.stderr, flush=True)
    print_log(msg, logger="current", level=logging.WARNING)

__all__ = ["safe_torch_load", "install_safe_loading", "atomic_save_checkpoint", "intact", "resume_candidate",
           "remove_orphans"]


def _public_getattr(obj, name):
    """``getattr`` as mmengine's checkpoints use it (numpy scalar types), refusing private and dunder
    attributes: those are the way from an allowed object to arbitrary ones."""
    if not isinstance(name, str) or name.startswith("_"):
        raise CheckpointError(f"refusing checkpoint content: getattr of {name!r}")
    return getattr(obj, name)


def _mmengine_safe_globals() -> list:
    from mmengine.runner.checkpoint import get_torch_safe_globals

    return [(_public_getattr, "builtins.getattr") if g is getattr else g for g in get_torch_safe_globals()]


def safe_torch_load(file, map_location=None, weights_only=None) -> dict:
    """Drop-in for mmengine's ``_safe_torch_load``: ``weights_only`` loading, never a fall-back."""
    if not isinstance(file, (str, os.PathLike)):  # a buffer (ceph / petrel backends)
        import torch
        try:
            return torch.load(file, map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"refusing to load a checkpoint buffer: {str(e).splitlines()[0]}") from None
    return load_file(file, safe_globals=_mmengine_safe_globals(), map_location=map_location or "cpu")


def _load_from_local(filename, map_location):
    """mmengine's local-file scheme, through :func:`safe_torch_load` (errors name the file)."""
    return safe_torch_load(os.path.expanduser(filename), map_location=map_location)


_mmengine_save = None


def atomic_save_checkpoint(checkpoint, filename, file_client_args=None, backend_args=None):
    """mmengine's ``save_checkpoint`` for local files through the shared atomic write (temp file, fsync,
    rename): a crash leaves the previous checkpoint or the new one, never a torn one."""
    if "://" in str(filename) or file_client_args is not None or backend_args is not None:
        return _mmengine_save(checkpoint, filename, file_client_args=file_client_args, backend_args=backend_args)
    save_checkpoint(checkpoint, filename)


def intact(path: Path) -> bool:
    """Whether a checkpoint file is a complete torch zip (every member's CRC checked; nothing unpickled)."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def resume_candidate(work_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``--resume`` continues from: ``last_checkpoint``'s target if intact, else the newest
    intact ``iter_*.pth`` / ``epoch_*.pth`` of the work dir (with a warning); None if there is none."""
    work_dir = Path(work_dir)
    named = None
    if (work_dir / "last_checkpoint").is_file():
        text = (work_dir / "last_checkpoint").read_text().strip()
        named = Path(text) if os.path.isabs(text) else work_dir / Path(text).name
    def progress(p):
        m = re.match(r"(?:iter|epoch)_(\d+)\.pth$", p.name)
        return int(m.group(1)) if m else -1
    others = sorted((p for p in work_dir.glob("*.pth") if progress(p) >= 0), key=progress, reverse=True)
    for cand in ([named] if named else []) + [p for p in others if p != named]:
        if not cand.is_file():
            continue
        if intact(cand):
            if named is not None and cand != named:
                _warn(f"--resume: {named} (named by last_checkpoint) is missing or torn; resuming from "
                               f"the newest intact checkpoint {cand}")
            return cand
        _warn(f"--resume: {cand} is torn (incomplete write), skipped")
    return None


def remove_orphans(work_dir: str | os.PathLike):
    """Delete the temp files of checkpoint writes killed before their rename."""
    for tmp in Path(work_dir).glob(".*.pth.*.tmp"):
        tmp.unlink(missing_ok=True)
        _warn(f"removed {tmp}, left by a checkpoint write that was killed")


def install_safe_loading():
    """Route mmengine's checkpoint reading through :func:`safe_torch_load` and its local writing through
    :func:`atomic_save_checkpoint` (idempotent)."""
    global _mmengine_save
    import mmengine.runner as runner_pkg
    import mmengine.runner.checkpoint as ckpt
    import mmengine.runner.runner as runner_mod

    ckpt._safe_torch_load = safe_torch_load
    ckpt.CheckpointLoader.register_scheme(prefixes="", loader=_load_from_local, force=True)
    if _mmengine_save is None:
        _mmengine_save = ckpt.save_checkpoint
    for mod in (ckpt, runner_mod, runner_pkg):
        mod.save_checkpoint = atomic_save_checkpoint
