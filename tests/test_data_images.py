"""Images as users have them: 16-bit values read without clipping, channels as the file has them (grey,
RGB, RGBA, N-page TIFF stacks), an RGB patch embedding adapted to other channel counts by timm's rule,
and normalisation statistics computed from the folder once, cached, and invalidated by a changed file."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from mae_transfer.checkpoint import CheckpointMismatchError, adapt_in_chans, load_pretrained
from mae_transfer.data.datasets import DataError, ImageFolder
from mae_transfer.data.images import Planes, probe_channels, read_image
from mae_transfer.data.norm_stats import folder_norm_stats, stats_cache_path
from mae_transfer.data.transforms import EvalTransform, RandomResizedCropFlip
from mae_transfer.models.vit import VIT_PRESETS, VisionTransformer

# every 16-bit value class a reader could get wrong: 0, the 8-bit range's top, just above it, high, top
VALUES_16 = np.array([[0, 255, 256, 4097], [40000, 65534, 65535, 12345]], dtype=np.uint16)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_grey_is_scaled_by_the_type_range_not_clipped(tmp_path, ext):
    path = tmp_path / f"g.{ext}"
    Image.fromarray(VALUES_16).save(path)
    img = read_image(path)
    assert isinstance(img, Planes) and img.channels == 1
    np.testing.assert_array_equal(img.array[0], VALUES_16.astype(np.float32) / 65535)
    # EvalTransform at the short side's size: a centre crop without resampling, so values come through exactly
    x = EvalTransform(2, mean=(0.5,), std=(0.25,))(img)
    np.testing.assert_allclose(x.numpy()[0], (VALUES_16[:, 1:3] / 65535 - 0.5) / 0.25, atol=1e-6)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_colour_keeps_its_depth_channel_order_and_alpha_by_choice(tmp_path, ext):
    cv2 = pytest.importorskip("cv2")
    rgba = np.stack([VALUES_16, VALUES_16[::-1], 65535 - VALUES_16, np.full_like(VALUES_16, 30000)], -1)
    path = tmp_path / f"c.{ext}"
    assert cv2.imwrite(str(path), rgba[..., [2, 1, 0, 3]])  # OpenCV writes BGRA
    kept, dropped = read_image(path, alpha="keep"), read_image(path)
    assert kept.channels == 4 and dropped.channels == 3
    np.testing.assert_array_equal(kept.array, rgba.transpose(2, 0, 1).astype(np.float32) / 65535)
    np.testing.assert_array_equal(dropped.array, kept.array[:3])
    assert probe_channels(path) == (3, True) and probe_channels(path, "keep") == (4, True)


def test_8bit_modes_and_alpha(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (6, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgba[..., 0], "L").save(tmp_path / "g.png")
    dropped = read_image(tmp_path / "a.png")
    assert dropped.mode == "RGB" and np.array_equal(np.asarray(dropped), rgba[..., :3])
    kept = read_image(tmp_path / "a.png", alpha="keep")
    np.testing.assert_array_equal(kept.array, rgba.transpose(2, 0, 1) / np.float32(255))
    assert read_image(tmp_path / "g.png").mode == "L"  # grey stays one channel


def test_tiff_stack_pages_are_channels_and_folders_take_their_channel_count(tmp_path):
    pages = [Image.fromarray(VALUES_16 + i) for i in range(5)]
    for cls in ("a", "b"):
        (tmp_path / "stacks" / cls).mkdir(parents=True)
        pages[0].save(tmp_path / "stacks" / cls / "s.tif", save_all=True, append_images=pages[1:])
    img = read_image(tmp_path / "stacks" / "a" / "s.tif")
    np.testing.assert_array_equal(img.array, np.stack([VALUES_16 + i for i in range(5)]).astype(np.float32) / 65535)
    ds = ImageFolder(tmp_path / "stacks")
    assert ds.channels == 5 and ds.load(0)[0].channels == 5
    # grey and colour mixed: colour wins, grey is copied to RGB
    (tmp_path / "mixed").mkdir()
    Image.fromarray(VALUES_16).save(tmp_path / "mixed" / "g.tif")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "mixed" / "c.png")
    mixed = ImageFolder(tmp_path / "mixed")
    grey = mixed.load([p for p, _ in mixed.samples].index(str(tmp_path / "mixed" / "g.tif")))[0]
    assert mixed.channels == 3 and grey.channels == 3 and np.array_equal(grey.array[0], grey.array[2])
    # a stack beside RGB images cannot be fitted: the error names both
    pages[0].save(tmp_path / "mixed" / "s.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(DataError, match=r"different channel counts.*c\.png has 3.*s\.tif has 5"):
        ImageFolder(tmp_path / "mixed")
    with pytest.raises(DataError, match=r"s\.tif has 5 channels, the dataset 3"):
        ImageFolder(tmp_path / "mixed", channels=3, bad_images="error").load(
            [p for p, _ in ImageFolder(tmp_path / "mixed", channels=3).samples].index(str(tmp_path / "mixed" / "s.tif")))


def test_16bit_crops_match_the_8bit_path():
    """A 16-bit image holding 8-bit values x 257 crops and resizes as its 8-bit twin does (same PIL filter
    and crop box), up to the 8-bit path's fixed-point filter weights, rounding and clipping."""
    a8 = np.random.default_rng(1).integers(0, 256, (40, 48), dtype=np.uint8)
    planes = Planes((a8.astype(np.float32) * 257 / 65535)[None])
    t = RandomResizedCropFlip(16, mean=(0.0,), std=(1.0,))
    x16, x8 = t(planes, random.Random(3)), t(Image.fromarray(a8), random.Random(3))
    assert x16.shape == x8.shape == (1, 16, 16)
    np.testing.assert_allclose(x16.clamp(0, 1).numpy(), x8.numpy(), atol=2 / 255)


