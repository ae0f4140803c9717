"""tools/predict.py on real checkpoints of each kind, each from a few iterations of its own tool (train_det.py,
train_seg.py, pretrain/run.py): the expected files at the input images' sizes for grey, RGB, RGBA and 16-bit
inputs, the same detections and label maps as the trainers' own evaluation of the same images, a bad image
skipped and named (or, with --strict, the run stopped), and one-line errors for bad flags and checkpoints."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mae_transfer.predict import read_image

pytest.importorskip("detectron2")
pytest.importorskip("mmseg")

ROOT = Path(__file__).resolve().parent.parent
# (file, PIL mode, (width, height)) of the test images; the pixels come from a validation scene
INPUTS = [("photo.jpg", "RGB", (150, 97)), ("grey.png", "L", (64, 80)), ("sub/alpha.png", "RGBA", (41, 33)),
          ("deep.tif", "I;16", (70, 70))]
BROKEN = "broken.png"


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


predict = _tool("predict")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A detector, a segmenter and an MAE, each trained for a few iterations by its own tool."""
    tmp = tmp_path_factory.mktemp("runs")
    det = tmp / "det"
    _tool("train_det").cli([
        "--config", "vitdet_scenes_mini", "--weights", "none", "--output-dir", str(det), "--seed", "0", "--vis", "0",
        "model.backbone.net.embed_dim=32", "model.backbone.net.depth=2", "model.backbone.net.num_heads=2",
        "model.backbone.net.global_blocks=[1]", "dataloader.train.total_batch_size=2",
        "model.roi_heads.box_predictor.test_score_thresh=0.0", "model.roi_heads.box_predictor.test_topk_per_image=8",
        "data.scenes.num_train=8", "data.scenes.num_val=3",
        f"data.scenes.root={tmp / 'scenes'}", "train.max_iter=2", "train.eval_period=0"])
    seg = tmp / "seg"
    assert _tool("train_seg").main([
        "--config", "upernet_mae_mini_scenes", "--weights", "none", "--work-dir", str(seg),
        "--data-root", str(tmp / "scenes"), "--seed", "0", "--cfg-options", "train_cfg.max_iters=2",
        "train_cfg.val_interval=2", "train_dataloader.batch_size=4", "val_dataloader.batch_size=4", "param_scheduler=[]",
        "default_hooks.visualization.draw=False"]) == 0
    mae = tmp / "mae"
    from pretrain.run import main as pretrain_main
    # on the scenes' training images as an image folder: reading all of Fashion-MNIST would cost more
    assert pretrain_main(["--out", str(mae), "--seed", "0", "--data", str(tmp / "scenes" / "images" / "training"),
                          "model=vit_micro_patch4", "batch_size=4", "epochs=1", "progress=false", "recon_images=2",
                          "save_every_epochs=0"]) == 0
    return {"detector": det / "model_final.pth", "segmenter": seg / "weights.pth",
            "mae": mae / "checkpoint-final.pth", "scenes": tmp / "scenes", "seg_dir": seg, "det_dir": det}


@pytest.fixture(scope="module")
def images(runs, tmp_path_factory):
    """A folder of the INPUTS (sizes and modes as listed) and one broken PNG."""
    folder = tmp_path_factory.mktemp("images")
    scene = Image.open(runs["scenes"] / "images" / "validation" / "000000.jpg").convert("RGB")
    for name, mode, size in INPUTS:
        (folder / name).parent.mkdir(exist_ok=True)
        im = scene.resize(size)
        if mode == "I;16":
            im = Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257)
        elif mode == "RGBA":
            im = im.convert("RGBA")
            im.putalpha(100)
        else:
            im = im.convert(mode)
        im.save(folder / name)
    (folder / BROKEN).write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
    return folder


