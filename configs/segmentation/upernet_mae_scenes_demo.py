# The demo size of upernet_mae_mini_scenes.py for the MAE / supervised / random-init comparison
# (tools/compare.py, `make demo`): about a minute of train + eval with one thread.
#
# Same model (PlainViTBackbone vit_mini_patch4 + rel-pos bias + layer scale, Feature2Pyramid, UperNet + FCN aux head,
# AdamW + layer decay, warmup then poly), on the demo scenes that vitdet_scenes_demo.py uses: 48 px,
# 1-3 items of 18-36 px (a 12x12 token grid; items span 4-9 tokens, as in the 32 px pretraining photos
# of configs/pretrain/mini_photos.py, whose statistics normalise the input). Trained and
# evaluated on whole 48 px scenes; 300 iterations of batch 8 in bf16 autocast, heads at 10x lr,
# background weighted 1/4. Horizontal flips are the only augmentation: 300 iterations of 8 are 1.2 epochs,
# so nearly every scene is new, and the scale jitter / crops of the mini config slowed learning
# (docs/experiments.md); for the same reason the encoder's layer decay is a mild 0.9.
_base_ = ['upernet_mae_mini_scenes.py']

scenes = dict(num_train=2000, num_val=300, image_size=48, seed=0, num_items=(1, 3), item_size=(18, 36))
data_root = 'output/data/scenes-48px-2000-300-seed0-items1-3-size18-36'  # replaced by the generated folder
crop_size = (48, 48)
data_check = 'pairs'

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='CheckSegLabels', num_classes={{_base_.num_classes}}),
    # leaves the 48 px scenes as they are; there so that --img-size N (which scales it) trains at N px
    dict(type='Resize', scale=(48, 48), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='CheckSegLabels', num_classes={{_base_.num_classes}}),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

_class_weight = [0.25] + [1.0] * 10
_datasets = __import__('mae_transfer.data.datasets', fromlist=['PHOTOS_MEAN'])  # read now, not lazily
model = dict(
    # the colour photos' statistics (mae_transfer.data.datasets, in 0-255 units)
    data_preprocessor=dict(mean=[round(255 * v, 3) for v in _datasets.PHOTOS_MEAN],
                           std=[round(255 * v, 3) for v in _datasets.PHOTOS_STD], size=crop_size),
    backbone=dict(img_size=48),
    # Background is 75% of the pixels: weighted 1/4 so that objects and background count alike in the loss
    # (unweighted, every init still predicts background everywhere after this short schedule).
    decode_head=dict(loss_decode=dict(class_weight=_class_weight)),
    auxiliary_head=dict(loss_decode=dict(class_weight=_class_weight)))

max_iters = 300
# Heads at 10x the encoder's top lr: mmcv's Kaiming init of their convs otherwise leaves them near
# "background everywhere" after a short schedule whatever the encoder (see ViTLayerDecayOptimizerConstructor).
# bf16 autocast: a training step takes 0.59x the fp32 time on the CPUs this demo is sized for
# (benchmarks/demo_precision.py), and the mIoU stays within seed noise.
optim_wrapper = dict(type='AutocastOptimWrapper', dtype='bfloat16',
                     paramwise_cfg=dict(layer_decay=0.9, head_lr_mult=10.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=10),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=10, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
