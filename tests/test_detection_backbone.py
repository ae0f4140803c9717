"""Detection backbones: our ViT under detectron2's pyramids equals detectron2's own ViTDet; names,
strides, registry and layer-wise lr decay follow ViTDet."""

from functools import partial

import pytest
import torch
import torch.nn as nn

pytest.importorskip("detectron2")

from detectron2.config import get_cfg  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import SimpleFeaturePyramid, build_backbone  # noqa: E402
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool  # noqa: E402
from detectron2.modeling.backbone.vit import ViT, get_vit_lr_decay_rate  # noqa: E402
from detectron2.solver.build import get_default_optimizer_params  # noqa: E402

from detection.backbone import (LastLevelMaxPoolOf, MultiLevelViT, ViTDetBackbone, add_vit_config,  # noqa: E402
                                evenly_spaced_blocks)
from detection.lr_decay import vit_lr_factor  # noqa: E402
from mae_transfer.checkpoint import load_pretrained  # noqa: E402
from mae_transfer.models.vit import VisionTransformer  # noqa: E402

# small: 64-d, 4 blocks, patch 16; 160 px input = 10x10 tokens, 4x4 windows -> padded to 12x12
SMALL = dict(img_size=160, pretrain_img_size=64, patch_size=16, embed_dim=64, depth=4, num_heads=4, window_size=4)
GLOBAL = (1, 3)


def _pair_of_pyramids():
    torch.manual_seed(0)
    ref = SimpleFeaturePyramid(
        ViT(**SMALL, window_block_indexes=[i for i in range(4) if i not in GLOBAL], use_rel_pos=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6)),
        in_feature="last_feat", out_channels=32, scale_factors=(4.0, 2.0, 1.0, 0.5), top_block=LastLevelMaxPool(),
        norm="LN", square_pad=160)
    ours = SimpleFeaturePyramid(ViTDetBackbone(**SMALL, global_blocks=GLOBAL), in_feature="last_feat",
                                out_channels=32, scale_factors=(4.0, 2.0, 1.0, 0.5), top_block=LastLevelMaxPool(),
                                norm="LN", square_pad=160)
    sd = ref.state_dict()
    for k in sd:  # relative-position tables start at zero: make them matter
        if "rel_pos" in k:
            sd[k] = torch.randn_like(sd[k]) * 0.2
    ref.load_state_dict(sd)
    ours.load_state_dict(sd, strict=True)  # same parameter names and shapes as detectron2's ViTDet
    return ref, ours


# 3x13 tokens: one row of windows, each with 3 of its 4 rows real (our attention skips padded queries)
@pytest.mark.parametrize("hw", [(160, 160), (96, 208), (48, 208)], ids=["padded-windows", "non-square", "one-row"])
def test_vitdet_pyramid_equals_detectron2(hw):
    ref, ours = _pair_of_pyramids()
    x = torch.randn(2, 3, *hw)
    a, b = ref(x), ours(x)
    assert list(a) == list(b) == ["p2", "p3", "p4", "p5", "p6"]
    for k in a:
        assert a[k].shape == b[k].shape
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-4)
    # gradients too (our attention folds the relative position into q/k instead of adding a bias)
    sum(v.square().mean() for v in a.values()).backward()
    sum(v.square().mean() for v in b.values()).backward()
    ga, gb = dict(ref.named_parameters()), dict(ours.named_parameters())
    for k in ("net.blocks.1.attn.rel_pos_h", "net.blocks.0.attn.rel_pos_w", "net.pos_embed", "net.blocks.3.attn.qkv.weight"):
        torch.testing.assert_close(gb[k].grad, ga[k].grad, atol=1e-4, rtol=1e-3)


def test_vitdet_backbone_layout():
    m = ViTDetBackbone(img_size=1024, pretrain_img_size=224, patch_size=16, embed_dim=64, depth=12, num_heads=4)
    assert m.pos_embed.shape == (1, 1 + 14 * 14, 64) and m.cls_token is None
    assert m.blocks[2].attn.rel_pos_h.shape == (2 * 64 - 1, 16)   # global block: sized for 1024 px
    assert m.blocks[0].attn.rel_pos_h.shape == (2 * 14 - 1, 16)   # window block: 14x14
    assert [i for i, b in enumerate(m.blocks) if b.window_size == 0] == [2, 5, 8, 11]
    assert m.output_shape()["last_feat"] == ShapeSpec(channels=64, stride=16)
    assert isinstance(m.norm, nn.Identity)
    with pytest.raises(ValueError, match="global_blocks"):
        ViTDetBackbone(depth=4, global_blocks=(2, 5))


def test_multilevel_fpn_strides_blocks_and_names():
    torch.manual_seed(0)
    net = ViTDetBackbone(img_size=128, pretrain_img_size=64, patch_size=16, embed_dim=32, depth=8, num_heads=2,
                         window_size=4, global_blocks=evenly_spaced_blocks(8))
    assert evenly_spaced_blocks(8) == [1, 3, 5, 7] and evenly_spaced_blocks(24) == [5, 11, 17, 23]
    fpn = FPN(MultiLevelViT(net), in_features=["res2", "res3", "res4", "res5"], out_channels=16, norm="LN",
              top_block=LastLevelMaxPool())
    x = torch.randn(1, 3, 128, 192)
    out = fpn(x)
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p2": (32, 48), "p3": (16, 24), "p4": (8, 12), "p5": (4, 6), "p6": (2, 3)}
    bottom = fpn.bottom_up(x)
    maps = net.forward_feature_maps(x, [1, 3, 5, 7])
    torch.testing.assert_close(bottom["res4"], maps[2])                               # stride 16: identity
    torch.testing.assert_close(bottom["res5"], nn.functional.max_pool2d(maps[3], 2))  # stride 32: pool
    assert any(k.startswith("bottom_up.net.blocks.7.") for k in fpn.state_dict())


