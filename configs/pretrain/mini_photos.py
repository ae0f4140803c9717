# The CPU comparison preset (tools/compare.py --preset demo, `make demo`): the recipe of
# mini_fashion_mnist.py on the colour "product photos" (mae_transfer.data.datasets.FashionMNISTPhotos):
# each Fashion-MNIST item alone, tinted, on the kind of background the detection / segmentation scenes
# use, so that pretraining and transfer see the same kind of pixels (the ImageNet -> COCO / ADE20K
# pattern at toy scale). MAE gets 4 epochs (about 6 min on 2 cores); docs/experiments.md has the runs
# behind these choices. The linear probe uses smaller subsets than the base file to keep `make demo`
# under 20 minutes.
_base_ = "mini_fashion_mnist.py"
data = "fashion-mnist-photos"

pretrain = dict(epochs=4)
linprobe = dict(train_subset=5000, eval_subset=2000)
