"""ViTDet Mask R-CNN on COCO, ViT-B initialised from *supervised* ImageNet-1K weights: the baseline
to vitdet_mae_b.py, same recipe (ViTDet paper Table 4 compares initialisations under one recipe).

Weights: a timm / DeiT supervised ViT-B/16 (e.g. deit_base_patch16_224.pth) or our
``pretrain/run.py --mode supervised`` checkpoint; its cls token, final norm and head are dropped."""

from .vitdet_mae_b import data, dataloader, lr_multiplier, model, optimizer, train

train.weights = "deit_base_patch16_224.pth"
