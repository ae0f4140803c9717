"""Test helper: our ViT / MAE state dicts under the names Hugging Face ``transformers`` stores
``facebook/vit-mae-*`` with (``ViTMAEForPreTraining``, ``ViTMAEModel``), written out here key by key as
an inverse independent of the loader's table, and hub-like snapshot folders (``model.safetensors`` and
``config.json``) made from them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file


def _count(sd: dict, blocks: str) -> int:
    return len({m.group(1) for k in sd if (m := re.match(rf"^{blocks}\.(\d+)\.", k))})


def hf_layer(sd: dict, ours: str, theirs: str) -> dict:
    """One of our blocks (prefix ``ours``, e.g. ``blocks.0``) under transformers' ``ViTMAELayer`` names
    (prefix ``theirs``, e.g. ``vit.encoder.layer.0``): the fused ``qkv`` split into query, key, value."""
    q, k, v = sd[f"{ours}.attn.qkv.weight"].chunk(3)
    qb, kb, vb = sd[f"{ours}.attn.qkv.bias"].chunk(3)
    out = {f"{theirs}.attention.attention.query.weight": q, f"{theirs}.attention.attention.query.bias": qb,
           f"{theirs}.attention.attention.key.weight": k, f"{theirs}.attention.attention.key.bias": kb,
           f"{theirs}.attention.attention.value.weight": v, f"{theirs}.attention.attention.value.bias": vb}
    for hf, mine in (("attention.output.dense", "attn.proj"), ("intermediate.dense", "mlp.fc1"),
                     ("output.dense", "mlp.fc2"), ("layernorm_before", "norm1"), ("layernorm_after", "norm2")):
        for p in ("weight", "bias"):
            out[f"{theirs}.{hf}.{p}"] = sd[f"{ours}.{mine}.{p}"]
    return out


def to_hf(sd: dict, pretraining: bool, position_tables: bool = True) -> dict:
    """Our MAE (or ViT) state dict in ``ViTMAEForPreTraining`` names (``pretraining``: encoder under
    ``vit.``, decoder under ``decoder.``) or ``ViTMAEModel`` names (the encoder, no prefix);
    ``position_tables=False`` leaves the sin-cos tables out, as the transformers versions that hold them as
    non-persistent buffers do. Contiguous tensors, ready for ``save_file``."""
    pre = "vit." if pretraining else ""
    out = {f"{pre}embeddings.cls_token": sd["cls_token"],
           f"{pre}embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           f"{pre}embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
           f"{pre}layernorm.weight": sd["norm.weight"], f"{pre}layernorm.bias": sd["norm.bias"]}
    if position_tables:
        out[f"{pre}embeddings.position_embeddings"] = sd["pos_embed"]
    for i in range(_count(sd, "blocks")):
        out.update(hf_layer(sd, f"blocks.{i}", f"{pre}encoder.layer.{i}"))
    if pretraining:
        for k in ("decoder_embed.weight", "decoder_embed.bias", "mask_token", "decoder_norm.weight",
                  "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"):
            out[f"decoder.{k}"] = sd[k]
        if position_tables:
            out["decoder.decoder_pos_embed"] = sd["decoder_pos_embed"]
        for i in range(_count(sd, "decoder_blocks")):
            out.update(hf_layer(sd, f"decoder_blocks.{i}", f"decoder.decoder_layers.{i}"))
    return {k: v.contiguous() for k, v in out.items()}


def hf_snapshot(folder: Path, vit: torch.nn.Module, **config_changes) -> Path:
    """``folder/model.safetensors`` (``ViTMAEModel`` names) holding ``vit``'s encoder, and the
    ``config.json`` transformers writes beside it, with ``config_changes`` applied; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(to_hf(vit.state_dict(), pretraining=False), str(folder / "model.safetensors"))
    config = {"model_type": "vit_mae", "architectures": ["ViTMAEModel"], "hidden_size": vit.embed_dim,
              "num_hidden_layers": vit.depth, "num_attention_heads": vit.num_heads,
              "intermediate_size": vit.blocks[0].mlp.fc1.out_features, "hidden_act": "gelu",
              "image_size": vit.img_size[0], "patch_size": vit.patch_size, "num_channels": 3, "qkv_bias": True,
              "layer_norm_eps": 1e-12, **config_changes}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder / "model.safetensors"
