# Small setting that trains and evaluates on 2 CPU cores in about a minute: the UperNet recipe of
# upernet_mae_b_ade20k.py (its model and schedule bases: PlainViTBackbone + rel-pos bias + layer scale,
# Feature2Pyramid, UperNet + FCN aux head, AdamW + layer decay, warmup then poly; below, what differs)
# on the built-in scenes, with the CPU encoder vit_mini_patch4
# (128-d x 6 blocks, patch 4) that pretrain/run.py MAE-pretrains on 32x32 Fashion-MNIST.
#
# Data: mae_transfer.data.scenes, 128 px RGB scenes of tinted Fashion-MNIST items on varied backgrounds,
# ADE20K folder layout; training scenes use Fashion-MNIST train items, validation scenes test items.
# tools/train_seg.py generates them (``scenes`` below) under $MAE_DATA_DIR (default output/data) unless
# --data-root points elsewhere.
# Background convention: label 0 = background is a real, well-defined class here (unlike ADE20K's
# "other"), so 11 classes with reduce_zero_label=False; 1..10 = the Fashion-MNIST classes.
# Scale: scenes are resized to 64 px, so items (20-64 px at 128) are 10-32 px, about the 28 px the
# encoder saw in pretraining; the 16x16 token grid, x2 / x1 / x1/2 / x1/4, gives strides 2, 4, 8, 16.
_base_ = ['_base_/default_runtime.py', '_base_/models/upernet_vit.py', '_base_/schedules/schedule_160k.py']

scenes = dict(num_train=2000, num_val=300, image_size=128, seed=0)
data_root = 'output/data/scenes-128px-2000-300-seed0'  # replaced by the generated scenes' folder
classes = ('background', 'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
           'Sneaker', 'Bag', 'Ankle boot')
num_classes = 11
crop_size = (64, 64)
data_check = 'full'  # tools/train_seg.py reads every label map before training (2,300 small files)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='CheckSegLabels', num_classes=num_classes),
    dict(type='RandomResize', scale=(64, 64), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=False),  # original 128 px labels for the metric
    dict(type='CheckSegLabels', num_classes=num_classes),
    dict(type='PackSegInputs'),
]
dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=dict(classes=classes),
               img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=False)
train_dataloader = dict(
    batch_size=8,
    num_workers=0,  # 2 cores: loading 64 px scenes in the main process is cheaper than workers
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(dataset, data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(dataset, data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='PerClassIoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

norm_cfg = dict(type='BN', requires_grad=True)
# mmengine turns a config's import statements into lazy objects; __import__ reads the values now
_datasets = __import__('mae_transfer.data.datasets', fromlist=['FASHION_MNIST_MEAN'])
model = dict(
    data_preprocessor=dict(
        # the Fashion-MNIST statistics of pretraining (mae_transfer.data.datasets, in 0-255 units)
        mean=[round(255 * v, 3) for v in _datasets.FASHION_MNIST_MEAN],
        std=[round(255 * v, 3) for v in _datasets.FASHION_MNIST_STD],
        size=crop_size),
    backbone=dict(
        arch='vit_mini_patch4',
        img_size=64,
        out_indices=(1, 2, 3, 5)),  # the B recipe's blocks 4, 6, 8, 12 of 12, scaled to 6 blocks
    neck=dict(embed_dim=128, rescales=[2, 1, 0.5, 0.25], norm_cfg=norm_cfg),
    decode_head=dict(in_channels=[128, 128, 128, 128], channels=64, num_classes=num_classes, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=128, channels=32, num_classes=num_classes, norm_cfg=norm_cfg),
    test_cfg=dict(_delete_=True, mode='whole'))

max_iters = 120
# fp32 on CPU; the short schedule takes a 10x larger lr than the 160k-iteration recipe
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05, fused=True),
                     constructor='ViTLayerDecayOptimizerConstructor', paramwise_cfg=dict(layer_decay=0.65))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=10),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=10, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(_delete_=True, type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
