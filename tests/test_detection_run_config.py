"""The run's config.yaml is what tools/predict.py rebuilds a detector from: it must hold the model as the
user's data fitted it (the json's category count), not the config file's."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("detectron2")

ROOT = Path(__file__).resolve().parent.parent


def test_config_yaml_has_the_class_count_of_the_users_json(tmp_path):
    from detection.predict import load_run_config

    spec = importlib.util.spec_from_file_location("train_det", ROOT / "tools" / "train_det.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    scenes = tmp_path / "scenes"
    tool.setup(tool.parse_args(["--config", "vitdet_scenes_mini", "--weights", "none", "--output-dir", str(tmp_path / "s"),
                                "data.scenes.num_train=4", "data.scenes.num_val=2", f"data.scenes.root={scenes}"]))
    jsons = {}
    for split in ("training", "validation"):  # the scenes' 10 categories as 3 of the user's own
        d = json.loads((scenes / "coco" / f"instances_{split}.json").read_text())
        d["categories"] = [{"id": 7, "name": "a"}, {"id": 8, "name": "b"}, {"id": 9, "name": "c"}]
        d["annotations"] = [dict(a, category_id=7 + a["category_id"] % 3) for a in d["annotations"]]
        jsons[split] = tmp_path / f"own_{split}.json"
        jsons[split].write_text(json.dumps(d))
    out = tmp_path / "own"
    cfg = tool.setup(tool.parse_args([
        "--config", "vitdet_scenes_mini", "--weights", "none", "--output-dir", str(out),
        "--train-json", str(jsons["training"]), "--train-images", str(scenes / "images" / "training"),
        "--val-json", str(jsons["validation"]), "--val-images", str(scenes / "images" / "validation")]))
    assert cfg.model.roi_heads.num_classes == 3
    assert load_run_config(out / "config.yaml").model.roi_heads.num_classes == 3
