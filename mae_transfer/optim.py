"""Optimisation helpers: weight-decay exclusions, layer-wise lr decay, warmup + cosine schedule.

Layer ids follow BEiT / the MAE reference: patch embedding, position embeddings and cls / mask tokens
are layer 0, block ``i`` is layer ``i + 1``, everything after the blocks (final norm, head, decoder,
detection/segmentation necks and heads) is layer ``depth + 1``; a layer's lr scale is
``decay ** (depth + 1 - layer_id)``.
"""

from __future__ import annotations

import math
import re

import torch.nn as nn

from .common import encoder_depth

__all__ = ["layer_id", "lr_decay_scale", "param_groups", "cosine_lr", "scaled_lr", "set_lr"]

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED = re.compile(r"(?:^|\.)(patch_embed|pos_embed|cls_token|mask_token)(?:\.|$)")
# Never decayed: norms and biases (1-D), position / cls / mask tokens, relative-position tables.
_NO_DECAY = re.compile(r"(?:^|\.)(pos_embed|decoder_pos_embed|cls_token|mask_token|encoder_mask_token|"
                       r"rel_pos_h|rel_pos_w|relative_position_bias_table)$")


def layer_id(name: str, depth: int) -> int:
    """Layer id of parameter ``name`` (any prefix, e.g. ``backbone.net.blocks.3.mlp.fc1.weight``).

    Decoder blocks (``decoder_blocks.i``) are not encoder blocks: they count as the last layer."""
    if "decoder_" not in name:
        if _EMBED.search(name):
            return 0
        m = _BLOCK.search(name)
        if m:
            return int(m.group(1)) + 1
    return depth + 1


def lr_decay_scale(name: str, depth: int, decay: float) -> float:
    return decay ** (depth + 1 - layer_id(name, depth))


def param_groups(model: nn.Module, weight_decay: float = 0.05, layer_decay: float | None = None,
                 depth: int | None = None, no_weight_decay: set[str] | frozenset = frozenset(),
                 encoder_prefix: str = "", head_lr_scale: float = 1.0) -> list[dict]:
    """AdamW parameter groups: decay / no-decay, each split by lr scale when ``layer_decay`` is set.

    Args:
        model: any module; parameters with ``requires_grad=False`` are skipped.
        weight_decay: for weights of 2+ dims that are not tokens or relative-position tables.
        layer_decay: per-layer lr decay (0.65 MAE-B fine-tune/ADE20K, 0.7/0.8/0.9 ViTDet B/L/H).
        depth: encoder depth; default the ``depth`` (or ``len(blocks)``) of the module ``encoder_prefix`` names.
        no_weight_decay: extra full parameter names to exclude from weight decay.
        encoder_prefix: only names starting with it get layer decay (e.g. ``"backbone."``); others use
            scale 1 (necks and heads, as ViTDet).
        head_lr_scale: lr scale of the parameters outside ``encoder_prefix`` (default 1).
    Each group has ``params``, ``weight_decay`` and ``lr_scale``; see :func:`set_lr`.
    """
    if layer_decay is not None and depth is None:
        depth = encoder_depth(model, encoder_prefix)
    groups: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or bool(_NO_DECAY.search(name)) or name in no_weight_decay
        wd = 0.0 if no_decay else weight_decay
        scale = 1.0 if name.startswith(encoder_prefix) else head_lr_scale
        if layer_decay is not None and name.startswith(encoder_prefix):
            scale = lr_decay_scale(name[len(encoder_prefix):], depth, layer_decay)
        g = groups.setdefault((wd, scale), {"params": [], "param_names": [], "weight_decay": wd, "lr_scale": scale})
        g["params"].append(p)
        g["param_names"].append(name)
    return list(groups.values())


def scaled_lr(base_lr: float, total_batch: int) -> float:
    """The MAE rule ``lr = base_lr * total_batch / 256``."""
    return base_lr * total_batch / 256


def cosine_lr(step: float, total_steps: float, warmup_steps: float, lr: float, min_lr: float = 0.0) -> float:
    """Linear warmup from 0, then half-cycle cosine to ``min_lr`` (steps may be fractional epochs)."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    if total_steps <= warmup_steps:
        return lr
    t = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer, lr: float):
    """Set each group's lr to ``lr * group['lr_scale']``."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
