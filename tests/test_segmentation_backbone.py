"""The mmseg backbone on mae_transfer's ViT: equals mmseg's own MAE backbone, loads foreign checkpoints,
reports bad ones, and its layer-decay constructor follows the core rule."""

import re

import pytest
import torch
from mmengine.config import ConfigDict

import segmentation  # noqa: F401  (registers PlainViTBackbone and the layer-decay constructor)
from mae_transfer.checkpoint import CheckpointMismatchError, load_pretrained, save_checkpoint, to_mae_transfer_keys
from mae_transfer.models.mae import mae_from_preset
from mae_transfer.optim import lr_decay_scale
from mmseg.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from segmentation import PlainViTBackbone

SMALL = dict(patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4.0)


def _mmseg_mae(img=32, init_values=1.0):
    m = MODELS.build(ConfigDict(type="MAE", img_size=img, patch_size=4, embed_dims=64, num_layers=4, num_heads=4,
                                mlp_ratio=4, out_indices=[0, 1, 3], init_values=init_values,
                                norm_cfg=dict(type="LN", eps=1e-6)))
    m.init_weights()
    with torch.no_grad():  # non-trivial values everywhere, relative-position tables and layer scale included
        for name, p in m.named_parameters():
            if "relative_position_bias_table" in name or "gamma" in name or name in ("cls_token", "pos_embed"):
                p.normal_(0, 0.5 if "gamma" in name else 0.2).add_(1.0 if "gamma" in name else 0.0)
    m.eval()  # BEiT.train() returns None
    return m


@pytest.mark.parametrize("init_values", [1.0, None])
def test_feature_maps_equal_mmseg_mae_backbone(init_values):
    torch.manual_seed(0)
    ref = _mmseg_mae(init_values=1.0)
    if init_values is None:  # no layer scale on our side: the reference's gammas must be exactly 1
        for layer in ref.layers:
            layer.gamma_1.data.fill_(1.0)
            layer.gamma_2.data.fill_(1.0)
    ours = PlainViTBackbone(arch=SMALL, img_size=32, out_indices=(0, 1, 3), drop_path_rate=0.0, init_values=init_values).eval()
    sd, fmt = to_mae_transfer_keys(ref.state_dict())
    assert fmt == "mmseg-vit"
    if init_values is None:
        sd = {k: v for k, v in sd.items() if not re.search(r"ls[12]\.gamma$", k)}
    ours.vit.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert len(got) == 3
    for w, g in zip(want, got):
        assert g.shape == w.shape == (2, 64, 8, 8)
        torch.testing.assert_close(g, w, atol=1e-4, rtol=0)


def test_beit_qv_bias_checkpoint_loads_and_matches():
    """BEiT keeps q_bias / v_bias and no key bias; the converter folds them into qkv.bias."""
    torch.manual_seed(1)
    ref = MODELS.build(ConfigDict(type="BEiT", img_size=32, patch_size=4, embed_dims=64, num_layers=2, num_heads=4,
                                  out_indices=[1], init_values=0.1, norm_cfg=dict(type="LN", eps=1e-6)))
    ref.eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith(("q_bias", "v_bias", "relative_position_bias_table")):
                p.normal_(0, 0.3)
    ours = PlainViTBackbone(arch=dict(SMALL, depth=2), img_size=32, out_indices=(1,), drop_path_rate=0.0, init_values=0.1,
                  pos_embed="none").eval()
    report = load_pretrained(ours.vit, {"state_dict": {f"backbone.{k}": v for k, v in ref.state_dict().items()}},
                             log=False)
    assert report.format == "mmseg-vit" and report.missing == []
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=1e-4, rtol=0)


