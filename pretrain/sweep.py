"""The paper's ablations as commands (``--mode sweep``):

- ``field=v1,v2,...`` (any config field; several fields make a grid): every variant is MAE-pretrained,
  then evaluated by linear probe and fine-tune (Table 1 reports both), e.g. ``decoder_depth=1,2,4``;
- ``table1``: the six axes of Table 1 ((a) decoder depth ... (f) mask sampling) at the config's size,
  the runs they share (the default variant) done once;
- ``ratios=...`` with no other axis: the masking-ratio sweep of Figure 5 (the older spelling);
- ``blocks=0,1,2,4,...,all --weights NAME=CKPT --weights NAME=CKPT``: partial fine-tuning of each
  checkpoint with its last K blocks trainable (Figure 9); ``blocks=0`` trains the head (+ final norm).

Swept fields apply to the pretraining only (the evaluation protocol stays fixed), except those every
run must share with it (``SHARED_FIELDS``). Outputs in ``--out``: ``sweep.csv`` (one row per variant, or
per axis value for table1), ``sweep.md`` (one table per axis, columns ft / lin, the default row
marked), ``sweep.png``, ``metrics.json``, and each variant's runs under ``<variant>/{pretrain,linprobe,
finetune}`` (``<weights>/blocks<K>`` for Figure 9). A step whose ``metrics.json`` says ok for the same
config is reused, not rerun; a failed variant is a row with status ``failed`` and its error, listed in
``failed.txt``, and the command exits with 1 after running the others.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from mae_transfer.common import atomic_write, write_json
from mae_transfer.data.transforms import AUGMENTS
from mae_transfer.models.vit import VIT_PRESETS

from .config import _TUPLE_FIELDS, FIELDS, ConfigError, _parse_value, parse_overrides, resolve
from .mae_task import check_mae_config, mae_kwargs

logger = logging.getLogger("pretrain")

# Fields that the linear probe and fine-tune of a variant must share with its pretraining.
SHARED_FIELDS = ("model", "img_size", "data", "val_data", "seed", "mean", "std")
METRICS = (("finetune", "ft"), ("linprobe", "lin"))


@dataclass
class Axis:
    """One table of the sweep: ``variants`` are field overrides of the pretraining, one row each."""
    title: str
    variants: list[dict]

    @property
    def fields(self) -> list[str]:
        return list(dict.fromkeys(k for v in self.variants for k in v))


# ---- the command line ------------------------------------------------------------------------------
def split_args(items: list[str]) -> tuple[list[Axis], list[str], bool]:
    """``["decoder_depth=1,2", "epochs=1", "table1"]`` -> (axes, plain overrides, table1?). An axis is a
    ``field=v1,v2,...`` of a non-tuple field, or any ``blocks=...``; values are typed by the field."""
    axes, rest, table1 = [], [], False
    for item in items:
        key, _, text = item.partition("=")
        if item == "table1":
            table1 = True
        elif key == "blocks" or ("," in text and key in FIELDS and key not in _TUPLE_FIELDS):
            values = [v.strip() for v in text.split(",") if v.strip()]
            typed = [v if (key == "blocks" and v == "all") else _parse_value(key, v, f"sweep axis {key}")
                     for v in values]
            axes.append(Axis(key, [{key: v} for v in dict.fromkeys(typed)]))
        else:
            rest.append(item)
    return axes, rest, table1


def parse_weights(items: list[str]) -> list[tuple[str, str]]:
    """``["mae=a/ck.pth", "b/ck.pth"]`` -> ``[("mae", "a/ck.pth"), ("b", "b/ck.pth")]`` (name: the folder)."""
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        name, path = (name, path) if sep else (Path(item).parent.name or Path(item).stem, item)
        if not Path(path).is_file():
            raise ConfigError(f"--weights {item}: no such checkpoint file {path!r}")
        out.append((name, path))
    if len({n for n, _ in out}) != len(out):
        raise ConfigError(f"--weights: two checkpoints share a name ({', '.join(n for n, _ in out)}); use NAME=PATH")
    return out


def run(file_cfg: dict, flags: dict, items: list[str], weights: list[str], env, jobs: int = 1) -> int:
    """Entry point of ``--mode sweep``; returns the exit code (1 if a variant failed). ``jobs`` > 1 runs
    that many pretraining variants at once, each in its own process (CPU, one process only)."""
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: give 1 or more")
    if jobs > 1 and (env.distributed or env.device.type != "cpu"):
        raise ConfigError(f"--jobs {jobs} runs variants side by side on the CPU cores; under torchrun or on a GPU "
                          "a sweep runs one variant at a time (drop --jobs)")
    axes, rest, table1 = split_args(items)
    overrides = parse_overrides(rest)
    out = Path(resolve(file_cfg, "sweep", flags, overrides)["out"])
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    blocks = [a for a in axes if a.title == "blocks"]
    if blocks or weights:
        if not (blocks and weights) or table1 or len(axes) > 1:
            raise ConfigError("the partial fine-tuning sweep is blocks=K1,K2,... with --weights NAME=CKPT (one or "
                              "more), and no other axis")
        return run_blocks(file_cfg, flags, overrides, env, [v["blocks"] for v in blocks[0].variants],
                          parse_weights(weights), out)
    base = resolve(file_cfg, "pretrain", flags, overrides)
    if table1:
        axes = [*table1_axes(base), *axes]
    elif len(axes) > 1:
        axes = [grid(axes)]
    elif not axes:  # Figure 5, the older spelling
        axes = [Axis("mask_ratio", [{"mask_ratio": r} for r in resolve(file_cfg, "sweep", flags, overrides)["ratios"]])]
    return run_pretraining(file_cfg, flags, overrides, env, axes, out, jobs)


def grid(axes: list[Axis]) -> Axis:
    """The cartesian product of one-field axes, as one table."""
    variants = [dict(kv for v in combo for kv in v.items()) for combo in itertools.product(*(a.variants for a in axes))]
    return Axis(" x ".join(a.title for a in axes), variants)


def table1_axes(base: dict) -> list[Axis]:
    """The six axes of the paper's Table 1, sized to ``base``'s model: decoder depths 1-8, decoder widths
    1/8 ... 1 of the encoder's (the paper: 128 ... 1024 for ViT-L's 1024), and the (c)-(f) cases as
    published (block sampling at 50 % and 75 %, grid at 75 %)."""
    kw = mae_kwargs(base)
    heads = kw["decoder_num_heads"]
    widths = {max(heads, round(kw["embed_dim"] * f / heads) * heads) for f in (1 / 8, 1 / 4, 1 / 2, 3 / 4, 1)}
    return [
        Axis("(a) decoder depth", [{"decoder_depth": d} for d in sorted({1, 2, 4, 8, kw["decoder_depth"]})]),
        Axis("(b) decoder width", [{"decoder_embed_dim": w} for w in sorted(widths | {kw["decoder_embed_dim"]})]),
        Axis("(c) mask token", [{"mask_token_in_encoder": True}, {"mask_token_in_encoder": False}]),
        Axis("(d) reconstruction target", [{"target": t} for t in ("pixel", "norm_pix", "pca")]),
        Axis("(e) data augmentation", [{"augment": a} for a in AUGMENTS]),
        Axis("(f) mask sampling", [{"mask_sampling": "random", "mask_ratio": 0.75},
                                   {"mask_sampling": "block", "mask_ratio": 0.5},
                                   {"mask_sampling": "block", "mask_ratio": 0.75},
                                   {"mask_sampling": "grid", "mask_ratio": 0.75}]),
    ]


# ---- the pretraining sweep -------------------------------------------------------------------------
def _effective(cfg: dict) -> dict:
    """``cfg`` with the values the MAE actually uses in place of None / older spellings."""
    kw = mae_kwargs(cfg)
    return {**cfg, **{k: kw[k] for k in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads", "target")},
            "norm_pix_loss": kw["norm_pix_loss"], "mask_token_in_encoder": kw["encoder_mask_tokens"]}


def _name(variant: dict) -> str:
    """Folder of a variant: ``default``, or its non-default values (``mask0.50`` for a ratio, as Fig. 5 had)."""
    parts = [f"mask{v:.2f}" if k == "mask_ratio" else f"{k}-{v}" for k, v in sorted(variant.items())]
    return "_".join(parts) or "default"


@dataclass
class Variant:
    name: str
    changes: dict        # the fields that differ from the base config
    pretrain: dict       # resolved configs of the three steps
    linprobe: dict
    finetune: dict
    effective: dict      # _effective(pretrain)


def plan(file_cfg: dict, flags: dict, overrides: dict, axes: list[Axis], out: Path):
    """Resolve and check every variant before anything runs (an impossible one is a ConfigError naming
    both fields). Returns ``{name: Variant}`` (each distinct variant once: the table1 axes share their
    default), per axis the variant name of each of its rows, and the base's effective config."""
    base = _effective(resolve(file_cfg, "pretrain", flags, overrides))
    variants, names = {}, []
    for a in axes:
        names.append([])
        for v in a.variants:
            eff = _effective(resolve(file_cfg, "pretrain", flags, {**overrides, **v}))
            changes = {k: eff[k] for k in v if eff[k] != base[k]}
            name = _name(changes)
            names[-1].append(name)
            if name not in variants:
                variants[name] = _variant(file_cfg, flags, overrides, name, changes, out)
    return variants, names, base


