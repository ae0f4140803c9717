# The small CPU default (what `python pretrain/run.py` runs with no --config): vit_mini_patch4
# (128-d x 6 blocks, patch 4) on Fashion-MNIST at 32x32, sized for minutes on 2 CPU cores.
# Recipe shapes follow the MAE paper; sizes (epochs, subsets) fit the throughput of 2 CPU cores
# (~500 img/s pretraining, ~470 img/s feature extraction, ~210 img/s fine-tuning).
# blr 1.5e-3 at batch 256: a few epochs need 10x the paper's blr 1.5e-4, which is for 800+ epochs.
# Measured results: docs/experiments.md.
model = "vit_mini_patch4"
img_size = 32
batch_size = 256
num_workers = 0

pretrain = dict(
    epochs=2, warmup_epochs=0.25, blr=1.5e-3, weight_decay=0.05, betas=(0.9, 0.95),
    mask_ratio=0.75, norm_pix_loss=True, crop_scale=(0.2, 1.0),
)
linprobe = dict(
    epochs=10, warmup_epochs=1, optimizer="adamw", blr=1e-3, weight_decay=0.0, augment=False,
    train_subset=10000, eval_subset=5000,
)
# Fine-tuning and the supervised baseline see each image about once in these budgets, so the recipe is
# the one for under an epoch: batch 64 (many small steps), lr 1e-3 (blr 4e-3 at batch 64), 5% warmup, and
# no augmentation, drop path or label smoothing, which regularise long schedules and only slow a short
# one down (measured on the photos: docs/experiments.md, 2026-12-02).
_short = dict(epochs=1, batch_size=64, warmup_epochs=0.05, blr=4e-3, weight_decay=0.05, drop_path=0.0,
              augment="none", smoothing=0.0)
finetune = dict(_short, layer_decay=0.75, train_subset=10000, eval_subset=5000)
partial = dict(_short, layer_decay=0.75, blocks=2, train_subset=10000, eval_subset=5000)
supervised = dict(_short, train_subset=20000, eval_subset=5000)
