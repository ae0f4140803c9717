# ADE20K (SceneParsing, 150 classes) in mmseg's standard layout:
#   DATA_ROOT/images/{training,validation}/*.jpg, DATA_ROOT/annotations/{training,validation}/*.png
# Pipelines as mmseg's configs/_base_/datasets/ade20k.py (the MAE / BEiT ADE20K recipe), plus
# CheckSegLabels, which names the file when a label map does not fit (size, ids, reduce_zero_label).
# Labels: 0 = "other" (ignored: reduce_zero_label=True), 1..150 = the classes.
dataset_type = 'ADE20KDataset'
data_root = 'data/ade/ADEChallengeData2016'  # or: tools/train_seg.py --data-root DIR
crop_size = (512, 512)
num_classes = 150
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='CheckSegLabels', num_classes=num_classes),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    # annotations load after Resize: the metric compares with the original-size label map
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='CheckSegLabels', num_classes=num_classes),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2,  # x 8 GPUs = 16 (the recipe's batch)
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        reduce_zero_label=True,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        reduce_zero_label=True,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
# mmseg's IoUMetric (mIoU, per-class table in the log), keeping the per-class IoU for metrics.json
val_evaluator = dict(type='PerClassIoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
