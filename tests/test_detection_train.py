"""End to end with the real detectron2 trainer, checkpointer, launch and COCOEvaluator on generated
scenes: a short run lowers the loss and reports COCO AP (checked against pycocotools), its checkpoint
re-evaluates to the same AP with --eval-only, and a 2-process CPU launch trains and evaluates."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("detectron2")

ROOT = Path(__file__).resolve().parent.parent
# A tiny ViT (32-d, 2 blocks) on 16 + 6 scenes, so a run takes seconds; every detection score kept
# (test_score_thresh 0) so the evaluator always has predictions to score.
TINY = ["model.backbone.net.embed_dim=32", "model.backbone.net.depth=2", "model.backbone.net.num_heads=2",
        "model.backbone.net.global_blocks=[1]",
        "dataloader.train.total_batch_size=2", "model.roi_heads.box_predictor.test_score_thresh=0.0",
        "data.scenes.num_train=16", "data.scenes.num_val=6", "train.log_period=2", "optimizer.lr=0.001"]


def _tool():
    spec = importlib.util.spec_from_file_location("train_det", ROOT / "tools" / "train_det.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("det")
    out = tmp / "run"
    _tool().cli(["--config", "vitdet_scenes_mini", "--weights", "none", "--output-dir", str(out), "--seed", "0", "--vis", "0",
                 *TINY, f"data.scenes.root={tmp / 'scenes'}", "train.max_iter=8", "train.eval_period=4",
                 "train.checkpointer.period=4"])
    return tmp, out, json.loads((out / "metrics.json").read_text())


def test_short_run_lowers_loss_and_reports_coco_ap(trained):
    tmp, out, m = trained
    assert m["loss_last"] < 0.9 * m["loss_first"], (m["loss_first"], m["loss_last"])
    for key in ("bbox/AP", "segm/AP", "bbox/AP50", "segm/AP75", "wall_s"):
        assert isinstance(m[key], float) and 0.0 <= m[key] <= (100.0 if "AP" in key else 1e5), key
    assert m["weights"] == "none" and m["max_iter"] == 8
    assert [e["iter"] for e in m["evals"]] == [4, 8]  # periodic and final evaluation
    assert (out / "model_0000003.pth").is_file() and (out / "model_final.pth").is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert len((out / "train_log.json").read_text().splitlines()) >= 4  # detectron2's per-iteration log
    # the AP is COCO's: pycocotools on the evaluator's own detections gives the same number
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(out / "datasets" / "scenes_val.json"))
    dets = json.loads((out / "inference" / "coco_instances_results.json").read_text())
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert m["bbox/AP"] == pytest.approx(100 * ev.stats[0], abs=1e-6)


def test_checkpoint_reloads_with_eval_only_to_the_same_ap(trained):
    tmp, out, m = trained
    ev_out = tmp / "eval"
    _tool().cli(["--config", "vitdet_scenes_mini", "--eval-only", "--weights", str(out / "model_final.pth"), "--vis", "2",
                 "--output-dir", str(ev_out), *TINY, f"data.scenes.root={tmp / 'scenes'}"])
    e = json.loads((ev_out / "metrics.json").read_text())
    assert e["eval_only"] and e["weights"].endswith("model_final.pth")
    assert (e["bbox/AP"], e["segm/AP"]) == (m["bbox/AP"], m["segm/AP"])
    assert (ev_out / "predictions.png").stat().st_size > 10_000


def test_resume_continues_from_the_last_checkpoint(trained):
    tmp, out, m = trained
    _tool().cli(["--config", "vitdet_scenes_mini", "--resume", "--output-dir", str(out), "--vis", "0", *TINY,
                 f"data.scenes.root={tmp / 'scenes'}", "train.max_iter=10", "train.eval_period=0"])
    r = json.loads((out / "metrics.json").read_text())
    assert r["start_iter"] == 8 and r["max_iter"] == 10


def test_two_process_cpu_launch(tmp_path):
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, str(ROOT / "tools/train_det.py"), "--config", "vitdet_scenes_mini",
                        "--weights", "none", "--num-gpus", "2", "--output-dir", str(out), "--seed", "0", "--vis", "0", *TINY,
                        f"data.scenes.root={tmp_path / 'scenes'}", "train.max_iter=3", "train.eval_period=0"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and isinstance(m["bbox/AP"], float)
    assert "iter: 2" in (out / "log.txt").read_text()


def test_demo_config_trains_and_evaluates(tmp_path):
    """The `make demo` detection setting as compare.py runs it (full demo model, 48 px scenes of 1-3
    items), cut to 3 iterations on 8 + 4 scenes."""
    out = tmp_path / "run"
    _tool().cli(["--config", "vitdet_scenes_demo", "--weights", "none", "--output-dir", str(out), "--seed", "0",
                 "--vis", "0", f"data.scenes.root={tmp_path / 'scenes'}", "data.scenes.num_train=8",
                 "data.scenes.num_val=4", "train.max_iter=3", "model.roi_heads.box_predictor.test_score_thresh=0.0"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["max_iter"] == 3
    # the reported APs are what pycocotools' own COCOeval makes of the saved detections and ground truth
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt = COCO(str(out / "datasets" / "scenes_val.json"))
    dets = json.loads((out / "inference" / "coco_instances_results.json").read_text())
    assert dets, "score threshold 0 keeps detections"
    for iou_type, key in (("bbox", "bbox/AP"), ("segm", "segm/AP")):
        ev = COCOeval(gt, gt.loadRes(dets), iou_type)
        ev.evaluate(), ev.accumulate(), ev.summarize()
        assert abs(100 * max(ev.stats[0], 0.0) - m[key]) < 1e-3, (iou_type, ev.stats[0], m[key])
    params = json.loads((tmp_path / "scenes" / "scenes.json").read_text())
    assert params["image_size"] == 48 and params["num_items"] == [1, 3] and params["item_size"] == [18, 36]


def test_own_three_category_coco_set_trains_by_flags_and_names_its_classes(trained):
    """A user's COCO set by flags alone (issue 11): three categories with their own ids and names, no config
    file written; the classifier is sized from the json and the per-category APs carry the json's names."""
    tmp, _, _ = trained
    scenes = tmp / "scenes"
    splits = {s: json.loads((scenes / "coco" / f"instances_{s}.json").read_text()) for s in ("training", "validation")}
    counts = {}
    for d in splits.values():
        for a in d["annotations"]:
            counts[a["category_id"]] = counts.get(a["category_id"], 0) + 1
    # the three categories found most often in both splits, renumbered 11, 12, 13 under new names
    keep = sorted(c for c in counts if all(any(a["category_id"] == c for a in d["annotations"]) for d in splits.values()))
    keep = sorted(keep, key=lambda c: -counts[c])[:3]
    names = {c: f"thing{i}" for i, c in enumerate(keep)}
    for split, d in splits.items():
        d["categories"] = [{"id": 11 + i, "name": names[c]} for i, c in enumerate(keep)]
        d["annotations"] = [dict(a, category_id=11 + keep.index(a["category_id"])) for a in d["annotations"]
                            if a["category_id"] in names]
        (tmp / f"own_{split}.json").write_text(json.dumps(d))
    out = tmp / "own"
    _tool().cli(["--config", "vitdet_scenes_mini", "--weights", "none", "--output-dir", str(out), "--vis", "0", *TINY,
                 "--train-json", str(tmp / "own_training.json"), "--train-images", str(scenes / "images" / "training"),
                 "--val-json", str(tmp / "own_validation.json"), "--val-images", str(scenes / "images" / "validation"),
                 "train.max_iter=3", "train.eval_period=0"])
    m = json.loads((out / "metrics.json").read_text())
    per_class = sorted(k for k in m if k.startswith("bbox/AP-"))
    assert per_class == sorted(f"bbox/AP-{n}" for n in names.values()), per_class
