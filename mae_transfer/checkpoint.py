"""Checkpoints: safe loading, the one place that absorbs foreign formats, atomic saving.

Formats read (detected from the keys, see :func:`to_mae_transfer_keys`):
- ours: ``{"model": state_dict, "config": {...}, ...}`` written by :func:`save_checkpoint`;
- the official MAE release (``mae_pretrain_vit_*.pth``, ``{"model": ...}``, and fine-tuned ones with
  ``fc_norm``/``head``), including full training checkpoints of the reference code (``args``);
- timm / DeiT supervised ViTs (a plain state dict or ``{"model": ...}``);
- checkpoints written by our Detectron2 (``backbone.net.``) and MMSegmentation (``backbone.vit.``) adapters;
- MMSegmentation / MMPretrain ViT, MAE and BEiT backbones (``layers.i.ln1``, ...).
The key renames are the table of :mod:`mae_transfer.checkpoint_keys`. Every key-mismatch report (missing,
unexpected, wrong-shape keys) is written by :func:`check_state_dict`.

Checkpoints are untrusted input: everything is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint_keys import MAE_DECODER_KEYS, to_mae_transfer_keys
from .common import atomic_write
from .models.pos_embed import resample_abs_pos_embed
from .models.vit import resize_beit_bias_table, resize_rel_pos

logger = logging.getLogger("mae_transfer")

__all__ = ["CheckpointError", "CheckpointMismatchError", "LoadReport", "MAE_DECODER_KEYS", "load_file",
           "extract_state_dict", "to_mae_transfer_keys", "adapt_in_chans", "adapt_state_dict", "check_state_dict", "load_pretrained",
           "save_checkpoint"]

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
def load_file(path: str | os.PathLike, *, safe_globals: Iterable = (), map_location="cpu") -> dict:
    """``torch.load(path, weights_only=True)`` with errors that name the file.

    The MAE reference stores its argparse ``args`` in training checkpoints: that one plain class is
    allowed, and so are the classes of ``safe_globals`` (a framework's own plain state classes, e.g.
    mmengine's ``HistoryBuffer``); any other pickled object (code-execution payloads included) is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace, *safe_globals]):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        text = str(e)
        unsafe = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", text)
        if unsafe:
            what = unsafe.group(1)
            raise CheckpointError(
                f"refusing to load {str(path)!r}: it contains pickled Python objects beyond tensors and "
                f"plain containers ({what}), which could run code. Re-save it as a plain state dict from a "
                f"trusted environment.") from None
        code = _pickled_code(path)
        if code:
            raise CheckpointError(
                f"refusing to load {str(path)!r}: it is a raw pickle holding Python objects ({code}), which "
                f"could run code. Re-save it as a plain state dict with torch.save from a trusted environment."
            ) from None
        first = next((ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln), "")
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: corrupt, truncated or not a PyTorch "
                              f"checkpoint ({type(e).__name__}{': ' + first if first else ''})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def _pickled_code(path: Path) -> str | None:
    """For a file torch cannot read: if it is a plain pickle (not a torch zip) that imports globals or
    calls them, the first global it names (e.g. ``posix.system``); else None. Reads the opcodes only,
    nothing is unpickled."""
    import pickletools
    import zipfile

    if zipfile.is_zipfile(path):
        return None
    strings, found = [], None
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(arg)
                elif op.name in ("GLOBAL", "INST"):
                    found = str(arg).replace(" ", ".")
                elif op.name == "STACK_GLOBAL":
                    found = ".".join(strings[-2:]) if len(strings) >= 2 else "a global"
                elif op.name in ("REDUCE", "OBJ", "NEWOBJ", "NEWOBJ_EX") and found is None:
                    found = "a call"
                if found:
                    return found
    except Exception:  # noqa: BLE001 - not a pickle at all, or truncated: not our question
        return found
    return None


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


# ---- shapes: positions, patch embedding, relative-position tables ------------------------------------
def _square_side(n: int) -> int | None:
    side = int(round(n ** 0.5))
    return side if side > 0 and side * side == n else None


def resize_patch_embed(weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of patch-embedding kernels ``(D, C, p, p)`` (ViTDet does 14 -> 16 for ViT-H)."""
    return F.interpolate(weight.float(), size=size, mode="bicubic", align_corners=False).to(weight.dtype)


def adapt_in_chans(weight: torch.Tensor, in_chans: int) -> tuple[torch.Tensor, str]:
    """An RGB patch-embedding kernel ``(D, 3, p, p)`` for ``in_chans`` input channels, by timm's
    ``adapt_input_conv`` rule: 1 channel = the sum over R, G, B (a grey image then gives the features its
    RGB copy would); N channels = R, G, B repeated to N and scaled by 3 / N (the response to a constant
    image is kept). Returns the kernel ``(D, in_chans, p, p)`` and a note saying which rule was used."""
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise CheckpointMismatchError(f"patch_embed.proj.weight {tuple(weight.shape)}: only an RGB (3-channel) "
                                      f"patch embedding can be adapted to {in_chans} input channels")
    w = weight.float()
    if in_chans == 1:
        out, rule = w.sum(dim=1, keepdim=True), "summed over RGB"
    else:
        reps = -(-in_chans // 3)
        out, rule = w.repeat(1, reps, 1, 1)[:, :in_chans] * (3.0 / in_chans), f"RGB repeated, x 3/{in_chans}"
    return out.to(weight.dtype), f"patch_embed.proj.weight {tuple(weight.shape)}->{tuple(out.shape)} ({rule})"


def adapt_state_dict(sd: dict, model: nn.Module) -> tuple[dict, list[str]]:
    """Fit position embeddings, patch kernels (input channels: :func:`adapt_in_chans`; size: bicubic) and
    relative-position tables to ``model``'s shapes.

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
    if key in out and key in target and out[key].ndim == 4 and out[key].shape[1] != target[key].shape[1]:
        out[key], note = adapt_in_chans(out[key], target[key].shape[1])
        resized.append(note)
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
def check_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module, *, source: str = "state dict",
                     fmt: str | None = None, allow_missing: re.Pattern | None = None,
                     ignore_missing: Iterable[str] = (), header: str | None = None,
                     context: str | None = None) -> list[str]:
    """Check that ``sd`` fits ``model`` key by key and shape by shape; returns the allowed missing keys.

    Args:
        sd: the state dict, already in ``model``'s names.
        model: the module it is for.
        source: the file it came from (named in the error), or ``"state dict"``.
        fmt: its format (as :func:`to_mae_transfer_keys` names it), shown beside ``source``.
        allow_missing: keys of the model the checkpoint may lack (they keep their init).
        ignore_missing: keys of the model never expected in a checkpoint (e.g. buffers set by the config).
        header: the first line of the error instead of ``checkpoint SOURCE (FMT format) does not fit MODEL``.
        context: a last line of the error saying where the weights were going.
    Raises :class:`CheckpointMismatchError` listing the missing, unexpected and wrong-shape keys.
    """
    target = model.state_dict()
    ignore = set(ignore_missing)
    missing = [k for k in target if k not in sd and k not in ignore]
    unexpected = [k for k in sd if k not in target]
    wrong = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
             for k in sd if k in target and sd[k].shape != target[k].shape]
    not_allowed = [k for k in missing if allow_missing is None or not allow_missing.search(k)]
    if not_allowed or unexpected or wrong:
        what = f"checkpoint {source}" + (f" ({fmt} format)" if fmt else "")
        lines = [(header or f"{what} does not fit {type(model).__name__}") + ":"]
        for title, keys, limit in (("missing keys", not_allowed, 12), ("unexpected keys", unexpected, 12),
                                   ("wrong shapes", wrong, 8)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): {_short_list(keys, limit)}")
        if context:
            lines.append(f"  ({context})")
        raise CheckpointMismatchError("\n".join(lines))
    return missing


