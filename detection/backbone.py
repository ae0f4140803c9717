"""mae_transfer's ViT as Detectron2 backbones.

- :class:`ViTDetBackbone`: the plain, single-scale ViT of ViTDet (Li et al. 2022). It *is* our
  :class:`~mae_transfer.models.vit.VisionTransformer` (a subclass that also implements detectron2's
  ``Backbone`` interface), so inside ``SimpleFeaturePyramid`` its parameters are ``backbone.net.*`` with
  exactly the names of a pretrained ViT (``backbone.net.blocks.0.attn.qkv.weight``, ...).
  Put it under detectron2's own ``SimpleFeaturePyramid`` (scales 4, 2, 1, 1/2 + max-pooled p6).
- :class:`MultiLevelViT`: the MAE paper's multi-level adaptation (following Li et al. 2021,
  "Benchmarking Detection Transfer Learning with Vision Transformers"): the outputs of 4 evenly spaced
  blocks are resampled to strides 4, 8, 16, 32 (two deconvs / one deconv / identity / max-pool) and fed to
  detectron2's standard ``FPN`` (ViT parameters at ``backbone.bottom_up.net.*``).

Both are usable from LazyConfigs (``L(ViTDetBackbone)(...)``) and from detectron2's yacs configs through
``BACKBONE_REGISTRY`` (``MODEL.BACKBONE.NAME = "build_vitdet_backbone"`` / ``"build_vit_fpn_backbone"``
after :func:`add_vit_config`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, SimpleFeaturePyramid
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from mae_transfer.models.vit import VisionTransformer

__all__ = ["ViTDetBackbone", "MultiLevelViT", "LastLevelMaxPoolOf", "evenly_spaced_blocks", "add_vit_config",
           "build_vitdet_backbone", "build_vit_fpn_backbone"]


def evenly_spaced_blocks(depth: int, n: int = 4) -> list[int]:
    """0-based indices of the last block of each of ``n`` equal subsets: 12 -> [2, 5, 8, 11]."""
    if depth % n:
        raise ValueError(f"depth {depth} does not split into {n} equal subsets of blocks")
    return [depth // n * (i + 1) - 1 for i in range(n)]


class ViTDetBackbone(VisionTransformer, Backbone):
    """ViTDet's plain ViT: ``(B, 3, H, W) -> {out_feature: (B, D, H/p, W/p)}``, output of the last block.

    No cls token in the sequence, but ``pos_embed`` keeps the pretraining layout ``(1, 1 + h0*w0, D)``
    (the cls row is ignored, the grid is resampled bicubically to the input on the fly), window attention
    in all blocks but ``global_blocks``, decomposed relative position (zero-initialised, so a checkpoint
    without it starts from the pretrained function), stochastic depth, no final norm.

    Args:
        img_size: detection input size; sizes the relative-position tables of the global blocks
            (``2 * img_size / patch_size - 1`` rows). Other input sizes still work (tables resized).
        pretrain_img_size: the size ``pos_embed`` is made for (the pretraining resolution, 224 for the
            MAE release), so pretrained position embeddings load without resampling.
        patch_size: patch size (16 for ViTDet; ViT-H/14 weights are resized to 16 at load).
        in_chans: input channels.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer sizes.
        drop_path_rate: stochastic depth, linear over depth (0.1 / 0.4 / 0.5 for B / L / H).
        window_size: window attention size in tokens (14 in ViTDet); 0 = all blocks global.
        global_blocks: 0-based indices of the global-attention blocks (B: 2, 5, 8, 11).
        use_rel_pos: add the decomposed relative position to attention (ViTDet: True).
        out_feature: name of the output feature map.
        grad_checkpointing: recompute each block's activations in the backward pass
            (``torch.utils.checkpoint``, see :class:`VisionTransformer`) for less activation memory at
            about one more backbone forward per step; same outputs and gradients. detectron2's ViT calls
            this ``use_act_checkpoint``.
    """

    def __init__(self, img_size: int = 1024, pretrain_img_size: int = 224, patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 window_size: int = 14, global_blocks: Sequence[int] = (2, 5, 8, 11), use_rel_pos: bool = True,
                 out_feature: str = "last_feat", grad_checkpointing: bool = False):
        bad = [i for i in global_blocks if not 0 <= i < depth]
        if bad:
            raise ValueError(f"ViTDetBackbone: global_blocks {bad} outside 0..{depth - 1}")
        if img_size % patch_size:
            raise ValueError(f"ViTDetBackbone: img_size {img_size} is not a multiple of patch_size {patch_size}")
        super().__init__(img_size=pretrain_img_size, patch_size=patch_size, in_chans=in_chans,
                         embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         qkv_bias=qkv_bias, class_token=False, pos_embed="learned", pos_embed_cls=True,
                         global_pool="", num_classes=0, drop_path_rate=drop_path_rate, window_size=window_size,
                         global_blocks=tuple(global_blocks), rel_pos="decomposed" if use_rel_pos else None,
                         rel_pos_zero_init=True, rel_pos_size=img_size // patch_size, final_norm=False,
                         grad_checkpointing=grad_checkpointing)
        self.out_feature = out_feature
        self._out_features = [out_feature]
        self._out_feature_channels = {out_feature: embed_dim}
        self._out_feature_strides = {out_feature: patch_size}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, C, H, W), H and W multiples of the patch size -> {out_feature: (B, D, H/p, W/p)}."""
        return {self.out_feature: self.forward_feature_maps(x, [-1])[0]}


