"""The format table: every foreign ViT key layout the loader reads, renamed to ours (pure renames).

Formats, tried in this order (:func:`to_mae_transfer_keys` names the one it found):
- ``hf-vit-mae``: Hugging Face ``transformers``' ViT-MAE (the ``facebook/vit-mae-*`` hub weights):
  ``ViTMAEForPreTraining`` (encoder under ``vit.``, decoder under ``decoder.``) or ``ViTMAEModel`` (the
  encoder alone, no prefix). A block is ``encoder.layer.{i}`` with ``layernorm_before``, separate
  ``attention.attention.query/key/value`` (fused here into ``attn.qkv`` in that order, as timm and the MAE
  reference compute it), ``attention.output.dense``, ``layernorm_after``, ``intermediate.dense`` (fc1) and
  ``output.dense`` (fc2); the decoder's ``decoder_layers.{i}`` use the same names;
- ``mmseg-vit``: MMSegmentation's ``MAE`` / ``BEiT`` backbones and MMPretrain's ``VisionTransformer`` /
  ``MAE``: a block is ``layers.{i}`` with ``ln1``, ``attn.qkv``, ``attn.proj``, ``ln2``, ``ffn.layers.0.0``
  (fc1), ``ffn.layers.1`` (fc2) and layer scale ``gamma_1``/``gamma_2`` (mmpretrain: ``attn.gamma1.weight``
  / ``ffn.gamma2.weight``); BEiT keeps separate ``q_bias``/``v_bias`` (no key bias) instead of ``qkv.bias``;
- ``detectron2``: our Detectron2 adapter's ``backbone.net.`` / ``backbone.bottom_up.net.``;
- ``mmseg``: our MMSegmentation adapter's ``backbone.vit.`` (older checkpoints: ``backbone.``);
- ``mae``: ours / the official MAE release with its decoder; ``vit``: ours / timm / DeiT encoders.
A DDP ``module.`` prefix is stripped first. :func:`to_mmseg_keys` writes the ``mmseg-vit`` layout back.
"""

from __future__ import annotations

import re

import torch

__all__ = ["MAE_DECODER_KEYS", "HF_VIT_MAE", "to_mae_transfer_keys", "to_mmseg_keys"]

# The format name of Hugging Face ViT-MAE state dicts (see the module docstring).
HF_VIT_MAE = "hf-vit-mae"

# Tensors that exist only in the MAE pretraining model (decoder, mask tokens, the PCA target's basis);
# a downstream encoder drops them.
MAE_DECODER_KEYS = re.compile(r"^(mask_token|encoder_mask_token|pca_mean|pca_components)$|^decoder_")


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


def _from_mmseg(sd: dict) -> dict | None:
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


_HF_SIGNATURE = re.compile(r"(^|\.)(encoder\.layer\.\d+\.attention\.attention\.(query|key|value)\.|"
                           r"embeddings\.patch_embeddings\.projection\.)")
_HF_LAYER = re.compile(r"^(encoder\.layer|decoder_layers)\.(\d+)\.(.+)$")
_HF_QKV = re.compile(r"^attention\.attention\.(query|key|value)\.(weight|bias)$")
_HF_BLOCK_RENAMES = (
    ("layernorm_before.", "norm1."), ("layernorm_after.", "norm2."),
    ("attention.output.dense.", "attn.proj."), ("intermediate.dense.", "mlp.fc1."), ("output.dense.", "mlp.fc2."),
)
_HF_TOP_RENAMES = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
                   "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
                   "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
                   "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}


