# Baseline: the MAE ViT-L recipe (upernet_mae_l_ade20k.py) with supervised ImageNet-1K weights.
# MAE paper Table 5: 49.9 mIoU (vs 53.6 from MAE). Weights: --weights a supervised ViT-L/16 (e.g. timm
# vit_large_patch16_224), any format mae_transfer.checkpoint reads. Only the initialisation differs.
_base_ = ['upernet_mae_l_ade20k.py']
