"""The bad-input catalogue (issue 13): untrusted checkpoints, faults and bad values across the four CLIs
(``pretrain/run.py``, ``tools/train_det.py``, ``tools/train_seg.py``, ``tools/convert.py``). Every case
asserts the exit status, that the one-line message names the file or key at fault, that no traceback is
printed and that nothing was overwritten or executed. Tiny data and configs, in-process ``main(argv)``
calls, so the catalogue runs in the default test run."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import train_seg  # noqa: E402

from mae_transfer.checkpoint import save_checkpoint  # noqa: E402
from mae_transfer.models.mae import mae_from_preset  # noqa: E402


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def make_payload(path: Path, marker: Path, raw: bool = False) -> Path:
    """A checkpoint whose unpickling would create ``marker``: a torch zip (or a raw pickle)."""
    obj = {"state_dict": {"w": torch.zeros(1)}, "meta": _Payload(marker)}
    if raw:
        import pickle
        path.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _drop_logging_errors(err: str) -> str:
    """Remove the "--- Logging error ---" reports of the frameworks' loggers whose handlers still hold an
    earlier in-process case's (closed) captured stream: an artefact of running the CLIs in one process."""
    out, skipping = [], False
    for line in err.splitlines():
        if line.startswith("--- Logging error ---"):
            skipping = True
        elif skipping and line.startswith("Arguments:"):
            skipping = False
            continue
        if not skipping:
            out.append(line)
    return "\n".join(out)


def assert_clean_error(rc, err, *names, status=2):
    err = _drop_logging_errors(err)
    assert rc == status, err
    assert "Traceback" not in err, err
    for n in names:
        assert str(n) in err, (n, err)


# ---- segmentation ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from mae_transfer.data.scenes import generate_scenes
    return generate_scenes(tmp_path_factory.mktemp("scenes") / "s", num_train=4, num_val=2, seed=3, progress=False)


SEG_FAST = ["train_dataloader.batch_size=2", "val_dataloader.batch_size=2", "param_scheduler=[]",
            "default_hooks.logger.interval=1", "default_hooks.visualization.draw=False",
            "train_cfg.max_iters=1", "train_cfg.val_interval=1"]


def _seg(capsys, scenes, work, *extra, cfg_options=()):
    rc = train_seg.main(["--config", "upernet_mae_mini_scenes", "--weights", "none", "--work-dir", str(work),
                         "--data-root", str(scenes), *extra, "--cfg-options", *SEG_FAST, *cfg_options])
    out = capsys.readouterr()
    return rc, out.err + out.out