def _variant(file_cfg, flags, overrides, name: str, changes: dict, out: Path) -> Variant:
    """The three resolved, checked step configs of one variant."""
    shared = {k: v for k, v in changes.items() if k in SHARED_FIELDS}
    pre = resolve(file_cfg, "pretrain", {**flags, "out": str(out / name / "pretrain")}, {**overrides, **changes})
    check_mae_config(pre, mae_kwargs(pre)["patch_size"])
    weights = str(out / name / "pretrain" / "checkpoint-final.pth")
    lp, ft = (resolve(file_cfg, m, {**flags, "out": str(out / name / m), "weights": weights}, {**overrides, **shared})
              for m in ("linprobe", "finetune"))
    return Variant(name, changes, pre, lp, ft, _effective(pre))


def run_step(cfg: dict, env) -> dict:
    """``run_mode(cfg)``, or the metrics of an earlier run of the same config that ended ok."""
    from .run import run_mode

    out = Path(cfg["out"])
    done, conf = out / "metrics.json", out / "config.json"
    if done.is_file() and conf.is_file():
        old, ran = json.loads(done.read_text()), json.loads(conf.read_text())
        same = ({k: v for k, v in ran.items() if k != "resume"}
                == json.loads(json.dumps({k: v for k, v in cfg.items() if k != "resume"})))
        if same and old.get("status") == "ok":
            logger.info("reusing %s (finished, same config)", out)
            return old
        if not same:  # another config ran there: start over rather than resume its checkpoints
            cfg = {**cfg, "resume": "none"}
    return run_mode(cfg, env)


