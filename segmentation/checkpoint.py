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

import os

from mae_transfer.checkpoint import CheckpointError, load_file

__all__ = ["safe_torch_load", "install_safe_loading"]


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


def install_safe_loading():
    """Route mmengine's checkpoint reading through :func:`safe_torch_load` (idempotent)."""
    import mmengine.runner.checkpoint as ckpt

    ckpt._safe_torch_load = safe_torch_load
    ckpt.CheckpointLoader.register_scheme(prefixes="", loader=_load_from_local, force=True)
