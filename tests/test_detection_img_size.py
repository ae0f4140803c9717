"""tools/train_det.py --img-size N: every key tied to the input size follows N (the rule of
detection/img_size.py), the model built from the result takes N x N inputs with tables sized for them, a
size that cannot work stops with one line saying why and what would, and a short real run at a size
other than the config's trains and evaluates."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from detection.config import ConfigError, load_config  # noqa: E402
from detection.img_size import set_img_size  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("train_det", ROOT / "tools" / "train_det.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_demo_config_at_64_sets_every_dependent_key():
    cfg = load_config("vitdet_scenes_demo")  # made for 48 px: x 4/3
    lines = set_img_size(cfg, 64)
    net, augs = cfg.model.backbone.net, cfg.dataloader.train.mapper.augmentations
    assert net.img_size == 64 and cfg.model.backbone.square_pad == 64
    assert (augs[0].short_edge_length, augs[0].max_size) == (64, 64)  # train at the size it tests at
    test_aug = cfg.dataloader.test.mapper.augmentations[0]
    assert (test_aug.short_edge_length, test_aug.max_size) == (64, 64)
    assert OmegaConf.to_container(cfg.model.proposal_generator.anchor_generator.sizes) == [[21.33], [32], [48]]
    assert cfg.model.roi_heads.box_pooler.canonical_box_size == cfg.model.roi_heads.mask_pooler.canonical_box_size == 64
    # kept: the pretraining grid of the position embeddings and windows, the data, the anchor strides
    assert (net.pretrain_img_size, net.window_size, cfg.data.scenes.image_size) == (32, 6, 48)
    assert list(cfg.model.proposal_generator.anchor_generator.strides) == [4, 8, 16]
    printed = "\n".join(lines)
    for key in ("model.backbone.net.img_size = 64", "model.backbone.square_pad = 64",
                "train.mapper.augmentations.0.short_edge_length = 64 (ResizeShortestEdge)",
                "dataloader.test.mapper.augmentations.0.max_size = 64",
                "anchor_generator.sizes = [[21.33], [32], [48]]",
                "box_pooler.canonical_box_size = 64", "16x16 token grid, zero-padded to 18x18"):
        assert key in printed, (key, printed)
    # the model built from it: global blocks' tables for 16x16 tokens, pyramid p2-p4 of a 64 px input
    model = instantiate(cfg.model).eval()
    glob = model.backbone.net.blocks[2]
    assert glob.window_size == 0 and glob.attn.rel_pos_h.shape[0] == 2 * 16 - 1
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 64, 64))
    assert {k: tuple(v.shape[-2:]) for k, v in feats.items()} == {"p2": (16, 16), "p3": (8, 8), "p4": (4, 4)}


def test_own_size_changes_nothing_and_vitdet_b_scales_its_defaults():
    cfg, ref = load_config("vitdet_scenes_demo"), load_config("vitdet_scenes_demo")
    set_img_size(cfg, 48)
    assert LazyConfig.to_py(cfg) == LazyConfig.to_py(ref)
    b = load_config("vitdet_mae_b")
    set_img_size(b, 512)
    assert (b.model.backbone.net.img_size, b.model.backbone.square_pad) == (512, 512)
    assert OmegaConf.to_container(b.model.proposal_generator.anchor_generator.sizes) == [[16], [32], [64], [128], [256]]
    # detectron2's default canonical box (224) is scaled as if the config had written it
    assert b.model.roi_heads.box_pooler.canonical_box_size == b.model.roi_heads.mask_pooler.canonical_box_size == 112
    fpn = load_config("fpn_mae_b")  # the ViT sits under the FPN's bottom_up
    set_img_size(fpn, 768)
    assert (fpn.model.backbone.bottom_up.net.img_size, fpn.model.backbone.square_pad) == (768, 768)


def test_key_value_overrides_win_over_the_rule():
    ov = ["model.roi_heads.box_pooler.canonical_box_size=40",
          "model.proposal_generator.anchor_generator.sizes=[[8],[16],[32]]"]
    cfg = load_config("vitdet_scenes_demo", ov)
    lines = set_img_size(cfg, 64, ov)
    assert cfg.model.roi_heads.box_pooler.canonical_box_size == 40
    assert cfg.model.roi_heads.mask_pooler.canonical_box_size == 64
    assert OmegaConf.to_container(cfg.model.proposal_generator.anchor_generator.sizes) == [[8], [16], [32]]
    assert "canonical_box_size = 40 (as the key=value override gave it)" in "\n".join(lines)
    with pytest.raises(ConfigError, match="both set the input size"):
        set_img_size(load_config("vitdet_scenes_demo", ["model.backbone.net.img_size=96"]), 64,
                     ["model.backbone.net.img_size=96"])


@pytest.mark.parametrize("size, why, works", [
    (50, "not a multiple of the patch size 4 (model.backbone.net.patch_size)", "48 or 64"),
    (40, "not a multiple of the coarsest pyramid stride 16", "32 or 48"),
    (16, "its 4x4 token grid is smaller than one 6x6-token attention window", "32"),
])
def test_bad_size_is_one_line_saying_why(size, why, works, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _tool().cli(["--config", "vitdet_scenes_demo", "--weights", "none", "--img-size", str(size),
                     "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith(f"train_det.py: error: --img-size {size}: {why}")
    assert last.endswith(f"sizes that work: {works}")
    assert not (tmp_path / "run").exists()  # stopped before anything was written


def test_tiny_run_at_another_size_trains_and_evaluates(tmp_path):
    out = tmp_path / "run"
    _tool().cli(["--config", "vitdet_scenes_demo", "--weights", "none", "--img-size", "64", "--output-dir", str(out),
                 "--vis", "0", "model.backbone.net.embed_dim=32", "model.backbone.net.depth=3",
                 "model.backbone.net.num_heads=2", "model.backbone.net.global_blocks=[2]",
                 "data.scenes.num_train=8", "data.scenes.num_val=4",
                 f"data.scenes.root={tmp_path / 'scenes'}", "dataloader.train.total_batch_size=2",
                 "model.roi_heads.box_predictor.test_score_thresh=0.0", "train.max_iter=2", "train.log_period=1"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["img_size"] == 64 and m["max_iter"] == 2
    assert isinstance(m["bbox/AP"], float) and isinstance(m["segm/AP"], float)
    assert "--img-size 64 (the config is made for 48" in (out / "log.txt").read_text()  # the start-up block
    saved = LazyConfig.load(str(out / "config.yaml"))  # the run's config records the derived sizes
    assert (saved.model.backbone.net.img_size, saved.model.backbone.square_pad) == (64, 64)
    assert json.loads((out / "inference" / "coco_instances_results.json").read_text())  # detections were scored