def run_variant(v: Variant, env) -> dict:
    """Pretrain, linear-probe and fine-tune one variant; a failure is recorded, not raised."""
    row = {"variant": v.name, "status": "ok", "error": ""}
    try:
        pm = run_step(v.pretrain, env)
        row.update(pretrain_loss=pm["final_loss"], val_loss=pm.get("val_loss"), pretrain_wall_s=pm["wall_s"])
        for mode in ("linprobe", "finetune"):
            m = run_step(getattr(v, mode), env)
            row[f"{mode}_top1"], row[f"{mode}_wall_s"] = m["top1"], m["wall_s"]
    except Exception as e:  # noqa: BLE001 - one variant's failure must not hide the others
        row.update(status="failed", error=f"{type(e).__name__}: {' '.join(str(e).split())}")
        logger.error("variant %s failed: %s\n%s", v.name, row["error"], traceback.format_exc())
    return row


def _variant_in_worker(v: Variant, env, threads: int, log: str) -> dict:
    """``run_variant`` in a worker process of ``--jobs``: ``threads`` intra-op threads, and its log and
    progress bars in ``log`` rather than interleaved with the other workers' on the terminal."""
    import torch

    torch.set_num_threads(threads)
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout = sys.stderr = open(log, "a", buffering=1)  # noqa: SIM115 - the worker's whole life
    return run_variant(v, env)