@pytest.mark.parametrize("how", ["resume_file", "last_checkpoint", "load_from", "raw_pickle_load_from"])
def test_seg_checkpoint_payload_never_runs(how, scenes, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    payload = make_payload(tmp_path / "payload.pth", marker, raw=how.startswith("raw"))
    work = tmp_path / "work"
    if how == "resume_file":
        rc, err = _seg(capsys, scenes, work, "--resume", str(payload))
    elif how == "last_checkpoint":
        work.mkdir()
        (work / "last_checkpoint").write_text(str(payload))
        rc, err = _seg(capsys, scenes, work, "--resume")
    else:
        rc, err = _seg(capsys, scenes, work, cfg_options=[f"load_from={payload}"])
    assert_clean_error(rc, err, payload, "refusing")
    assert not marker.exists()
    assert not (work / "metrics.json").exists()


# ---- detection -----------------------------------------------------------------------------------------
DET_TINY = ["model.backbone.net.embed_dim=32", "model.backbone.net.depth=2", "model.backbone.net.num_heads=2",
            "model.backbone.net.global_blocks=[1]", "dataloader.train.total_batch_size=2",
            "data.scenes.num_train=4", "data.scenes.num_val=2", "train.log_period=1", "train.eval_period=0"]


@pytest.fixture(scope="module")
def det_scenes(tmp_path_factory):
    return tmp_path_factory.mktemp("det_scenes")


def _det(capsys, det_scenes, out, *args, overrides=()):
    """tools/train_det.py in-process: (exit status, stderr)."""
    tool = _tool("train_det")
    try:
        tool.cli(["--config", "vitdet_scenes_mini", "--output-dir", str(out), "--vis", "0", *args, *DET_TINY,
                  f"data.scenes.root={det_scenes / 's'}", *overrides])
        rc = 0
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("how", ["weights", "eval_only", "resume_last_checkpoint"])
def test_det_checkpoint_payload_never_runs(how, det_scenes, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    out = tmp_path / "out"
    out.mkdir()
    payload = make_payload(out / "model_0000009.pth", marker)
    if how == "weights":
        rc, err = _det(capsys, det_scenes, out, "--weights", str(payload), overrides=["train.max_iter=1"])
    elif how == "eval_only":
        rc, err = _det(capsys, det_scenes, out, "--eval-only", "--weights", str(payload))
    else:
        (out / "last_checkpoint").write_text(payload.name)
        rc, err = _det(capsys, det_scenes, out, "--resume", "--weights", "none", overrides=["train.max_iter=1"])
    assert_clean_error(rc, err, payload, "refusing")
    assert not marker.exists() and not (out / "metrics.json").exists()


# ---- pretrain/run.py -------------------------------------------------------------------------------------
PRE_TINY = ["model=vit_micro_patch4", "train_subset=32", "eval_subset=32", "batch_size=16", "epochs=1",
            "progress=false", "log_every=1", "save_every_epochs=0"]


def _pretrain(capsys, *argv):
    from pretrain.run import main
    rc = main(list(argv))
    return rc, capsys.readouterr().err


@pytest.fixture()
def mae_folder(tmp_path):
    """A folder holding a finished MAE pretraining: checkpoint-final.pth and metrics.json."""
    d = tmp_path / "mae"
    save_checkpoint({"model": mae_from_preset("mae_vit_micro_patch4").state_dict(), "config": {}},
                    d / "checkpoint-final.pth")
    (d / "metrics.json").write_text('{"mode": "pretrain", "status": "ok"}\n')
    (d / "config.json").write_text('{"mode": "pretrain"}\n')
    return d


@pytest.mark.parametrize("mode", ["linprobe", "finetune", "partial"])
def test_transfer_into_the_folder_of_its_checkpoint_is_refused(mode, mae_folder, capsys):
    ckpt = mae_folder / "checkpoint-final.pth"
    before = {p.name: digest(p) for p in mae_folder.iterdir()}
    extra = ["--blocks", "1"] if mode == "partial" else []
    rc, err = _pretrain(capsys, "--mode", mode, "--weights", str(ckpt), "--out", str(mae_folder), *extra,
                        *PRE_TINY)
    assert_clean_error(rc, err, ckpt, "--out")
    assert {p.name: digest(p) for p in mae_folder.iterdir()} == before


@pytest.mark.parametrize("raw", [False, True], ids=["torch_zip", "raw_pickle"])
@pytest.mark.parametrize("tool", ["pretrain", "convert"])
def test_payload_through_pretrain_and_convert_never_runs(tool, raw, tmp_path, capsys):
    marker = tmp_path / "ran"
    payload = make_payload(tmp_path / "payload.pth", marker, raw=raw)
    if tool == "pretrain":
        rc, err = _pretrain(capsys, "--mode", "linprobe", "--weights", str(payload), "--out", str(tmp_path / "lp"),
                            *PRE_TINY)
    else:
        rc, err = _convert(None, payload, tmp_path / "out.pth")
        assert not (tmp_path / "out.pth").exists()
    assert_clean_error(rc, err, payload, "refusing to load", "raw pickle" if raw else "could run code")
    assert not marker.exists()


def test_pretrain_options_after_the_overrides_are_options(tmp_path, capsys):
    out = tmp_path / "run"
    rc, err = _pretrain(capsys, *PRE_TINY, "--out", str(out), "--seed", "3")
    assert rc == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["out"] == str(out) and cfg["seed"] == 3 and not (REPO / "--out").exists()


# ---- finished runs are never silently overwritten ------------------------------------------------------
def _digests(folder: Path, names=("metrics.json", "model_final.pth", "weights.pth")) -> dict:
    return {n: digest(folder / n) for n in names if (folder / n).is_file()}


@pytest.fixture(scope="module")
def det_finished(det_scenes, tmp_path_factory):
    """A finished 1-iteration detection run."""
    out = tmp_path_factory.mktemp("det_done") / "run"
    tool = _tool("train_det")
    tool.cli(["--config", "vitdet_scenes_mini", "--output-dir", str(out), "--vis", "0", "--weights", "none",
              *DET_TINY, f"data.scenes.root={det_scenes / 's'}", "train.max_iter=1"])
    assert (out / "metrics.json").is_file() and (out / "model_final.pth").is_file()
    return out


def test_det_training_into_a_finished_output_dir_is_refused(det_finished, det_scenes, capsys):
    before = _digests(det_finished)
    rc, err = _det(capsys, det_scenes, det_finished, "--weights", "none", overrides=["train.max_iter=1"])
    assert_clean_error(rc, err, det_finished, "metrics.json", "--overwrite")
    assert _digests(det_finished) == before


def test_det_eval_only_writes_beside_the_training_metrics(det_finished, det_scenes, capsys):
    before = _digests(det_finished)
    rc, err = _det(capsys, det_scenes, det_finished, "--eval-only")
    assert rc == 0, err
    assert _digests(det_finished) == before
    ev = json.loads((det_finished / "eval_metrics.json").read_text())
    assert ev["eval_only"] and ev["weights"].endswith("model_final.pth")
    # the evaluation ran through faster-coco-eval's C++ COCOeval, not pycocotools' Python one
    import detectron2.evaluation.coco_evaluation as coco_evaluation
    from faster_coco_eval import COCOeval_faster
    assert coco_evaluation.COCOeval_opt is COCOeval_faster


def test_det_overwrite_after_the_overrides_is_an_option(det_finished, det_scenes, tmp_path, capsys):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(det_finished, out)
    before = json.loads((out / "metrics.json").read_text())
    rc, err = _det(capsys, det_scenes, out, "--weights", "none", overrides=["train.max_iter=1", "--overwrite"])
    assert rc == 0, err
    assert json.loads((out / "metrics.json").read_text())["wall_s"] != before["wall_s"]


def test_seg_training_into_a_finished_work_dir_is_refused(scenes, tmp_path, capsys):
    work = tmp_path / "work"
    rc, err = _seg(capsys, scenes, work)
    assert rc == 0, err
    before = _digests(work)
    assert set(before) == {"metrics.json", "weights.pth"}
    rc, err = _seg(capsys, scenes, work)
    assert_clean_error(rc, err, work, "metrics.json", "--overwrite")
    assert _digests(work) == before


# ---- tools/convert.py ------------------------------------------------------------------------------------
def _convert(capfd, *argv):
    """tools/convert.py as a process: its exit status and stderr."""
    import subprocess
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "convert.py"), *map(str, argv)],
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr


