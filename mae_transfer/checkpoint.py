"""Checkpoints: safe loading, the one place that absorbs foreign formats, atomic saving.

Files read: PyTorch checkpoints (``.pth``, ``.pt``, ``.bin``) with ``torch.load(weights_only=True)``, and
``.safetensors`` files (recognised by their name or their header) with the ``safetensors`` package, which
holds tensors and string metadata only: no pickle is involved.

Formats read (detected from the keys, see :func:`to_mae_transfer_keys`):
- ours: ``{"model": state_dict, "config": {...}, ...}`` written by :func:`save_checkpoint`, or our names in
  a ``.safetensors`` file written by :func:`save_safetensors` (``tools/convert.py --to safetensors``);
- the official MAE release (``mae_pretrain_vit_*.pth``, ``{"model": ...}``, and fine-tuned ones with
  ``fc_norm``/``head``), including full training checkpoints of the reference code (``args``);
- timm / DeiT supervised ViTs (a plain state dict or ``{"model": ...}``), e.g. timm's hub
  ``model.safetensors`` of ``vit_base_patch16_224.mae``;
- Hugging Face ``facebook/vit-mae-*`` (``ViTMAEForPreTraining`` / ``ViTMAEModel`` names), with the
  ``config.json`` beside the file checked against the model (:func:`check_hf_config`);
- checkpoints written by our Detectron2 (``backbone.net.``) and MMSegmentation (``backbone.vit.``) adapters;
- MMSegmentation / MMPretrain ViT, MAE and BEiT backbones (``layers.i.ln1``, ...).
The key renames are the table of :mod:`mae_transfer.checkpoint_keys`. Every key-mismatch report (missing,
unexpected, wrong-shape keys) is written by :func:`check_state_dict`.

Checkpoints are untrusted input: everything is read with ``torch.load(weights_only=True)`` or
``safetensors``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint_keys import HF_VIT_MAE, MAE_DECODER_KEYS, to_mae_transfer_keys
from .common import atomic_write
from .models.pos_embed import get_2d_sincos_pos_embed, resample_abs_pos_embed
from .models.vit import resize_beit_bias_table, resize_rel_pos

logger = logging.getLogger("mae_transfer")

__all__ = ["CheckpointError", "CheckpointMismatchError", "LoadReport", "MAE_DECODER_KEYS", "HF_VIT_MAE",
           "load_file", "is_safetensors", "extract_state_dict", "to_mae_transfer_keys", "adapt_in_chans",
           "adapt_state_dict", "check_state_dict", "check_hf_config", "hf_config_beside", "add_hf_sincos_tables",
           "load_pretrained", "save_checkpoint", "save_safetensors"]

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
    notes: list[str] = field(default_factory=list)         # other things done to fit, one sentence each

    def __str__(self):
        parts = [f"loaded {self.source} ({self.format} format)"]
        decoder = [k for k in self.unexpected if MAE_DECODER_KEYS.match(k)]
        dropped = [k for k in self.unexpected if k not in decoder]
        if decoder:
            dropped.insert(0, f"MAE decoder ({len(decoder)} tensors)")
        for name, keys in (("newly initialised", self.missing), ("dropped", dropped), ("resized", self.resized)):
            if keys:
                parts.append(f"{name} ({len(keys)}): {_short_list(keys)}")
        return "; ".join(parts + self.notes)


def _short_list(keys: Iterable[str], limit: int = 12) -> str:
    keys = list(keys)
    s = ", ".join(keys[:limit])
    return s + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


# ---- reading -------------------------------------------------------------------------------------
def load_file(path: str | os.PathLike, *, safe_globals: Iterable = (), map_location="cpu") -> dict:
    """``torch.load(path, weights_only=True)`` with errors that name the file; a safetensors file (see
    :func:`is_safetensors`) is read with the ``safetensors`` package instead, as ``{"model": tensors,
    "metadata": header strings}``.

    A Hugging Face sharded checkpoint is read through its index (``model.safetensors.index.json``: every
    shard its ``weight_map`` names, from the index's folder, merged).

    Args: ``path`` the file; ``safe_globals`` classes allowed besides tensors and plain containers;
    ``map_location`` as ``torch.load``'s (safetensors files go to it if it names a device, else the CPU).
    The MAE reference stores its argparse ``args`` in training checkpoints: that one plain class is
    allowed, and so are the classes of ``safe_globals`` (a framework's own plain state classes, e.g.
    mmengine's ``HistoryBuffer``); any other pickled object (code-execution payloads included) is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.name.endswith(".safetensors.index.json"):
        return _load_sharded_safetensors(path, map_location)
    if is_safetensors(path):
        return _load_safetensors(path, map_location)
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


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` is to be read as a safetensors file: its name ends in ``.safetensors``, or it starts
    as one does (an 8-byte little-endian header length that fits the file, then the JSON header's ``{``).
    Torch zips (``PK``) and pickles (``0x80``) never start that way."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8


def _load_safetensors(path: Path, map_location) -> dict:
    """A safetensors file as ``{"model": tensors, "metadata": {str: str}}``; errors name the file.

    The format holds tensors and string metadata only (no pickle), so nothing in it can run code."""
    from safetensors import safe_open  # installed with timm

    device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: corrupt, truncated or not a safetensors "
                              f"file ({type(e).__name__}{': ' + first if first else ''})") from None
    if not tensors:
        raise CheckpointError(f"checkpoint {str(path)!r} is a safetensors file holding no tensors")
    return {"model": tensors, "metadata": dict(metadata)}


def _load_sharded_safetensors(index: Path, map_location) -> dict:
    """The shards a ``*.safetensors.index.json`` names (``{"weight_map": {key: shard file}}``, shards beside
    the index), merged as ``{"model": tensors, "metadata": the index's metadata}``. Every key of the map
    must be in its shard; a missing or unreadable shard, or a malformed index, is an error naming it."""
    try:
        header = json.loads(index.read_text(encoding="utf-8"))
        weight_map = header["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError("'weight_map' is not a non-empty mapping")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot read sharded checkpoint index {str(index)!r}: expected "
                              f"{{\"weight_map\": {{key: shard file}}}} ({type(e).__name__}: {e})") from None
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        file = index.parent / str(shard)
        if not file.is_file():
            raise CheckpointError(f"sharded checkpoint {str(index)!r}: shard {str(file)!r} does not exist")
        tensors.update(_load_safetensors(file, map_location)["model"])
    missing = [k for k in weight_map if k not in tensors]
    if missing:
        raise CheckpointError(f"sharded checkpoint {str(index)!r}: {len(missing)} key(s) of its weight_map not in "
                              f"their shards: {_short_list(missing)}")
    metadata = header.get("metadata") or {}
    return {"model": tensors, "metadata": {str(k): str(v) for k, v in metadata.items()}}


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


# ---- Hugging Face ViT-MAE: config.json and the sin-cos tables ------------------------------------------
def hf_config_beside(source: str) -> tuple[Path, dict] | None:
    """The ``transformers`` config (``config.json`` with ``hidden_size``) in the folder of the file
    ``source``, as a hub snapshot has it; None if there is none. A folder's other ``config.json`` (ours,
    timm's) is not a transformers config and is ignored, and so, with a warning, is one that is not JSON."""
    path = Path(source).parent / "config.json"
    if not Path(source).is_file() or not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        logger.warning("ignoring %s beside %s: not readable JSON (%s)", path, source, e)
        return None
    if not isinstance(config, dict) or "hidden_size" not in config:
        return None
    return path, config


def check_hf_config(config: Mapping, model: nn.Module, source: str):
    """Check a ``transformers`` ViT-MAE ``config`` against ``model`` (a ViT or an MAE).

    The head count is the one size the weights' shapes do not show: a 12-head checkpoint loads into a
    16-head model of the same width without a shape error and computes other features; the config says
    so before loading. Widths and depths are compared too, for a clearer message than the key report.
    The patch size and image size are not: the loader resizes patch kernels and position tables and
    reports it. Args: ``config`` the parsed ``config.json``; ``model`` the module the weights are for;
    ``source`` the config's file, named in the error. Raises :class:`CheckpointMismatchError`."""
    def block_sizes(blocks) -> dict:
        b = blocks[0]
        return {"num_attention_heads": b.attn.num_heads, "intermediate_size": b.mlp.fc1.out_features}

    ours = {"hidden_size": getattr(model, "embed_dim", None), "num_hidden_layers": getattr(model, "depth", None),
            "hidden_act": "gelu"}  # our Mlp uses the exact (erf) GELU, transformers' "gelu"
    if len(getattr(model, "blocks", ())):
        ours.update(block_sizes(model.blocks))
    if len(getattr(model, "decoder_blocks", ())):
        dec = {"decoder_hidden_size": model.decoder_embed.out_features,
               "decoder_num_hidden_layers": len(model.decoder_blocks)}
        dec.update({f"decoder_{k}": v for k, v in block_sizes(model.decoder_blocks).items()})
        ours.update(dec)
    wrong = [f"{k} {config[k]!r} (model: {v!r})" for k, v in ours.items()
             if v is not None and k in config and config[k] != v]
    if wrong:
        raise CheckpointMismatchError(f"{source} describes another ViT than the {type(model).__name__} it is loaded "
                                      f"into: {', '.join(wrong)}")


def _fit_hf_vit_mae(sd: dict, model: nn.Module, source: str) -> list[str]:
    """Complete a renamed ``transformers`` ViT-MAE state dict ``sd`` for ``model`` in place; returns notes
    for the load report: ``config.json`` beside ``source`` is checked against the model
    (:func:`check_hf_config`) and absent sin-cos tables are added (:func:`add_hf_sincos_tables`)."""
    notes, config = [], None
    found = hf_config_beside(source)
    if found is not None:
        config = found[1]
        check_hf_config(config, model, str(found[0]))
        notes.append(f"sizes checked against {found[0]}")
    tables = [k for k in ("pos_embed", "decoder_pos_embed") if k in model.state_dict()]
    return notes + add_hf_sincos_tables(sd, config, tables)


def add_hf_sincos_tables(sd: dict, config: Mapping | None,
                         tables: Iterable[str] = ("pos_embed", "decoder_pos_embed")) -> list[str]:
    """Add the fixed sin-cos position tables of ``tables`` a ``transformers`` ViT-MAE state dict ``sd`` (in
    our names) lacks; returns one note for each table added. ``config``: the ``config.json`` beside, or None.

    ``pos_embed`` and ``decoder_pos_embed`` are frozen parameters in some ``transformers`` versions and
    non-persistent buffers, absent from the file, in others. An absent one is set to what the HF model
    computes for itself: the MAE 2-D sin-cos table with a zero cls row, ``(1, 1 + h*w, width)``, for the
    grid of ``config`` (``image_size // patch_size``; without a config transformers' default 224 px, that
    of every ``facebook/vit-mae-*`` snapshot, over the kernel's patch size). The loader then resamples it
    to the model's grid exactly as a stored table, so both kinds of file give the same model."""
    widths = {"pos_embed": "patch_embed.proj.weight", "decoder_pos_embed": "decoder_embed.weight"}
    missing = [k for k in tables if k not in sd and widths[k] in sd]
    if not missing:
        return []
    config = config or {}
    image = config.get("image_size", 224)
    patch = config.get("patch_size", sd["patch_embed.proj.weight"].shape[-1] if "patch_embed.proj.weight" in sd
                       else 16)
    image = (image, image) if isinstance(image, int) else tuple(image)
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
    grid = (int(image[0]) // int(patch[0]), int(image[1]) // int(patch[1]))
    whence = "config.json's image_size / patch_size" if "image_size" in config else "transformers' default 224 px"
    notes = []
    for key in missing:
        sd[key] = get_2d_sincos_pos_embed(sd[widths[key]].shape[0], grid, cls_token=True).unsqueeze(0)
        notes.append(f"{key} not in the checkpoint (a non-persistent buffer in some transformers versions): set to "
                     f"the fixed 2-D sin-cos table it holds, for the {grid[0]}x{grid[1]} grid of {whence}")
    return notes


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
    notes = _fit_hf_vit_mae(sd, model, source) if fmt == HF_VIT_MAE else []

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
    report = LoadReport(source, fmt, missing, dropped, resized, notes)
    if log:
        logger.info(str(report))
    return report


# ---- saving ---------------------------------------------------------------------------------------------
def save_checkpoint(obj: dict, path: str | os.PathLike):
    """``torch.save(obj)`` through :func:`mae_transfer.common.atomic_write`: a crash at any moment
    leaves either the old file or the new one, never a torn one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save_safetensors(sd: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None):
    """Write the state dict ``sd`` as a safetensors file through :func:`mae_transfer.common.atomic_write`
    (temp file, then rename). ``metadata`` goes into the header as strings (e.g. the source checkpoint).

    The format stores each tensor's bytes once, so tensors sharing storage (tied or views) are copied
    apart first; all are made contiguous and moved to the CPU."""
    from safetensors.torch import save  # installed with timm

    out, seen = {}, set()
    for k, v in sd.items():
        v = v.detach().cpu()
        ptr = v.untyped_storage().data_ptr()
        v = v.clone() if ptr in seen and v.numel() else v.contiguous()
        seen.add(ptr)
        out[k] = v
    metadata = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda f: f.write(save(out, metadata=metadata)))