def _run_variants(variants: dict, env, jobs: int, out: Path, done) -> None:
    """Run every variant, ``jobs`` at a time, calling ``done(name, row)`` as each ends."""
    if jobs == 1:
        for name, v in variants.items():
            done(name, run_variant(v, env))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // jobs)
    logger.info("running %d variants at once, %d thread(s) each; logs in %s/<variant>/sweep-log.txt",
                jobs, threads, out)
    # spawn: a forked worker would inherit the parent's OpenMP pool and its thread count
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_variant_in_worker, v, env, threads, str(out / name / "sweep-log.txt")): name
                   for name, v in variants.items()}
        for f in as_completed(futures):
            name = futures[f]
            try:
                row = f.result()
            except Exception as e:  # noqa: BLE001 - a worker killed (out of memory, say) fails its variant only
                row = {"variant": name, "status": "failed", "error": f"worker process died: {type(e).__name__}: {e}"}
            done(name, row)


def run_pretraining(file_cfg, flags, overrides, env, axes: list[Axis], out: Path, jobs: int = 1) -> int:
    """Run every distinct variant of ``axes`` (reusing finished ones) and write the tables and plot."""
    variants, names, base = plan(file_cfg, flags, overrides, axes, out)
    logger.info("sweep: %d variants (%s) in %s", len(variants), ", ".join(variants), out)
    t0, results = time.time(), {}

    def done(name: str, row: dict):
        results[name] = row
        top1 = ", ".join(f"{s} {row[f'{m}_top1']:.1f}" for m, s in METRICS if row.get(f"{m}_top1") is not None)
        logger.info("variant %s: %s (%d of %d done)", name, top1 or row["status"], len(results), len(variants))
        if env.is_main:  # after every variant, so an interrupted sweep is still readable
            write_csv(out / "sweep.csv", table_rows(axes, names, variants, results))

    _run_variants(variants, env, min(jobs, len(variants)), out, done)
    rows = table_rows(axes, names, variants, results)
    if env.is_main:
        write_pretraining_outputs(out, axes, rows, base, time.time() - t0)
    return report_failures(out, rows, env)


def table_rows(axes: list[Axis], names: list[list[str]], variants: dict, results: dict) -> list[dict]:
    """One row per (axis, value) whose variant has run: the axis, every swept field's effective value,
    whether it is the default, and the variant's results."""
    fields = list(dict.fromkeys(f for a in axes for f in a.fields))
    rows = []
    for a, axis_names in zip(axes, names):
        for name in axis_names:
            if name in results:
                eff = variants[name].effective
                rows.append({"axis": a.title, **{f: eff[f] for f in fields}, "default": name == "default",
                             **results[name]})
    return rows


