"""ViTDet Mask R-CNN on COCO, ViT-H from MAE (detectron2 projects/ViTDet mask_rcnn_vitdet_h_75ep.py).
Expected (ViTDet paper): 56.7 AP box / 50.2 AP mask.

ViTDet trains ViT-H with patch 16: the official MAE ViT-H/14 weights are loaded with their 14x14 patch
kernels resized to 16x16 and the 16x16 position grid resampled to 14x14 (mae_transfer.checkpoint).
As the reference, ViT-H uses the 75-epoch schedule (3/4 of B's iterations and milestones)."""

from functools import partial

from detection.lr_decay import vit_lr_factor

from .vitdet_mae_b import data, dataloader, lr_multiplier, model, optimizer, train

train.weights = "mae_pretrain_vit_huge.pth"

model.backbone.net.embed_dim = 1280
model.backbone.net.depth = 32
model.backbone.net.num_heads = 16
model.backbone.net.drop_path_rate = 0.5
model.backbone.net.global_blocks = (7, 15, 23, 31)

optimizer.params.lr_factor_func = partial(vit_lr_factor, depth=32, layer_decay=0.9)
optimizer.params.overrides = {}
optimizer.params.weight_decay_norm = None

# 100 ep -> 75 ep
train.max_iter = train.max_iter * 3 // 4  # 138281
lr_multiplier.scheduler.milestones = [m * 3 // 4 for m in lr_multiplier.scheduler.milestones]  # 122916, 133159
lr_multiplier.scheduler.num_updates = train.max_iter
# warmup_length stays the fraction set by B (as the reference): 250 / 184375 of 138281 = ~188 iterations
