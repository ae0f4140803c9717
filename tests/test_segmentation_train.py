"""tools/train_seg.py end to end on generated scenes with the real Runner and IoUMetric: the loss goes down,
mIoU lands in metrics.json, the saved checkpoint predicts what the trained model predicted, and bad input
stops with a one-line error naming the file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import train_seg  # noqa: E402

from mae_transfer.checkpoint import save_checkpoint  # noqa: E402
from mae_transfer.data.scenes import generate_scenes  # noqa: E402
from mae_transfer.models.mae import mae_from_preset  # noqa: E402

FAST = ["train_dataloader.batch_size=8", "val_dataloader.batch_size=8", "param_scheduler=[]",
        "default_hooks.logger.interval=1", "default_hooks.visualization.draw=False"]


def _check_miou_is_the_class_mean(metrics: dict):
    """metrics.json's mIoU is the mean of its per-class IoUs (classes absent from the validation labels,
    None, left out as IoUMetric does)."""
    ious = [v for v in metrics["per_class_IoU"].values() if v is not None]
    assert ious and metrics["mIoU"] == pytest.approx(np.mean(ious), abs=0.01), (ious, metrics["mIoU"])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return generate_scenes(tmp_path_factory.mktemp("scenes") / "s", num_train=48, num_val=16, seed=3, progress=False)


@pytest.fixture(scope="module")
def mae_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "mae_mini.pth"
    save_checkpoint({"model": mae_from_preset("mae_vit_mini_patch4").state_dict(), "config": {}}, path)
    return path


@pytest.fixture(scope="module")
def trained(scenes, mae_ckpt, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    rc = train_seg.main(["--config", "upernet_mae_mini_scenes", "--weights", str(mae_ckpt), "--work-dir", str(work),
                         "--data-root", str(scenes), "--seed", "1", "--cfg-options", "train_cfg.max_iters=12",
                         "train_cfg.val_interval=12", *FAST])
    assert rc == 0
    return work


def test_short_run_lowers_loss_and_reports_miou(trained, mae_ckpt):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["weights"] == str(mae_ckpt) and metrics["iters"] == 12
    assert 0 < metrics["mIoU"] <= 100 and metrics["wall_s"] > metrics["train_s"] > 0
    assert set(metrics["per_class_IoU"]) == {"background", "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"}
    _check_miou_is_the_class_mean(metrics)
    scalars = next(trained.glob("*/vis_data/scalars.json")).read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in scalars if '"loss"' in line]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1
    assert (trained / "summary.png").stat().st_size > 0
    # the trained weights, in our format, load back as an encoder (weights_only, our converter path)
    from mae_transfer.checkpoint import load_pretrained
    from segmentation import PlainViTBackbone
    bb = PlainViTBackbone(arch="vit_mini_patch4", img_size=64, out_indices=(5,), init_values=1.0)
    assert load_pretrained(bb.vit, trained / "weights.pth", log=False).format == "mmseg"
    log = next(trained.glob("*/*.log")).read_text()
    assert "PlainViTBackbone: loaded" in log and "pos_embed (1, 65, 128)->(1, 257, 128)" in log


def test_saved_checkpoint_gives_the_same_predictions(trained, tmp_path):
    """Re-evaluating iter_12.pth in a fresh Runner reproduces the in-training validation exactly."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    metrics = json.loads((trained / "metrics.json").read_text())
    cfg = Config.fromfile(str(trained / "upernet_mae_mini_scenes.py"))
    cfg.work_dir, cfg.load_from = str(tmp_path), str(trained / "iter_12.pth")
    again = Runner.from_cfg(cfg).test()
    assert again["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-4)
    assert again["aAcc"] == pytest.approx(metrics["aAcc"], abs=1e-4)


def _rc_and_error(capsys, argv):
    rc = train_seg.main(argv)
    return rc, capsys.readouterr().err


def test_bad_weights_stop_with_a_clear_error(scenes, tmp_path, capsys):
    base = ["--config", "upernet_mae_mini_scenes", "--data-root", str(scenes), "--work-dir", str(tmp_path),
            "--cfg-options", "train_cfg.max_iters=1"]
    rc, err = _rc_and_error(capsys, base + ["--weights", str(tmp_path / "nope.pth")])
    assert rc == 2 and "nope.pth" in err and "does not exist" in err
    save_checkpoint({"model": mae_from_preset("mae_vit_micro_patch4").state_dict()}, tmp_path / "micro.pth")
    rc, err = _rc_and_error(capsys, base + ["--weights", str(tmp_path / "micro.pth")])
    assert rc == 2 and "micro.pth" in err and "does not fit" in err and "wrong shapes" in err


def test_bad_labels_and_unknown_config(scenes, tmp_path, capsys):
    bad = tmp_path / "data"
    subprocess.run(["cp", "-r", str(scenes), str(bad)], check=True)
    label = bad / "annotations" / "validation" / "000003.png"
    Image.fromarray(np.full((128, 128), 42, np.uint8)).save(label)
    rc, err = _rc_and_error(capsys, ["--config", "upernet_mae_mini_scenes", "--data-root", str(bad),
                                     "--work-dir", str(tmp_path / "w")])
    assert rc == 2 and "000003.png: label ids [42] outside the class range 0..10" in err
    rc, err = _rc_and_error(capsys, ["--config", "no_such_config"])
    assert rc == 2 and "no_such_config" in err and "upernet_mae_mini_scenes" in err


def test_skip_bad_data_logs_the_count(scenes, tmp_path):
    from mmengine.logging import MMLogger

    from segmentation.config import prepare_config
    from segmentation.data_check import check_data

    bad = tmp_path / "data"
    subprocess.run(["cp", "-r", str(scenes), str(bad)], check=True)
    os.remove(bad / "annotations" / "training" / "000005.png")
    args = train_seg.parse_args(["--config", "upernet_mae_mini_scenes", "--data-root", str(bad), "--work-dir",
                                 str(tmp_path / "w"), "--skip-bad-data"])
    cfg, _ = prepare_config(args)
    summary = check_data(cfg, "config", True, MMLogger.get_instance("test_skip"))
    assert summary["train"] == {"folder": str(bad / "images" / "training"), "pairs": 47, "skipped": 1}
    names = Path(cfg.train_dataloader.dataset.ann_file).read_text().split()
    assert len(names) == 47 and "000005" not in names


@pytest.mark.slow
def test_two_process_ddp_run_through_torchrun(scenes, tmp_path):
    """torchrun + --launcher pytorch (gloo on CPU): both ranks train, rank 0 writes metrics.json."""
    import socket
    with socket.socket() as sock:  # a free port, not a fixed one another run may hold
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           str(REPO / "tools" / "train_seg.py"), "--config", "upernet_mae_mini_scenes", "--weights", "none",
           "--work-dir", str(tmp_path), "--data-root", str(scenes), "--launcher", "pytorch",
           "--cfg-options", "train_cfg.max_iters=3", "train_cfg.val_interval=3", *FAST]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["iters"] == 3
    _check_miou_is_the_class_mean(metrics)


def test_demo_config_trains_with_head_lr_and_class_weights(tmp_path, mae_ckpt):
    """The `make demo` segmentation setting (48 px scenes of 1-3 items, heads at 10x lr, background weighted
    1/4) with the real Runner, cut to 4 iterations on 8 + 4 scenes."""
    scenes48 = generate_scenes(tmp_path / "s48", num_train=8, num_val=4, image_size=48, num_items=(1, 3),
                               item_size=(18, 36), progress=False)
    work = tmp_path / "work"
    rc = train_seg.main(["--config", "upernet_mae_scenes_demo", "--weights", str(mae_ckpt), "--work-dir", str(work),
                         "--data-root", str(scenes48), "--cfg-options", "train_cfg.max_iters=4",
                         "default_hooks.visualization.draw=False"])
    assert rc == 0
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["iters"] == 4 and metrics["mIoU"] > 0
    _check_miou_is_the_class_mean(metrics)
    log = next(work.glob("*/*.log")).read_text()
    assert "params x10 wd" in log  # the heads' lr group
