# The CPU comparison preset (tools/compare.py --preset demo, `make demo`): the recipe of
# mini_fashion_mnist.py on the colour "product photos" (mae_transfer.data.datasets.FashionMNISTPhotos):
# each Fashion-MNIST item alone, tinted, on the kind of background the detection / segmentation scenes
# use. Pretraining on these and transferring to the scenes is the ImageNet -> COCO / ADE20K pattern at
# toy scale; pretraining on grey items on black left the scene tasks no better than random init.
# MAE gets 4 epochs (about 6 min on 2 cores): 2 epochs left the segmentation transfer at
# mIoU ~10 (random init ~9), 4 epochs gave 14.7 (seed 0, upernet_mae_scenes_demo).
# The linear probe uses smaller subsets than the base file to keep `make demo` under 20 minutes.
_base_ = "mini_fashion_mnist.py"
data = "fashion-mnist-photos"

pretrain = dict(epochs=4)
linprobe = dict(train_subset=5000, eval_subset=2000)
