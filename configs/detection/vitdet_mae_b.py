"""ViTDet Mask R-CNN on COCO, ViT-B initialised from MAE ImageNet-1K pretraining.

The recipe of detectron2's projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py (Li et al. 2022,
"Exploring Plain Vision Transformer Backbones for Object Detection"), with mae_transfer's ViT as the
backbone. Expected (ViTDet paper, Table 5): 51.6 AP box / 45.9 AP mask.

    python tools/train_det.py --config vitdet_mae_b --weights mae_pretrain_vit_base.pth --num-gpus 8
"""

from functools import partial

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detection.backbone import ViTDetBackbone
from detection.loaders import lsj_dataloader
from detection.lr_decay import vit_lr_factor

# Mask R-CNN as ViTDet: simple feature pyramid (scales 4, 2, 1, 1/2 of stride 16 + max-pooled p6, LN,
# 256 channels, inputs padded to 1024x1024), 2-conv RPN head, 4conv1fc box head and mask head with LN.
model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
model.backbone.net = L(ViTDetBackbone)(
    img_size=1024,            # 1024^2 LSJ input -> 64x64 tokens; sizes the global blocks' rel-pos tables
    pretrain_img_size=224,    # MAE pretraining resolution: pos_embed stays 14x14 (+cls row), resampled on the fly
    patch_size=16,
    embed_dim=768,
    depth=12,
    num_heads=12,
    drop_path_rate=0.1,       # ViTDet B
    window_size=14,           # ViTDet: 14x14 windows (the pretraining grid)
    global_blocks=(2, 5, 8, 11),  # ViTDet B: 4 evenly spaced global blocks
    use_rel_pos=True,
    out_feature="last_feat",
    grad_checkpointing=False,  # True: recompute block activations in backward (less memory, ~1 more forward)
)

# Data: COCO 2017 from $DETECTRON2_DATASETS/coco; large-scale jitter 0.1-2.0 at 1024^2, batch 64.
dataloader = lsj_dataloader(image_size=1024, total_batch_size=64, min_scale=0.1, max_scale=2.0,
                            train_names="coco_2017_train", test_names="coco_2017_val", num_workers=4)
# Another COCO-format dataset without code: set these (or --train-json/--train-images/--val-json/--val-images).
data = dict(name="custom", train_json="", train_images="", val_json="", val_images="", scenes=None)

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True            # ViTDet: mixed precision
train.ddp.fp16_compression = True
train.weights = "mae_pretrain_vit_base.pth"  # the official MAE release (any mae_transfer format); --weights overrides
# 100 ep = 184375 iters * 64 images/iter / 118000 images/ep
train.max_iter = 184375
train.eval_period = 5000
train.checkpointer = dict(period=5000, max_to_keep=100)
train.seed = -1

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[163889, 177546],  # ~88.9% and ~96.3% of the schedule (ViTDet)
        num_updates=train.max_iter,
    ),
    warmup_length=250 / train.max_iter,  # 250 warmup iterations
    warmup_factor=0.001,
)

# AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.1, none on norms and pos_embed; layer decay 0.7 (B).
optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.lr = 1e-4
optimizer.weight_decay = 0.1
optimizer.params.lr_factor_func = partial(vit_lr_factor, depth=12, layer_decay=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
# fused: one kernel for all of a group's tensors (CPU and CUDA), the same AdamW update; on the CPU
# the optimizer step of the demo's detector took 2.9 ms instead of 12.7 ms (docs/experiments.md).
optimizer.fused = True
