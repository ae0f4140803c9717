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
        run = out / f"mask{float(r['mask_ratio']):.2f}"
        for task in ("linprobe", "finetune"):  # the table holds each variant's own result, not a copy of another's
            assert float(r[f"{task}_top1"]) == json.loads((run / task / "metrics.json").read_text())["top1"]
        assert float(r["pretrain_loss"]) > 0
    assert (out / "sweep.png").stat().st_size > 0
    for ratio in ("0.50", "0.90"):
        pre = json.loads((out / f"mask{ratio}" / "pretrain" / "metrics.json").read_text())
        assert pre["mask_ratio"] == float(ratio)
        lp = json.loads((out / f"mask{ratio}" / "linprobe" / "metrics.json").read_text())
        assert lp["weights"] == str(out / f"mask{ratio}" / "pretrain" / "checkpoint-final.pth")


TINY = ["model=vit_micro_patch4", "train_subset=64", "eval_subset=32", "batch_size=32", "epochs=1", "progress=false",
        "recon_images=2", "save_every_epochs=0"]


def _mtimes(out):
    return {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json") if p.parent != out}


def test_two_field_grid_one_row_per_variant_and_rerun_skips_finished(tmp_path, capsys):
    out = tmp_path / "grid"
    args = ["--mode", "sweep", "--out", str(out), "decoder_depth=1,2", "target=pixel,pca", *TINY]
    assert main(args) == 0
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert sorted((r["decoder_depth"], r["target"]) for r in rows) == [("1", "pca"), ("1", "pixel"), ("2", "pca"),
                                                                       ("2", "pixel")]
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert float(r["finetune_top1"]) == json.loads((out / r["variant"] / "finetune" / "metrics.json").read_text())["top1"]
    # decoder_depth=1 is the micro preset's own: not a change, so not in the folder name
    assert {r["variant"] for r in rows} == {"target-pixel", "target-pca", "decoder_depth-2_target-pixel",
                                            "decoder_depth-2_target-pca"}
    md = (out / "sweep.md").read_text()
    assert "| decoder_depth | target | ft | lin |" in md and md.count("\n| ") == 5  # header + 4 variants
    assert (out / "sweep.png").stat().st_size > 0
    pca = json.loads((out / "target-pca" / "pretrain" / "config.json").read_text())
    lp = json.loads((out / "target-pca" / "linprobe" / "config.json").read_text())
    assert pca["target"] == "pca" and lp["target"] is None  # the axis changes the pretraining only
    before = _mtimes(out)
    capsys.readouterr()
    assert main(args) == 0
    assert _mtimes(out) == before and len(before) == 12  # nothing rerun
    assert capsys.readouterr().out.count("reusing") == 12
    assert list(csv.DictReader(open(out / "sweep.csv"))) == rows


def test_failed_variant_is_reported_and_the_others_run(tmp_path, capsys):
    out = tmp_path / "fail"
    assert main(["--mode", "sweep", "--out", str(out), "blr=1e-3,1e30", *TINY]) == 1
    rows = {r["blr"]: r for r in csv.DictReader(open(out / "sweep.csv"))}
    assert rows["0.001"]["status"] == "ok" and rows["1e+30"]["status"] == "failed"
    assert "TrainingDiverged" in rows["1e+30"]["error"]
    assert "blr-1e+30" in (out / "failed.txt").read_text() and "failed" in (out / "sweep.md").read_text()
    assert "variant blr-1e+30 failed" in capsys.readouterr().err


def test_impossible_combination_is_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["--mode", "sweep", "--out", str(out), "mask_sampling=random,grid", "mask_ratio=0.5", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "mask_sampling=grid" in err and "mask_ratio=0.5" in err
    assert not any(out.iterdir())


def test_table1_plans_six_axes_sharing_one_default(tmp_path):
    from pretrain.config import DEFAULT_CONFIG, load_config, parse_overrides, resolve
    from pretrain.sweep import plan, table1_axes

    file_cfg = load_config(DEFAULT_CONFIG)
    axes = table1_axes(resolve(file_cfg, "pretrain", {}, {}))
    variants, names, base = plan(file_cfg, {"out": str(tmp_path)}, parse_overrides([]), axes, tmp_path)
    assert [a.title[:3] for a in axes] == ["(a)", "(b)", "(c)", "(d)", "(e)", "(f)"]
    assert all(n.count("default") == 1 for n in names)  # each axis has the preset's own setting once
    assert len(variants) == sum(len(n) for n in names) - len(axes) + 1
    assert [v["decoder_embed_dim"] for v in axes[1].variants] == [16, 32, 64, 96, 128]  # 1/8 ... 1 of 128-d
    grid = variants["mask_sampling-grid"]
    assert grid.pretrain["mask_ratio"] == 0.75
    assert grid.linprobe["weights"].endswith("mask_sampling-grid/pretrain/checkpoint-final.pth")


def test_partial_finetuning_sweep_over_blocks_for_two_checkpoints(tmp_path):
    mae, sup = tmp_path / "mae", tmp_path / "sup"
    assert main(["--out", str(mae), *TINY]) == 0
    assert main(["--mode", "supervised", "--out", str(sup), *TINY]) == 0
    out = tmp_path / "fig9"
    assert main(["--mode", "sweep", "--out", str(out), "blocks=0,all", "--weights", f"mae={mae / 'checkpoint-final.pth'}",
                 "--weights", f"supervised={sup / 'checkpoint-final.pth'}", *TINY]) == 0
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [(r["weights"], r["blocks"]) for r in rows] == [("mae", "0"), ("mae", "4"), ("supervised", "0"),
                                                           ("supervised", "4")]
    for r in rows:
        run = out / r["variant"]
        assert float(r["top1"]) == json.loads((run / "metrics.json").read_text())["top1"], run
    assert "| weights | 0 | 4 (all) |" in (out / "sweep.md").read_text() and (out / "sweep.png").stat().st_size > 0
    cfg = json.loads((out / "mae" / "blocks0" / "config.json").read_text())
    assert cfg["mode"] == "partial" and cfg["blocks"] == 0


def test_blocks_sweep_needs_checkpoints_and_valid_counts(tmp_path, capsys):
    assert main(["--mode", "sweep", "--out", str(tmp_path / "a"), "blocks=0,1", *TINY]) == 2
    assert "--weights" in capsys.readouterr().err
    ck = tmp_path / "ck.pth"
    ck.write_bytes(b"")
    assert main(["--mode", "sweep", "--out", str(tmp_path / "b"), "blocks=0,9", "--weights", str(ck), *TINY]) == 2
    assert "blocks=9: vit_micro_patch4 has 4 blocks" in capsys.readouterr().err


def test_a_step_with_another_config_starts_over_then_is_reused(tmp_path):
    from pretrain.config import DEFAULT_CONFIG, load_config, parse_overrides, resolve
    from pretrain.distributed import init_distributed
    from pretrain.sweep import run_step

    env = init_distributed("cpu")
    cfg = resolve(load_config(DEFAULT_CONFIG), "pretrain", {"out": str(tmp_path)}, parse_overrides(TINY))
    first = run_step(cfg, env)
    assert run_step(cfg, env)["wall_s"] == first["wall_s"]  # finished, same config: reused
    changed = {**cfg, "mask_ratio": 0.5}
    second = run_step(changed, env)
    assert second["mask_ratio"] == 0.5 and json.loads((tmp_path / "config.json").read_text())["resume"] == "none"
    assert run_step(changed, env)["wall_s"] == second["wall_s"]  # the restart's resume=none is no change


def test_jobs_runs_variants_in_worker_processes_and_reports_a_failed_one(tmp_path, capsys):
    out = tmp_path / "jobs"
    assert main(["--mode", "sweep", "--jobs", "2", "--out", str(out), "blr=1e-3,1e30", *TINY]) == 1
    rows = {r["blr"]: r for r in csv.DictReader(open(out / "sweep.csv"))}
    assert rows["0.001"]["status"] == "ok" and rows["1e+30"]["status"] == "failed"
    assert "TrainingDiverged" in rows["1e+30"]["error"] and "blr-1e+30" in (out / "failed.txt").read_text()
    ok = rows["0.001"]["variant"]
    assert float(rows["0.001"]["linprobe_top1"]) == json.loads((out / ok / "linprobe" / "metrics.json").read_text())["top1"]
    # each worker's log is its own file, not interleaved on the terminal
    assert "done:" in (out / ok / "sweep-log.txt").read_text()
    assert "TrainingDiverged" in (out / "blr-1e+30" / "sweep-log.txt").read_text()
    printed = capsys.readouterr().out
    assert "2 variants at once" in printed and f"variant {ok}: ft " in printed
    before = {p: t for p, t in _mtimes(out).items() if ok in str(p)}
    assert len(before) == 3
    assert main(["--mode", "sweep", "--jobs", "2", "--out", str(out), "blr=1e-3,1e30", *TINY]) == 1
    assert {p: t for p, t in _mtimes(out).items() if ok in str(p)} == before  # reused inside a worker too


def test_jobs_only_for_sweeps(tmp_path, capsys):
    assert main(["--jobs", "2", "--out", str(tmp_path), *TINY]) == 2
    assert "only --mode sweep" in capsys.readouterr().err