def test_convert_refuses_its_input_as_output_and_a_directory(tmp_path, capfd):
    ckpt = tmp_path / "mae.pth"
    save_checkpoint({"model": mae_from_preset("mae_vit_micro_patch4").state_dict()}, ckpt)
    before = digest(ckpt)
    for dst, words in ((ckpt, "is the input"), (tmp_path, "is a directory")):
        rc, err = _convert(capfd, ckpt, dst)
        assert_clean_error(rc, err, dst, words)
    assert digest(ckpt) == before and list(tmp_path.iterdir()) == [ckpt]


# ---- standard COCO polygons (detectron2's FixedSizeCrop needs shapely) -----------------------------------
def test_det_polygon_mask_json_trains_and_evaluates(scenes, tmp_path, capsys):
    """A COCO json with polygon masks (the standard format) trains and evaluates end to end."""
    paths = {}
    for split in ("training", "validation"):
        data = json.loads((scenes / "coco" / f"instances_{split}.json").read_text())
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        paths[split] = tmp_path / f"{split}.json"
        paths[split].write_text(json.dumps(data))
    out = tmp_path / "out"
    tool = _tool("train_det")
    metrics = tool.main(tool.parse_args([
        "--config", "vitdet_scenes_mini", "--output-dir", str(out), "--vis", "0", "--weights", "none",
        "--train-json", str(paths["training"]), "--train-images", str(scenes / "images" / "training"),
        "--val-json", str(paths["validation"]), "--val-images", str(scenes / "images" / "validation"),
        *DET_TINY, "train.max_iter=2"]))
    assert "segm/AP" in metrics and "polygons" in (out / "log.txt").read_text()


