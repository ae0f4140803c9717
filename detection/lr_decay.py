"""Layer-wise lr decay for detectron2's optimizer parameter groups, with the core's decay rule.

``get_default_optimizer_params(model, lr_factor_func=partial(vit_lr_factor, depth=12, layer_decay=0.7))``:
ViT parameters (``backbone.net.*`` / ``backbone.bottom_up.net.*``) get ``layer_decay ** (depth + 1 - layer)``
(patch / position embedding layer 0, block i layer i + 1; :func:`mae_transfer.optim.lr_decay_scale`);
everything else -- pyramid, FPN, RPN, ROI heads -- gets 1, as in ViTDet.
"""

from __future__ import annotations

from mae_transfer.optim import lr_decay_scale

__all__ = ["vit_lr_factor"]

_VIT_PREFIXES = ("backbone.net.", "backbone.bottom_up.net.")


def vit_lr_factor(name: str, depth: int = 12, layer_decay: float = 1.0) -> float:
    """lr multiplier of detector parameter ``name`` (e.g. ``backbone.net.blocks.3.mlp.fc1.weight``).

    Args: ``depth`` the ViT's number of blocks; ``layer_decay`` the decay per layer (the names of
    :func:`mae_transfer.optim.param_groups` and of the segmentation constructor's ``paramwise_cfg``)."""
    for prefix in _VIT_PREFIXES:
        if name.startswith(prefix):
            return lr_decay_scale(name[len(prefix):], depth, layer_decay)
    return 1.0
