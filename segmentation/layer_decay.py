"""Layer-wise lr decay (BEiT / MAE fine-tuning) as an mmengine optimizer-wrapper constructor.

The rule is the core's (:func:`mae_transfer.optim.lr_decay_scale`): patch embedding, positions and cls
token are layer 0, block ``i`` is layer ``i + 1``, everything else of the model (neck, decode and
auxiliary heads) is layer ``depth + 1`` with lr scale 1. Weight decay is off for 1-D parameters (norms,
biases, layer scale), position embeddings, cls token and relative-position tables, as the MAE / BEiT
fine-tuning code.
"""

from __future__ import annotations

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import DefaultOptimWrapperConstructor

from mae_transfer.common import ConfigError, encoder_depth
from mae_transfer.optim import param_groups
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS

__all__ = ["ViTLayerDecayOptimizerConstructor"]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ViTLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Optimizer wrapper with per-layer lr scales for a model whose ViT sits at ``backbone.vit``.

    ``paramwise_cfg`` keys:
        layer_decay (float, required): decay per layer (0.65 for the MAE ADE20K recipe).
        depth (int, optional): encoder depth; default the ``depth`` of the module ``encoder_prefix`` names.
        encoder_prefix (str, optional): parameter-name prefix of the encoder, default ``"backbone.vit."``.
        head_lr_mult (float, optional): extra lr factor for everything outside the encoder (neck and heads),
            default 1 (the published recipes). Short schedules need it: mmcv initialises the heads' convs
            with Kaiming normal (fan-out), about 5x larger than PyTorch's default, so under Adam's
            fixed-size steps they move 5x slower relative to their size.

    Each param group gets ``lr = base_lr * scale`` (mmengine's schedulers then scale every group's own
    initial lr), ``lr_scale = scale`` and its ``weight_decay``.
    """

    def add_params(self, params: list, module: nn.Module, **kwargs):
        cfg = dict(self.paramwise_cfg)
        unknown = set(cfg) - {"layer_decay", "depth", "encoder_prefix", "head_lr_mult"}
        if "layer_decay" not in cfg or unknown:
            raise ConfigError(f"ViTLayerDecayOptimizerConstructor: paramwise_cfg needs 'layer_decay' and accepts "
                              f"only layer_decay, depth, encoder_prefix, head_lr_mult; got {sorted(cfg)}")
        if is_model_wrapper(module):
            module = module.module
        prefix = cfg.get("encoder_prefix", "backbone.vit.")
        depth = cfg.get("depth")
        if depth is None:
            try:
                depth = encoder_depth(module, prefix)
            except ConfigError as e:
                raise ConfigError(f"ViTLayerDecayOptimizerConstructor: {e}; set paramwise_cfg.encoder_prefix / "
                                  "depth") from None
        groups = param_groups(module, weight_decay=self.base_wd or 0.0, layer_decay=cfg["layer_decay"],
                              depth=depth, encoder_prefix=prefix, head_lr_scale=float(cfg.get("head_lr_mult", 1.0)))
        for g in groups:
            g["lr"] = self.base_lr * g["lr_scale"]
        summary = ", ".join(f"{len(g['params'])} params x{g['lr_scale']:.4g} wd {g['weight_decay']}"
                            for g in sorted(groups, key=lambda g: (g["lr_scale"], g["weight_decay"])))
        print_log(f"layer decay {cfg['layer_decay']} over {depth} blocks: {len(groups)} groups ({summary})",
                  logger="current")
        params.extend(groups)