# ---- images: corrupt files, 16-bit depth ------------------------------------------------------------------
def _tiny_coco(tmp_path, sizes=True) -> tuple[Path, Path]:
    """Two 32x32 8-bit images with one box each; returns (json, image folder)."""
    import numpy as np
    from PIL import Image
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    images, anns = [], []
    for i in (1, 2):
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(img_dir / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", **({"height": 32, "width": 32} if sizes else {})})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 10, 10], "area": 100, "iscrowd": 0})
    js = tmp_path / "coco.json"
    js.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}))
    return js, img_dir


@pytest.mark.parametrize("case", ["garbage", "truncated_png_no_size", "16bit_png", "16bit_tiff"])
def test_det_unusable_image_files_are_named_up_front(case, tmp_path):
    import numpy as np
    from PIL import Image

    from detection.data import CocoFormatError, validate_coco_json
    js, img_dir = _tiny_coco(tmp_path, sizes=case != "truncated_png_no_size")
    bad = img_dir / "2.png"
    if case == "garbage":
        bad.write_bytes(b"not an image at all")
    elif case == "truncated_png_no_size":
        bad.write_bytes(bad.read_bytes()[:40])
    elif case == "16bit_png":
        Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(bad)
    else:  # a microscope's 16-bit grey TIFF, as the json names it
        bad.unlink()
        bad = img_dir / "2.tif"
        Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(bad)
        js.write_text(js.read_text().replace('"2.png"', '"2.tif"'))
    with pytest.raises(CocoFormatError) as e:
        validate_coco_json(js, img_dir)
    msg = str(e.value)
    assert bad.name in msg and "1.png" not in msg and "\n" not in msg
    assert ("8-bit" in msg) if case.startswith("16bit") else ("not a readable image" in msg)


def test_pretrain_reader_scales_16bit_images_instead_of_clipping(tmp_path):
    import numpy as np
    from PIL import Image

    from mae_transfer.data.datasets import ImageFolder
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.full((16, 16), 1000, np.uint16)).save(d / "a.png")        # 16-bit PNG
    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(d / "b.tif")       # 16-bit TIFF
    ds = ImageFolder(d)
    imgs = [ds.load(i)[0].array for i in range(2)]  # full depth: float planes, one channel (grey stays grey)
    assert ds.channels == 1 and imgs[0].shape == (1, 16, 16)
    assert sorted(float(a.max()) for a in imgs) == pytest.approx([1000 / 65535, 32768 / 65535], abs=1e-7)


# ---- bad option values ------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, names", [
    ("train.max_iter=abc", ["train.max_iter", "integer", "abc"]),
    ("dataloader.train.total_batch_size=-2", ["total_batch_size", "> 0"]),
    ("optimizer.lr=fast", ["optimizer.lr", "number"]),
    ("train.max_itr=5", ["max_itr", "has no key"]),
    ("train.precision=bf17", ["train.precision", "bf17"]),
])
def test_det_bad_override_values(override, names, det_scenes, tmp_path, capsys):
    rc, err = _det(capsys, det_scenes, tmp_path / "out", "--weights", "none", overrides=[override])
    assert_clean_error(rc, err, *names)
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize("option, names", [
    ("train_cfg.max_itrs=5", ["train_cfg.max_itrs", "has no key"]),
    ("train_dataloader.batch_size=-2", ["train_dataloader.batch_size", "> 0"]),
    ("train_cfg.max_iters=abc", ["train_cfg.max_iters", "integer"]),
    ("optim_wrapper.optimizer.lr=[1]", ["optim_wrapper.optimizer.lr", "number"]),
    ("no_such_section.x=1", ["no_such_section"]),
])
def test_seg_bad_cfg_option_values(option, names, scenes, tmp_path, capsys):
    rc, err = _seg(capsys, scenes, tmp_path / "work", cfg_options=[option])
    assert_clean_error(rc, err, *names)
    assert not (tmp_path / "work" / "metrics.json").exists()


