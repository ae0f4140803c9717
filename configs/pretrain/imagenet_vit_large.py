# MAE ViT-L/16 on ImageNet-1k: the ViT-B recipe with the differences published for L (sources as there).
_base_ = "imagenet_vit_base.py"
model = "vit_large_patch16"

finetune = dict(epochs=50, blr=1e-3, layer_decay=0.75, drop_path=0.2)   # [R FINETUNE.md ViT-Large]
partial = dict(finetune, blocks=1)
linprobe = dict(epochs=50)         # "sufficient to train 50 epochs" for L/H [R FINETUNE.md]
supervised = dict(epochs=200, drop_path=0.2)                              # [P Table 11]
