# MAE ViT-H/14 on ImageNet-1k: the ViT-B recipe with the differences published for H (sources as there).
_base_ = "imagenet_vit_base.py"
model = "vit_huge_patch14"

finetune = dict(epochs=50, blr=1e-3, layer_decay=0.75, drop_path=0.3,   # [R FINETUNE.md ViT-Huge]
                batch_size=16, accum_iter=8)                             # 16 x 8 GPUs x 8 = 1024 [R: 16 x 64 GPUs]
partial = dict(finetune, blocks=1)
linprobe = dict(epochs=50)         # [R FINETUNE.md]
supervised = dict(epochs=200, drop_path=0.3)                              # [P Table 11]
