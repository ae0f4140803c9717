"""tools/compare.py: aggregation of finished cells (mean ± std, best in bold), resumability, failures."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import compare  # noqa: E402


def write(path: Path, metrics: dict):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.json").write_text(json.dumps(metrics))


def test_table_from_finished_cells_is_not_recomputed(tmp_path):
    out = tmp_path / "cmp"
    for init in ("mae", "supervised"):
        write(out / "pretrain" / init, {"wall_s": 1.0, "epochs": 4, "steps": 10, "effective_batch": 256})
    values = {("mae", 0): 40.0, ("mae", 1): 44.0, ("supervised", 0): 41.0, ("supervised", 1): 41.0,
              ("scratch", 0): 30.0, ("scratch", 1): 31.0}
    for (init, seed), v in values.items():
        write(out / "runs" / "det" / init / f"seed{seed}", {"bbox/AP": v, "segm/AP": v - 5, "wall_s": 2.0})
        write(out / "runs" / "seg" / init / f"seed{seed}", {"mIoU": 100 - v, "wall_s": 2.0})
    rc = compare.main(["--out", str(out), "--tasks", "det", "seg", "--seeds", "0", "1"])
    assert rc == 0
    table = (out / "table.md").read_text()
    assert "| mae | **42.0 ± 2.8** | **37.0 ± 2.8** | 58.0 ± 2.8 |" in table
    assert "| scratch | 30.5 ± 0.7 | 25.5 ± 0.7 | **69.5 ± 0.7** |" in table
    assert "| *MAE − scratch* | +11.50 | +11.50 | -11.50 |" in table
    assert "Published numbers" in table and "50.3 / 44.9" in table
    assert "mae: 4 epoch(s), 10 steps x batch 256 = 2,560 images seen" in table
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 3 * 2 * 3  # inits x seeds x metrics
    assert {r["value"] for r in rows if r["init"] == "mae" and r["metric"] == "mIoU"} == {"60.0", "56.0"}
    assert (out / "comparison.png").stat().st_size > 10_000
    assert (out / "failed.txt").read_text() == ""


def test_mean_std():
    assert compare.mean_std([1.0, 3.0]) == pytest.approx((2.0, 2 ** 0.5))
    assert compare.mean_std([5.0]) == (5.0, 0.0)


def test_failed_cell_is_reported_not_hidden(tmp_path):
    """A broken checkpoint given as an extra init: its cell fails in the real tool, the rest is tabled."""
    out = tmp_path / "cmp"
    bad = tmp_path / "broken.pth"
    bad.write_text("not a checkpoint")
    write(out / "runs" / "linprobe" / "scratch" / "seed0", {"top1": 66.0, "wall_s": 1.0})
    r = subprocess.run([sys.executable, "tools/compare.py", "--out", str(out), "--inits", "scratch",
                        "--init", f"broken={bad}", "--tasks", "linprobe", "--seeds", "0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "linprobe/broken/seed0: FAILED" in r.stdout and "broken.pth" in r.stdout
    table = (out / "table.md").read_text()
    assert "| scratch | **66.0 ± 0.0** |" in table and "| broken | failed |" in table
    assert "linprobe/broken/seed0" in (out / "failed.txt").read_text()


def test_running_step_shows_progress_and_times_out(tmp_path, capsys):
    script = "import sys, time\nfor i in range(3):\n    sys.stdout.write(f'\\r\\x1b[1mstep {i}\\x1b[0m'); sys.stdout.flush(); time.sleep(0.4)\ntime.sleep(30)"
    log = tmp_path / "log.txt"
    t = __import__("time").time()
    rc = compare.run_logged([sys.executable, "-c", script], log, timeout=2.0, label="toy", every=0.5)
    assert rc == 124 and __import__("time").time() - t < 10
    out = capsys.readouterr().out
    assert "[compare] toy (" in out and "step 2" in out and "\x1b" not in out
    assert compare.last_line(log) == "[compare] timed out after 2.0 s"


def test_predictions_figure_draws_every_init_on_the_same_scenes(tmp_path):
    """predictions.png from the val_predictions.npz files the detection and segmentation cells write."""
    import numpy as np

    from mae_transfer.data.scenes import generate_scenes

    root = generate_scenes(tmp_path / "scenes", num_train=1, num_val=3, image_size=48, num_items=(1, 2),
                           item_size=(18, 30), progress=False)
    files = np.array(sorted(str(p) for p in (root / "images" / "validation").glob("*.jpg")))
    out = tmp_path / "cmp"
    det = out / "runs" / "det" / "mae" / "seed0"
    seg = out / "runs" / "seg" / "scratch" / "seed0"
    det.mkdir(parents=True)
    seg.mkdir(parents=True)
    mask = np.zeros((2, 48, 48), bool)
    mask[:, 10:30, 12:28] = True
    np.savez(det / "val_predictions.npz", file_names=files, image_index=np.array([0, 2]),
             boxes=np.array([[12, 10, 28, 30], [0, 0, 20, 20]], np.float32), classes=np.array([3, 8]),
             scores=np.array([0.9, 0.6], np.float32), masks=mask)
    np.savez(seg / "val_predictions.npz", file_names=files, labels=np.random.default_rng(0).integers(0, 11, (3, 48, 48)))
    path = compare.transfer_figure(out, ["mae", "supervised", "scratch"], 0)
    assert path == out / "predictions.png" and path.stat().st_size > 20_000
    assert compare.transfer_figure(tmp_path / "empty", ["mae"], 0) is None


def test_cells_start_when_their_init_is_ready(tmp_path):
    """One pool for pretrainings and cells: the MAE's cells take the core the MAE frees while the supervised
    baseline still trains, and the cells of an init whose pretraining failed do not run (result None)."""
    import threading
    import time

    events, lock = [], threading.Lock()

    class TimedRunner(compare.Runner):
        def step(self, label, cmd, out_dir, index, env=None, keys=()):
            with lock:
                events.append(("start", label))
            time.sleep({"pretrain mae": 0.1, "pretrain supervised": 0.6}.get(label, 0.05))
            with lock:
                events.append(("end", label))
            return None if label == "pretrain supervised" else {"top1": 1.0}

    runner = TimedRunner(tmp_path, compare.PRESETS["demo"], None)
    cells = [compare.Cell(i, "linprobe", 0, tmp_path / i) for i in ("mae", "supervised", "scratch")]
    weights = {"scratch": "none"}
    results = compare.run_all(runner, ["mae", "supervised"], weights, cells, jobs=2)
    order = list(events)
    assert order.index(("start", "linprobe/mae/seed0")) < order.index(("end", "pretrain supervised"))
    assert ("start", "linprobe/supervised/seed0") not in order
    assert results[("mae", "linprobe", 0)] == {"top1": 1.0} and results[("supervised", "linprobe", 0)] is None
    assert results[("scratch", "linprobe", 0)] == {"top1": 1.0}
    assert weights["mae"].endswith("pretrain/mae/checkpoint-final.pth") and "supervised" not in weights
    running, peak = 0, 0
    for kind, _ in order:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2  # never more steps at once than jobs
