"""Weights as the hubs ship them: ``.safetensors`` files in timm's layout (``model.safetensors`` of
``vit_base_patch16_224.mae``) and in Hugging Face's ``ViTMAEForPreTraining`` / ``ViTMAEModel`` layouts
(``facebook/vit-mae-*``, ``config.json`` beside), read by the one loader without pickle.

The hub files are made here, from a tiny ViT with random weights, under the real key names and shapes:
the HF ones by splitting our fused ``qkv`` into ``query`` / ``key`` / ``value`` as ``transformers``
stores them. Each must load with nothing unexpected missing and give the features our own format gives
for the same weights; timm's own ``VisionTransformer`` reads the timm-layout file as the reference.
(``transformers`` is not installed in this environment, so its ``ViTMAEModel`` is not run.)"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mae_transfer.checkpoint import (CheckpointError, CheckpointMismatchError, is_safetensors, load_file,
                                     load_pretrained, save_checkpoint, save_safetensors)
from mae_transfer.models.mae import MaskedAutoencoderViT
from mae_transfer.models.pos_embed import get_2d_sincos_pos_embed
from mae_transfer.models.vit import VisionTransformer

from hf_layout import to_hf  # tests/hf_layout.py

REPO = Path(__file__).resolve().parents[1]
# tiny: 32 px, patch 8 (a 4x4 grid), 64 wide, 2 blocks of 4 heads; a 32-wide, 1-block decoder
TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
DECODER = dict(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)
HF_CONFIG = {"model_type": "vit_mae", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 256, "hidden_act": "gelu", "image_size": 32, "patch_size": 8, "num_channels": 3,
             "qkv_bias": True, "decoder_hidden_size": 32, "decoder_num_hidden_layers": 1,
             "decoder_num_attention_heads": 4, "decoder_intermediate_size": 128, "layer_norm_eps": 1e-12}


def random_mae() -> MaskedAutoencoderViT:
    """The tiny MAE with every tensor random (norms too), so that a swapped or misnamed tensor shows."""
    torch.manual_seed(0)
    mae = MaskedAutoencoderViT(**TINY, **DECODER)
    with torch.no_grad():
        for name, p in mae.named_parameters():
            if not name.endswith("pos_embed"):  # the fixed sin-cos tables stay what they are
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("norm1.weight") else 0.0))
    return mae


def encoder_of(sd: dict) -> dict:
    """Our state dict without the MAE decoder: what timm's ``model.safetensors`` holds."""
    return {k: v for k, v in sd.items() if not k.startswith(("decoder_", "mask_token"))}


def features(vit: VisionTransformer) -> torch.Tensor:
    """(2, 1 + 16, 64) encoder tokens of two fixed images."""
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return vit.eval().forward_features(x)


def ours_reference(tmp_path: Path, sd: dict) -> torch.Tensor:
    """Features of a ViT loaded from our own ``.pth`` format holding ``sd``."""
    save_checkpoint({"model": sd}, tmp_path / "ours.pth")
    vit = VisionTransformer(**TINY)
    load_pretrained(vit, tmp_path / "ours.pth", allow_missing=None, log=False)
    return features(vit)


@pytest.fixture(scope="module")
def mae_sd():
    return random_mae().state_dict()


