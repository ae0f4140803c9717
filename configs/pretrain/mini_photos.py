# The CPU comparison preset (tools/compare.py --preset demo, `make demo`): the recipe of
# mini_fashion_mnist.py on the colour "product photos" (mae_transfer.data.datasets.FashionMNISTPhotos):
# each Fashion-MNIST item alone, tinted, on the kind of background the detection / segmentation scenes
# use, so that pretraining and transfer see the same kind of pixels (the ImageNet -> COCO / ADE20K
# pattern at toy scale). MAE gets 2 epochs (about 7 min on one core, beside the supervised baseline on
# the other); docs/experiments.md has the runs behind these choices. The linear probe and fine-tuning
# use subsets (5k / 8k photos, 2000 test photos) to keep `make demo` short.
_base_ = "mini_fashion_mnist.py"
data = "fashion-mnist-photos"

# MAE, the linear probe and partial fine-tuning in fp32, as the demo's numbers were measured
# (precision=auto would time the first batch and could pick bf16 on another CPU).
pretrain = dict(epochs=2, precision="fp32")
linprobe = dict(precision="fp32", train_subset=5000, eval_subset=2000)
partial = dict(precision="fp32")
# bf16 autocast for the classification steps: the same top-1, 0.72x the fp32 step time on the AMD CPUs
# without AMX the demo was tuned on, 1.07x (slower) on a Xeon with AMX (benchmarks/demo_precision.py);
# the MAE step is faster in fp32 on both (bf16: 1.13x / 1.46x).
finetune = dict(precision="bf16", train_subset=8000, eval_subset=2000)
# The supervised baseline: every photo once (lr 1e-3; 2e-3 diverges in bf16), about the MAE's 2 epochs
# in wall time (the MAE step processes ~2.5x more images per second: its encoder sees a quarter of the
# patches).
supervised = dict(precision="bf16", train_subset=0)