def _from_hf_vit_mae(sd: dict) -> dict | None:
    """``state_dict`` of ``transformers``' ``ViTMAEForPreTraining`` / ``ViTMAEModel`` -> our names;
    ``None`` if ``sd`` is not in that layout.

    The separate query / key / value projections, each ``(D, D)`` weight and ``(D,)`` bias, become one
    ``attn.qkv`` of ``(3D, D)`` and ``(3D,)``, rows in q, k, v order. A block lacking one of the three
    keeps its pieces under their own names, so the loader reports them (unexpected) and ``qkv`` (missing).
    Keys of other heads (``classifier.``, ``pooler.``) keep their names and are reported the same way."""
    if not any(_HF_SIGNATURE.search(k) for k in sd):
        return None
    prefix = "vit." if any(k.startswith(("vit.embeddings.", "vit.encoder.")) for k in sd) else ""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}  # (blocks, i, weight|bias) -> {query: ...}
    for k, v in sd.items():
        if prefix and k.startswith(prefix):
            k, blocks = k[len(prefix):], "blocks"
        elif k.startswith("decoder."):  # ViTMAEForPreTraining's decoder: our names but for its layers
            k, blocks = k[len("decoder."):], "decoder_blocks"
        elif not prefix:
            blocks = "blocks"
        else:
            out[k] = v
            continue
        m = _HF_LAYER.match(k)
        if m is None:
            out[_HF_TOP_RENAMES.get(k, k) if blocks == "blocks" else k] = v
            continue
        _, i, rest = m.groups()
        q = _HF_QKV.match(rest)
        if q:
            qkv.setdefault((blocks, i, q.group(2)), {})[q.group(1)] = v
            continue
        for old, new in _HF_BLOCK_RENAMES:
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        out[f"{blocks}.{i}.{rest}"] = v
    for (blocks, i, kind), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            out[f"{blocks}.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
        else:
            out.update({f"{blocks}.{i}.attn.{name}.{kind}": t for name, t in parts.items()})
    return out


def _inverse_block_renames() -> tuple:
    # the mmseg (not mmpretrain) spelling of each of our block names; the first rename wins
    seen, out = set(), []
    for old, new in _BLOCK_RENAMES:
        if new not in seen and not old.startswith(("attn.gamma1", "ffn.gamma2")):
            seen.add(new)
            out.append((new, old))
    return tuple(out)


def to_mmseg_keys(sd: dict) -> dict:
    """Our ViT names -> MMSegmentation's ``MAE`` backbone names (``layers.{i}.ln1``, ``ffn.layers.0.0``,
    ``gamma_1``, ``patch_embed.projection``, final norm ``ln1``); keys without a counterpart keep theirs."""
    block = _inverse_block_renames()
    top = {"patch_embed.proj.weight": "patch_embed.projection.weight", "patch_embed.proj.bias": "patch_embed.projection.bias",
           "norm.weight": "ln1.weight", "norm.bias": "ln1.bias"}
    out = {}
    for k, v in sd.items():
        m = re.match(r"^blocks\.(\d+)\.(.+)$", k)
        if m is None:
            out[top.get(k, k)] = v
            continue
        i, rest = m.groups()
        for ours, theirs in block:
            if rest.startswith(ours):
                rest = theirs + rest[len(ours):]
                break
        out[f"layers.{i}.{rest}"] = v
    return out


def _strip_prefix(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def to_mae_transfer_keys(sd: dict) -> tuple[dict, str]:
    """Rename a state dict of any known format to our names. Returns ``(state_dict, format_name)``."""
    if all(k.startswith("module.") for k in sd):  # DDP-wrapped
        sd = _strip_prefix(sd, "module.")
    out = _from_hf_vit_mae(sd)
    if out is not None:
        return out, HF_VIT_MAE
    out = _from_mmseg(sd)
    if out is not None:
        return out, "mmseg-vit"
    for prefix, fmt in (("backbone.net.", "detectron2"), ("backbone.bottom_up.net.", "detectron2"),
                        ("backbone.vit.", "mmseg"), ("backbone.", "mmseg")):
        if any(k.startswith(prefix + "blocks.") for k in sd):
            return _strip_prefix(sd, prefix), fmt
    if any(MAE_DECODER_KEYS.match(k) for k in sd):
        return dict(sd), "mae"
    if "blocks.0.attn.qkv.weight" in sd:
        return dict(sd), "vit"
    return dict(sd), "unknown"
