"""Masking-ratio sweep: one command -> a pretraining, linear probe and fine-tune per ratio, CSV + PNG."""

import csv
import json

from pretrain.run import main


def test_sweep_writes_csv_plot_and_one_run_per_ratio(tmp_path):
    out = tmp_path / "sweep"
    rc = main(["--mode", "sweep", "--out", str(out), "--seed", "0", "ratios=0.5,0.9", "model=vit_micro_patch4",
               "train_subset=96", "eval_subset=64", "batch_size=32", "epochs=1", "progress=false",
               "recon_images=2", "save_every_epochs=0"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [float(r["mask_ratio"]) for r in rows] == [0.5, 0.9]
    for r in rows:
        assert 0 <= float(r["linprobe_top1"]) <= 100 and 0 <= float(r["finetune_top1"]) <= 100
        assert float(r["pretrain_loss"]) > 0
    assert (out / "sweep.png").stat().st_size > 0
    for ratio in ("0.50", "0.90"):
        pre = json.loads((out / f"mask{ratio}" / "pretrain" / "metrics.json").read_text())
        assert pre["mask_ratio"] == float(ratio)
        lp = json.loads((out / f"mask{ratio}" / "linprobe" / "metrics.json").read_text())
        assert lp["weights"] == str(out / f"mask{ratio}" / "pretrain" / "checkpoint-final.pth")
