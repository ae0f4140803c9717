#!/usr/bin/env python
"""MAE vs supervised vs scratch: run (or collect) every downstream result and write the comparison.

    python tools/compare.py [--preset demo|small] [--out output/compare] [--seeds 0 1]
                            [--inits mae supervised scratch] [--init NAME=CKPT ...]
                            [--tasks linprobe finetune det seg] [--args STEP=ARGS ...] [--cell-timeout S]

``make demo`` runs it with the defaults: preset demo, seeds 0 1, inits mae supervised scratch.

Steps, each a subprocess of the project's own CLIs (so every cell is exactly what a user would run):
1. pretraining, once per pretrained init: ``pretrain/run.py --mode pretrain`` (MAE) and
   ``--mode supervised`` (the supervised baseline), seed 0, side by side with ``--jobs`` > 1;
   ``--init NAME=CKPT`` adds a checkpoint file
   (an official MAE or DeiT release, say) as a further initialisation, ``scratch`` is random init;
2. downstream cells: for every init x task x seed, ``pretrain/run.py --mode linprobe|finetune``,
   ``tools/train_det.py`` and ``tools/train_seg.py`` with ``--weights`` set to the init; pretrainings and
   cells share ``--jobs`` slots, and a cell starts as soon as a slot is free and its init has weights;
3. ``table.md`` (mean ± std over seeds, best per column in bold, the paper's numbers beside),
   ``results.csv`` (one row per cell and metric), ``comparison.png`` (grouped bars with std) and
   ``predictions.png`` (the same validation scenes through each init's detector and segmenter, seed of
   the first ``--seeds``).

Resumable: a cell whose ``metrics.json`` exists is not recomputed. A failed cell is recorded in
``failed.txt`` and shown as "failed" in the table, with its log path; the other cells still run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# What each task reports: (metric key in metrics.json, column title)
TASK_METRICS = {
    "linprobe": [("top1", "linear probe top-1")],
    "finetune": [("top1", "fine-tune top-1")],
    "det": [("bbox/AP", "AP box"), ("segm/AP", "AP mask")],
    "seg": [("mIoU", "mIoU")],
}

# Per preset: extra arguments of each step (on top of each tool's defaults) and the default tasks.
# "demo" (`make demo`, 25-32 min on 2 CPU cores, README): vit_mini_patch4 pretrained on the colour product
# photos (configs/pretrain/mini_photos.py: 2 MAE epochs, and beside it the supervised baseline, one pass
# over the 60k labelled photos in about the same time), then linear probe, fine-tuning, and Mask R-CNN /
# UperNet on the 48 px demo scenes (vitdet_scenes_demo, upernet_mae_scenes_demo). "small": 4x longer
# scene schedules and a supervised baseline of 2 epochs.
_PHOTOS = ["--config", "configs/pretrain/mini_photos.py"]
PRESETS: dict[str, dict[str, list[str]]] = {
    "demo": {
        "pretrain": _PHOTOS, "supervised": _PHOTOS, "linprobe": _PHOTOS, "finetune": _PHOTOS,
        "det": ["--config", "vitdet_scenes_demo"],
        "seg": ["--config", "upernet_mae_scenes_demo"],
    },
    "small": {
        # supervised baseline with about the MAE's wall time: 2 epochs of all 60k photos
        "pretrain": _PHOTOS, "supervised": [*_PHOTOS, "supervised.train_subset=0", "supervised.epochs=2"],
        "linprobe": _PHOTOS, "finetune": _PHOTOS,
        "det": ["--config", "vitdet_scenes_demo", "train.max_iter=3072"],
        "seg": ["--config", "upernet_mae_scenes_demo", "--cfg-options", "train_cfg.max_iters=1200"],
    },
}
PRESET_TASKS = {"demo": ["linprobe", "finetune", "det", "seg"], "small": ["linprobe", "finetune", "det", "seg"]}
# Downstream cells run side by side, each with its share of the cores. On 2 CPU cores two one-thread
# cells finish 1.4x sooner than one two-thread cell after the other: the small detection and
# segmentation models leave a core idle in Python and data work (measured: 0.38 s / iteration with one
# thread vs 0.27 s with two, vitdet_scenes_demo).
PRESET_JOBS = {"demo": 2, "small": 1}
# A cell's wall time relative to a linear probe's in the demo (detection ~150 s, segmentation and
# fine-tuning ~65 s, linear probe ~30 s): the cells start longest first, so the lanes finish together
# rather than one lane running a detector while the other idles at the end.
TASK_COST = {"det": 5, "seg": 2, "finetune": 2, "linprobe": 1}

# Published numbers at full scale (ImageNet-1K pretraining, COCO, ADE20K), ViT-B / ViT-L.
PAPER = [
    ("IN-1K fine-tune top-1", "MAE (He et al. 2022)", "83.6", "85.9"),
    ("IN-1K linear probe top-1", "MAE (He et al. 2022)", "68.0", "75.8"),
    ("COCO Mask R-CNN AP box / mask", "MAE (He et al. 2022)", "50.3 / 44.9", "53.3 / 47.2"),
    ("COCO Mask R-CNN AP box / mask", "supervised IN-1K (He et al. 2022)", "47.9 / 42.9", "49.3 / 43.9"),
    ("COCO ViTDet Mask R-CNN AP box / mask", "MAE (Li et al. 2022)", "51.6 / 45.9", "55.5 / 49.2"),
    ("ADE20K UperNet mIoU", "MAE (He et al. 2022)", "48.1", "53.6"),
    ("ADE20K UperNet mIoU", "supervised IN-1K (He et al. 2022)", "47.4", "49.9"),
]


@dataclass
class Cell:
    init: str
    task: str
    seed: int
    dir: Path

    @property
    def name(self) -> str:
        return f"{self.task}/{self.init}/seed{self.seed}"


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def last_line(path: Path) -> str:
    """The newest progress line of a log (tqdm redraws with \r), colour codes removed."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [x.strip() for x in re.split(r"[\r\n]", ANSI.sub("", text)) if x.strip()]
    return lines[-1][:160] if lines else ""


