# UperNet + FCN auxiliary head on an MAE-pretrained ViT-B, ADE20K 512x512, 160k iterations: the MAE
# paper's transfer recipe, whole (model: _base_/models/upernet_vit.py, schedule: _base_/schedules/
# schedule_160k.py, data: _base_/ade20k.py; every number is the one of mmseg's
# configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py unless a comment there says otherwise).
# Paper result (single-scale mIoU): 48.1 with MAE ViT-B, 47.4 with supervised IN-1K (upernet_sup_b_ade20k.py).
#
# Weights: tools/train_seg.py --weights mae_pretrain_vit_base.pth (the official release; any format that
# mae_transfer.checkpoint reads). No path here: a config names no file of one machine.
_base_ = ['_base_/default_runtime.py', '_base_/ade20k.py', '_base_/models/upernet_vit.py',
          '_base_/schedules/schedule_160k.py']
