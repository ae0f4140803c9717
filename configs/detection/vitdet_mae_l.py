"""ViTDet Mask R-CNN on COCO, ViT-L from MAE (detectron2 projects/ViTDet mask_rcnn_vitdet_l_100ep.py).
Expected (ViTDet paper): 55.5 AP box / 49.2 AP mask."""

from functools import partial

from detection.lr_decay import vit_lr_factor

from .vitdet_mae_b import data, dataloader, lr_multiplier, model, optimizer, train

train.weights = "mae_pretrain_vit_large.pth"

model.backbone.net.embed_dim = 1024
model.backbone.net.depth = 24
model.backbone.net.num_heads = 16
model.backbone.net.drop_path_rate = 0.4
model.backbone.net.global_blocks = (5, 11, 17, 23)

optimizer.params.lr_factor_func = partial(vit_lr_factor, depth=24, layer_decay=0.8)
