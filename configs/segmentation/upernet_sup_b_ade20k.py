# Baseline: the MAE ViT-B recipe (upernet_mae_b_ade20k.py) with supervised ImageNet-1K weights.
# MAE paper Table 5: 47.4 mIoU (vs 48.1 from MAE). Weights: --weights a supervised ViT-B/16 in any format
# mae_transfer.checkpoint reads, e.g. DeiT-B (deit_base_patch16_224-b5f2ef4d.pth) or a timm
# vit_base_patch16_224 state dict; its classifier head and final norm are dropped, pos_embed interpolated.
# Nothing else changes: the comparison is about the initialisation only.
_base_ = ['upernet_mae_b_ade20k.py']