def load_pretrained(model: nn.Module, src: str | os.PathLike | dict, *,
                    allow_missing: re.Pattern | str | None = NEW_DOWNSTREAM_KEYS,
                    source: str | os.PathLike | None = None, context: str | None = None,
                    log: bool = True) -> LoadReport:
    """Load pretrained weights of any known format into ``model`` (a ViT, an MAE, or a module holding
    the ViT at its top level), resizing what can be resized.

    - MAE decoder weights are dropped when the model has no decoder; ``norm`` is dropped when the model
      pools with ``fc_norm`` (as MAE fine-tuning does); a classifier ``head`` of another size is dropped.
    - Keys the model has and the checkpoint lacks are allowed only if they match ``allow_missing``
      (by default: head, fc_norm, relative-position tables, layer scale). Everything else that does not
      fit raises :class:`CheckpointMismatchError` listing missing, unexpected and wrong-shape keys.

    ``src`` is a file or a loaded checkpoint; ``source`` names it in the report and in errors (default:
    the file, or ``"state dict"``); ``context`` ends the error (e.g. which part of a larger model).
    """
    source = str(source) if source is not None else (str(src) if not isinstance(src, dict) else "state dict")
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
    missing = check_state_dict(sd, model, source=source, fmt=fmt, allow_missing=allow, context=context)
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
