"""tools/train_seg.py --img-size N: every key tied to the input size follows N (the rule of
segmentation/img_size.py), the model built from the result is sized for N x N crops, a size that cannot
work stops with one line saying why and what would, and a short real run at a size other than the
config's trains and evaluates at it."""

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import train_seg  # noqa: E402

from mae_transfer.common import ConfigError  # noqa: E402
from mae_transfer.data.scenes import generate_scenes  # noqa: E402
from segmentation.config import prepare_config  # noqa: E402


def _prepare(tmp_path, config, *extra, options=()):
    """The config as tools/train_seg.py would run it, on an empty --data-root that names the demo's classes
    (so that no scenes are generated)."""
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "classes.txt").write_text("\n".join(["background"] + [f"c{i}" for i in range(10)]))
    args = train_seg.parse_args(["--config", config, "--work-dir", str(tmp_path / "w"), "--data-root",
                                 str(tmp_path / "data"), *extra, *(["--cfg-options", *options] if options else [])])
    return prepare_config(args)[0]


def _pipe(cfg, loader):
    return {t["type"]: t for t in cfg[loader].dataset.pipeline}


def test_demo_config_at_64_sets_every_dependent_key(tmp_path, caplog):
    cfg = _prepare(tmp_path, "upernet_mae_scenes_demo", "--img-size", "64")  # made for 48 px: x 4/3
    assert cfg.crop_size == (64, 64) and cfg.model.data_preprocessor.size == (64, 64)
    assert cfg.model.backbone.img_size == 64
    train = _pipe(cfg, "train_dataloader")
    assert train["Resize"].scale == (64, 64) and train["Resize"].keep_ratio
    for loader in ("val_dataloader", "test_dataloader"):
        # the demo tested its 48 px scenes at their own size, its training scale: now resized to 64 first
        pipe = cfg[loader].dataset.pipeline
        assert [t["type"] for t in pipe[:3]] == ["LoadImageFromFile", "Resize", "LoadAnnotations"]
        assert pipe[1].scale == (64, 64) and pipe[1].keep_ratio
    assert cfg.model.test_cfg.mode == "whole"
    assert cfg.scenes.image_size == 48  # the data is not regenerated
    printed = caplog.text
    for line in ("--img-size 64 (the config is made for 48", "crop_size = (64, 64)",
                 "model.data_preprocessor.size = (64, 64)",
                 "model.backbone.img_size = 64", "train_dataloader.dataset.pipeline: Resize scale=(64, 64)", "val_dataloader.dataset.pipeline: Resize scale=(64, 64) (added",
                 "pyramid strides 2, 4, 8, 16 on the 16x16 token grid"):
        assert line in printed, (line, printed)
    # the model built from it: position embeddings and relative-position bias for the 16x16 grid
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import segmentation  # noqa: F401 - registers the backbone
    register_all_modules(init_default_scope=False)
    init_default_scope("mmseg")
    model = MODELS.build(copy.deepcopy(cfg.model)).eval()
    vit = model.backbone.vit
    assert vit.pos_embed.shape[1] == 1 + 16 * 16
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 64, 64), mode="tensor")
    assert logits.shape[-2:] == (32, 32)  # UperNet predicts at the finest level, stride 2


def test_ade_recipe_scales_its_resize_and_sliding_window(tmp_path):
    cfg = _prepare(tmp_path, "upernet_mae_b_ade20k", "--img-size", "640")  # made for 512: x 5/4
    assert cfg.crop_size == (640, 640) and cfg.model.backbone.img_size == 640
    assert _pipe(cfg, "train_dataloader")["RandomResize"].scale == (2560, 640)
    assert _pipe(cfg, "val_dataloader")["Resize"].scale == (2560, 640)
    assert (cfg.model.test_cfg.crop_size, cfg.model.test_cfg.stride) == ((640, 640), (426, 426))


def test_own_size_changes_nothing_and_options_win(tmp_path):
    ref = _prepare(tmp_path, "upernet_mae_scenes_demo")
    same = _prepare(tmp_path, "upernet_mae_scenes_demo", "--img-size", "48")
    assert same.to_dict() == ref.to_dict()
    cfg = _prepare(tmp_path, "upernet_mae_scenes_demo", "--img-size", "64",
                   options=["model.data_preprocessor.size=(80,80)"])
    assert cfg.model.data_preprocessor.size == (80, 80) and cfg.crop_size == (64, 64)
    with pytest.raises(ConfigError, match="both set the backbone's input size"):
        _prepare(tmp_path, "upernet_mae_scenes_demo", "--img-size", "64", options=["model.backbone.img_size=96"])


@pytest.mark.parametrize("size, why, works", [
    (50, "not a multiple of the patch size 4", "48 or 64"),
    (40, "not a multiple of the pyramid's coarsest stride 16 (patch 4 / model.neck.rescales 0.25)", "32 or 48"),
])
def test_bad_size_is_one_line_saying_why(size, why, works, tmp_path, capsys):
    rc = train_seg.main(["--config", "upernet_mae_scenes_demo", "--weights", "none", "--img-size", str(size),
                         "--work-dir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith(f"train_seg.py: error: --img-size {size}: {why}")
    assert last.endswith(f"sizes that work: {works}")
    assert not (tmp_path / "w").exists()


def test_tiny_run_at_another_size_trains_and_evaluates(tmp_path):
    scenes = generate_scenes(tmp_path / "s48", num_train=4, num_val=2, image_size=48, num_items=(1, 3),
                             item_size=(18, 36), progress=False)
    work = tmp_path / "work"
    rc = train_seg.main(["--config", "upernet_mae_scenes_demo", "--weights", "none", "--img-size", "32",
                         "--work-dir", str(work), "--data-root", str(scenes), "--cfg-options", "train_cfg.max_iters=2",
                         "train_dataloader.batch_size=2", "val_dataloader.batch_size=2",
                         "default_hooks.visualization.draw=False"])
    assert rc == 0
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["img_size"] == 32 and metrics["iters"] == 2 and 0 <= metrics["mIoU"] <= 100
    # evaluated on the whole scenes, the predictions brought back to the labels' 48 px
    assert np.load(work / "val_predictions.npz")["labels"].shape == (2, 48, 48)
