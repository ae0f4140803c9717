"""Checkpoints: official MAE / timm formats load, resampling, unsafe pickles refused, mismatches named."""

import os
import pickle

import pytest
import torch
from timm.layers import resample_abs_pos_embed as timm_resample

from mae_transfer.checkpoint import (CheckpointError, CheckpointMismatchError, load_file, load_pretrained,
                                     save_checkpoint)
from mae_transfer.models.mae import MaskedAutoencoderViT
from mae_transfer.models.vit import VisionTransformer, vit_from_preset

# A small MAE: D=64, 2 blocks, patch 4 at 32 px (L=64), decoder 32-d x 1 block.
D, DEPTH, P, L, DD = 64, 2, 4, 64, 32


def official_mae_state_dict() -> dict:
    """Key names and shapes written out from the MAE reference's models_mae.py, random values."""
    sd = {"cls_token": (1, 1, D), "pos_embed": (1, L + 1, D), "patch_embed.proj.weight": (D, 3, P, P),
          "patch_embed.proj.bias": (D,), "norm.weight": (D,), "norm.bias": (D,), "mask_token": (1, 1, DD),
          "decoder_pos_embed": (1, L + 1, DD), "decoder_embed.weight": (DD, D), "decoder_embed.bias": (DD,),
          "decoder_norm.weight": (DD,), "decoder_norm.bias": (DD,), "decoder_pred.weight": (P * P * 3, DD),
          "decoder_pred.bias": (P * P * 3,)}
    for prefix, n, d in (("blocks", DEPTH, D), ("decoder_blocks", 1, DD)):
        for i in range(n):
            b = f"{prefix}.{i}."
            sd.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "attn.qkv.weight": (3 * d, d),
                       b + "attn.qkv.bias": (3 * d,), b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                       b + "norm2.weight": (d,), b + "norm2.bias": (d,), b + "mlp.fc1.weight": (4 * d, d),
                       b + "mlp.fc1.bias": (4 * d,), b + "mlp.fc2.weight": (d, 4 * d), b + "mlp.fc2.bias": (d,)})
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) for k, s in sd.items()}


def small_mae():
    return MaskedAutoencoderViT(img_size=32, patch_size=P, embed_dim=D, depth=DEPTH, num_heads=4,
                                decoder_embed_dim=DD, decoder_depth=1, decoder_num_heads=4)


def test_official_mae_format_loads_into_mae_with_nothing_missing(tmp_path):
    sd = official_mae_state_dict()
    torch.save({"model": sd}, tmp_path / "mae_pretrain.pth")
    m = small_mae()
    report = load_pretrained(m, tmp_path / "mae_pretrain.pth", allow_missing=None)
    assert report.format == "mae" and report.missing == [] and report.unexpected == []
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_official_mae_format_loads_into_vit_missing_only_head_and_fc_norm(tmp_path):
    sd = official_mae_state_dict()
    torch.save({"model": sd}, tmp_path / "mae_pretrain.pth")
    vit = VisionTransformer(img_size=32, patch_size=P, embed_dim=D, depth=DEPTH, num_heads=4, num_classes=10,
                            global_pool="avg", pos_embed="learned")
    report = load_pretrained(vit, tmp_path / "mae_pretrain.pth")
    # exactly the reference fine-tuning assertion
    assert set(report.missing) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    assert torch.equal(vit.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])
    assert any(k.startswith("decoder_") for k in report.unexpected) and "norm.weight" in report.unexpected


def test_timm_state_dict_loads(tmp_path):
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    ref = TimmViT(img_size=32, patch_size=P, embed_dim=D, depth=DEPTH, num_heads=4, num_classes=10)
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    ours = VisionTransformer(img_size=32, patch_size=P, embed_dim=D, depth=DEPTH, num_heads=4, num_classes=10,
                             pos_embed="learned").eval()
    assert load_pretrained(ours, tmp_path / "timm.pth", allow_missing=None).missing == []
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), ref.eval()(x), atol=1e-5, rtol=0)


def test_pos_embed_interpolation_14_to_32_equals_timm():
    src = VisionTransformer(img_size=224, patch_size=16, embed_dim=64, depth=1, num_heads=4, pos_embed="learned")
    with torch.no_grad():
        src.pos_embed.normal_()
    dst = VisionTransformer(img_size=512, patch_size=16, embed_dim=64, depth=1, num_heads=4, pos_embed="learned")
    report = load_pretrained(dst, {"model": src.state_dict()})
    expected = timm_resample(src.pos_embed.detach(), (32, 32), num_prefix_tokens=1)
    assert dst.pos_embed.shape == (1, 1 + 32 * 32, 64) and report.resized
    torch.testing.assert_close(dst.pos_embed.detach(), expected, atol=1e-6, rtol=0)


