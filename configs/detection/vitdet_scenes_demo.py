"""The demo size of vitdet_scenes_mini.py for the MAE / supervised / random-init comparison
(tools/compare.py, `make demo`): about two minutes of train + eval with one thread.

Same model family, on small scenes sized so the encoder sees items at the scale it was pretrained on:
48 px scenes of 1-3 items of 18-36 px (a 12x12 token grid; items span 4-9 tokens, as the 22-32 px items
of the 32 px pretraining photos span 5-8), normalised with the photos' statistics
(``configs/pretrain/mini_photos.py``, the pretraining of the demo). Windows of 6x6 tokens (2x2 per image)
in the non-global blocks; anchors and the ROI level rule fit the item sizes (canonical box 48: boxes
under 24 px pool from p2, 24-48 px from p3). 2000 training scenes, 300 validation scenes.

What a short CPU schedule asks for (measured in docs/experiments.md):
- 768 iterations of batch 4 rather than half as many of batch 8: the same images and about the same
  time, and a higher AP, because after a short schedule the detector is limited by its number of updates;
- a box head of two fc layers (detectron2's FPN "2fc" head, no convs) and a 7x7 mask pooler (14x14 masks
  for items of at most 36 px): 0.73x the step time of the conv heads, and they learn faster;
- horizontal flips only: under 1.3 epochs nearly every scene is new, and scale jitter slowed learning.
lr 1e-3 (2.5x the mini config's), 32 sampled ROIs per image. AP values are small in absolute terms:
compare initialisations run with the same seed.

    python tools/train_det.py --config vitdet_scenes_demo --weights CKPT|none --output-dir DIR --seed S
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from mae_transfer.data.datasets import PHOTOS_MEAN, PHOTOS_STD

from .vitdet_scenes_mini import data, dataloader, lr_multiplier, model, optimizer, train

size = 48
data.scenes = dict(num_train=2000, num_val=300, image_size=size, seed=0, root=None, num_items=[1, 3],
                   item_size=[18, 36])
# the colour photos' statistics, in 0-255 units
model.pixel_mean = [round(255 * v, 3) for v in PHOTOS_MEAN]
model.pixel_std = [round(255 * v, 3) for v in PHOTOS_STD]
model.backbone.net.img_size = size        # global blocks' relative-position tables for a 12x12 grid
model.backbone.net.window_size = 6
model.backbone.square_pad = size
model.proposal_generator.anchor_generator.sizes = [[16], [24], [36]]
model.roi_heads.batch_size_per_image = 32
model.roi_heads.box_head.conv_dims = []
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.mask_pooler.output_size = 7
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=model.backbone.out_channels, height=7, width=7)
model.roi_heads.box_pooler.canonical_box_size = model.roi_heads.mask_pooler.canonical_box_size = 48
# Keep low-score detections: after a short schedule scores are low, and COCO AP ranks detections anyway.
model.roi_heads.box_predictor.test_score_thresh = 0.01
# Scenes hold 1-3 items: 20 detections per image leave AP unchanged and cut the mask head's test-time work
# (with 50, evaluating the 300 validation scenes took 27 s of a 92 s cell).
model.roi_heads.box_predictor.test_topk_per_image = 20
# The resize leaves the 48 px scenes as they are; it is there so that --img-size N (which scales it) trains
# on N px inputs as it tests on them.
dataloader.train.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=size, max_size=size),
                                         L(T.RandomFlip)(horizontal=True)]
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=size, max_size=size)]
dataloader.test.batch_size = 16  # detectron2's default of 1 image per forward made evaluation a third of the cell
dataloader.train.total_batch_size = 4
optimizer.lr = 1e-3
train.max_iter = 768
train.eval_period = 0          # evaluate once, at the end
train.checkpointer = dict(period=1000, max_to_keep=1)  # only model_final.pth
train.log_period = 20
lr_multiplier.warmup_length = 0.05  # 38 iterations
