# UperNet + FCN auxiliary head on an MAE-pretrained ViT-B, ADE20K 512x512, 160k iterations.
# The MAE paper's transfer recipe (He et al. 2022, Sec. 5 and A.4: BEiT's semantic-segmentation code,
# relative position bias turned on for transfer, initialised at zero); every number below is the one of
# mmseg's configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py unless a comment says otherwise.
# Paper result (single-scale mIoU): 48.1 with MAE ViT-B, 47.4 with supervised IN-1K (upernet_sup_b_ade20k.py).
#
# Weights: tools/train_seg.py --weights mae_pretrain_vit_base.pth (the official release; any format that
# mae_transfer.checkpoint reads). No path here: a config names no file of one machine.
_base_ = ['_base_/default_runtime.py', '_base_/ade20k.py']

crop_size = (512, 512)
num_classes = 150
norm_cfg = dict(type='SyncBN', requires_grad=True)  # BN when not distributed (mmengine reverts it)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],  # ImageNet statistics, as MAE pretraining
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='MAEViT',
        arch='vit_base_patch16',
        img_size=512,                 # pos_embed interpolated 14x14 -> 32x32 at load time
        out_indices=(3, 5, 7, 11),    # 4 evenly spaced blocks (MAE paper A.4 / BEiT)
        drop_path_rate=0.1,
        rel_pos='bias',               # BEiT relative position bias, zero init (MAE paper A.4)
        init_values=1.0,              # layer scale at 1.0, as mmseg's MAE ADE20K config
        pos_embed='learned',
        pretrained=None),             # set by tools/train_seg.py --weights
    # x4, x2, x1, x1/2 of the 1/16 token grid -> strides 4, 8, 16, 32
    neck=dict(type='Feature2Pyramid', embed_dim=768, rescales=[4, 2, 1, 0.5], norm_cfg=norm_cfg),
    decode_head=dict(
        type='UPerHead',
        in_channels=[768, 768, 768, 768],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=768,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=768,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    # sliding-window test, 512 crops with stride 341; tools/train_seg.py --test-mode whole switches it off
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

# AdamW lr 1e-4, weight decay 0.05, layer-wise lr decay 0.65 (MAE paper A.4); mixed precision (fp16,
# dynamic loss scale; --cfg-options optim_wrapper.dtype=bfloat16 for bf16)
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='ViTLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(layer_decay=0.65))
# 1500 iterations of linear warmup, then poly (power 1) decay to 0 at 160k
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
# 160k iterations x batch 16 (8 GPUs x 2 images, _base_/ade20k.py) = 2.56M crops = 127 epochs of 20,210 images
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
# on another number of GPUs: --cfg-options auto_scale_lr.enable=True scales lr linearly from batch 16
auto_scale_lr = dict(enable=False, base_batch_size=16)
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=16000, max_keep_ckpts=3, save_best='mIoU'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