# ---- outputs ---------------------------------------------------------------------------------------
def _write_text(path: Path, text: str):
    """``text`` into ``path`` through the shared atomic write: readers never see half a file."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def write_csv(path: Path, rows: list[dict]):
    if not rows:
        return
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
    _write_text(path, buf.getvalue())


def _fmt(value) -> str:
    """A top-1 cell: one decimal, or "failed" for a run that produced none."""
    return "failed" if value is None else f"{value:.1f}"


def axis_markdown(a: Axis, rows: list[dict]) -> list[str]:
    """One axis as the paper lays it out: its fields, ft, lin; the default row in bold."""
    fields = a.fields
    lines = [f"### {a.title}", "", "| " + " | ".join([*fields, "ft", "lin"]) + " |",
             "|" + "---|" * (len(fields) + 2)]
    for r in (r for r in rows if r["axis"] == a.title):
        cells = [str(r[f]) for f in fields] + [_fmt(r.get(f"{m}_top1")) for m, _ in METRICS]
        if r["default"]:
            cells = [f"**{c}**" for c in cells[:1]] + cells[1:]
            cells[0] += " (default)"
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _machine(wall_s: float) -> str:
    import platform

    import torch
    return (f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, CUDA {'yes' if torch.cuda.is_available() else 'no'}; "
            f"this invocation {wall_s / 60:.1f} min")


def write_pretraining_outputs(out: Path, axes: list[Axis], rows: list[dict], base: dict, wall_s: float):
    """sweep.csv, sweep.md (one table per axis), sweep.png, metrics.json."""
    from mae_transfer.viz import save_ablation_plot

    write_csv(out / "sweep.csv", rows)
    steps = sum(r.get(f"{m}_wall_s") or 0 for r in {r["variant"]: r for r in rows}.values()
                for m in ("pretrain", "linprobe", "finetune"))  # each distinct variant once
    head = [f"# Ablation sweep: {base['model']}, pretraining {base['epochs']} epochs, seed {base['seed']}", "",
            f"Top-1 (%) of the linear probe (lin) and fine-tune (ft) of each pretrained variant; the default "
            f"row (the config as given) in bold. Runs: {steps / 60:.1f} min of step wall time. Machine: "
            f"{_machine(wall_s)}.", ""]
    unique = {r["variant"]: r for r in rows}.values()  # table1 lists the shared default in every axis
    failed = [f"- {r['variant']}: {r['error']}" for r in unique if r["status"] != "ok"]
    body = [line for a in axes for line in axis_markdown(a, rows)]
    text = "\n".join(head + body + (["Failed variants:", *failed, ""] if failed else []))
    _write_text(out / "sweep.md", text)
    panels = [_panel(a, rows) for a in axes]
    save_ablation_plot(panels, out / "sweep.png", f"{base['model']}: ablations")
    write_json({"mode": "sweep", "rows": rows}, out / "metrics.json", indent=2)
    print(f"sweep: wrote {out / 'sweep.csv'}, {out / 'sweep.md'} and {out / 'sweep.png'}", flush=True)


def _panel(a: Axis, rows: list[dict]) -> dict:
    """Plot data of one axis: x labels (the default starred), and ft / lin series (None = failed)."""
    mine = [r for r in rows if r["axis"] == a.title]
    labels = [" ".join(str(r[f]) for f in a.fields) + (" *" if r["default"] else "") for r in mine]
    return {"title": a.title, "labels": labels,
            "series": {name: [r.get(f"{m}_top1") for r in mine] for m, name in (("finetune", "fine-tune"),
                                                                                ("linprobe", "linear probe"))}}


def report_failures(out: Path, rows: list[dict], env) -> int:
    """failed.txt and a stderr line per failed variant; exit code 1 if any."""
    failed = {r["variant"]: r["error"] for r in rows if r["status"] != "ok"}
    if env.is_main:
        text = "".join(f"{name}: {err}\n" for name, err in failed.items())
        if failed:
            _write_text(out / "failed.txt", text)
        elif (out / "failed.txt").exists():
            (out / "failed.txt").unlink()
        for name, err in failed.items():
            print(f"sweep: variant {name} failed: {err}", file=sys.stderr, flush=True)
    return 1 if failed else 0


# ---- Figure 9: partial fine-tuning ------------------------------------------------------------------
def block_counts(values: list, model: str) -> list[int]:
    """``[0, 1, "all"]`` -> sorted distinct block counts, ``all`` = the encoder's depth."""
    if model not in VIT_PRESETS:
        raise ConfigError(f"unknown model {model!r}; known: {', '.join(VIT_PRESETS)}")
    depth = VIT_PRESETS[model]["depth"]
    ks = sorted({depth if v == "all" else v for v in values})
    bad = [k for k in ks if not 0 <= k <= depth]
    if bad:
        raise ConfigError(f"blocks={bad[0]}: {model} has {depth} blocks (use 0..{depth} or all)")
    return ks


