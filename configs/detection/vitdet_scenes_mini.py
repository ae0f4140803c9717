"""ViTDet Mask R-CNN on the built-in Fashion-MNIST scenes, sized for 2 CPU cores (a few minutes).

The encoder is the CPU preset ``vit_mini_patch4`` (128-d, 6 blocks, 4 heads, patch 4) that
``pretrain/run.py`` MAE-pretrains on 32x32 Fashion-MNIST; on a 128 px scene it sees a 32x32 token grid.

Pyramid strides (our choice for objects of 20-64 px in 128 px scenes): the ViT's stride-4 map is used at
scales 1 and 1/2 (p2, p3: strides 4, 8) plus a max-pooled p4 (stride 16) -- the 3 finest levels of
ViTDet's pyramid. Anchors 16 / 32 / 64 px (x 3 aspect ratios) span the object sizes, and the ROI level
rule uses a canonical box of 56 px instead of COCO's 224 so boxes of ~20-30 / 30-60 / 60+ px go to
p2 / p3 / p4. Window attention in 8x8-token windows (the pretraining grid, as ViTDet's 14 = 224 / 16),
global attention in blocks 2 and 5 (every third block, as ViTDet B), decomposed relative position.
Heads are ViTDet's kind (2-conv RPN head, conv+fc box head, conv mask head, LN) slimmed for CPU: 64
channels, 2 convs instead of 4, 64 sampled ROIs per image (scenes hold 2-6 objects), at most 50
detections per image.

    python tools/train_det.py --config vitdet_scenes_mini --weights output/pretrain/<run>/checkpoint-final.pth
"""

from functools import partial

import detectron2.data.transforms as T
import torch
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

from detection.backbone import LastLevelMaxPoolOf, ViTDetBackbone
from detection.loaders import lsj_dataloader
from detection.lr_decay import vit_lr_factor
from mae_transfer.data.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD

image_size, channels = 128, 64

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
# The encoder was pretrained on Fashion-MNIST normalised with its statistics, here in 0-255 units.
model.pixel_mean = [round(255 * v, 3) for v in FASHION_MNIST_MEAN]
model.pixel_std = [round(255 * v, 3) for v in FASHION_MNIST_STD]
model.input_format = "RGB"
model.backbone.net = L(ViTDetBackbone)(
    img_size=image_size, pretrain_img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4,
    drop_path_rate=0.1, window_size=8, global_blocks=(2, 5), use_rel_pos=True, out_feature="last_feat",
)
model.backbone.out_channels = channels
model.backbone.scale_factors = (1.0, 0.5)
model.backbone.top_block = L(LastLevelMaxPoolOf)(in_feature="p3")
model.backbone.square_pad = image_size

levels = ["p2", "p3", "p4"]
scales = (1.0 / 4, 1.0 / 8, 1.0 / 16)
rpn = model.proposal_generator
rpn.in_features = levels
rpn.head.in_channels = channels
rpn.anchor_generator.sizes = [[16], [32], [64]]
rpn.anchor_generator.strides = [4, 8, 16]
rpn.pre_nms_topk = (1000, 500)
rpn.post_nms_topk = (200, 100)
heads = model.roi_heads
heads.num_classes = 10
heads.batch_size_per_image = 64  # 2-6 objects per scene: 512 samples would be almost all background
heads.box_in_features = heads.mask_in_features = levels
heads.box_pooler.scales = heads.mask_pooler.scales = scales
heads.box_pooler.canonical_box_size = heads.mask_pooler.canonical_box_size = 56
heads.box_head.input_shape = ShapeSpec(channels=channels, height=7, width=7)
heads.box_head.conv_dims = [channels] * 2
heads.box_head.fc_dims = [256]
heads.box_predictor.input_shape = ShapeSpec(channels=256)
heads.box_predictor.test_topk_per_image = 50
heads.mask_head.input_shape = ShapeSpec(channels=channels, width=14, height=14)
heads.mask_head.conv_dims = [channels] * 2

# Data: the scenes (generated on first use under $MAE_DATA_DIR, default output/data), uncompressed-RLE
# masks -> bitmask instances. Mild scale jitter (0.8-1.25): short schedules do not profit from LSJ's 0.1-2.0.
data = dict(name="scenes", train_json="", train_images="", val_json="", val_images="",
            scenes=dict(num_train=2000, num_val=300, image_size=image_size, seed=0, root=None))
dataloader = lsj_dataloader(image_size=image_size, total_batch_size=8, min_scale=0.8, max_scale=1.25,
                            train_names="scenes_train", test_names="scenes_val", num_workers=0,
                            mask_format="bitmask")

train = model_zoo.get_config("common/train.py").train
train.device = "cuda" if torch.cuda.is_available() else "cpu"
train.amp.enabled = torch.cuda.is_available()  # CPU: fp32; train.precision=bf16 | auto for CPU bf16 (detection/README.md)
train.weights = "none"   # give --weights <MAE / supervised checkpoint>
train.max_iter = 500     # 500 iters * 8 images / 2000 scenes = 2 epochs
train.eval_period = 250
train.checkpointer = dict(period=250, max_to_keep=3)
train.log_period = 20
train.seed = 0

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.01),
    warmup_length=0.05,  # 25 of 500 iterations
    warmup_factor=0.001,
)
optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.lr = 4e-4
optimizer.weight_decay = 0.1
optimizer.params.lr_factor_func = partial(vit_lr_factor, depth=6, layer_decay=0.75)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
optimizer.fused = True  # as vitdet_mae_b.py: the same update, a cheaper step
