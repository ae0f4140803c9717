"""Mask R-CNN with the MAE paper's multi-level ViT-B + FPN on COCO (MAE paper, Sec. 5 and Appendix A.3;
following Li et al. 2021, "Benchmarking Detection Transfer Learning with Vision Transformers").
Expected (MAE paper Table 4): 50.3 AP box / 44.9 AP mask.

The ViT's 12 blocks are split into 4 subsets; the last block of each (2, 5, 8, 11) feeds strides 4 / 8 /
16 / 32 through two deconvs / one deconv / identity / max-pool, then a standard FPN (+ max-pooled p6).
Those 4 blocks use global attention, the others 14x14 windows, with relative position (as Li et al.).

The MAE paper searched lr, weight decay, drop path and epochs per entry without listing the values.
We use the ViTDet recipe (LSJ 1024, batch 64, 100 epochs, AdamW 1e-4, wd 0.1, drop path 0.1, layer
decay 0.7), its successor by the same authors; check Li et al. 2021 before reproducing 50.3 exactly."""

from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from detection.backbone import MultiLevelViT, ViTDetBackbone

from .vitdet_mae_b import data, dataloader, lr_multiplier, model, optimizer, train

model.backbone = L(FPN)(
    bottom_up=L(MultiLevelViT)(
        net=L(ViTDetBackbone)(
            img_size=1024, pretrain_img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
            drop_path_rate=0.1, window_size=14, global_blocks=(2, 5, 8, 11), use_rel_pos=True,
        ),
        out_indices=(2, 5, 8, 11),
        norm="LN",
    ),
    in_features=["res2", "res3", "res4", "res5"],
    out_channels=256,
    norm="LN",
    top_block=L(LastLevelMaxPool)(),
    square_pad=1024,
)