def run_partial(file_cfg, flags, overrides, env, name: str, path: str, k: int, out: Path) -> dict:
    """Partial fine-tuning of checkpoint ``path`` with its last ``k`` blocks trainable; a failure is recorded."""
    cfg = resolve(file_cfg, "partial", {**flags, "out": str(out / name / f"blocks{k}"), "weights": path},
                  {**overrides, "blocks": k})
    row = {"weights": name, "checkpoint": path, "blocks": k, "variant": f"{name}/blocks{k}", "status": "ok",
           "error": ""}
    try:
        m = run_step(cfg, env)
        row.update(top1=m["top1"], top5=m["top5"], wall_s=m["wall_s"])
    except Exception as e:  # noqa: BLE001 - one run's failure must not hide the others
        row.update(status="failed", error=f"{type(e).__name__}: {' '.join(str(e).split())}")
        logger.error("partial fine-tuning %s failed: %s\n%s", row["variant"], row["error"], traceback.format_exc())
    return row


def run_blocks(file_cfg, flags, overrides, env, values: list, weights: list[tuple[str, str]], out: Path) -> int:
    """Figure 9: every checkpoint x every block count; sweep.csv / .md / .png of top-1 against blocks."""
    base = resolve(file_cfg, "partial", flags, overrides)
    ks = block_counts(values, base["model"])
    t0, rows = time.time(), []
    for name, path in weights:
        for k in ks:
            rows.append(run_partial(file_cfg, flags, overrides, env, name, path, k, out))
            if env.is_main:
                write_csv(out / "sweep.csv", rows)
    if env.is_main:
        write_blocks_outputs(out, rows, ks, base, time.time() - t0)
    return report_failures(out, rows, env)


def write_blocks_outputs(out: Path, rows: list[dict], ks: list[int], base: dict, wall_s: float):
    """sweep.md (one row per checkpoint, one column per block count), sweep.png, metrics.json."""
    from mae_transfer.viz import save_partial_finetune_plot

    depth = VIT_PRESETS[base["model"]]["depth"]
    names = list(dict.fromkeys(r["weights"] for r in rows))
    top1 = {n: [next(r.get("top1") for r in rows if r["weights"] == n and r["blocks"] == k) for k in ks] for n in names}
    cols = [f"{k} (all)" if k == depth else str(k) for k in ks]
    steps = sum(r.get("wall_s") or 0 for r in rows)
    lines = [f"# Partial fine-tuning: {base['model']}, {base['epochs']} epochs, seed {base['seed']}", "",
             f"Top-1 (%) with the last K of {depth} blocks fine-tuned (0: the head and final norm only; all: "
             f"full fine-tuning), as the paper's Figure 9. Runs: {steps / 60:.1f} min of step wall time. "
             f"Machine: {_machine(wall_s)}.", "",
             "| weights | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    lines += [f"| {n} | " + " | ".join(_fmt(v) for v in top1[n]) + " |" for n in names]
    failed = [f"- {r['variant']}: {r['error']}" for r in rows if r["status"] != "ok"]
    text = "\n".join(lines + (["", "Failed runs:", *failed] if failed else []) + [""])
    _write_text(out / "sweep.md", text)
    save_partial_finetune_plot(ks, top1, out / "sweep.png", depth, f"partial fine-tuning ({base['model']})")
    write_json({"mode": "sweep", "rows": rows}, out / "metrics.json", indent=2)
    print(f"sweep: wrote {out / 'sweep.csv'}, {out / 'sweep.md'} and {out / 'sweep.png'}", flush=True)
