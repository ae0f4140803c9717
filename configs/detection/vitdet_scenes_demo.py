"""The demo size of vitdet_scenes_mini.py for the MAE / supervised / random-init comparison
(tools/compare.py): about a minute of train + eval on 2 CPU cores.

600 training scenes, 100 validation scenes, 60 iterations of batch 4 (0.4 epochs). Short fine-tuning is
where the initialisation shows most clearly (DESIGN.md, calibration); AP values are small in absolute
terms, compare them between initialisations with the same seed.

    python tools/train_det.py --config vitdet_scenes_demo --weights CKPT|none --output-dir DIR --seed S
"""

from .vitdet_scenes_mini import data, dataloader, lr_multiplier, model, optimizer, train

data.scenes = dict(num_train=600, num_val=100, image_size=128, seed=0, root=None)
dataloader.train.total_batch_size = 4
train.max_iter = 60
train.eval_period = 0          # evaluate once, at the end
train.checkpointer = dict(period=1000, max_to_keep=1)  # only model_final.pth
train.log_period = 10
lr_multiplier.warmup_length = 0.1  # 6 iterations
# Keep low-score detections: after 60 iterations scores are low, and COCO AP ranks detections anyway
# (at 0.05 a random-init detector has no detection left and its AP is undefined, reported as 0).
model.roi_heads.box_predictor.test_score_thresh = 0.01
