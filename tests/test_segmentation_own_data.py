"""tools/train_seg.py on a folder no config knows, by flags only: an ADE-layout set with 4 classes and
0 = ignore (``--reduce-zero-label``), class names from classes.txt or from scanning the label maps."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import train_seg  # noqa: E402

from segmentation.classes import discover_classes  # noqa: E402

NAMES = ["road", "grass", "water", "sky"]
COLOURS = [(90, 90, 90), (40, 160, 40), (30, 60, 200), (200, 220, 255)]


def _write_split(root: Path, split: str, n: int, rng):
    (root / "images" / split).mkdir(parents=True)
    (root / "annotations" / split).mkdir(parents=True)
    for i in range(n):
        lab = np.zeros((64, 64), np.uint8)  # 0 = unlabelled, ignored
        for c in rng.permutation(4)[:3]:
            y, x = rng.integers(0, 40, 2)
            h, w = rng.integers(12, 24, 2)
            lab[y:y + h, x:x + w] = c + 1
        img = np.full((64, 64, 3), 128, np.uint8)
        for c in range(4):
            img[lab == c + 1] = COLOURS[c]
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / split / f"{i:03d}.jpg", quality=95)
        Image.fromarray(lab).save(root / "annotations" / split / f"{i:03d}.png")


@pytest.fixture(scope="module")
def ade4(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade4")
    rng = np.random.default_rng(0)
    _write_split(root, "training", 16, rng)
    _write_split(root, "validation", 8, rng)
    return root


def test_classes_from_names_file_or_scan(ade4, tmp_path):
    assert discover_classes(ade4, reduce_zero_label=True) == (("class_1", "class_2", "class_3", "class_4"), True)
    assert discover_classes(ade4, reduce_zero_label=False)[0][0] == "class_0"
    assert len(discover_classes(ade4, reduce_zero_label=False)[0]) == 5
    (tmp_path / "metainfo.json").write_text(json.dumps({"classes": NAMES, "reduce_zero_label": True}))
    assert discover_classes(tmp_path) == (tuple(NAMES), True)
    with pytest.raises(Exception, match="--num-classes 7"):
        discover_classes(tmp_path, num_classes=7)
    # the config's names replace class_<id> only for a scan, never a names file's own names
    assert discover_classes(ade4, reduce_zero_label=True, known_names=tuple(NAMES)) == (tuple(NAMES), True)
    (tmp_path / "classes.txt").write_text("class_a\nclass_b\nclass_c\nclass_d\n")
    assert discover_classes(tmp_path, known_names=tuple(NAMES))[0] == ("class_a", "class_b", "class_c", "class_d")


def test_four_class_folder_trains_by_flags_with_named_per_class_iou(ade4, tmp_path):
    (ade4 / "classes.txt").write_text("\n".join(NAMES) + "\n")
    work = tmp_path / "work"
    rc = train_seg.main(["--config", "upernet_mae_mini_scenes", "--weights", "none", "--data-root", str(ade4),
                         "--reduce-zero-label", "--work-dir", str(work), "--check-data", "full",
                         "--cfg-options", "train_cfg.max_iters=4", "train_cfg.val_interval=4",
                         "train_dataloader.batch_size=4", "val_dataloader.batch_size=4", "param_scheduler=[]"])
    assert rc == 0
    m = json.loads((work / "metrics.json").read_text())
    assert list(m["per_class_IoU"]) == NAMES
    assert all(v is None or 0 <= v <= 100 for v in m["per_class_IoU"].values())


def test_bad_num_classes_is_a_clear_error(ade4, tmp_path, capsys):
    (ade4 / "classes.txt").write_text("\n".join(NAMES) + "\n")
    rc = train_seg.main(["--config", "upernet_mae_mini_scenes", "--weights", "none", "--data-root", str(ade4),
                         "--num-classes", "3", "--work-dir", str(tmp_path / "w")])
    assert rc == 2
    assert "classes.txt names 4 classes but --num-classes 3" in capsys.readouterr().err


def _layout_args(root: Path, work: Path, splits=("train", "val", "test")) -> list[str]:
    """Flags for a folder laid out as images/<split>/*.png + labels/<split>/*.tif (not ADE20K's names)."""
    opts = []
    for split in splits:
        folder = "training" if split == "train" else "validation"
        ds = f"{split}_dataloader.dataset"
        opts += [f"{ds}.data_prefix.img_path=images/{folder}", f"{ds}.data_prefix.seg_map_path=labels/{folder}",
                 f"{ds}.img_suffix=.png", f"{ds}.seg_map_suffix=.tif"]
    return ["--config", "upernet_mae_mini_scenes", "--weights", "none", "--data-root", str(root),
            "--reduce-zero-label", "--work-dir", str(work), "--cfg-options", *opts]


@pytest.fixture(scope="module")
def tif_layout(ade4, tmp_path_factory):
    """ade4's images as PNG under images/, its label maps as TIFF under labels/, plus a label map with
    no image (left out of the scan) holding an id no training image has."""
    root = tmp_path_factory.mktemp("tif_layout")
    for folder in ("training", "validation"):
        (root / "images" / folder).mkdir(parents=True)
        (root / "labels" / folder).mkdir(parents=True)
        for f in sorted((ade4 / "images" / folder).glob("*.jpg")):
            Image.open(f).save(root / "images" / folder / f"{f.stem}.png")
            Image.open(ade4 / "annotations" / folder / f"{f.stem}.png").save(root / "labels" / folder / f"{f.stem}.tif")
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(root / "labels" / "training" / "orphan.tif")
    return root


def test_class_scan_follows_the_configs_layout(tif_layout, tmp_path):
    from segmentation.config import prepare_config

    cfg, _ = prepare_config(train_seg.parse_args(_layout_args(tif_layout, tmp_path / "w")))
    # ids 1..4 in the TIFF maps that have an image; the orphan's id 9 does not count
    assert cfg.classes == ("class_1", "class_2", "class_3", "class_4")
    assert cfg.model.decode_head.num_classes == 4


def test_full_check_reuses_the_scans_reads(tif_layout, tmp_path, monkeypatch):
    """Each label map is decoded once per run: by the class scan, and not again by --check-data full."""
    import logging

    import PIL.Image

    from segmentation import data as seg_data
    from segmentation.config import prepare_config
    from segmentation.data_check import check_data

    monkeypatch.setattr(seg_data, "_LABEL_INFO", {})
    opened = []
    real_open = PIL.Image.open

    def counting_open(fp, *a, **k):
        if str(fp).endswith(".tif"):
            opened.append(str(fp))
        return real_open(fp, *a, **k)

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    cfg, _ = prepare_config(train_seg.parse_args(_layout_args(tif_layout, tmp_path / "w")))
    summary = check_data(cfg, "full", True, logging.getLogger("test"))  # the orphan label left out
    assert summary["train"]["pairs"] == 16 and summary["val"]["pairs"] == 8
    assert len(opened) == 24 and len(set(opened)) == 24, sorted(opened)


def test_config_class_weights_of_another_count_are_dropped(ade4, tmp_path, caplog):
    """The demo config weights its 11 scene classes; on a 4-class folder those weights would fail the
    first loss computation, so they are dropped (and the log says so)."""
    from segmentation.config import prepare_config

    cfg, _ = prepare_config(train_seg.parse_args(["--config", "upernet_mae_scenes_demo", "--weights", "none",
                                                  "--data-root", str(ade4), "--reduce-zero-label",
                                                  "--work-dir", str(tmp_path / "w")]))
    assert cfg.model.decode_head.num_classes == 4
    assert cfg.model.decode_head.loss_decode.class_weight is None
    assert cfg.model.auxiliary_head.loss_decode.class_weight is None
    assert "model.decode_head.loss_decode.class_weight: 11 weights for 4 classes, dropped" in caplog.text


@pytest.mark.parametrize("reduce_zero_label", [True, False])
def test_balanced_class_weights_from_the_training_pixels(ade4, tmp_path, caplog, reduce_zero_label):
    """--class-weights balanced: sqrt(median share / share) of each class's training pixels, counted here
    from the label maps directly, on both heads' losses; with 0 = ignore the zeros are not a class."""
    import shutil

    from segmentation.config import prepare_config

    root = tmp_path / "data"  # without the names file another test leaves: the class count from the scan
    shutil.copytree(ade4, root, ignore=shutil.ignore_patterns("classes.txt", "metainfo.json"))
    pixels = np.zeros(256)
    for f in sorted((root / "annotations" / "training").glob("*.png")):
        pixels += np.bincount(np.asarray(Image.open(f)).ravel(), minlength=256)
    share = pixels[1:5] if reduce_zero_label else pixels[0:5]
    share = share / share.sum()
    expected = np.sqrt(np.median(share) / share)
    flag = "--reduce-zero-label" if reduce_zero_label else "--no-reduce-zero-label"
    cfg, _ = prepare_config(train_seg.parse_args(["--config", "upernet_mae_scenes_demo", "--weights", "none",
                                                  "--data-root", str(root), flag, "--class-weights", "balanced",
                                                  "--work-dir", str(tmp_path / "w")]))
    for head in (cfg.model.decode_head, cfg.model.auxiliary_head):
        np.testing.assert_allclose(head.loss_decode.class_weight, expected, atol=1e-4)
    assert len(expected) == (4 if reduce_zero_label else 5) and expected.max() - expected.min() > 0.1
    assert "class weights (balanced, from the training pixels): class_" in caplog.text  # names beside
    cfg, _ = prepare_config(train_seg.parse_args(["--config", "upernet_mae_scenes_demo", "--weights", "none",
                                                  "--class-weights", "none", "--work-dir", str(tmp_path / "w")]))
    assert cfg.model.decode_head.loss_decode.class_weight is None


def test_balanced_class_weights_without_label_maps_is_a_clear_error(tmp_path):
    from mae_transfer.common import ConfigError
    from segmentation.classes import balanced_class_weights

    (tmp_path / "images" / "training").mkdir(parents=True)
    (tmp_path / "annotations" / "training").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"--class-weights balanced: .*images/training"):
        balanced_class_weights(tmp_path, 3)