def test_mae_pretrain_checkpoint_loads_with_interpolated_positions(tmp_path):
    """An MAE pretraining checkpoint (decoder included) at 32 px loads into a 64 px backbone: decoder and
    final norm dropped, pos_embed resampled, relative-position tables and layer scale left at init."""
    mae = mae_from_preset("mae_vit_micro_patch4")
    save_checkpoint({"model": mae.state_dict(), "config": {"preset": "mae_vit_micro_patch4"}}, tmp_path / "mae.pth")
    bb = PlainViTBackbone(arch="vit_micro_patch4", img_size=64, out_indices=(1, 3), init_values=1.0,
                pretrained=str(tmp_path / "mae.pth"))
    bb.init_weights()
    assert bb.vit.pos_embed.shape == (1, 1 + 16 * 16, 64)
    torch.testing.assert_close(bb.vit.blocks[2].mlp.fc1.weight, mae.blocks[2].mlp.fc1.weight)
    torch.testing.assert_close(bb.vit.pos_embed[:, :1], mae.pos_embed[:, :1])
    assert bb.vit.blocks[0].attn.relative_position_bias_table.abs().sum() == 0
    report = load_pretrained(PlainViTBackbone(arch="vit_micro_patch4", img_size=64, out_indices=(3,)).vit, tmp_path / "mae.pth", log=False)
    assert any(k.startswith("pos_embed") for k in report.resized)
    assert "decoder_embed.weight" in report.unexpected and "norm.weight" in report.unexpected
    assert all(re.search(r"relative_position_bias_table$", k) for k in report.missing)


def test_wrong_model_weights_raise_naming_the_keys(tmp_path):
    save_checkpoint({"model": mae_from_preset("mae_vit_mini_patch4").state_dict()}, tmp_path / "mini.pth")
    bb = PlainViTBackbone(arch="vit_micro_patch4", img_size=32, out_indices=(3,), pretrained=str(tmp_path / "mini.pth"))
    with pytest.raises(CheckpointMismatchError, match=r"mini\.pth.*\n.*(wrong shapes|unexpected)"):
        bb.init_weights()


def test_any_input_size_and_bad_arguments():
    bb = PlainViTBackbone(arch="vit_micro_patch4", img_size=32, out_indices=(0, 3)).eval()
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 30, 45))  # padded to 32x48
    assert [o.shape for o in out] == [(1, 64, 8, 12)] * 2
    with pytest.raises(ValueError, match="out_indices"):
        PlainViTBackbone(arch="vit_micro_patch4", out_indices=(4,))
    with pytest.raises(KeyError, match="unknown arch"):
        PlainViTBackbone(arch="vit_gigantic")


def test_layer_decay_constructor_uses_core_scales():
    cfg = ConfigDict(type="EncoderDecoder",
                     backbone=dict(type="PlainViTBackbone", arch="vit_micro_patch4", img_size=32, out_indices=(0, 1, 2, 3)),
                     neck=dict(type="Feature2Pyramid", embed_dim=64, rescales=[4, 2, 1, 0.5], norm_cfg=dict(type="BN")),
                     decode_head=dict(type="FCNHead", in_channels=64, in_index=2, channels=16, num_classes=3,
                                      norm_cfg=dict(type="BN")))
    model = MODELS.build(cfg)
    ctor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type="ViTLayerDecayOptimizerConstructor",
        optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05)),
        paramwise_cfg=dict(layer_decay=0.65)))
    opt = ctor(model).optimizer
    by_name = {n: g for g in opt.param_groups for n in g["param_names"]}
    assert set(by_name) == {n for n, p in model.named_parameters() if p.requires_grad}
    for name in ("backbone.vit.patch_embed.proj.weight", "backbone.vit.blocks.2.attn.qkv.weight",
                 "backbone.vit.blocks.3.mlp.fc2.bias", "neck.upsample_4x.0.weight", "decode_head.conv_seg.weight"):
        scale = lr_decay_scale(name[len("backbone.vit."):], 4, 0.65) if name.startswith("backbone") else 1.0
        assert by_name[name]["lr"] == pytest.approx(1e-3 * scale)
    assert by_name["backbone.vit.blocks.0.attn.qkv.weight"]["lr"] == pytest.approx(1e-3 * 0.65 ** 4)
    assert by_name["backbone.vit.blocks.0.attn.relative_position_bias_table"]["weight_decay"] == 0
    assert by_name["backbone.vit.pos_embed"]["weight_decay"] == 0
    assert by_name["backbone.vit.blocks.1.mlp.fc1.weight"]["weight_decay"] == 0.05
    ctor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type="ViTLayerDecayOptimizerConstructor",
        optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05)),
        paramwise_cfg=dict(layer_decay=0.65, head_lr_mult=10.0)))
    lr = {n: g["lr"] for g in ctor(model).optimizer.param_groups for n in g["param_names"]}
    assert lr["decode_head.conv_seg.weight"] == pytest.approx(1e-2) and lr["neck.upsample_4x.0.weight"] == pytest.approx(1e-2)
    assert lr["backbone.vit.blocks.0.attn.qkv.weight"] == pytest.approx(1e-3 * 0.65 ** 4)
    with pytest.raises(ValueError, match="head_lr_mult"):
        OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
            type="ViTLayerDecayOptimizerConstructor",
            optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-3)),
            paramwise_cfg=dict(layer_decay=0.65, head_lr=10.0)))(model)


