"""ViTDet Mask R-CNN on COCO, ViT-L initialised from supervised ImageNet-1K weights: the baseline to
vitdet_mae_l.py, same recipe. Weights: a timm supervised ViT-L/16 (or ours from --mode supervised)."""

from .vitdet_mae_l import data, dataloader, lr_multiplier, model, optimizer, train

train.weights = "vit_large_patch16_224_supervised.pth"
