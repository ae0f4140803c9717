# UperNet + FCN auxiliary head on a plain ViT-B/16: the model of the MAE / BEiT ADE20K recipe (MAE paper
# Sec. 5 and A.4: BEiT's semantic-segmentation code, relative position bias turned on for transfer,
# initialised at zero). Numbers as mmseg's configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py.
# A config on other data overrides num_classes, the sizes and data_preprocessor.size.
# mmengine turns a config's import statements into lazy objects; __import__ reads the values now.
_transforms = __import__('mae_transfer.data.transforms', fromlist=['IMAGENET_MEAN'])
norm_cfg = dict(type='SyncBN', requires_grad=True)  # BN when not distributed (mmengine reverts it)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        # ImageNet statistics, as MAE pretraining (mae_transfer.data.transforms, in 0-255 units)
        mean=[round(255 * v, 3) for v in _transforms.IMAGENET_MEAN],
        std=[round(255 * v, 3) for v in _transforms.IMAGENET_STD],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=(512, 512)),
    backbone=dict(
        type='PlainViTBackbone',
        arch='vit_base_patch16',
        img_size=512,                 # pos_embed interpolated 14x14 -> 32x32 at load time
        out_indices=(3, 5, 7, 11),    # 4 evenly spaced blocks (MAE paper A.4 / BEiT)
        drop_path_rate=0.1,
        rel_pos='bias',               # BEiT relative position bias, zero init (MAE paper A.4)
        init_values=1.0,              # layer scale at 1.0, as mmseg's MAE ADE20K config
        pos_embed='learned',
        grad_checkpointing=False,     # True: recompute block activations in backward (less memory, ~1 more forward)
        pretrained=None),             # set by tools/train_seg.py --weights
    # x4, x2, x1, x1/2 of the 1/16 token grid -> strides 4, 8, 16, 32
    neck=dict(type='Feature2Pyramid', embed_dim=768, rescales=[4, 2, 1, 0.5], norm_cfg=norm_cfg),
    decode_head=dict(
        type='UPerHead',
        in_channels=[768, 768, 768, 768],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=768,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=768,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    # sliding-window test, 512 crops with stride 341; tools/train_seg.py --test-mode whole switches it off
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
