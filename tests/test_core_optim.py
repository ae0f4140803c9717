"""Layer-wise lr decay groups, weight-decay exclusions, schedule."""

import pytest
import torch

from mae_transfer.models.vit import vit_from_preset
from mae_transfer.optim import cosine_lr, param_groups, scaled_lr, set_lr


def test_vit_base_layer_decay_065_scales():
    with torch.device("meta"):
        m = vit_from_preset("vit_base_patch16", num_classes=1000, global_pool="avg", pos_embed="learned")
    groups = param_groups(m, weight_decay=0.05, layer_decay=0.65)
    scale = {n: g["lr_scale"] for g in groups for n in g["param_names"]}
    assert scale["patch_embed.proj.weight"] == pytest.approx(0.65 ** 13)
    assert scale["pos_embed"] == pytest.approx(0.65 ** 13) and scale["cls_token"] == pytest.approx(0.65 ** 13)
    for i in range(12):
        assert scale[f"blocks.{i}.attn.qkv.weight"] == pytest.approx(0.65 ** (12 - i))
    assert scale["blocks.11.mlp.fc2.bias"] == pytest.approx(0.65)
    assert scale["head.weight"] == 1.0 and scale["fc_norm.weight"] == 1.0


def test_no_weight_decay_for_norms_biases_tokens_and_rel_pos():
    with torch.device("meta"):
        m = vit_from_preset("vit_micro_patch4", rel_pos="bias", pos_embed="learned", num_classes=3)
    wd = {n: g["weight_decay"] for g in param_groups(m, 0.05) for n in g["param_names"]}
    for n in ("pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias",
              "blocks.0.attn.relative_position_bias_table", "head.bias"):
        assert wd[n] == 0.0, n
    for n in ("blocks.0.attn.qkv.weight", "blocks.3.mlp.fc1.weight", "head.weight", "patch_embed.proj.weight"):
        assert wd[n] == 0.05, n


def test_prefixed_backbone_and_schedule():
    with torch.device("meta"):
        net = torch.nn.Module()
        net.backbone = vit_from_preset("vit_micro_patch4")
        net.neck = torch.nn.Linear(4, 4)
    scale = {n: g["lr_scale"] for g in param_groups(net, 0.1, 0.7, encoder_prefix="backbone.")
             for n in g["param_names"]}
    assert scale["backbone.blocks.0.attn.qkv.weight"] == pytest.approx(0.7 ** 4)
    assert scale["neck.weight"] == 1.0
    heads = {n: g["lr_scale"] for g in param_groups(net, 0.1, 0.7, encoder_prefix="backbone.", head_lr_scale=10.0)
             for n in g["param_names"]}
    assert heads["neck.weight"] == 10.0 and heads["backbone.blocks.0.attn.qkv.weight"] == pytest.approx(0.7 ** 4)
    assert heads["backbone.norm.weight"] == 1.0  # the encoder's last layer keeps scale 1
    assert cosine_lr(0, 100, 10, 1.0) == 0.0 and cosine_lr(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 10, 1.0) == pytest.approx(0.5) and cosine_lr(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
    opt = torch.optim.AdamW([{"params": [torch.zeros(1, requires_grad=True)], "lr_scale": 0.5}], lr=1.0)
    set_lr(opt, 2.0)
    assert opt.param_groups[0]["lr"] == 1.0