def run_logged(cmd: list[str], log: Path, timeout: float | None, env: dict | None = None,
               label: str = "", every: float = 30.0) -> int:
    """Run ``cmd`` from the repo root, output to ``log``; every ``every`` seconds print the log's newest
    line, so progress shows while a step runs. Returns the exit code (124 on timeout)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "w") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        next_print = t0 + every
        while True:
            wait_s = next_print - time.time()
            if timeout is not None:
                wait_s = min(wait_s, t0 + timeout - time.time())
            try:
                return proc.wait(timeout=max(0.05, wait_s))
            except subprocess.TimeoutExpired:
                now = time.time()
                if timeout is not None and now - t0 >= timeout:
                    proc.kill()
                    proc.wait()
                    f.write(f"\n[compare] timed out after {timeout} s\n")
                    return 124
                if now >= next_print:
                    print(f"[compare] {label} ({now - t0:.0f} s): {last_line(log)}", flush=True)
                    next_print += every


def tail(path: Path, n: int = 5) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-n:])
    except OSError:
        return ""


class Runner:
    def __init__(self, out: Path, preset: dict, timeout: float | None):
        self.out, self.preset, self.timeout = out, preset, timeout
        self.failed: list[str] = []
        self.pretrained: dict[str, dict] = {}  # init -> its pretraining metrics.json
        self.t0 = time.time()

    def step(self, label: str, cmd: list[str], out_dir: Path, index: str, env: dict | None = None,
             keys: tuple[str, ...] = ()) -> dict | None:
        """Run one step unless its metrics.json exists; returns the metrics or None on failure."""
        metrics = out_dir / "metrics.json"
        if metrics.is_file():
            print(f"[compare {index}] {label}: done before, reusing {metrics}", flush=True)
            return json.loads(metrics.read_text())
        print(f"[compare {index}] {label}: running (log {out_dir / 'log.txt'}; "
              f"{(time.time() - self.t0) / 60:.1f} min elapsed)", flush=True)
        t = time.time()
        rc = run_logged(cmd, out_dir / "log.txt", self.timeout, env, label)
        if rc != 0 or not metrics.is_file():
            why = f"exit code {rc}" if rc else "no metrics.json written"
            self.failed.append(f"{label}: {why}; log {out_dir / 'log.txt'}")
            print(f"[compare {index}] {label}: FAILED ({why}); last lines:\n{tail(out_dir / 'log.txt')}", flush=True)
            return None
        m = json.loads(metrics.read_text())
        shown = ", ".join(f"{k}={m[k]:.4g}" for k in keys if isinstance(m.get(k), (int, float)))
        print(f"[compare {index}] {label}: {shown} ({time.time() - t:.0f} s)", flush=True)
        return m


def init_weights(inits: list[str], extra: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Weights argument of each init known before any training (scratch: 'none'; ``--init NAME=CKPT``: the
    checkpoint), and the inits to pretrain here (mae, supervised)."""
    weights, todo = {}, []
    for name in inits:
        if name == "scratch":
            weights[name] = "none"
        elif name in ("mae", "supervised"):
            todo.append(name)
        else:
            raise SystemExit(f"compare: unknown init {name!r}; use mae, supervised, scratch or --init NAME=CKPT")
    for name, path in extra.items():
        if not Path(path).is_file():
            raise SystemExit(f"compare: --init {name}={path}: file not found")
        weights[name] = str(Path(path).resolve())
    return weights, todo


