"""Checkpoints: safe loading, the one place that absorbs foreign formats, atomic saving.

Formats read (detected from the keys, see :func:`to_mae_transfer_keys`):
- ours: ``{"model": state_dict, "config": {...}, ...}`` written by :func:`save_checkpoint`;
- the official MAE release (``mae_pretrain_vit_*.pth``, ``{"model": ...}``, and fine-tuned ones with
  ``fc_norm``/``head``), including full training checkpoints of the reference code (``args``);
- timm / DeiT supervised ViTs (a plain state dict or ``{"model": ...}``);
- checkpoints written by our Detectron2 (``backbone.net.``) and MMSegmentation (``backbone.``) adapters,
  plus any converters registered with :func:`register_key_converter`.

Checkpoints are untrusted input: everything is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import atomic_write
from .models.pos_embed import resample_abs_pos_embed
from .models.vit import resize_beit_bias_table, resize_rel_pos

logger = logging.getLogger("mae_transfer")

__all__ = ["CheckpointError", "CheckpointMismatchError", "LoadReport", "load_file", "extract_state_dict",
           "to_mae_transfer_keys", "adapt_state_dict", "load_pretrained", "save_checkpoint",
           "register_key_converter"]

# Parameters that exist only in the MAE pretraining model; a downstream encoder drops them.
MAE_DECODER_KEYS = re.compile(r"^(mask_token|encoder_mask_token)$|^decoder_")
# Parameters a downstream model may add on top of a pretrained encoder: they start from their init.
NEW_DOWNSTREAM_KEYS = re.compile(
    r"^(head\.|fc_norm\.|blocks\.\d+\.attn\.(rel_pos_[hw]|relative_position_bias_table)$|blocks\.\d+\.ls[12]\.gamma$)")


class CheckpointError(ValueError):
    """A checkpoint file cannot be read (missing, truncated, unsafe, or holds no state dict)."""


class CheckpointMismatchError(CheckpointError):
    """A state dict does not fit the model: lists missing, unexpected and wrong-shape keys."""


@dataclass
class LoadReport:
    source: str
    format: str
    missing: list[str] = field(default_factory=list)       # left at their init (allowed new parts)
    unexpected: list[str] = field(default_factory=list)    # in the checkpoint, dropped (allowed)
    resized: list[str] = field(default_factory=list)       # interpolated to the model's shape

    def __str__(self):
        parts = [f"loaded {self.source} ({self.format} format)"]
        decoder = [k for k in self.unexpected if MAE_DECODER_KEYS.match(k)]
        dropped = [k for k in self.unexpected if k not in decoder]
        if decoder:
            dropped.insert(0, f"MAE decoder ({len(decoder)} tensors)")
        for name, keys in (("newly initialised", self.missing), ("dropped", dropped), ("resized", self.resized)):
            if keys:
                parts.append(f"{name} ({len(keys)}): {_short_list(keys)}")
        return "; ".join(parts)


def _short_list(keys: Iterable[str], limit: int = 12) -> str:
    keys = list(keys)
    s = ", ".join(keys[:limit])
    return s + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


# ---- reading -------------------------------------------------------------------------------------
def load_file(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)`` with errors that name the file.

    The MAE reference stores its argparse ``args`` in training checkpoints: that one plain class is
    allowed; any other pickled object (code-execution payloads included) is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        text = str(e)
        unsafe = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", text)
        if unsafe:
            what = unsafe.group(1)
            raise CheckpointError(
                f"refusing to load {str(path)!r}: it contains pickled Python objects beyond tensors and "
                f"plain containers ({what}), which could run code. Re-save it as a plain state dict from a "
                f"trusted environment.") from None
        first = next((ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln), "")
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: corrupt, truncated or not a PyTorch "
                              f"checkpoint ({type(e).__name__}{': ' + first if first else ''})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def extract_state_dict(obj: dict, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model's state dict inside a loaded checkpoint (``model``, ``state_dict``, ``module`` or plain)."""
    for key in ("model", "state_dict", "module", "model_ema"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{source} holds no tensors under 'model', 'state_dict' or at top level "
                              f"(top-level keys: {_short_list(obj.keys())})")
    return sd


