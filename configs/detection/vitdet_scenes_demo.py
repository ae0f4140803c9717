"""The demo size of vitdet_scenes_mini.py for the MAE / supervised / random-init comparison
(tools/compare.py): about a minute of train + eval on 2 uncontended CPU cores.

Same model and scenes, at half resolution: the 128 px scenes are resized to 64 px (a 16x16 token grid,
4x fewer tokens), which also puts the items (10-32 px) at about the scale the encoder was pretrained on
(28 px Fashion-MNIST items in 32 px images). Anchors, the ROI level rule and the global blocks'
relative-position tables are scaled to match. 600 training scenes, 100 validation scenes, 80 iterations
of batch 8 (about one epoch). AP values are small in absolute terms: compare initialisations run with
the same seed.

    python tools/train_det.py --config vitdet_scenes_demo --weights CKPT|none --output-dir DIR --seed S
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .vitdet_scenes_mini import data, dataloader, lr_multiplier, model, optimizer, train

size = 64
data.scenes = dict(num_train=600, num_val=100, image_size=128, seed=0, root=None)
model.backbone.net.img_size = size        # global blocks' relative-position tables for a 16x16 grid
model.backbone.square_pad = size
model.proposal_generator.anchor_generator.sizes = [[8], [16], [32]]
model.roi_heads.box_pooler.canonical_box_size = model.roi_heads.mask_pooler.canonical_box_size = 28
# Keep low-score detections: after a short schedule scores are low, and COCO AP ranks detections anyway.
model.roi_heads.box_predictor.test_score_thresh = 0.01
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.8, max_scale=1.25, target_height=size, target_width=size),
    L(T.FixedSizeCrop)(crop_size=(size, size), pad=False),
]
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=size, max_size=size)]
dataloader.train.total_batch_size = 8
train.max_iter = 80
train.eval_period = 0          # evaluate once, at the end
train.checkpointer = dict(period=1000, max_to_keep=1)  # only model_final.pth
train.log_period = 10
lr_multiplier.warmup_length = 0.1  # 8 iterations