def test_detector_state_dict_loads_back_into_a_plain_vit():
    _, ours = _pair_of_pyramids()
    sd = {f"backbone.{k}": v for k, v in ours.state_dict().items()}
    vit = VisionTransformer(**{k: v for k, v in SMALL.items() if k not in ("img_size", "pretrain_img_size")},
                            img_size=64, class_token=False, pos_embed="learned", pos_embed_cls=True, global_pool="",
                            final_norm=False, global_blocks=GLOBAL, rel_pos="decomposed", rel_pos_size=10)
    report = load_pretrained(vit, sd, log=False)
    assert report.format == "detectron2" and not report.missing
    torch.testing.assert_close(vit.blocks[1].attn.rel_pos_h, ours.net.blocks[1].attn.rel_pos_h)


def test_lr_factor_equals_vitdet_rule_and_reaches_param_groups():
    model = nn.Module()
    model.backbone = SimpleFeaturePyramid(ViTDetBackbone(**SMALL, global_blocks=GLOBAL), "last_feat", 16,
                                          (2.0, 1.0), LastLevelMaxPoolOf("p4"))
    model.roi_heads = nn.Linear(4, 4)
    for name, _ in model.named_parameters():
        assert vit_lr_factor(name, depth=4, layer_decay=0.7) == pytest.approx(get_vit_lr_decay_rate(name, 0.7, 4)), name
    groups = get_default_optimizer_params(model, base_lr=1e-4, weight_decay=0.1, weight_decay_norm=0.0,
                                          lr_factor_func=partial(vit_lr_factor, depth=4, layer_decay=0.7))
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["backbone.net.patch_embed.proj.weight"])] == pytest.approx(1e-4 * 0.7 ** 5)
    assert lr_of[id(named["backbone.net.blocks.3.mlp.fc1.weight"])] == pytest.approx(1e-4 * 0.7)
    assert lr_of[id(named["roi_heads.weight"])] == pytest.approx(1e-4)


def test_registry_builders():
    cfg = get_cfg()
    add_vit_config(cfg)
    cfg.MODEL.VIT.update(IMG_SIZE=128, PRETRAIN_IMG_SIZE=64, EMBED_DIM=32, DEPTH=4, NUM_HEADS=2, WINDOW_SIZE=4,
                         GLOBAL_BLOCKS=[1, 3], SQUARE_PAD=128)
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    for name, prefix in (("build_vitdet_backbone", "net."), ("build_vit_fpn_backbone", "bottom_up.net.")):
        cfg.MODEL.BACKBONE.NAME = name
        bb = build_backbone(cfg, ShapeSpec(channels=3))
        assert any(k.startswith(prefix + "blocks.3.") for k in bb.state_dict())
        assert set(bb(torch.randn(1, 3, 128, 128))) == {"p2", "p3", "p4", "p5", "p6"}


@pytest.mark.parametrize("pyramid", ["simple", "multilevel"])
def test_grad_checkpointing_same_gradients(pyramid):
    """ViTDet at the detector's level: windows (padded), global blocks, decomposed relative position,
    drop path; the same pyramid loss and gradients with per-block checkpointing, blocks recomputed."""
    from grad_ckpt import assert_same_step

    torch.manual_seed(0)
    net = ViTDetBackbone(**SMALL, global_blocks=GLOBAL, drop_path_rate=0.3)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "rel_pos" in n:
                p.normal_(0, 0.2)
    if pyramid == "simple":
        model = SimpleFeaturePyramid(net, in_feature="last_feat", out_channels=32, scale_factors=(4.0, 2.0, 1.0, 0.5),
                                     top_block=LastLevelMaxPool(), norm="LN")
    else:
        model = FPN(bottom_up=MultiLevelViT(net, out_indices=(0, 1, 2, 3)), in_features=["res2", "res3", "res4", "res5"],
                    out_channels=32, top_block=LastLevelMaxPool())
    model.train()
    x = torch.randn(1, 3, 64, 160)  # 4x10 tokens in 4x4 windows: padded
    assert_same_step(model, net, list(net.blocks), lambda: sum(v.square().mean() for v in model(x).values()))


def test_grad_checkpointing_from_configs():
    from detection.config import load_config
    from detectron2.config import instantiate

    cfg = load_config("vitdet_scenes_mini", ["model.backbone.net.grad_checkpointing=True"])
    assert instantiate(cfg.model.backbone.net).grad_checkpointing
    assert load_config("vitdet_mae_l").model.backbone.net.grad_checkpointing is False  # the recipe's, documented
    ycfg = get_cfg()
    add_vit_config(ycfg)
    ycfg.MODEL.VIT.update(IMG_SIZE=128, PRETRAIN_IMG_SIZE=64, EMBED_DIM=32, DEPTH=2, NUM_HEADS=2, WINDOW_SIZE=4,
                          GLOBAL_BLOCKS=[1], SQUARE_PAD=128, GRAD_CHECKPOINTING=True)
    ycfg.MODEL.BACKBONE.NAME = "build_vitdet_backbone"
    assert build_backbone(ycfg, ShapeSpec(channels=3)).net.grad_checkpointing
