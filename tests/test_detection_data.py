"""Bad input: COCO jsons with problems give a clear error naming the item or a counted skip; weights of
the wrong model give a key/shape report; pretrained ViTs of every format load into the detector."""

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("detectron2")

from detectron2.config import instantiate  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from detection.checkpoint import load_weights  # noqa: E402
from detection.data import CocoFormatError, register_coco_dataset, validate_coco_json  # noqa: E402
from detection.config import load_config  # noqa: E402
from mae_transfer.checkpoint import CheckpointMismatchError, save_checkpoint  # noqa: E402
from mae_transfer.models.mae import mae_from_preset  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SQUARE = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]  # a 20x20 polygon


@pytest.fixture()
def coco(tmp_path):
    """A valid 2-image COCO dataset (64x48 images) with polygon masks; returns (json dict, image dir)."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for i in (1, 2):
        Image.fromarray(np.full((48, 64, 3), 40 * i, np.uint8)).save(img_dir / f"{i}.jpg")
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in (1, 2)],
        "categories": [{"id": 1, "name": "shirt"}, {"id": 7, "name": "bag"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0,
             "segmentation": [SQUARE]},
            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0,
             "segmentation": [SQUARE]},
        ],
    }
    return data, img_dir


def _check(tmp_path, data, img_dir, **kw):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return validate_coco_json(path, img_dir, **kw)


def test_valid_json_passes_unchanged(tmp_path, coco):
    data, img_dir = coco
    clean, rep = _check(tmp_path, data, img_dir)
    assert (rep.num_images, rep.num_annotations, rep.num_categories) == (2, 2, 2)
    assert not rep.skipped and not rep.repaired and rep.has_masks and not rep.uses_rle
    assert clean["annotations"][0]["bbox"] == [10.0, 10.0, 20.0, 20.0]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("annotations"), "missing or non-list top-level key 'annotations'"),
    (lambda d: d["images"][1].pop("file_name"), r"images\[1\] needs an integer 'id' and a 'file_name'"),
    (lambda d: d["images"].append(dict(d["images"][0])), "image id 1 appears twice"),
    (lambda d: d["images"].append({"id": 3, "file_name": "gone.jpg", "width": 5, "height": 5}),
     "1 image files missing under .*: gone.jpg"),
    (lambda d: d["annotations"][1].update(category_id=3),
     r"annotations\[1\] \(id 2\) has category_id 3, which is not in 'categories' \(ids: 1, 7\)"),
    (lambda d: d["annotations"][0].pop("image_id"), r"annotations\[0\] \(id 1\) has no 'image_id'"),
    (lambda d: d["annotations"][0].update(image_id=99), "refers to image_id 99, which is not in 'images'"),
    (lambda d: d.update(images=[]), "empty dataset, 'images' is empty"),
    (lambda d: d.update(annotations=[]), "empty dataset, no usable annotation left for training"),
])
def test_unusable_json_is_a_clear_error(tmp_path, coco, mutate, message):
    data, img_dir = coco
    mutate(data)
    with pytest.raises(CocoFormatError, match=message):
        _check(tmp_path, data, img_dir)


def test_repairable_and_skippable_annotations_are_counted(tmp_path, coco):
    data, img_dir = coco
    a = data["annotations"]
    base = copy.deepcopy(a[0])
    a[0]["bbox"] = [-5, 30, 30, 40]                                    # reaches outside: clipped
    a.append({**base, "id": 3, "bbox": [10, 10, 0, 5]})                 # zero width: skipped
    a.append({**base, "id": 4, "bbox": [70, 60, 5, 5]})                 # wholly outside: skipped
    a.append({**base, "id": 5, "segmentation": [[1, 2, 3, 4, 5]]})      # odd coordinates: no valid mask left
    a.append({**base, "id": 6, "segmentation": [[0, 0, 5, 5, 10, 10]]})  # collinear, zero area
    a.append({**base, "id": 7, "segmentation": [SQUARE, [1, 1, 2, 2]]})  # one bad polygon dropped, kept
    a.append({**base, "id": 8, "segmentation": {"size": [10, 10], "counts": [100]}})  # RLE of another size
    a.append({k: v for k, v in base.items() if k not in ("bbox", "area", "id")})       # box/area/id from mask
    a.append({**base, "id": 9, "ignore": 1})                            # detectron2 refuses 'ignore': crowd
    clean, rep = _check(tmp_path, data, img_dir)
    by_id = {x["id"]: x for x in clean["annotations"]}
    assert by_id[1]["bbox"] == [0.0, 30.0, 25.0, 18.0]
    assert set(by_id) == {1, 2, 7, 9, 10}  # the box-less one got id 10
    assert by_id[10]["bbox"] == [10.0, 10.0, 20.0, 20.0] and by_id[10]["area"] == pytest.approx(400, abs=30)
    assert by_id[9]["iscrowd"] == 1 and "ignore" not in by_id[9]
    assert len(by_id[7]["segmentation"]) == 1
    assert rep.skipped == {  # annotations, each counted once
        "zero-area boxes or boxes outside the image": 2,
        "annotations without a valid mask (the dataset has masks)": 3,
    }
    assert rep.dropped_masks == {  # the polygons / masks behind them
        "polygons with an odd number of coordinates or < 3 points": 2,
        "zero-area polygons": 1,
        "RLE masks of another size than their image": 1,
    }
    assert rep.repaired["boxes clipped to the image"] == 1
    assert rep.repaired["boxes derived from masks"] == 1 and rep.repaired["annotation ids assigned"] == 1
    assert "skipped 5 annotations" in str(rep)  # ids 3, 4, 5, 6, 8


def test_missing_image_size_is_read_from_the_file(tmp_path, coco):
    data, img_dir = coco
    del data["images"][0]["width"], data["images"][0]["height"]
    clean, rep = _check(tmp_path, data, img_dir)
    assert (clean["images"][0]["width"], clean["images"][0]["height"]) == (64, 48)
    assert rep.repaired["image sizes read from the files"] == 1


def test_registration_serves_loader_and_evaluator(tmp_path, coco):
    data, img_dir = coco
    data["annotations"][0]["bbox"] = [50, 40, 30, 30]  # clipped in the registered copy
    (tmp_path / "ann.json").write_text(json.dumps(data))
    rep = register_coco_dataset("dettest_reg", tmp_path / "ann.json", img_dir, tmp_path / "cache")
    dicts = DatasetCatalog.get("dettest_reg")
    assert len(dicts) == 2 and dicts[0]["annotations"][0]["bbox"] == [50.0, 40.0, 14.0, 8.0]
    meta = MetadataCatalog.get("dettest_reg")
    assert meta.thing_classes == ["shirt", "bag"] and Path(meta.json_file).parent == tmp_path / "cache"
    assert rep.repaired["boxes clipped to the image"] == 1
    register_coco_dataset("dettest_reg", tmp_path / "ann.json", img_dir, tmp_path / "cache2")  # re-register
    assert Path(MetadataCatalog.get("dettest_reg").json_file).parent == tmp_path / "cache2"


def test_tool_reports_bad_json_in_one_line(tmp_path, coco):
    data, img_dir = coco
    data["annotations"][1]["category_id"] = 42
    (tmp_path / "bad.json").write_text(json.dumps(data))
    r = subprocess.run([sys.executable, str(ROOT / "tools/train_det.py"), "--config", "vitdet_scenes_mini",
                        "--weights", "none", "--output-dir", str(tmp_path / "out"),
                        "--train-json", str(tmp_path / "bad.json"), "--train-images", str(img_dir),
                        "--val-json", str(tmp_path / "bad.json"), "--val-images", str(img_dir)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert re.search(r"train_det.py: error: .*bad.json: annotations\[1\] \(id 2\) has category_id 42", last), r.stderr[-2000:]
    assert "Traceback" not in r.stderr


# ---- weights ------------------------------------------------------------------------------------------
def _mini_detector():
    cfg = load_config("vitdet_scenes_mini")
    torch.manual_seed(0)
    return instantiate(cfg.model)


def test_mae_checkpoint_loads_into_the_backbone(tmp_path):
    mae = mae_from_preset("mae_vit_mini_patch4")
    save_checkpoint({"model": mae.state_dict(), "config": {"model": "mae_vit_mini_patch4"}}, tmp_path / "mae.pth")
    det = _mini_detector()
    rep = load_weights(det, str(tmp_path / "mae.pth"))
    assert rep.format == "mae"
    assert any(k.startswith("decoder_") for k in rep.unexpected) and "cls_token" in rep.unexpected
    assert {k for k in rep.missing} == {f"blocks.{i}.attn.rel_pos_{a}" for i in range(6) for a in "hw"}
    vit = det.backbone.net
    torch.testing.assert_close(vit.blocks[5].mlp.fc2.weight, mae.blocks[5].mlp.fc2.weight)
    torch.testing.assert_close(vit.pos_embed, mae.pos_embed)  # cls row kept, 8x8 grid = pretraining grid


def test_timm_style_supervised_vit_loads_with_resized_positions(tmp_path):
    from mae_transfer.models.vit import vit_from_preset

    sup = vit_from_preset("vit_mini_patch4", img_size=48, num_classes=10, global_pool="token")  # 12x12 grid
    torch.save(sup.state_dict(), tmp_path / "sup.pth")
    det = _mini_detector()
    rep = load_weights(det, str(tmp_path / "sup.pth"))
    assert any(r.startswith("pos_embed (1, 145, 128)->(1, 65, 128)") for r in rep.resized)
    assert {"head.weight", "head.bias", "norm.weight", "norm.bias", "cls_token"} <= set(rep.unexpected)


def test_wrong_model_weights_are_reported_by_key_and_shape(tmp_path):
    other = mae_from_preset("mae_vit_micro_patch4")  # 64-d, 4 blocks: not the mini detector's ViT
    save_checkpoint({"model": other.state_dict()}, tmp_path / "micro.pth")
    with pytest.raises(CheckpointMismatchError) as e:
        load_weights(_mini_detector(), str(tmp_path / "micro.pth"))
    msg = str(e.value)
    assert "missing keys (24)" in msg and "blocks.4.norm1.weight" in msg
    assert "wrong shapes" in msg and "checkpoint (64,) vs model (128,)" in msg
    assert "micro.pth" in msg and "backbone.net" in msg


def test_detector_checkpoint_of_another_config_is_refused(tmp_path):
    det = _mini_detector()
    sd = det.state_dict()
    sd["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(21, 256)
    torch.save({"model": sd}, tmp_path / "det.pth")
    with pytest.raises(CheckpointMismatchError, match=r"cls_score.weight: checkpoint \(21, 256\) vs model \(11, 256\)"):
        load_weights(_mini_detector(), str(tmp_path / "det.pth"))


def test_dataset_flags_rewire_the_config(tmp_path, coco):
    from detection.datasets import setup_datasets

    data, img_dir = coco
    (tmp_path / "masks.json").write_text(json.dumps(data))
    for a in data["annotations"]:
        del a["segmentation"]
    (tmp_path / "boxes.json").write_text(json.dumps(data))
    cfg = load_config("vitdet_mae_b", [f"data.train_json={tmp_path / 'boxes.json'}", f"data.train_images={img_dir}",
                                       f"data.val_json={tmp_path / 'masks.json'}", f"data.val_images={img_dir}",
                                       "data.name=mine"])
    reports = setup_datasets(cfg, tmp_path / "cache")
    assert (cfg.dataloader.train.dataset.names, cfg.dataloader.test.dataset.names) == ("mine_train", "mine_val")
    assert cfg.dataloader.evaluator.dataset_name == "mine_val"
    assert cfg.model.roi_heads.num_classes == 2  # from the json's categories, not COCO's 80
    # a box-only training set: no mask head, no mask targets
    assert not reports["train"].has_masks and cfg.model.roi_heads.mask_head is None
    assert cfg.dataloader.train.mapper.use_instance_mask is False
