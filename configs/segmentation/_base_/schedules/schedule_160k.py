# The MAE ADE20K schedule: AdamW lr 1e-4, weight decay 0.05, layer-wise lr decay 0.65 (MAE paper A.4),
# 1500 iterations of linear warmup then poly (power 1) decay to 0 at 160k; mixed precision (fp16, dynamic
# loss scale; --cfg-options optim_wrapper.dtype=bfloat16 for bf16).
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    # fused: one kernel per parameter group (CPU and CUDA), the same update, a cheaper step
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05, fused=True),
    constructor='ViTLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(layer_decay=0.65))
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
