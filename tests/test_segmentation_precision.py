"""Training precision of segmentation runs: ``tools/train_seg.py --precision`` rewrites the optim wrapper
(the config's own by default, so the demo keeps its bf16), ``--precision auto`` times fp32 and bf16 on a
training batch with the real Runner, logs both times, trains in the chosen one (a forward hook sees its
dtype) and evaluates in fp32; the fp16 wrapper on CPU scales the loss and keeps its scaler in checkpoints."""

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmseg")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import train_seg  # noqa: E402

import segmentation.run as seg_run  # noqa: E402
from mae_transfer.data.scenes import generate_scenes  # noqa: E402
from segmentation.autocast import AutocastOptimWrapper  # noqa: E402
from segmentation.precision import apply_precision  # noqa: E402


def _cfg(name):
    from mmengine.config import Config

    return Config.fromfile(str(REPO / "configs" / "segmentation" / f"{name}.py"))


def test_precision_flag_rewrites_the_optim_wrapper_and_config_keeps_the_demos():
    demo = _cfg("upernet_mae_scenes_demo")
    before = demo.optim_wrapper.to_dict()
    apply_precision(demo, "config")
    assert demo.optim_wrapper.to_dict() == before and before["dtype"] == "bfloat16"  # the demo as it was
    for precision, (kind, dtype) in {"fp32": ("OptimWrapper", None), "bf16": ("AutocastOptimWrapper", "bfloat16"),
                                     "auto": ("AutocastOptimWrapper", "auto")}.items():
        cfg = _cfg("upernet_mae_b_ade20k")  # mmengine's AmpOptimWrapper with a dynamic loss scale
        apply_precision(cfg, precision)
        ow = cfg.optim_wrapper
        assert (ow.type, ow.get("dtype")) == (kind, dtype) and "loss_scale" not in ow
        assert ow.paramwise_cfg == _cfg("upernet_mae_b_ade20k").optim_wrapper.paramwise_cfg
    from mae_transfer.common import ConfigError

    bad = _cfg("upernet_mae_scenes_demo")
    bad.optim_wrapper.dtype = "bf17"
    with pytest.raises(ConfigError, match="optim_wrapper.dtype of AutocastOptimWrapper .* got 'bf17'"):
        apply_precision(bad, "config")


def test_fp16_wrapper_scales_the_loss_on_cpu_and_checkpoints_its_scaler():
    model = torch.nn.Linear(8, 2)
    wrapper = AutocastOptimWrapper(dtype="float16", optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with wrapper.optim_context(model):
        out = model(torch.randn(4, 8))
    assert out.dtype == torch.float16
    loss = out.float().square().mean()
    wrapper.update_params(loss)
    state = wrapper.state_dict()
    assert state["loss_scaler"]["scale"] == wrapper.loss_scaler.get_scale() > 1  # a scaled loss
    wrapper.loss_scaler.update(1.0)
    wrapper.load_state_dict(state)
    assert wrapper.loss_scaler.get_scale() == state["loss_scaler"]["scale"]
    undecided = AutocastOptimWrapper(dtype="auto", optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match="PrecisionProbeHook"):
        with undecided.optim_context(model):
            pass


def test_auto_probes_logs_both_times_and_trains_in_the_choice(tmp_path, monkeypatch):
    scenes = generate_scenes(tmp_path / "scenes", num_train=8, num_val=4, seed=3, progress=False)
    seen = set()  # (training?, dtype) of a backbone linear layer, once the probe has decided
    original = seg_run._train

    def recording_train(runner):
        def hook(m, i, o):
            if getattr(runner.optim_wrapper, "precision", None) != "auto":  # built, and decided
                seen.add((m.training, o.dtype))

        next(m for m in runner.model.backbone.modules() if isinstance(m, torch.nn.Linear)).register_forward_hook(hook)
        return original(runner)

    monkeypatch.setattr(seg_run, "_train", recording_train)
    work = tmp_path / "work"
    rc = train_seg.main(["--config", "upernet_mae_mini_scenes", "--weights", "none", "--work-dir", str(work),
                         "--data-root", str(scenes), "--precision", "auto", "--cfg-options", "train_cfg.max_iters=2",
                         "train_cfg.val_interval=2", "train_dataloader.batch_size=4", "val_dataloader.batch_size=4",
                         "param_scheduler=[]", "default_hooks.visualization.draw=False"])
    assert rc == 0
    m = json.loads((work / "metrics.json").read_text())
    assert m["precision"] in ("fp32", "bf16") and set(m["precision_probe_s"]) == {"fp32", "bf16"}
    assert all(v > 0 for v in m["precision_probe_s"].values())
    log = "\n".join(p.read_text() for p in work.glob("*/*.log"))
    assert f"precision auto: {m['precision']} (one forward + backward" in log
    trained = torch.bfloat16 if m["precision"] == "bf16" else torch.float32
    assert seen == {(True, trained), (False, torch.float32)}, seen  # training in the choice, evaluation in fp32
