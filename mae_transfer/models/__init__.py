from .mae import MAE_PRESETS, MaskedAutoencoderViT, mae_from_preset
from .vit import VIT_PRESETS, VisionTransformer, vit_from_preset

__all__ = ["VisionTransformer", "MaskedAutoencoderViT", "VIT_PRESETS", "MAE_PRESETS", "vit_from_preset",
           "mae_from_preset"]
