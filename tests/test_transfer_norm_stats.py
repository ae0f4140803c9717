"""A pretraining checkpoint's normalisation statistics (``norm_stats``) reach detection and segmentation:
they replace the config's pixel mean / std (0-255 units) unless the command line sets them, and the
run's saved config records them (issue 11, item 2)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mae_transfer.data.norm_stats import checkpoint_norm_stats, framework_norm

ROOT = Path(__file__).resolve().parent.parent
MEAN, STD = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)  # nothing like ImageNet's or the configs' statistics
MEAN_255, STD_255 = [25.5, 51.0, 76.5], [102.0, 127.5, 153.0]


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "pretrained" / "checkpoint-final.pth"
    path.parent.mkdir()
    torch.save({"model": {}, "format": "mae_transfer",
                "norm_stats": {"mean": MEAN, "std": STD, "source": "computed from the training images"}}, path)
    return path


def test_checkpoint_stats_in_framework_units(ckpt, tmp_path):
    stats = checkpoint_norm_stats(ckpt)
    assert stats["mean"] == MEAN and stats["source"] == "computed from the training images"
    assert framework_norm(stats, 3) == (MEAN_255, STD_255)
    # grey statistics stand for R = G = B; other mismatches are refused
    assert framework_norm({"mean": (0.5,), "std": (0.25,)}, 3) == ([127.5] * 3, [63.75] * 3)
    with pytest.raises(ValueError, match="statistics for 2 channel"):
        framework_norm({"mean": (0.5, 0.4), "std": (0.2, 0.2)}, 3)
    torch.save({"model": {}}, tmp_path / "plain.pth")
    assert checkpoint_norm_stats(tmp_path / "plain.pth") is None


def _train_det():
    pytest.importorskip("detectron2")
    spec = importlib.util.spec_from_file_location("train_det", ROOT / "tools" / "train_det.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_detection_takes_the_checkpoints_stats_and_the_command_line_wins(ckpt, tmp_path):
    tool = _train_det()
    from detection.predict import load_run_config

    common = ["--config", "vitdet_scenes_mini", "--weights", str(ckpt), "data.scenes.num_train=4",
              "data.scenes.num_val=2", f"data.scenes.root={tmp_path / 'scenes'}"]
    cfg = tool.setup(tool.parse_args([*common, "--output-dir", str(tmp_path / "a")]))
    assert list(cfg.model.pixel_mean) == pytest.approx(MEAN_255) and list(cfg.model.pixel_std) == pytest.approx(STD_255)
    assert str(ckpt) in cfg.train.norm_stats.source
    saved = load_run_config(tmp_path / "a" / "config.yaml")["model"]
    assert saved["pixel_mean"] == pytest.approx(MEAN_255) and saved["pixel_std"] == pytest.approx(STD_255)
    # --eval-only in that folder (a detector checkpoint holds no statistics) reads the run's config.yaml
    cfg = tool.setup(tool.parse_args([common[0], common[1], *common[4:], "--eval-only", "--output-dir", str(tmp_path / "a")]))
    assert list(cfg.model.pixel_mean) == pytest.approx(MEAN_255) and "config.yaml" in cfg.train.norm_stats.source
    # an explicit setting wins, for the key it names
    cfg = tool.setup(tool.parse_args([*common, "--output-dir", str(tmp_path / "b"), "model.pixel_std=[1.0,2.0,3.0]"]))
    assert list(cfg.model.pixel_std) == [1.0, 2.0, 3.0] and list(cfg.model.pixel_mean) == pytest.approx(MEAN_255)
    assert cfg.train.norm_stats.source.startswith("mean: the checkpoint")
    # random init keeps the config's statistics
    cfg = tool.setup(tool.parse_args([*common[:2], "--weights", "none", *common[4:], "--output-dir", str(tmp_path / "c")]))
    assert list(cfg.model.pixel_mean) != pytest.approx(MEAN_255) and cfg.train.norm_stats.source == "the config"


def test_segmentation_takes_the_checkpoints_stats_and_the_command_line_wins(ckpt, tmp_path):
    pytest.importorskip("mmseg")
    sys.path.insert(0, str(ROOT / "tools"))
    import train_seg

    from segmentation.config import prepare_config

    root = tmp_path / "ade"
    for folder in ("training", "validation"):
        (root / "images" / folder).mkdir(parents=True)
        (root / "annotations" / folder).mkdir(parents=True)
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "images" / folder / "a.jpg")
        Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) % 3, (64, 1))).save(root / "annotations" / folder / "a.png")
    common = ["--config", "upernet_mae_mini_scenes", "--weights", str(ckpt), "--data-root", str(root),
              "--work-dir", str(tmp_path / "w")]
    cfg, _ = prepare_config(train_seg.parse_args(common))
    pre = cfg.model.data_preprocessor
    assert list(pre.mean) == pytest.approx(MEAN_255) and list(pre.std) == pytest.approx(STD_255)
    cfg.dump(str(tmp_path / "dumped.py"))  # what mmengine writes into the work dir
    assert "25.5" in (tmp_path / "dumped.py").read_text() and str(ckpt) in cfg.norm_stats["source"]
    cfg, _ = prepare_config(train_seg.parse_args([*common, "--cfg-options", "model.data_preprocessor.mean=[1.0,2.0,3.0]"]))
    assert list(cfg.model.data_preprocessor.mean) == [1.0, 2.0, 3.0]
    assert list(cfg.model.data_preprocessor.std) == pytest.approx(STD_255)
