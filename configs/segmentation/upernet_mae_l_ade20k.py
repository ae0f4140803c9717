# UperNet on an MAE-pretrained ViT-L, ADE20K: the ViT-B recipe with the ViT-L encoder.
# Paper result (single-scale mIoU): 53.6 with MAE ViT-L, 49.9 with supervised IN-1K (upernet_sup_l_ade20k.py).
# Schedule, optimiser (layer decay 0.65, as for B), crops and heads
# are those of upernet_mae_b_ade20k.py. Weights: --weights mae_pretrain_vit_large.pth.
_base_ = ['upernet_mae_b_ade20k.py']

model = dict(
    backbone=dict(arch='vit_large_patch16', out_indices=(7, 11, 15, 23)),  # BEiT-L / MAE-L blocks
    neck=dict(embed_dim=1024),
    decode_head=dict(in_channels=[1024, 1024, 1024, 1024], channels=1024),
    auxiliary_head=dict(in_channels=1024))
