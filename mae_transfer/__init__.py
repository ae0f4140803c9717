"""mae-transfer core: the one ViT, the MAE model, checkpoints, optimisation helpers, data, plots.

Depends on torch + timm only; never imports detectron2 or mmseg."""

from .models.mae import MAE_PRESETS, MaskedAutoencoderViT, mae_from_preset
from .models.vit import VIT_PRESETS, VisionTransformer, vit_from_preset

__version__ = "0.1.0"
__all__ = ["VisionTransformer", "MaskedAutoencoderViT", "VIT_PRESETS", "MAE_PRESETS", "vit_from_preset",
           "mae_from_preset"]
