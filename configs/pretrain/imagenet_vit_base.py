# MAE ViT-B/16 on ImageNet-1k, every mode as published. Sources:
#   [P] He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (Sec. 4, Appendix A.1-A.3, Tables 8-11)
#   [R] facebookresearch/mae PRETRAIN.md / FINETUNE.md and main_*.py defaults
# Effective batch = batch_size x GPUs x accum_iter; lr = blr x effective batch / 256 [P A.1].
# The accum_iter values below assume ONE node of 8 GPUs; on more GPUs divide accum_iter accordingly.
#   python pretrain/run.py --config configs/pretrain/imagenet_vit_base.py --data /path/to/imagenet   # with train/ and val/
#   torchrun --nproc_per_node 8 pretrain/run.py --config configs/pretrain/imagenet_vit_base.py --data /imagenet
model = "vit_base_patch16"
img_size = 224
eval_crop_pct = 224 / 256          # Resize(256) + CenterCrop(224) for evaluation [R main_finetune / main_linprobe]
num_workers = 10                   # [R] --num_workers 10
mean = (0.485, 0.456, 0.406)       # ImageNet statistics [R]
std = (0.229, 0.224, 0.225)

pretrain = dict(
    epochs=800,                    # [P Table 1/4]: 800 for ablations, 1600 for the released models (use epochs=1600)
    warmup_epochs=40.0,            # [P A.1]
    batch_size=64, accum_iter=8,   # 64 x 8 GPUs x 8 = 4096 [P A.1, R PRETRAIN.md: 64 x 64 GPUs]
    optimizer="adamw", betas=(0.9, 0.95), weight_decay=0.05,   # [P A.1]
    blr=1.5e-4, min_lr=0.0,        # [P A.1], cosine decay
    mask_ratio=0.75, norm_pix_loss=True,                      # [P Sec. 4, Table 1c; R --norm_pix_loss]
    crop_scale=(0.2, 1.0), hflip=True,                        # RandomResizedCrop(224, scale 0.2-1) + flip [R main_pretrain]
    decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,   # [P Table 1a/b]
)
finetune = dict(
    epochs=100, warmup_epochs=5.0,                            # [R FINETUNE.md, main_finetune default warmup 5]
    batch_size=32, accum_iter=4,   # 32 x 8 GPUs x 4 = 1024 [R FINETUNE.md]
    optimizer="adamw", betas=(0.9, 0.999), weight_decay=0.05, # [P Table 9; R main_finetune AdamW default betas]
    blr=5e-4, min_lr=1e-6, layer_decay=0.65,                  # [R FINETUNE.md, for the norm-pix checkpoints; P Table 9 lists 1e-3]
    drop_path=0.1, mixup=0.8, cutmix=1.0, smoothing=0.1,      # [P Table 9]
    auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25,         # RandAug(9, 0.5), RandErase 0.25 [P Table 9, R]
    crop_scale=(0.08, 1.0), global_pool="avg",                # timm default crop; global pooling [R]
)
partial = dict(finetune, blocks=1)  # Fig. 9: the fine-tuning recipe, only the last K blocks train [P Sec. 5]
linprobe = dict(
    epochs=90, warmup_epochs=10.0,                            # [P Table 10]
    batch_size=512, accum_iter=4,  # 512 x 8 GPUs x 4 = 16384 [P Table 10, R FINETUNE.md]
    optimizer="lars", momentum=0.9, blr=0.1, weight_decay=0.0, min_lr=0.0,   # [P Table 10]
    crop_scale=(0.08, 1.0), hflip=True, augment=True,         # RandomResizedCrop + flip [P Table 10]
    linprobe_pool="token",                                    # cls token after the final norm [R --cls_token]
)
supervised = dict(
    epochs=300, warmup_epochs=20.0,                           # [P Table 11] (200 for L/H)
    batch_size=64, accum_iter=8,   # 64 x 8 x 8 = 4096 [P Table 11]
    optimizer="adamw", betas=(0.9, 0.95), weight_decay=0.3, blr=1e-4,      # [P Table 11]
    drop_path=0.1, mixup=0.8, cutmix=1.0, smoothing=0.1,      # [P Table 11] (drop path 0.2 L, 0.3 H)
    auto_augment="rand-m9-mstd0.5-inc1", crop_scale=(0.08, 1.0), global_pool="avg",
    # [P Table 11] also uses an EMA of the weights (0.9999); this engine does not keep one.
)
sweep = dict(ratios=(0.4, 0.5, 0.6, 0.75, 0.8, 0.9))          # [P Fig. 5] x-axis