def test_convert_to_mmseg_loads_into_mmseg_mae_backbone(tmp_path):
    """`tools/convert.py --to mmseg` writes what mmseg's own MAE backbone loads by name, and it then
    computes what our backbone computes with the original weights."""
    import subprocess
    import sys
    from pathlib import Path

    torch.manual_seed(2)
    ours = PlainViTBackbone(arch=SMALL, img_size=32, out_indices=(0, 1, 3), drop_path_rate=0.0, init_values=1.0).eval()
    with torch.no_grad():  # non-trivial layer scale and relative-position tables
        for name, p in ours.vit.named_parameters():
            if "relative_position_bias_table" in name or "gamma" in name:
                p.normal_(1.0 if "gamma" in name else 0.0, 0.3)
    save_checkpoint({"model": ours.vit.state_dict()}, tmp_path / "ours.pth")
    r = subprocess.run([sys.executable, "tools/convert.py", str(tmp_path / "ours.pth"), str(tmp_path / "mmseg.pth"),
                        "--to", "mmseg"], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    ref = _mmseg_mae()
    sd = torch.load(tmp_path / "mmseg.pth", weights_only=True)["state_dict"]
    result = ref.load_state_dict(sd, strict=False)
    assert result.unexpected_keys == [] and all(k.endswith("relative_position_index") for k in result.missing_keys)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for w, g in zip(ref(x), ours(x)):
            torch.testing.assert_close(g, w, atol=1e-4, rtol=0)


def test_grad_checkpointing_same_gradients_and_config_key():
    """BEiT bias (non-zero), cls token, layer scale, drop path, out_indices stopping before the last
    block: the same loss and gradients with per-block checkpointing, the run blocks recomputed."""
    from grad_ckpt import assert_same_step

    torch.manual_seed(0)
    bb = PlainViTBackbone(arch=SMALL, img_size=32, out_indices=(0, 2), drop_path_rate=0.3, init_values=0.5)
    with torch.no_grad():
        for n, p in bb.named_parameters():
            if "relative_position_bias_table" in n:
                p.normal_(0, 0.2)
    bb.train()
    x = torch.randn(2, 3, 36, 44)  # padded to 36x44, a 9x11 grid: the bias tables are resized
    assert_same_step(bb, bb.vit, list(bb.vit.blocks[:3]), lambda: sum(t.square().mean() for t in bb(x)))
    built = MODELS.build(ConfigDict(type="PlainViTBackbone", arch="vit_micro_patch4", img_size=32, out_indices=(3,),
                                    grad_checkpointing=True))
    assert built.vit.grad_checkpointing
