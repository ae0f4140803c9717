"""Training precision of detection runs through the real detectron2 trainer and tools/train_det.py: a
bf16 run on CPU really autocasts (its layers see bf16 activations, the losses stay fp32, evaluation runs
in fp32) and ends at the fp32 run's loss; train.precision=auto times both, logs both times, and a second
run takes the cached choice without probing and trains exactly as the probed run did."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("detectron2")

ROOT = Path(__file__).resolve().parent.parent
# the tiny set-up of test_detection_train.py: 32-d, 2 blocks, 16 + 6 scenes
TINY = ["model.backbone.net.embed_dim=32", "model.backbone.net.depth=2", "model.backbone.net.num_heads=2",
        "model.backbone.net.global_blocks=[1]", "dataloader.train.total_batch_size=2",
        "model.roi_heads.box_predictor.test_score_thresh=0.0", "data.scenes.num_train=16",
        "data.scenes.num_val=6", "train.log_period=2", "optimizer.lr=0.001", "train.eval_period=0"]
# bf16 rounds every matmul input to 8 mantissa bits: after 8 steps its loss may differ from fp32's by a
# little (measured: 0.08 %), not by 5 %
LOSS_RTOL = 0.05


def _tool():
    spec = importlib.util.spec_from_file_location("train_det", ROOT / "tools" / "train_det.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(tmp, name, *opts):
    out = tmp / name
    _tool().cli(["--config", "vitdet_scenes_mini", "--weights", "none", "--output-dir", str(out), "--seed", "0",
                 "--vis", "0", *TINY, f"data.scenes.root={tmp / 'scenes'}", *opts])
    return out, json.loads((out / "metrics.json").read_text())


_BUILD_MODEL = {}


def _recording_build_model(monkeypatch):
    """Wrap detection.engine.build_model so that forward hooks record (training?, dtype) of a backbone
    block's first linear layer and of the box classifier, and the dtypes of the training losses."""
    import detection.engine as engine

    seen = {"backbone": set(), "head": set(), "losses": set()}
    original = _BUILD_MODEL.setdefault("original", engine.build_model)  # one recording wrapper at a time

    def build(cfg):
        model = original(cfg)
        linear = next(m for m in model.backbone.net.blocks[0].modules() if isinstance(m, torch.nn.Linear))
        linear.register_forward_hook(lambda m, i, o: seen["backbone"].add((m.training, o.dtype)))
        model.roi_heads.box_predictor.cls_score.register_forward_hook(
            lambda m, i, o: seen["head"].add((m.training, o.dtype)))
        model.register_forward_hook(lambda m, i, o: seen["losses"].update(v.dtype for v in o.values())
                                    if isinstance(o, dict) else None)
        return model

    monkeypatch.setattr(engine, "build_model", build)
    return seen


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("det_precision")


def test_bf16_run_autocasts_on_cpu_and_reaches_the_fp32_loss(tmp, monkeypatch):
    runs = {}
    for precision in ("fp32", "bf16"):
        seen = _recording_build_model(monkeypatch)
        _, m = _run(tmp, precision, "train.max_iter=8", f"train.precision={precision}", "train.device=cpu")
        runs[precision] = m
        assert m["precision"] == precision
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        # training steps run in the chosen precision, the final COCO evaluation in fp32
        assert seen["backbone"] == seen["head"] == {(True, dtype), (False, torch.float32)}, seen
        assert seen["losses"] == {torch.float32}
    fp32, bf16 = runs["fp32"], runs["bf16"]
    for m in (fp32, bf16):
        assert m["loss_last"] < 0.9 * m["loss_first"]
    assert bf16["loss_last"] == pytest.approx(fp32["loss_last"], rel=LOSS_RTOL)
    assert bf16["loss_last"] != fp32["loss_last"]  # the runs did differ in precision


def test_auto_logs_both_times_caches_the_choice_and_reuses_it(tmp, monkeypatch):
    from mae_transfer import precision as core

    out, m = _run(tmp, "auto", "train.max_iter=2", "train.precision=auto")
    assert m["precision"] in ("fp32", "bf16") and set(m["precision_probe_s"]) == {"fp32", "bf16"}
    assert all(v > 0 for v in m["precision_probe_s"].values())
    assert m["precision"] == core.choose_precision(m["precision_probe_s"])
    log = (out / "log.txt").read_text()
    line = next(ln for ln in log.splitlines() if "train.precision=auto:" in ln)
    assert f"auto: {m['precision']} (one forward + backward" in line and "fp32 " in line and "bf16 " in line
    cache = json.loads(core.cache_path().read_text())
    assert [e["choice"] for k, e in cache.items() if "GeneralizedRCNN" in k] == [m["precision"]]

    def no_probe(*a, **k):
        raise AssertionError("the cached decision should have been used")

    monkeypatch.setattr(core, "_time_step", no_probe)
    out2, m2 = _run(tmp, "auto_again", "train.max_iter=2", "train.precision=auto")
    assert m2["precision"] == m["precision"] and m2["precision_probe_s"] == pytest.approx(m["precision_probe_s"])
    assert "train.precision=auto: " + m["precision"] + " (cached in" in (out2 / "log.txt").read_text()
    # the probe's batch and forward passes left no trace: the probed run and the cached one trained alike
    assert m2["loss_first"] == m["loss_first"] and m2["loss_last"] == m["loss_last"]


def test_precision_key_defaults_follow_amp_enabled():
    from detection.config import load_config
    from detection.engine import training_precision
    from mae_transfer.common import ConfigError

    cpu = ["train.device=cpu"]
    demo = load_config("vitdet_scenes_demo", cpu)
    assert demo.train.precision is None and training_precision(demo) == "fp32"  # the demo as before
    assert training_precision(load_config("vitdet_scenes_demo", [*cpu, "train.amp.enabled=True"])) == "bf16"
    assert training_precision(load_config("vitdet_scenes_demo", [*cpu, "train.amp.enabled=True",
                                                                 "train.precision=fp32"])) == "fp32"
    assert training_precision(load_config("vitdet_mae_b", cpu)) == "bf16"  # amp.enabled=True, on a CPU
    with pytest.raises(ConfigError, match="train.precision must be one of fp32, bf16, fp16, auto"):
        training_precision(load_config("vitdet_scenes_demo", [*cpu, "train.precision=bf17"]))