def _predict(capsys, *argv) -> tuple[int, str]:
    rc = predict.cli([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _out_name(name: str) -> str:
    return str(Path(name).with_suffix("")).replace("/", "__")


def _check_common(out: Path, err: str, kind: str):
    """predict.json names what ran; the broken image was skipped and named, on stderr and in predict.json."""
    summary = json.loads((out / "predict.json").read_text())
    assert summary["kind"] == kind and summary["predicted"] == len(INPUTS)
    assert len(summary["skipped"]) == 1 and BROKEN in summary["skipped"][0]
    assert "warning: skipped: cannot read image" in err and BROKEN in err


def test_detector_writes_coco_results_and_overlays_at_input_sizes(runs, images, tmp_path, capsys):
    out = tmp_path / "det"
    rc, err = _predict(capsys, "--weights", runs["detector"], "--images", images, "--out", out, "--batch-size", 3)
    assert rc == 0, err
    _check_common(out, err, "detector")
    for name, _, (w, h) in INPUTS:
        assert Image.open(out / "overlays" / f"{_out_name(name)}.png").size == (w, h), name
    meta = json.loads((out / "images.json").read_text())
    cats = json.loads((runs["det_dir"] / "datasets" / "scenes_train.json").read_text())["categories"]
    assert meta["categories"] == [{"id": c["id"], "name": c["name"]} for c in sorted(cats, key=lambda c: c["id"])]
    sizes = {im["id"]: (im["width"], im["height"]) for im in meta["images"]}
    assert sorted(sizes.values()) == sorted(size for _, _, size in INPUTS)
    results = json.loads((out / "results.json").read_text())
    assert results, "score threshold 0 keeps detections"
    for r in results:
        w, h = sizes[r["image_id"]]
        x, y, bw, bh = r["bbox"]
        assert -1e-3 <= x and -1e-3 <= y and x + bw <= w + 1e-3 and y + bh <= h + 1e-3, (r["bbox"], w, h)
        assert r["category_id"] in {c["id"] for c in cats} and 0.0 <= r["score"] <= 1.0
        assert r["segmentation"]["size"] == [h, w]
    # pycocotools reads it as a results file of these images
    from pycocotools.coco import COCO
    gt = COCO()
    gt.dataset = {**meta, "annotations": []}
    gt.createIndex()
    assert len(gt.loadRes(results).getAnnIds()) == len(results)


def test_detector_predicts_what_coco_evaluation_scored(runs, tmp_path, capsys):
    """On the validation scenes, predict's detections are those detectron2's COCOEvaluator saved at the
    end of training (same category ids, boxes and scores)."""
    out = tmp_path / "val"
    rc, err = _predict(capsys, "--weights", runs["detector"], "--images", runs["scenes"] / "images" / "validation",
                       "--out", out, "--batch-size", 2)
    assert rc == 0, err
    gt = json.loads((runs["det_dir"] / "datasets" / "scenes_val.json").read_text())
    id_of = {Path(im["file_name"]).name: im["id"] for im in gt["images"]}
    ours = {im["id"]: id_of[Path(im["file_name"]).name] for im in json.loads((out / "images.json").read_text())["images"]}
    evaluated = json.loads((runs["det_dir"] / "inference" / "coco_instances_results.json").read_text())

    def key(rs):
        return sorted((r["image_id"], r["category_id"], round(r["score"], 3), *(round(v, 1) for v in r["bbox"])) for r in rs)

    predicted = [{**r, "image_id": ours[r["image_id"]]} for r in json.loads((out / "results.json").read_text())]
    assert len(predicted) == len(evaluated) > 0
    a, b = np.array(key(predicted)), np.array(key(evaluated))
    assert np.abs(a - b).max() <= 0.11, np.abs(a - b).max()


def test_segmenter_writes_label_maps_and_overlays_at_input_sizes(runs, images, tmp_path, capsys):
    out = tmp_path / "seg"
    rc, err = _predict(capsys, "--weights", runs["segmenter"], "--images", images, "--out", out, "--batch-size", 3)
    assert rc == 0, err
    _check_common(out, err, "segmenter")
    classes = json.loads((out / "classes.json").read_text())
    ids = {c["id"] for c in classes["classes"]}
    assert [c["name"] for c in classes["classes"]][:2] == ["background", "T-shirt/top"] and ids == set(range(11))
    assert sum(c["pixel_fraction"] for c in classes["classes"]) == pytest.approx(1.0)
    for name, _, (w, h) in INPUTS:
        labels = np.asarray(Image.open(out / "labels" / f"{_out_name(name)}.png"))
        assert labels.shape == (h, w) and labels.dtype == np.uint8 and set(np.unique(labels)) <= ids, name
        assert Image.open(out / "overlays" / f"{_out_name(name)}.png").size == (w, h)


def test_segmenter_predicts_what_the_runner_validated(runs, tmp_path, capsys):
    """On the validation scenes, predict's label maps are the ones of the training's last validation
    (val_predictions.npz), from weights.pth and from mmengine's own iter_2.pth alike."""
    val = np.load(runs["seg_dir"] / "val_predictions.npz")
    for weights in (runs["segmenter"], runs["seg_dir"] / "iter_2.pth"):
        out = tmp_path / weights.stem
        rc, err = _predict(capsys, "--weights", weights, "--images", runs["scenes"] / "images" / "validation",
                           "--out", out)
        assert rc == 0, err
        for f, expected in zip(val["file_names"], val["labels"]):
            got = np.asarray(Image.open(out / "labels" / f"{Path(str(f)).stem}.png"))
            assert got.shape == expected.shape and (got == expected).mean() > 0.999, (weights, f)


def test_segmenter_labels_follow_reduce_zero_label(runs, tmp_path, capsys):
    """With the ADE20K convention (0 = ignored "other") the label PNGs hold class index + 1, as the
    training annotations would; --config replaces the config found beside the weights."""
    from mmengine.config import Config
    cfg = Config.fromfile(str(runs["seg_dir"] / "upernet_mae_mini_scenes.py"))
    cfg.test_dataloader.dataset.reduce_zero_label = True
    cfg.dump(str(tmp_path / "ade_convention.py"))
    out = tmp_path / "ade"
    rc, err = _predict(capsys, "--weights", runs["segmenter"], "--config", tmp_path / "ade_convention.py",
                       "--images", runs["scenes"] / "images" / "validation", "--out", out)
    assert rc == 0, err
    val = np.load(runs["seg_dir"] / "val_predictions.npz")
    for f, expected in zip(val["file_names"], val["labels"]):
        got = np.asarray(Image.open(out / "labels" / f"{Path(str(f)).stem}.png"))
        assert (got == expected.astype(np.int64) + 1).mean() > 0.999, f
    classes = json.loads((out / "classes.json").read_text())
    assert classes["reduce_zero_label"] and [c["id"] for c in classes["classes"]] == list(range(1, 12))


def test_mae_writes_a_reconstruction_figure_per_image(runs, images, tmp_path, capsys):
    out = tmp_path / "mae"
    rc, err = _predict(capsys, "--weights", runs["mae"], "--images", images, "--out", out, "--mask-ratio", 0.5)
    assert rc == 0, err
    _check_common(out, err, "mae")
    from pretrain.predict import PANEL_GAP
    for name, _, (w, h) in INPUTS:
        fig = np.asarray(Image.open(out / "reconstructions" / f"{_out_name(name)}.png"))
        assert fig.shape == (h, 4 * w + 3 * PANEL_GAP, 3), name
        original = read_image(images / name, "x").rgb
        assert (fig[:, :w] == original).all(), "the first panel is the input as the model reads it"
        assert not (fig[:, w + PANEL_GAP:2 * w + PANEL_GAP] == original).all(), "the second is masked"
    assert json.loads((out / "predict.json").read_text())["mask_ratio"] == 0.5
    # the 16-bit TIFF is read from its full range, not clipped at 255 (which would make it white)
    scene = Image.open(runs["scenes"] / "images" / "validation" / "000000.jpg").convert("RGB")
    deep, grey = read_image(images / "deep.tif", "d").rgb, scene.resize((70, 70)).convert("L")
    assert np.abs(deep[..., 0].astype(int) - np.asarray(grey, dtype=int)).max() <= 1


def test_strict_stops_at_the_bad_image(runs, images, tmp_path, capsys):
    out = tmp_path / "strict"
    rc, err = _predict(capsys, "--weights", runs["mae"], "--images", images, "--out", out, "--strict")
    lines = [line for line in err.splitlines() if "error" in line]
    assert rc == 2 and len(lines) == 1 and BROKEN in lines[0], err
    assert not (out / "predict.json").exists()


def test_out_dir_rules_and_bad_input(runs, images, tmp_path, capsys):
    out = tmp_path / "again"
    assert _predict(capsys, "--weights", runs["mae"], "--images", images / "grey.png", "--out", out)[0] == 0
    rc, err = _predict(capsys, "--weights", runs["mae"], "--images", images / "grey.png", "--out", out)
    assert rc == 2 and "is not empty" in err and "--overwrite" in err
    (out / "reconstructions" / "grey.png").unlink()
    (out / "mine.txt").write_text("not a prediction")
    assert _predict(capsys, "--weights", runs["mae"], "--images", images / "grey.png", "--out", out, "--overwrite")[0] == 0
    assert (out / "reconstructions" / "grey.png").is_file() and (out / "mine.txt").is_file()
    rc, err = _predict(capsys, "--weights", runs["mae"], "--images", images, "--out", runs["mae"].parent, "--overwrite")
    assert rc == 2 and "folder of the checkpoint" in err
    # an encoder alone: nothing to predict with
    from mae_transfer.checkpoint import save_checkpoint
    from mae_transfer.models.vit import vit_from_preset
    enc = tmp_path / "encoder.pth"
    save_checkpoint({"model": vit_from_preset("vit_micro_patch4").state_dict()}, enc)
    rc, err = _predict(capsys, "--weights", enc, "--images", images, "--out", tmp_path / "x")
    assert rc == 2 and str(enc) in err and "neither a detector" in err
    rc, err = _predict(capsys, "--weights", runs["mae"], "--images", str(images / "*.nothing"), "--out", tmp_path / "y")
    assert rc == 2 and "no image files" in err
    rc, err = _predict(capsys, "--weights", runs["segmenter"], "--images", images, "--out", tmp_path / "z",
                       "--score-thresh", "0.5")
    assert rc == 2 and "--score-thresh is for detectors" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