def test_timm_safetensors_loads_and_matches_ours_and_timm(tmp_path, mae_sd):
    from timm.models import load_checkpoint
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in encoder_of(mae_sd).items()}, str(path), metadata={"format": "pt"})
    vit = VisionTransformer(**TINY)
    report = load_pretrained(vit, path, allow_missing=None, log=False)
    assert report.format == "vit" and report.missing == [] and report.unexpected == []
    torch.testing.assert_close(features(vit), ours_reference(tmp_path, encoder_of(mae_sd)), rtol=0, atol=0)

    timm_vit = TimmViT(**TINY, num_classes=0)
    load_checkpoint(timm_vit, str(path), strict=True)  # timm's own safetensors reading
    torch.testing.assert_close(features(vit), timm_vit.eval().forward_features(
        torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position_tables", [True, False], ids=["tables-stored", "tables-are-buffers"])
def test_hf_for_pretraining_loads_the_whole_mae(tmp_path, mae_sd, position_tables):
    path = tmp_path / "model.safetensors"
    save_file(to_hf(mae_sd, pretraining=True, position_tables=position_tables), str(path))
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
    torch.manual_seed(5)  # another init: everything must come from the file
    mae = MaskedAutoencoderViT(**TINY, **DECODER)
    report = load_pretrained(mae, path, allow_missing=None, log=False)
    assert report.format == "hf-vit-mae" and report.missing == [] and report.unexpected == []
    loaded = mae.state_dict()
    assert loaded.keys() == mae_sd.keys()
    for k in mae_sd:
        torch.testing.assert_close(loaded[k], mae_sd[k], rtol=0, atol=0, msg=k)
    sincos_notes = [n for n in report.notes if "sin-cos" in n]
    assert len(sincos_notes) == (0 if position_tables else 2), report.notes
    assert position_tables or "pos_embed not in the checkpoint" in str(report)


@pytest.mark.parametrize("pretraining", [True, False], ids=["ViTMAEForPreTraining", "ViTMAEModel"])
def test_hf_layouts_give_the_features_of_our_format(tmp_path, mae_sd, pretraining):
    path = tmp_path / "model.safetensors"
    save_file(to_hf(mae_sd, pretraining), str(path))
    vit = VisionTransformer(**TINY)
    report = load_pretrained(vit, path, allow_missing=None, log=False)
    assert report.format == "hf-vit-mae" and report.missing == []
    # into an encoder the decoder is all there is to drop
    assert len(report.unexpected) == (len([k for k in mae_sd if k not in encoder_of(mae_sd)]) if pretraining else 0)
    torch.testing.assert_close(features(vit), ours_reference(tmp_path, encoder_of(mae_sd)), rtol=0, atol=0)


def test_hf_pytorch_model_bin_loads_as_the_safetensors_file(tmp_path, mae_sd):
    """The hub's other file of the same weights, ``pytorch_model.bin`` (torch.save of the state dict)."""
    torch.save(to_hf(mae_sd, pretraining=True), tmp_path / "pytorch_model.bin")
    vit = VisionTransformer(**TINY)
    assert load_pretrained(vit, tmp_path / "pytorch_model.bin", allow_missing=None, log=False).format == "hf-vit-mae"
    torch.testing.assert_close(features(vit), ours_reference(tmp_path, encoder_of(mae_sd)), rtol=0, atol=0)


def test_hf_position_table_left_out_is_the_one_transformers_computes(tmp_path, mae_sd):
    save_file(to_hf(mae_sd, pretraining=False, position_tables=False), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
    vit = VisionTransformer(**TINY)
    with torch.no_grad():
        vit.pos_embed.zero_()
    load_pretrained(vit, tmp_path / "model.safetensors", allow_missing=None, log=False)
    # transformers' get_2d_sincos_pos_embed(64, 4, add_cls_token=True), the MAE reference's table
    torch.testing.assert_close(vit.pos_embed[0], get_2d_sincos_pos_embed(64, 4, cls_token=True), rtol=0, atol=0)


def test_hf_file_with_or_without_its_tables_gives_the_same_model(tmp_path, mae_sd):
    """Without config.json the table is the one of transformers' default 224 px (a 28x28 grid at patch 8),
    resampled to the model's grid like a stored one: both kinds of file load to the same weights."""
    stored, left_out = tmp_path / "stored" / "model.safetensors", tmp_path / "left_out" / "model.safetensors"
    hf = to_hf(mae_sd, pretraining=False)
    hf["embeddings.position_embeddings"] = get_2d_sincos_pos_embed(64, 28, cls_token=True).unsqueeze(0)
    for path, tensors in ((stored, hf), (left_out, to_hf(mae_sd, pretraining=False, position_tables=False))):
        path.parent.mkdir()
        save_file(tensors, str(path))
    a, b = VisionTransformer(**TINY), VisionTransformer(**TINY)
    assert "resized" in str(load_pretrained(a, stored, log=False))
    report = load_pretrained(b, left_out, log=False)
    assert "28x28 grid of transformers' default 224 px" in str(report), report
    torch.testing.assert_close(a.pos_embed, b.pos_embed, rtol=0, atol=0)


def test_hf_config_beside_is_checked(tmp_path, mae_sd):
    save_file(to_hf(mae_sd, pretraining=True), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
    report = load_pretrained(MaskedAutoencoderViT(**TINY, **DECODER), tmp_path / "model.safetensors", log=False)
    assert any("config.json" in n for n in report.notes), report.notes
    # a 2-head model has the same shapes: only the config tells that it would compute other features
    (tmp_path / "config.json").write_text(json.dumps({**HF_CONFIG, "num_attention_heads": 2}))
    with pytest.raises(CheckpointMismatchError, match=r"config\.json describes another ViT.*num_attention_heads 2 "
                                                      r"\(model: 4\)"):
        load_pretrained(VisionTransformer(**TINY), tmp_path / "model.safetensors", log=False)
    # our own run folders and timm's hub folders have a config.json too: not a transformers config
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224", "num_classes": 0}))
    assert not any("config.json" in n for n in
                   load_pretrained(VisionTransformer(**TINY), tmp_path / "model.safetensors", log=False).notes)


def test_hf_block_missing_a_projection_is_reported(tmp_path, mae_sd):
    hf = to_hf(mae_sd, pretraining=False)
    del hf["encoder.layer.1.attention.attention.key.weight"]
    save_file(hf, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError) as e:
        load_pretrained(VisionTransformer(**TINY), tmp_path / "model.safetensors", log=False)
    assert "missing keys (1): blocks.1.attn.qkv.weight" in str(e.value)
    assert "blocks.1.attn.query.weight" in str(e.value) and "model.safetensors (hf-vit-mae format)" in str(e.value)


def test_safetensors_is_read_without_pickle_and_recognised_by_its_header(tmp_path, mae_sd, monkeypatch):
    save_file(encoder_of(mae_sd), str(tmp_path / "weights.bin"))  # a safetensors file under another name
    save_checkpoint({"model": encoder_of(mae_sd)}, tmp_path / "ours.pth")
    assert is_safetensors(tmp_path / "weights.bin") and not is_safetensors(tmp_path / "ours.pth")

    def no_torch_load(*a, **k):
        raise AssertionError("torch.load (pickle) used for a safetensors file")
    monkeypatch.setattr(torch, "load", no_torch_load)
    raw = load_file(tmp_path / "weights.bin")
    assert raw["model"].keys() == encoder_of(mae_sd).keys()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_bad_safetensors_file_is_one_line_naming_it(tmp_path, mae_sd, damage):
    path = tmp_path / "model.safetensors"
    save_file(encoder_of(mae_sd), str(path))
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x13\x37 not a tensor file" * 8,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError) as e:
        load_pretrained(VisionTransformer(**TINY), path, log=False)
    msg = str(e.value)
    assert str(path) in msg and "safetensors" in msg and "\n" not in msg, msg


def _convert(capsys, *argv) -> tuple[int, str]:
    """tools/convert.py in-process: its exit status and stdout + stderr."""
    spec = importlib.util.spec_from_file_location("convert", REPO / "tools" / "convert.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    try:
        tool.main([str(a) for a in argv])
        rc = 0
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_convert_to_safetensors_from_hf_and_back(tmp_path, mae_sd, capsys):
    hf_dir = tmp_path / "vit-mae-tiny"
    hf_dir.mkdir()
    save_file(to_hf(mae_sd, pretraining=True, position_tables=False), str(hf_dir / "model.safetensors"))
    (hf_dir / "config.json").write_text(json.dumps(HF_CONFIG))
    out = tmp_path / "out" / "mae.safetensors"
    rc, text = _convert(capsys, hf_dir / "model.safetensors", out, "--to", "safetensors", "--keep-decoder")
    assert rc == 0, text
    assert "pos_embed not in the checkpoint" in text and "(hf-vit-mae format" in text
    assert sorted(p.name for p in out.parent.iterdir()) == ["mae.safetensors"]  # no temp file left
    with safe_open(str(out), "pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert meta["source_format"] == "hf-vit-mae" and meta["source"] == str(hf_dir / "model.safetensors")
    assert keys == set(mae_sd)  # our names, the decoder kept, the sin-cos tables written
    mae = MaskedAutoencoderViT(**TINY, **DECODER)
    report = load_pretrained(mae, out, allow_missing=None, log=False)
    assert report.format == "mae" and report.missing == [] and report.unexpected == []
    for k, v in mae.state_dict().items():
        torch.testing.assert_close(v, mae_sd[k], rtol=0, atol=0, msg=k)

    enc = tmp_path / "enc.safetensors"  # encoder only, from our .pth
    save_checkpoint({"model": mae_sd}, tmp_path / "mae.pth")
    assert _convert(capsys, tmp_path / "mae.pth", enc, "--to", "safetensors")[0] == 0
    vit = VisionTransformer(**TINY)
    assert load_pretrained(vit, enc, allow_missing=None, log=False).unexpected == []
    torch.testing.assert_close(features(vit), ours_reference(tmp_path, encoder_of(mae_sd)), rtol=0, atol=0)


def test_save_safetensors_is_atomic_and_copies_shared_tensors_apart(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "w.safetensors"
    base = torch.arange(6.0)
    save_safetensors({"a": base, "view": base[:3]}, path)  # one storage: the format stores each tensor apart
    assert torch.equal(load_file(path)["model"]["view"], torch.arange(3.0))

    def broken(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(safetensors.torch, "save", broken)
    with pytest.raises(RuntimeError):
        save_safetensors({"a": torch.zeros(2)}, path)
    assert torch.equal(load_file(path)["model"]["a"], torch.arange(6.0))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def _write_shards(folder: Path, sd: dict, n: int = 2) -> Path:
    """``sd`` as Hugging Face shards it: ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``."""
    keys = sorted(sd)
    weight_map = {}
    for i in range(n):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        part = {k: sd[k].contiguous() for k in keys[i::n]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


def test_hf_sharded_safetensors_load_through_their_index(tmp_path, mae_sd):
    """ViTMAEForPreTraining in two shards with the hub's index, config.json beside: the same model as one file."""
    index = _write_shards(tmp_path, to_hf(mae_sd, pretraining=True))
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
    assert len(load_file(index)["model"]) == len(to_hf(mae_sd, pretraining=True))
    vit = VisionTransformer(**TINY)
    report = load_pretrained(vit, index, allow_missing=None, log=False)
    assert report.format == "hf-vit-mae" and report.missing == []
    torch.testing.assert_close(features(vit), ours_reference(tmp_path, encoder_of(mae_sd)), rtol=0, atol=0)


def test_sharded_index_with_a_missing_shard_or_key_is_one_line_naming_it(tmp_path, mae_sd):
    index = _write_shards(tmp_path, encoder_of(mae_sd))
    shard = tmp_path / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.unlink()
    with pytest.raises(CheckpointError, match="shard .*model-00002-of-00002.safetensors.* does not exist"):
        load_file(index)
    shard.write_bytes(data)
    mapping = json.loads(index.read_text())
    mapping["weight_map"]["blocks.9.attn.qkv.weight"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(mapping))
    with pytest.raises(CheckpointError, match="1 key.* not in their shards: blocks.9.attn.qkv.weight"):
        load_file(index)
    index.write_text("{}")
    with pytest.raises(CheckpointError, match="cannot read sharded checkpoint index"):
        load_file(index)