class MultiLevelViT(Backbone):
    """The MAE paper's multi-level ViT for FPN: ``(B, 3, H, W) -> {"res2".."res5"}`` at strides 4..32.

    The outputs of ``out_indices`` (4 evenly spaced blocks) are brought from stride p=16 to strides
    4 / 8 / 16 / 32 by two 2x2 stride-2 transposed convs with norm + GELU between them, one transposed
    conv, identity, and 2x2 max-pooling (Li et al. 2021, as used by the MAE paper, Appendix A.3).

    Args:
        net: the ViT (a :class:`ViTDetBackbone`, so window / global attention and relative position are as
            ViTDet; its ``global_blocks`` are usually ``out_indices``). Stored as ``self.net`` so the ViT's
            parameters are ``backbone.bottom_up.net.*`` under detectron2's ``FPN``.
        out_indices: 0-based block indices whose outputs feed strides 4, 8, 16, 32 (default: evenly
            spaced, B: 2, 5, 8, 11).
        norm: detectron2 norm name between the two stride-4 deconvs ("LN", "BN", "SyncBN", "GN", "").
    """

    def __init__(self, net: VisionTransformer, out_indices: Sequence[int] | None = None, norm: str = "LN"):
        super().__init__()
        if net.patch_size != 16:
            raise ValueError(f"MultiLevelViT: needs a patch-16 ViT (stride 16), got patch {net.patch_size}")
        self.net = net
        self.out_indices = list(out_indices) if out_indices is not None else evenly_spaced_blocks(net.depth)
        if len(self.out_indices) != 4:
            raise ValueError(f"MultiLevelViT: needs 4 out_indices, got {self.out_indices}")
        D = net.embed_dim
        self.fpn1 = nn.Sequential(nn.ConvTranspose2d(D, D, 2, 2), get_norm(norm, D) or nn.Identity(), nn.GELU(),
                                  nn.ConvTranspose2d(D, D, 2, 2))
        self.fpn2 = nn.ConvTranspose2d(D, D, 2, 2)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(2, 2)
        self._out_features = ["res2", "res3", "res4", "res5"]
        self._out_feature_channels = {k: D for k in self._out_features}
        self._out_feature_strides = {k: 2 ** (i + 2) for i, k in enumerate(self._out_features)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, C, H, W), H and W multiples of 16 -> res2..res5 of shape (B, D, H/s, W/s), s = 4..32."""
        maps = self.net.forward_feature_maps(x, self.out_indices)
        ops = (self.fpn1, self.fpn2, self.fpn3, self.fpn4)
        return {k: op(m) for k, op, m in zip(self._out_features, ops, maps)}


class LastLevelMaxPoolOf(LastLevelMaxPool):
    """detectron2's ``LastLevelMaxPool`` (p6 = stride-2 subsampling of p5) on another input level, e.g.
    ``"p3"`` when the pyramid ends at stride 8 (the small scene config: p4 = pool(p3))."""

    def __init__(self, in_feature: str = "p5"):
        super().__init__()
        self.in_feature = in_feature


# ---- detectron2 registry (yacs configs) ---------------------------------------------------------------
def add_vit_config(cfg: CfgNode):
    """Add ``MODEL.VIT`` (ViT sizes, ViTDet attention layout, pyramid) to a yacs config."""
    cfg.MODEL.VIT = CfgNode()
    v = cfg.MODEL.VIT
    v.IMG_SIZE, v.PRETRAIN_IMG_SIZE, v.PATCH_SIZE = 1024, 224, 16
    v.EMBED_DIM, v.DEPTH, v.NUM_HEADS, v.MLP_RATIO = 768, 12, 12, 4.0
    v.DROP_PATH_RATE, v.WINDOW_SIZE, v.GLOBAL_BLOCKS, v.USE_REL_POS = 0.1, 14, [2, 5, 8, 11], True
    v.SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]  # simple feature pyramid
    v.OUT_INDICES = []                      # multi-level FPN; empty = evenly spaced
    v.NORM = "LN"
    v.SQUARE_PAD = 1024
    v.GRAD_CHECKPOINTING = False            # per-block activation checkpointing (memory for compute)


def _vit_from_cfg(cfg: CfgNode, input_shape: ShapeSpec) -> ViTDetBackbone:
    v = cfg.MODEL.VIT
    return ViTDetBackbone(img_size=v.IMG_SIZE, pretrain_img_size=v.PRETRAIN_IMG_SIZE, patch_size=v.PATCH_SIZE,
                          in_chans=input_shape.channels, embed_dim=v.EMBED_DIM, depth=v.DEPTH,
                          num_heads=v.NUM_HEADS, mlp_ratio=v.MLP_RATIO, drop_path_rate=v.DROP_PATH_RATE,
                          window_size=v.WINDOW_SIZE, global_blocks=v.GLOBAL_BLOCKS, use_rel_pos=v.USE_REL_POS,
                          grad_checkpointing=v.GRAD_CHECKPOINTING)


@BACKBONE_REGISTRY.register()
def build_vitdet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """ViTDet: our ViT + detectron2's SimpleFeaturePyramid (``MODEL.FPN.OUT_CHANNELS``, p6 by max-pool)."""
    return SimpleFeaturePyramid(net=_vit_from_cfg(cfg, input_shape), in_feature="last_feat",
                                out_channels=cfg.MODEL.FPN.OUT_CHANNELS, scale_factors=tuple(cfg.MODEL.VIT.SCALE_FACTORS),
                                top_block=LastLevelMaxPool(), norm=cfg.MODEL.VIT.NORM,
                                square_pad=cfg.MODEL.VIT.SQUARE_PAD)


@BACKBONE_REGISTRY.register()
def build_vit_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """The MAE paper's multi-level ViT + detectron2's FPN (``MODEL.FPN.*``, p6 by max-pool)."""
    v = cfg.MODEL.VIT
    bottom_up = MultiLevelViT(_vit_from_cfg(cfg, input_shape), out_indices=v.OUT_INDICES or None, norm=v.NORM)
    return FPN(bottom_up=bottom_up, in_features=["res2", "res3", "res4", "res5"],
               out_channels=cfg.MODEL.FPN.OUT_CHANNELS, norm=cfg.MODEL.FPN.NORM, top_block=LastLevelMaxPool(),
               fuse_type=cfg.MODEL.FPN.FUSE_TYPE, square_pad=v.SQUARE_PAD)
