"""``PlainViTBackbone``: the plain (non-hierarchical) mae_transfer ViT as an MMSegmentation backbone, as in
the MAE / BEiT ADE20K recipe; the pretraining method of its weights does not matter to it.

The encoder is :class:`mae_transfer.models.vit.VisionTransformer` itself, kept as ``self.vit`` so
checkpoints written by mmseg's Runner name it ``backbone.vit.blocks.0...``, which the core loader reads
back. Multi-scale features come from mmseg's own ``Feature2Pyramid`` neck (deconv ×4, deconv ×2,
identity, max-pool ×½), configured next to this backbone in ``configs/segmentation``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule

from mae_transfer.checkpoint import load_pretrained
from mae_transfer.models.vit import VIT_PRESETS, VisionTransformer
from mmseg.registry import MODELS

__all__ = ["PlainViTBackbone"]


# "MAEViT" is this backbone's former registry name: configs saved by earlier runs (the copy mmseg's
# Runner writes into every work dir) name it, and still build.
@MODELS.register_module(name="MAEViT")
@MODELS.register_module()
class PlainViTBackbone(BaseModule):
    """ViT encoder returning the outputs of several blocks as feature maps.

    Args:
        arch: a preset name of ``mae_transfer.models.vit.VIT_PRESETS`` (``"vit_base_patch16"``,
            ``"vit_large_patch16"``, ``"vit_mini_patch4"``, ...) or a dict of sizes (``patch_size``,
            ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``).
        img_size: the crop size the position embeddings and relative-position tables are made for (512 for
            ADE20K); checkpoints are interpolated to it at load time, other input sizes are resampled on the fly.
        in_chans: image channels.
        out_indices: 0-based blocks whose outputs are returned, in this order (B: 3, 5, 7, 11; L: 7, 11,
            15, 23 as the MAE/BEiT segmentation recipe). Blocks after the last one are kept (so full
            checkpoints load) but not run; with DDP that needs ``find_unused_parameters=True``.
        drop_path_rate: stochastic depth, linear over the blocks (0.1 in the MAE ADE20K recipe).
        rel_pos: ``"bias"``: BEiT relative position bias, zero-initialised and turned on only for
            transfer, as the MAE paper (A.4); ``None``: absolute positions only.
        init_values: layer-scale init (``None``: no layer scale). mmseg's MAE ADE20K config uses 1.0.
        class_token: keep the cls token in the sequence (MAE pretraining has one; so does mmseg's MAE).
        pos_embed: ``"learned"`` (fine-tuned from the checkpoint, as MAE transfer does), ``"sincos"`` or
            ``"none"``.
        qkv_bias: bias on the qkv projection (MAE: yes).
        pretrained: checkpoint file in any format ``mae_transfer.checkpoint`` reads (ours, the official
            MAE release, timm/DeiT, mmseg/mmpretrain ViTs, our Detectron2 / mmseg adapters); ``None``:
            random init (MAE's xavier init, sin-cos positions). Loaded in :meth:`init_weights`; keys the
            model lacks or that do not fit raise ``CheckpointMismatchError``; the keys left at their init
            (relative-position tables, layer scale) are logged.
        pad_to_patch: zero-pad inputs on the bottom/right to a multiple of the patch size (as mmseg's
            ``PatchEmbed`` 'corner' padding), so whole-image inference works at any size.
        init_cfg: mmengine init config; must be ``None`` (use ``pretrained``).
        grad_checkpointing: recompute each block's activations in the backward pass
            (``torch.utils.checkpoint``, see :class:`VisionTransformer`): less activation memory for about
            one more backbone forward per training step; same outputs and gradients (mmseg's ViT calls
            this ``with_cp``).
    """

    def __init__(self, arch: str | dict = "vit_base_patch16", img_size: int | Sequence[int] = 512,
                 in_chans: int = 3, out_indices: Sequence[int] = (3, 5, 7, 11), drop_path_rate: float = 0.1,
                 rel_pos: str | None = "bias", init_values: float | None = None, class_token: bool = True,
                 pos_embed: str = "learned", qkv_bias: bool = True, pretrained: str | None = None,
                 pad_to_patch: bool = True, init_cfg: dict | None = None, grad_checkpointing: bool = False):
        super().__init__(init_cfg=None)
        if init_cfg is not None:
            raise ValueError("PlainViTBackbone: load weights with pretrained=FILE (or tools/train_seg.py --weights), "
                             "not init_cfg, so that mismatching keys are reported")
        if isinstance(arch, str):
            if arch not in VIT_PRESETS:
                raise KeyError(f"PlainViTBackbone: unknown arch {arch!r}; known: {', '.join(VIT_PRESETS)}")
            sizes = {k: v for k, v in VIT_PRESETS[arch].items() if k != "img_size"}
        else:
            sizes = dict(arch)
        depth = sizes["depth"]
        out_indices = [int(i) for i in out_indices]
        bad = [i for i in out_indices if not -depth <= i < depth]
        if bad or not out_indices:
            raise ValueError(f"PlainViTBackbone: out_indices {out_indices} must be non-empty block indices of a "
                             f"{depth}-block ViT")
        self.out_indices = [i % depth for i in out_indices]
        self.arch = arch
        self.pretrained = pretrained
        self.pad_to_patch = pad_to_patch
        self.vit = VisionTransformer(img_size=img_size, in_chans=in_chans, class_token=class_token,
                                     pos_embed=pos_embed, global_pool="", num_classes=0,
                                     drop_path_rate=drop_path_rate, init_values=init_values,
                                     rel_pos=rel_pos, rel_pos_zero_init=True, qkv_bias=qkv_bias,
                                     final_norm=False, grad_checkpointing=grad_checkpointing, **sizes)
        self.embed_dim = self.vit.embed_dim
        self.patch_size = self.vit.patch_size

    def init_weights(self):
        """Random init happened in the constructor; here the ``pretrained`` checkpoint is loaded."""
        if self.pretrained:
            report = load_pretrained(self.vit, self.pretrained, log=False)
            print_log(f"PlainViTBackbone: {report}", logger="current")
        self._is_init = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x: (B, C, H, W) -> one (B, D, ceil(H/p), ceil(W/p)) map per ``out_indices`` entry."""
        p = self.patch_size
        pad_h, pad_w = (-x.shape[2]) % p, (-x.shape[3]) % p
        if (pad_h or pad_w) and self.pad_to_patch:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return tuple(self.vit.forward_feature_maps(x, self.out_indices))
