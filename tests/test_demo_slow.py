"""`make demo` end to end (slow: 25-32 minutes on 2 cores): tools/compare.py with its defaults pretrains MAE
and the supervised baseline, runs all four transfers with the real tools, and the result reads the way
the paper's does. Run with MAE_RUN_SLOW=1."""

import csv
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("top1@linprobe", "top1@finetune", "bbox/AP@det", "segm/AP@det", "mIoU@seg")


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the suite's 1200 s per test is less than the demo's ~20 minutes on 2 cores
def test_demo_preset_reads_like_the_paper(tmp_path):
    out = tmp_path / "compare"
    r = subprocess.run([sys.executable, "tools/compare.py", "--out", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=3600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "| init | linear probe top-1 | fine-tune top-1 | AP box | AP mask | mIoU |" in r.stdout
    assert str(out.resolve()) in r.stdout
    for f in ("table.md", "results.csv", "comparison.png", "predictions.png", "pretrain/mae/reconstruction.png"):
        assert (out / f).is_file(), f
    assert (out / "failed.txt").read_text() == ""
    values = defaultdict(dict)
    for row in csv.DictReader(open(out / "results.csv")):
        values[(row["init"], row["metric"] + "@" + row["task"])][int(row["seed"])] = float(row["value"])
    assert len(values) == 3 * len(COLUMNS) and all(len(v) == 2 for v in values.values())
    mean = {k: sum(v.values()) / len(v) for k, v in values.items()}
    # MAE beats random init on every column in every seed
    for col in COLUMNS:
        for seed in (0, 1):
            assert values[("mae", col)][seed] > values[("scratch", col)][seed], (col, seed, values)
    # fine-tuning above linear probing, as in the paper (ViT-B: 83.6 vs 68.0), and above scratch
    assert mean[("mae", "top1@finetune")] >= mean[("mae", "top1@linprobe")] + 5, mean
    assert mean[("mae", "top1@finetune")] > mean[("scratch", "top1@finetune")], mean
    # a detector that detects: MAE init reaches COCO AP box >= 10 and AP mask >= 8 on the validation scenes
    # (segmentation's mIoU >= 30 is out of this budget's reach, docs/experiments.md; MAE > scratch above)
    assert mean[("mae", "bbox/AP@det")] >= 10 and mean[("mae", "segm/AP@det")] >= 8, mean
    # the supervised baseline has learned its own task, and the table says so
    own = json.loads((out / "pretrain" / "supervised" / "metrics.json").read_text())["top1"]
    assert own >= 60, own
    assert f"its own top-1 on held-out photos: {own:.1f}" in (out / "table.md").read_text()