# ---- crash safety: atomic checkpoints, fall-back to the newest intact one, orphans removed ---------------
def test_seg_resume_falls_back_from_a_torn_checkpoint_and_removes_orphans(scenes, tmp_path, capsys):
    import mmengine.runner.runner as mm_runner

    from segmentation.checkpoint import atomic_save_checkpoint
    assert mm_runner.save_checkpoint is atomic_save_checkpoint  # mmengine's writes go through atomic_write
    work = tmp_path / "work"
    rc, err = _seg(capsys, scenes, work, cfg_options=["train_cfg.max_iters=2", "default_hooks.checkpoint.interval=1",
                                                   "default_hooks.checkpoint.max_keep_ckpts=3"])
    assert rc == 0, err
    assert (work / "last_checkpoint").read_text().strip().endswith("iter_2.pth")
    torn = work / "iter_2.pth"
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])  # a write killed half-way (no rename)
    orphan = work / ".iter_3.pth.x1y2.tmp"
    orphan.write_bytes(b"\0" * 100)
    rc, err = _seg(capsys, scenes, work, "--resume",
                   cfg_options=["train_cfg.max_iters=3", "default_hooks.checkpoint.interval=1"])
    assert rc == 0, err
    assert "iter_2.pth" in err and "torn" in err and "iter_1.pth" in err
    assert not orphan.exists()
    assert json.loads((work / "metrics.json").read_text())["iters"] == 3


def test_seg_resume_with_nothing_to_resume_says_so(scenes, tmp_path, capsys):
    rc, err = _seg(capsys, scenes, tmp_path / "work", "--resume")
    assert rc == 0, err
    assert "no checkpoint" in err and "iteration 0" in err


