"""The one mapping from MMSegmentation / MMPretrain ViT key names to ours.

mmseg's ``MAE`` and ``BEiT`` backbones and mmpretrain's ``VisionTransformer`` / ``MAE`` checkpoints
name a block ``layers.{i}`` with ``ln1``, ``attn.qkv``, ``attn.proj``, ``ln2``, ``ffn.layers.0.0``
(fc1), ``ffn.layers.1`` (fc2) and layer scale ``gamma_1``/``gamma_2`` (mmpretrain:
``ls1.gamma``/``ffn.gamma2.weight``); BEiT keeps separate ``q_bias``/``v_bias`` (no key bias) instead
of ``qkv.bias``. Registered with :func:`mae_transfer.checkpoint.register_key_converter` on import.
"""

from __future__ import annotations

import re

import torch

from mae_transfer.checkpoint import register_key_converter

__all__ = ["mmseg_vit_to_ours"]

_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_SIGNATURE = re.compile(r"(^|\.)layers\.\d+\.(ln1\.|ffn\.layers\.|gamma_1$|attn\.q_bias$)")
_BLOCK_RENAMES = (
    ("ln1.", "norm1."), ("ln2.", "norm2."),
    ("ffn.layers.0.0.", "mlp.fc1."), ("ffn.layers.1.", "mlp.fc2."),
    ("gamma_1", "ls1.gamma"), ("gamma_2", "ls2.gamma"),
    ("attn.gamma1.weight", "ls1.gamma"), ("ffn.gamma2.weight", "ls2.gamma"),  # mmpretrain layer scale
)
_TOP_RENAMES = {"patch_embed.projection.weight": "patch_embed.proj.weight",
                "patch_embed.projection.bias": "patch_embed.proj.bias",
                "ln1.weight": "norm.weight", "ln1.bias": "norm.bias",      # final norm (mmpretrain)
                "norm1.weight": "norm.weight", "norm1.bias": "norm.bias"}  # final norm (mmseg BEiT)


def mmseg_vit_to_ours(sd: dict) -> dict | None:
    """``state_dict`` in mmseg/mmpretrain ViT names (optionally under ``backbone.``, with an mmpretrain
    MAE decoder under ``neck.``) -> our names; ``None`` if ``sd`` is not in that layout.

    Buffers (``relative_position_index``) are dropped; ``q_bias``/``v_bias`` become ``qkv.bias`` with a
    zero key bias, which is exactly what BEiT's attention computes."""
    if not any(_SIGNATURE.search(k) for k in sd):
        return None
    if any(k.startswith("backbone.layers.") for k in sd):
        enc = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        # mmpretrain's MAE keeps the decoder under ``neck.``: keep its names so the loader drops it
        extra = {k[len("neck."):]: v for k, v in sd.items() if k.startswith("neck.")}
    else:
        enc, extra = sd, {}
    out: dict[str, torch.Tensor] = {}
    qv_bias: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in enc.items():
        if k.endswith("relative_position_index"):
            continue
        m = _LAYER.match(k)
        if m is None:
            out[_TOP_RENAMES.get(k, k)] = v
            continue
        i, rest = m.groups()
        if rest in ("attn.q_bias", "attn.v_bias"):
            qv_bias.setdefault(i, {})[rest[5]] = v
            continue
        for old, new in _BLOCK_RENAMES:
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        out[f"blocks.{i}.{rest}"] = v
    for i, b in qv_bias.items():
        if set(b) != {"q", "v"}:
            raise ValueError(f"mmseg checkpoint: layers.{i}.attn has only {sorted(b)}_bias, expected q and v")
        out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([b["q"], torch.zeros_like(b["q"]), b["v"]])
    out.update(extra)
    return out


register_key_converter("mmseg-vit", mmseg_vit_to_ours)