def run_all(runner: Runner, todo: list[str], weights: dict[str, str], cells: list, jobs: int) -> dict:
    """Pretrain ``todo`` (the MAE, the supervised baseline) and run ``cells`` (longest first), ``jobs`` steps
    at a time, each with cores / jobs threads. A cell starts as soon as a slot is free and its init has
    weights: the MAE's cells take the core the MAE frees while the supervised baseline still trains.
    Fills ``weights`` with the pretrained checkpoints; returns ``{(init, task, seed): metrics or None}``
    (None for a failed cell and for the cells of an init whose pretraining failed)."""
    env = _thread_env(jobs)
    results = {(c.init, c.task, c.seed): None for c in cells}
    waiting, pretraining, running, started = list(cells), set(todo), {}, 0

    def pretrain(name: str):
        mode = "pretrain" if name == "mae" else "supervised"
        d = runner.out / "pretrain" / name
        cmd = [PY, "pretrain/run.py", "--mode", mode, "--out", str(d), "--seed", "0", *runner.preset[mode]]
        keys = ("val_loss", "final_loss") if name == "mae" else ("top1", "final_loss")
        return runner.step(f"pretrain {name}", cmd, d, "pre", env, keys=keys)

    with ThreadPoolExecutor(jobs) as pool:
        def fill():
            nonlocal started
            while len(running) < jobs:
                c = next((c for c in waiting if c.init in weights), None)
                if c is None:
                    return
                waiting.remove(c)
                started += 1
                cmd = task_cmd(c.task, weights[c.init], c.dir, c.seed, runner.preset)
                running[pool.submit(runner.step, c.name, cmd, c.dir, f"{started}/{len(cells)}", env,
                                    tuple(k for k, _ in TASK_METRICS[c.task]))] = c

        for name in todo:
            running[pool.submit(pretrain, name)] = name
        fill()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                job = running.pop(f)
                if isinstance(job, str):  # a pretraining
                    pretraining.discard(job)
                    if f.result() is not None:
                        weights[job] = str(runner.out / "pretrain" / job / "checkpoint-final.pth")
                        runner.pretrained[job] = f.result()
                else:
                    results[(job.init, job.task, job.seed)] = f.result()
            waiting[:] = [c for c in waiting if c.init in weights or c.init in pretraining]
            fill()
    return results


def _thread_env(jobs: int) -> dict | None:
    """Thread counts for a step that runs beside ``jobs - 1`` others (None: one step, all cores)."""
    if jobs <= 1:
        return None
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def task_cmd(task: str, weights: str, out_dir: Path, seed: int, preset: dict) -> list[str]:
    if task in ("linprobe", "finetune"):
        return [PY, "pretrain/run.py", "--mode", task, "--weights", weights, "--out", str(out_dir),
                "--seed", str(seed), *preset[task]]
    if task == "det":
        return [PY, "tools/train_det.py", *preset["det"], "--weights", weights, "--output-dir", str(out_dir),
                "--seed", str(seed)]
    if task == "seg":
        return [PY, "tools/train_seg.py", *preset["seg"], "--weights", weights, "--work-dir", str(out_dir),
                "--seed", str(seed)]
    raise SystemExit(f"compare: unknown task {task!r}; use {', '.join(TASK_METRICS)}")


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def budget_line(name: str, m: dict) -> str:
    """What a pretraining cost: epochs, images seen, wall time."""
    seen = (m.get("steps") or 0) * (m.get("effective_batch") or 0)
    own = f" (its own top-1 on held-out photos: {m['top1']:.1f})" if isinstance(m.get("top1"), (int, float)) else ""
    return (f"{name}: {m.get('epochs')} epoch(s), {m.get('steps')} steps x batch {m.get('effective_batch')} = "
            f"{seen:,} images seen, {m.get('train_wall_s', m.get('wall_s', 0)):.0f} s{own}")