def test_det_resume_falls_back_from_a_torn_checkpoint_and_removes_orphans(det_scenes, tmp_path, capsys):
    out = tmp_path / "run"
    rc, err = _det(capsys, det_scenes, out, "--weights", "none",
                   overrides=["train.max_iter=2", "train.checkpointer.period=1", "train.checkpointer.max_to_keep=3"])
    assert rc == 0, err
    final = out / "model_final.pth"
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    final.write_bytes(final.read_bytes()[: final.stat().st_size // 2])
    orphan = out / ".model_0000005.pth.abc123.tmp"
    orphan.write_bytes(b"\0" * 100)
    rc, err = _det(capsys, det_scenes, out, "--resume", "--weights", "none", overrides=["train.max_iter=3"])
    assert rc == 0, err
    log = (out / "log.txt").read_text()
    assert "model_final.pth is unreadable" in log and "model_0000001.pth instead" in log and not orphan.exists()
    assert json.loads((out / "metrics.json").read_text())["start_iter"] == 2


def test_det_resume_with_nothing_to_resume_says_so(det_scenes, tmp_path, capsys):
    out = tmp_path / "run"
    rc, err = _det(capsys, det_scenes, out, "--resume", "--weights", "none", overrides=["train.max_iter=1"])
    assert rc == 0, err
    assert "no checkpoint" in (out / "log.txt").read_text()


def test_pretrain_mask_ratio_0_is_refused_and_leaves_config_json(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"mode": "pretrain", "mask_ratio": 0.75}\n')
    before = digest(out / "config.json")
    rc, err = _pretrain(capsys, "--out", str(out), *PRE_TINY, "mask_ratio=0")
    assert_clean_error(rc, err, "mask_ratio", "(0, 1)")
    assert digest(out / "config.json") == before and not (out / "metrics.json").exists()


def test_det_two_point_polygon_is_one_skipped_annotation(tmp_path):
    from detection.data import validate_coco_json
    js, img_dir = _tiny_coco(tmp_path)
    data = json.loads(js.read_text())
    data["annotations"][0]["segmentation"] = [[4, 4, 14, 14]]  # 2 points
    data["annotations"][1]["segmentation"] = [[4, 4, 14, 4, 14, 14, 4, 14]]
    js.write_text(json.dumps(data))
    clean, rep = validate_coco_json(js, img_dir)
    assert sum(rep.skipped.values()) == 1 and len(clean["annotations"]) == 1
    assert "skipped 1 annotations" in str(rep)


def test_pretrain_full_disk_is_one_line_and_keeps_what_was_written(tmp_path, capsys, monkeypatch):
    """A full disk while the final checkpoint is written (fault injected into torch.save): one line naming
    the file; the folder's earlier checkpoint is intact and no temp file is left."""
    import errno

    import mae_transfer.checkpoint as ck
    out = tmp_path / "run"
    assert _pretrain(capsys, "--out", str(out), *PRE_TINY, "epochs=2", "save_every_epochs=1")[0] == 0
    periodic = sorted(out.glob("checkpoint-ep*.pth"))[-1]
    before = digest(periodic)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device", getattr(f, "name", None))
    monkeypatch.setattr(ck.torch, "save", full_disk)
    rc, err = _pretrain(capsys, "--out", str(tmp_path / "run2"), *PRE_TINY)
    assert_clean_error(rc, err, "no space left", "intact", "--resume")
    assert digest(periodic) == before and not list((tmp_path / "run2").glob(".*.tmp"))


# ---- hub weights (.safetensors) by --weights in every tool -------------------------------------------------
# each tool's ViT in the tiny runs above: pretrain's vit_micro_patch4, DET_TINY's, the seg config's vit_mini_patch4
TOOL_VITS = {"pretrain": dict(embed_dim=64, depth=4, num_heads=4), "det": dict(embed_dim=32, depth=2, num_heads=2),
             "seg": dict(embed_dim=128, depth=6, num_heads=4)}


def _with_weights(tool, capsys, weights, out, scenes, det_scenes):
    """``tool`` run by flags with ``--weights weights`` into ``out``: (exit status, its messages)."""
    if tool == "pretrain":
        return _pretrain(capsys, "--mode", "linprobe", "--weights", str(weights), "--out", str(out), *PRE_TINY)
    if tool == "det":
        return _det(capsys, det_scenes, out, "--weights", str(weights), overrides=["train.max_iter=1"])
    if tool == "seg":
        return _seg(capsys, scenes, out, "--weights", str(weights))  # the later --weights wins
    try:  # convert, in-process
        _tool("convert").main([str(weights), str(out / "out.pth")])
        rc = 0
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def _hf_snapshot_for(tool, folder, **config_changes):
    from hf_layout import hf_snapshot  # tests/hf_layout.py

    from mae_transfer.models.vit import VisionTransformer
    return hf_snapshot(folder, VisionTransformer(img_size=32, patch_size=4, **TOOL_VITS[tool]), **config_changes)


# (seg reads --weights through the same loader; its case is the config check below, one Runner start)
@pytest.mark.parametrize("tool", ["pretrain", "det", "convert"])
def test_truncated_safetensors_weights_are_one_line(tool, scenes, det_scenes, tmp_path, capsys):
    weights = _hf_snapshot_for("det", tmp_path / "hub")
    weights.write_bytes(weights.read_bytes()[:1000])
    out = tmp_path / "out"
    out.mkdir()
    rc, err = _with_weights(tool, capsys, weights, out, scenes, det_scenes)
    assert_clean_error(rc, err, weights, "truncated or not a safetensors file")
    assert not (out / "metrics.json").exists() and not (out / "out.pth").exists()


@pytest.mark.parametrize("tool", ["pretrain", "det", "seg"])
def test_hf_snapshot_weights_reach_the_config_check_in_every_tool(tool, scenes, det_scenes, tmp_path, capsys):
    """A transformers snapshot whose config.json gives another head count than the tool's ViT: the
    weights' shapes fit, so only the loader's Hugging Face path (config.json beside the file) can say so."""
    heads = TOOL_VITS[tool]["num_heads"]
    weights = _hf_snapshot_for(tool, tmp_path / "hub", num_attention_heads=2 * heads)
    rc, err = _with_weights(tool, capsys, weights, tmp_path / "out", scenes, det_scenes)
    assert_clean_error(rc, err, tmp_path / "hub" / "config.json", f"num_attention_heads {2 * heads} (model: {heads})")
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["pretrain", "det", "seg"])
def test_hf_snapshot_weights_train_in_every_tool(tool, scenes, det_scenes, tmp_path, capsys):
    """The same snapshot with its true config.json: each tool loads it by --weights alone and trains."""
    weights = _hf_snapshot_for(tool, tmp_path / "hub")
    out = tmp_path / "out"
    rc, err = _with_weights(tool, capsys, weights, out, scenes, det_scenes)
    assert rc in (0, None), err
    assert str(weights) in (out / "metrics.json").read_text()
    logs = err + "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.suffix in (".txt", ".log"))
    assert f"loaded {weights} (hf-vit-mae format)" in logs and "sizes checked against" in logs, logs[-3000:]