# ---- foreign key names -> ours -----------------------------------------------------------------------
KeyConverter = Callable[[dict], "dict | None"]
_CONVERTERS: list[tuple[str, KeyConverter]] = []


def register_key_converter(name: str, fn: KeyConverter):
    """Register ``fn(state_dict) -> state_dict in our names, or None if not its format``. Adapters use
    this for their framework's layouts (e.g. MMSegmentation's own ``MAE`` backbone names)."""
    _CONVERTERS.append((name, fn))


def _strip_prefix(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def to_mae_transfer_keys(sd: dict) -> tuple[dict, str]:
    """Rename a state dict of any known format to our names. Returns ``(state_dict, format_name)``."""
    for name, fn in _CONVERTERS:
        out = fn(sd)
        if out is not None:
            return out, name
    if all(k.startswith("module.") for k in sd):  # DDP-wrapped
        sd = _strip_prefix(sd, "module.")
    # Our adapters nest the ViT as detectron2 ``backbone.net`` (ViTDet) / ``backbone.bottom_up.net``
    # (multi-level FPN) and mmseg ``backbone.vit``/``backbone``.
    for prefix, fmt in (("backbone.net.", "detectron2"), ("backbone.bottom_up.net.", "detectron2"),
                        ("backbone.vit.", "mmseg"), ("backbone.", "mmseg")):
        if any(k.startswith(prefix + "blocks.") for k in sd):
            return _strip_prefix(sd, prefix), fmt
    if any(MAE_DECODER_KEYS.match(k) for k in sd):
        return dict(sd), "mae"
    if "blocks.0.attn.qkv.weight" in sd:
        return dict(sd), "vit"
    return dict(sd), "unknown"


# ---- shapes: positions, patch embedding, relative-position tables ------------------------------------
def _square_side(n: int) -> int | None:
    side = int(round(n ** 0.5))
    return side if side > 0 and side * side == n else None


def resize_patch_embed(weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of patch-embedding kernels ``(D, C, p, p)`` (ViTDet does 14 -> 16 for ViT-H)."""
    return F.interpolate(weight.float(), size=size, mode="bicubic", align_corners=False).to(weight.dtype)


def adapt_state_dict(sd: dict, model: nn.Module) -> tuple[dict, list[str]]:
    """Fit position embeddings, patch kernels and relative-position tables to ``model``'s shapes.

    Returns the new state dict and the keys that were resized."""
    target = model.state_dict()
    out, resized = dict(sd), []
    for key in ("pos_embed", "decoder_pos_embed"):
        if key not in out or key not in target or out[key].shape == target[key].shape:
            continue
        pe, want = out[key], target[key]
        n_model_prefix = want.shape[1] - (model.grid_size[0] * model.grid_size[1])
        n_ckpt = pe.shape[1]
        # does the checkpoint have a cls row? (its patch rows must form a square grid)
        ckpt_prefix = 1 if _square_side(n_ckpt - 1) else 0
        side = _square_side(n_ckpt - ckpt_prefix)
        if side is None:
            raise CheckpointMismatchError(f"{key} with {n_ckpt - ckpt_prefix} patch rows is not a square grid")
        grid_ckpt = (side, side)
        prefix, patches = pe[:, :ckpt_prefix], pe[:, ckpt_prefix:]
        patches = resample_abs_pos_embed(patches, model.grid_size, grid_ckpt, num_prefix_tokens=0,
                                         antialias=True)  # as timm
        if n_model_prefix:
            prefix = prefix if ckpt_prefix else torch.zeros_like(patches[:, :1])
            patches = torch.cat([prefix[:, :n_model_prefix], patches], dim=1)
        out[key] = patches
        resized.append(f"{key} {tuple(pe.shape)}->{tuple(patches.shape)}")
    key = "patch_embed.proj.weight"
    if key in out and key in target and out[key].shape[-2:] != target[key].shape[-2:] \
            and out[key].shape[:2] == target[key].shape[:2]:
        old = tuple(out[key].shape)
        out[key] = resize_patch_embed(out[key], tuple(target[key].shape[-2:]))
        resized.append(f"{key} {old}->{tuple(out[key].shape)}")
    for k, v in list(out.items()):
        if k not in target or v.shape == target[k].shape:
            continue
        if k.endswith(("attn.rel_pos_h", "attn.rel_pos_w")) and v.shape[1] == target[k].shape[1]:
            out[k] = resize_rel_pos(v.float(), target[k].shape[0]).to(v.dtype)
            resized.append(f"{k} {tuple(v.shape)}->{tuple(out[k].shape)}")
        elif k.endswith("attn.relative_position_bias_table") and v.shape[1] == target[k].shape[1]:
            def hw_of(rows):  # rows = (2h-1)^2 + 3 for a square grid
                s = int(round((rows - 3) ** 0.5))
                return ((s + 1) // 2, (s + 1) // 2)
            out[k] = resize_beit_bias_table(v, hw_of(v.shape[0]), hw_of(target[k].shape[0]))
            resized.append(f"{k} {tuple(v.shape)}->{tuple(out[k].shape)}")
    return out, resized


# ---- loading into a model ------------------------------------------------------------------------------
def load_pretrained(model: nn.Module, src: str | os.PathLike | dict, *,
                    allow_missing: re.Pattern | str | None = NEW_DOWNSTREAM_KEYS,
                    log: bool = True) -> LoadReport:
    """Load pretrained weights of any known format into ``model`` (a ViT, an MAE, or a module holding
    the ViT at its top level), resizing what can be resized.

    - MAE decoder weights are dropped when the model has no decoder; ``norm`` is dropped when the model
      pools with ``fc_norm`` (as MAE fine-tuning does); a classifier ``head`` of another size is dropped.
    - Keys the model has and the checkpoint lacks are allowed only if they match ``allow_missing``
      (by default: head, fc_norm, relative-position tables, layer scale). Everything else that does not
      fit raises :class:`CheckpointMismatchError` listing missing, unexpected and wrong-shape keys.
    """
    source = str(src) if not isinstance(src, dict) else "state dict"
    raw = load_file(src) if not isinstance(src, dict) else src
    sd, fmt = to_mae_transfer_keys(extract_state_dict(raw, source))
    target = model.state_dict()
    allow = re.compile(allow_missing) if isinstance(allow_missing, str) else allow_missing

    dropped = []
    for k in list(sd):
        if k in target:
            continue
        # decoder without a decoder, cls token without one (ViTDet), final norm where the model has
        # none (ViTDet) or pools through fc_norm (MAE fine-tuning), a head the model does not have
        if MAE_DECODER_KEYS.match(k) or k == "cls_token" or k.startswith(("norm.", "head.", "fc_norm.")):
            dropped.append(k)
            del sd[k]
    for k in [k for k in sd if k.startswith("head.") and k in target and sd[k].shape != target[k].shape]:
        dropped.append(f"{k} (classifier of another size)")
        del sd[k]
    sd, resized = adapt_state_dict(sd, model)

    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    wrong = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
             for k in sd if k in target and sd[k].shape != target[k].shape]
    not_allowed = [k for k in missing if allow is None or not allow.search(k)]
    if not_allowed or unexpected or wrong:
        lines = [f"checkpoint {source} ({fmt} format) does not fit {type(model).__name__}:"]
        if not_allowed:
            lines.append(f"  missing keys ({len(not_allowed)}): {_short_list(not_allowed)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_short_list(unexpected)}")
        if wrong:
            lines.append(f"  wrong shapes ({len(wrong)}): {_short_list(wrong, 8)}")
        raise CheckpointMismatchError("\n".join(lines))
    model.load_state_dict(sd, strict=False)
    report = LoadReport(source, fmt, missing, dropped, resized)
    if log:
        logger.info(str(report))
    return report


# ---- saving ---------------------------------------------------------------------------------------------
def save_checkpoint(obj: dict, path: str | os.PathLike):
    """``torch.save(obj)`` through :func:`mae_transfer.common.atomic_write`: a crash at any moment
    leaves either the old file or the new one, never a torn one."""
    atomic_write(path, lambda f: torch.save(obj, f))