def _write_csv(path: Path, results: dict):
    """One row per (init, task, metric, seed); empty values for failed cells."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["init", "task", "metric", "seed", "value", "wall_s"])
        for (init, task, seed), m in sorted(results.items()):
            for key, _ in TASK_METRICS[task]:
                w.writerow([init, task, key, seed, "" if m is None else m.get(key, ""),
                            "" if m is None else m.get("wall_s", "")])


def column_stats(results: dict, inits: list[str], columns: list[tuple[str, str, str]], seeds: list[int]):
    """``(stats, best, decimals)``: per ``(init, "key@task")`` (mean, std, n) or None (all seeds failed),
    per column the best mean, and the decimals each column is shown with."""
    stats: dict[tuple[str, str], tuple[float, float, int] | None] = {}
    for init in inits:
        for task, key, _ in columns:
            vals = [results[(init, task, s)][key] for s in seeds
                    if results.get((init, task, s)) is not None and key in results[(init, task, s)]]
            stats[(init, key + "@" + task)] = (*mean_std(vals), len(vals)) if vals else None
    best = {}
    for task, key, _ in columns:
        ms = [stats[(i, key + "@" + task)][0] for i in inits if stats[(i, key + "@" + task)]]
        best[key + "@" + task] = max(ms) if ms else None
    # two decimals for columns of small numbers (AP of a short schedule), else one
    decimals = {c: 2 if b is not None and abs(b) < 10 else 1 for c, b in best.items()}
    return stats, best, decimals


def results_table(stats: dict, best: dict, decimals: dict, inits: list[str], columns: list[tuple[str, str, str]],
                  seeds: list[int]) -> str:
    """The markdown table: mean ± std per init and column (best in bold), and the MAE − scratch row."""
    lines = [f"| init | " + " | ".join(title for _, _, title in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for init in inits:
        cells = []
        for task, key, _ in columns:
            st = stats[(init, key + "@" + task)]
            if st is None:
                cells.append("failed")
                continue
            d = decimals[key + "@" + task]
            txt = f"{st[0]:.{d}f} ± {st[1]:.{d}f}" + (f" (n={st[2]})" if st[2] != len(seeds) else "")
            cells.append(f"**{txt}**" if best[key + "@" + task] is not None and st[0] == best[key + "@" + task] else txt)
        lines.append(f"| {init} | " + " | ".join(cells) + " |")
    if all(i in inits for i in ("mae", "scratch")):
        diffs = []
        for task, key, title in columns:
            a, b = stats[("mae", key + "@" + task)], stats[("scratch", key + "@" + task)]
            diffs.append(f"{a[0] - b[0]:+.2f}" if a and b else "n/a")
        lines += ["| *MAE − scratch* | " + " | ".join(diffs) + " |"]
    return "\n".join(lines)


def _write_markdown(path: Path, table: str, seeds: list[int], failed: list[str], preset_name: str, wall_s: float,
                    pretrained: dict | None):
    """table.md: the table, the pretraining budgets, the failed cells and the published numbers."""
    md = [f"# MAE vs supervised vs scratch — preset `{preset_name}`", "",
          f"Mean ± std over seeds {', '.join(map(str, seeds))} (downstream seeds; each pretraining ran once, "
          f"seed 0). Best per column in bold. Total wall time {wall_s / 60:.1f} min.", "", table, ""]
    if pretrained:
        md += ["Pretraining budgets: " + "; ".join(budget_line(k, v) for k, v in pretrained.items()) + ".", ""]
    if failed:
        md += ["## Failed cells", ""] + [f"- {x}" for x in failed] + [""]
    md += ["## Published numbers (full scale: ImageNet-1K pretraining, COCO, ADE20K — not comparable in "
           "absolute value to the small built-in data above)", "",
           "| benchmark | pretraining | ViT-B | ViT-L |", "|---|---|---|---|"]
    md += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in PAPER]
    path.write_text("\n".join(md) + "\n")


def write_results(out: Path, results: dict, inits: list[str], tasks: list[str], seeds: list[int],
                  failed: list[str], preset_name: str, wall_s: float, pretrained: dict | None = None) -> str:
    """results[(init, task, seed)] = metrics dict or None. Writes results.csv, table.md, comparison.png;
    returns the table."""
    columns = [(t, key, title) for t in tasks for key, title in TASK_METRICS[t]]
    _write_csv(out / "results.csv", results)
    stats, best, decimals = column_stats(results, inits, columns, seeds)
    table = results_table(stats, best, decimals, inits, columns, seeds)
    _write_markdown(out / "table.md", table, seeds, failed, preset_name, wall_s, pretrained)
    plot(out / "comparison.png", stats, inits, columns, decimals)
    return table


def plot(path: Path, stats: dict, inits: list[str], columns: list[tuple[str, str, str]], decimals: dict):
    """One panel per metric (own y scale: AP of a short schedule and top-1 differ 50x), a bar per init."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, len(columns), figsize=(0.8 + 2.4 * len(columns), 3.6), squeeze=False)
    for ax, (task, key, title) in zip(axes[0], columns):
        for j, init in enumerate(inits):
            st = stats[(init, key + "@" + task)]
            if st is None:
                ax.text(j, 0, "failed", ha="center", va="bottom", fontsize=7, rotation=90)
                continue
            bar = ax.bar([j], [st[0]], 0.7, yerr=[st[1]], capsize=3, color=colors[j % len(colors)], label=init)
            ax.bar_label(bar, fmt=f"%.{decimals[key + '@' + task]}f", fontsize=7, padding=2)
        ax.set_xticks(range(len(inits)), inits, rotation=20, fontsize=8)
        ax.set_title(title, fontsize=9)
        top = max([st[0] + st[1] for i in inits if (st := stats[(i, key + "@" + task)]) is not None] or [1.0])
        ax.set_ylim(0, top * 1.25 or 1.0)
    axes[0][0].set_ylabel("score (%)")
    fig.suptitle("Downstream results by initialisation (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _scene_ground_truth(file_names: list[str]):
    """Images, label maps, boxes and class names of built-in validation scenes, from the scene folder
    (``root/images/validation/N.jpg`` beside ``root/annotations/validation/N.png`` and ``root/coco``)."""
    import numpy as np
    from PIL import Image

    root = Path(file_names[0]).parents[2]
    coco = json.loads((root / "coco" / "instances_validation.json").read_text())
    by_file = {im["file_name"]: im["id"] for im in coco["images"]}
    boxes = {i: [] for i in by_file.values()}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        boxes[a["image_id"]].append((x, y, x + w, y + h, a["category_id"]))
    images, labels, gt_boxes = [], [], []
    for f in map(Path, file_names):
        images.append(np.asarray(Image.open(f).convert("RGB")))
        labels.append(np.asarray(Image.open(root / "annotations" / "validation" / f"{f.stem}.png")))
        gt_boxes.append(boxes[by_file[f.name]])
    return images, labels, gt_boxes, [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]


def transfer_figure(out: Path, inits: list[str], seed: int, top_k: int = 3) -> Path | None:
    """``predictions.png``: the same validation scenes through each init's detector and segmenter
    (downstream seed ``seed``), from the ``val_predictions.npz`` the cells wrote; each image shows its
    ``top_k`` highest-scoring detections with their scores (after a short schedule the scores are low,
    and a threshold would hide what the detector does). None if no cell wrote predictions."""
    import numpy as np

    from mae_transfer.viz import save_transfer_figure

    rows, file_names = {}, None
    for init in inits:
        row = {"det": None, "seg": None}
        det = out / "runs" / "det" / init / f"seed{seed}" / "val_predictions.npz"
        seg = out / "runs" / "seg" / init / f"seed{seed}" / "val_predictions.npz"
        if det.is_file():
            with np.load(det) as d:
                file_names = file_names or [str(f) for f in d["file_names"]]
                row["det"] = []
                for i in range(len(d["file_names"])):
                    idx = np.flatnonzero(d["image_index"] == i)
                    idx = idx[np.argsort(-d["scores"][idx])][:top_k]
                    row["det"].append([(*d["boxes"][n], d["classes"][n] + 1, d["scores"][n], d["masks"][n])
                                       for n in idx])
        if seg.is_file():
            with np.load(seg) as d:
                file_names = file_names or [str(f) for f in d["file_names"]]
                row["seg"] = list(d["labels"])
        rows[init] = row
    if not file_names:
        return None
    images, labels, boxes, names = _scene_ground_truth(file_names)
    return save_transfer_figure(out / "predictions.png", images, names, labels, boxes, rows)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    ap.add_argument("--out", default="output/compare")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--inits", nargs="+", default=["mae", "supervised", "scratch"])
    ap.add_argument("--init", action="append", default=[], metavar="NAME=CKPT",
                    help="an extra initialisation from a checkpoint file (official MAE, DeiT, ...)")
    ap.add_argument("--tasks", nargs="+", choices=list(TASK_METRICS),
                    help="default: the preset's (both presets: all four)")
    ap.add_argument("--args", action="append", default=[], metavar="STEP=ARGS",
                    help="extra arguments for one step (pretrain, supervised, linprobe, finetune, det, seg), "
                         "e.g. --args 'det=train.max_iter=1000'")
    ap.add_argument("--cell-timeout", type=float, default=None, help="seconds before a step counts as failed")
    ap.add_argument("--jobs", type=int, help="downstream cells run at once, each with cores / jobs threads "
                                             "(default: the preset's, demo 2, small 1); pretraining uses all")
    return ap.parse_args(argv)


def extra_inits(specs: list[str]) -> dict[str, str]:
    """``--init NAME=CKPT`` values -> ``{NAME: CKPT}``."""
    extra = {}
    for spec in specs:
        if "=" not in spec:
            raise SystemExit(f"compare: --init expects NAME=CKPT, got {spec!r}")
        k, v = spec.split("=", 1)
        extra[k] = v
    return extra


def preset_with_args(name: str, specs: list[str]) -> dict[str, list[str]]:
    """The preset's arguments per step, with each ``--args STEP=ARGS`` appended to its step."""
    preset = {k: list(v) for k, v in PRESETS[name].items()}
    for spec in specs:
        step, _, extra_args = spec.partition("=")
        if step not in preset:
            raise SystemExit(f"compare: --args {spec!r}: unknown step {step!r}; use {', '.join(preset)}")
        preset[step] += shlex.split(extra_args)
    return preset


def main(argv=None):
    args = parse_args(argv)
    extra = extra_inits(args.init)
    preset = preset_with_args(args.preset, args.args)
    args.tasks = args.tasks or PRESET_TASKS[args.preset]
    jobs = max(1, args.jobs or PRESET_JOBS[args.preset])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(out, preset, args.cell_timeout)
    weights, todo = init_weights(args.inits, extra)
    cells = [Cell(i, t, s, out / "runs" / t / i / f"seed{s}")
             for s in args.seeds for t in args.tasks for i in [*args.inits, *extra]]
    cells.sort(key=lambda c: -TASK_COST.get(c.task, 1))  # stable: seeds and inits keep their order
    results = run_all(runner, todo, weights, cells, jobs)
    inits = [i for i in [*args.inits, *extra] if i in weights] + [i for i in args.inits if i not in weights]
    (out / "failed.txt").write_text("\n".join(runner.failed) + ("\n" if runner.failed else ""))
    table = write_results(out, results, inits, args.tasks, args.seeds, runner.failed, args.preset,
                          time.time() - runner.t0, runner.pretrained)
    figure = transfer_figure(out, inits, args.seeds[0]) if {"det", "seg"} & set(args.tasks) else None
    print("\n" + table + "\n")
    print(f"results: {out.resolve()} (table.md, results.csv, comparison.png"
          + (", predictions.png" if figure else "")
          + (", pretrain/mae/ reconstructions" if "mae" in weights else "") + ")")
    if runner.failed:
        print(f"{len(runner.failed)} step(s) failed: see {out / 'failed.txt'}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