def test_patch_embed_14_to_16_resize():
    src = VisionTransformer(img_size=224, patch_size=14, embed_dim=64, depth=1, num_heads=4)
    dst = VisionTransformer(img_size=224, patch_size=16, embed_dim=64, depth=1, num_heads=4)
    sd = src.state_dict()
    # kernels that are a ramp along x (a different slope per output channel), constant along y
    slopes = torch.linspace(-1, 1, 64).view(64, 1, 1, 1)
    sd["patch_embed.proj.weight"] = (slopes * torch.arange(14.0).view(1, 1, 1, 14)).expand(64, 3, 14, 14).clone()
    report = load_pretrained(dst, {"model": sd})
    assert any("patch_embed.proj.weight" in r for r in report.resized)
    w = dst.patch_embed.proj.weight.detach()
    assert w.shape == (64, 3, 16, 16)
    # the reference: ViTDet's bicubic resize (align_corners=False, no antialias) in float64
    ref = torch.nn.functional.interpolate(sd["patch_embed.proj.weight"].double(), size=(16, 16), mode="bicubic",
                                          align_corners=False)
    assert torch.allclose(w.double(), ref, atol=1e-5)
    # and what it means: the ramp is kept, stretched to 16 taps, ~x' = (j + 0.5) * 14 / 16 - 0.5 inside
    inner = ((torch.arange(16.0) + 0.5) * 14 / 16 - 0.5)[4:12]
    assert torch.allclose(w[-1, 0, 0, 4:12], inner, atol=0.05) and torch.allclose(w[:, :, 0], w[:, :, 15])


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['PAYLOAD_MARKER']}",))


def test_code_execution_payload_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PAYLOAD_MARKER", str(marker))
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "x": Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to load .*evil.pth"):
        load_file(path)
    assert not marker.exists()
    with open(path, "wb") as f:  # a raw pickle (not a torch zip) with the same payload
        pickle.dump(Payload(), f)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_file(path)
    assert not marker.exists()


def test_resnet_state_dict_is_rejected_naming_keys(tmp_path):
    import torchvision
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointMismatchError) as e:
        load_pretrained(vit_from_preset("vit_micro_patch4"), tmp_path / "resnet18.pth")
    msg = str(e.value)
    assert "resnet18.pth" in msg and "missing keys" in msg and "blocks.0.attn.qkv.weight" in msg
    assert "unexpected keys" in msg and "conv1.weight" in msg


def test_vit_large_into_vit_base_names_wrong_shapes():
    with torch.device("meta"):
        large = vit_from_preset("vit_large_patch16")
    sd = {k: torch.zeros(v.shape) for k, v in large.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as e:
        load_pretrained(vit_from_preset("vit_base_patch16"), {"model": sd})
    msg = str(e.value)
    assert "wrong shapes" in msg and "blocks.0.attn.qkv.weight: checkpoint (3072, 1024) vs model (2304, 768)" in msg
    assert "unexpected keys (144): blocks.12.norm1.weight" in msg


def test_truncated_and_missing_files_are_named(tmp_path):
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"model": {"w": torch.randn(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="ckpt.pth"):
        load_file(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_file(tmp_path / "nope.pth")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"model": {"w": torch.ones(3)}}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise RuntimeError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError):
        save_checkpoint({"model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_file(path)["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ckpt.pth"]


def test_convert_tool_roundtrip(tmp_path):
    import subprocess
    import sys
    torch.save({"model": official_mae_state_dict()}, tmp_path / "mae.pth")
    for fmt in ("timm", "detectron2", "mmseg", "ours"):
        r = subprocess.run([sys.executable, "tools/convert.py", str(tmp_path / "mae.pth"), str(tmp_path / f"{fmt}.pth"),
                            "--to", fmt], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        vit = VisionTransformer(img_size=32, patch_size=P, embed_dim=D, depth=DEPTH, num_heads=4)
        report = load_pretrained(vit, tmp_path / f"{fmt}.pth", allow_missing=None)
        assert report.missing == [] and torch.equal(vit.blocks[0].attn.qkv.weight,
                                                    official_mae_state_dict()["blocks.0.attn.qkv.weight"])
    r = subprocess.run([sys.executable, "tools/convert.py", str(tmp_path / "nope.pth"), str(tmp_path / "x.pth")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "nope.pth" in r.stderr and "Traceback" not in r.stderr