def _vit(in_chans):
    torch.manual_seed(0)
    return VisionTransformer(**{**VIT_PRESETS["vit_micro_patch4"], "img_size": 16, "in_chans": in_chans}).eval()


def test_rgb_patch_embedding_adapted_to_one_channel_is_the_sum_rule():
    from timm.models import adapt_input_conv
    rgb = _vit(3)
    grey = _vit(1)
    report = load_pretrained(grey, {"model": rgb.state_dict()}, log=False)
    w = rgb.state_dict()["patch_embed.proj.weight"]
    got = grey.state_dict()["patch_embed.proj.weight"]
    assert torch.equal(got, w.sum(1, keepdim=True)) and torch.equal(got, adapt_input_conv(1, w.clone()))
    assert any("summed over RGB" in r for r in report.resized) and "summed over RGB" in str(report)
    # what the rule is for: a grey image gives the features its RGB copy gives the RGB model
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(grey.forward_features(x), rgb.forward_features(x.expand(-1, 3, -1, -1)))
    for n in (2, 5):  # N channels: repeat and rescale by 3/N, exactly as timm does
        assert torch.equal(adapt_in_chans(w, n)[0], adapt_input_conv(n, w.clone()))


def test_only_an_rgb_patch_embedding_is_adapted():
    with pytest.raises(CheckpointMismatchError, match="only an RGB"):
        load_pretrained(_vit(3), {"model": _vit(1).state_dict()}, log=False)


def _grey_folder(root, n=5):
    rng = np.random.default_rng(2)
    for cls in ("x", "y"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 20000, (8 + i, 9), dtype=np.uint16)).save(root / cls / f"{i}.tif")


def test_folder_statistics_are_computed_once_cached_and_renewed_when_a_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_DATA_DIR", str(tmp_path / "cache"))
    _grey_folder(tmp_path / "d")
    ds = ImageFolder(tmp_path / "d")
    pixels = np.concatenate([np.asarray(Image.open(p), np.float64).ravel() / 65535 for p, _ in ds.samples])
    mean, std = folder_norm_stats(ds)
    assert mean == pytest.approx((pixels.mean(),), rel=1e-9) and std == pytest.approx((pixels.std(),), rel=1e-6)
    assert stats_cache_path(ds).is_file()

    import mae_transfer.data.norm_stats as ns

    def no_compute(*a, **k):
        raise AssertionError("recomputed although cached")
    monkeypatch.setattr(ns, "compute_norm_stats", no_compute)
    assert folder_norm_stats(ImageFolder(tmp_path / "d")) == (mean, std)
    Image.fromarray(np.full((8, 9), 60000, np.uint16)).save(tmp_path / "d" / "x" / "0.tif")  # re-saved file
    with pytest.raises(AssertionError, match="recomputed"):
        folder_norm_stats(ImageFolder(tmp_path / "d"))
