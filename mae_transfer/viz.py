"""Figures: MAE reconstructions laid out as the paper's Figure 2, loss curves, masking-ratio sweeps.

Matplotlib with the Agg backend (no display needed); every function writes a PNG and returns its path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["mae_reconstruction", "save_reconstruction_figure", "save_loss_curve", "save_sweep_plot",
           "save_ablation_plot", "save_partial_finetune_plot", "save_transfer_figure"]


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def mae_reconstruction(model, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
    """Run an MAE and return images ``(N, C, H, W)`` in the input's (normalised) space:
    ``masked`` (removed patches zeroed), ``recon`` (every patch predicted) and ``paste`` (prediction
    on masked patches, original on visible ones), plus ``mask`` ``(N, L)`` with 1 = removed.

    The prediction is mapped back to pixels by ``model.prediction_to_patches`` (a normalised-pixel
    target with each patch's own mean and variance, as the MAE demo does; a PCA target with its basis)."""
    was_training = model.training
    model.eval()
    _, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=noise)
    model.train(was_training)
    pred = model.prediction_to_patches(pred, imgs)
    recon = model.unpatchify(pred)
    m = model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, pred.shape[-1]))  # 1 where removed
    imgs = imgs.float()
    return {"masked": imgs * (1 - m), "recon": recon, "paste": imgs * (1 - m) + recon * m, "mask": mask,
            "original": imgs}


def _to_display(x: torch.Tensor, mean, std):
    """(C, H, W) normalised with the run's own ``mean`` / ``std`` -> pixels in [0, 1]: (H, W, 3) for RGB,
    (H, W) grey for one channel, and for any other count the first channel, grey."""
    mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    x = (x.cpu().float() * std + mean).clamp(0, 1)
    return x.permute(1, 2, 0).numpy() if x.shape[0] == 3 else x[0].numpy()


def save_reconstruction_figure(model, imgs: torch.Tensor, path: str | os.PathLike, mean: Sequence[float],
                               std: Sequence[float], mask_ratio: float = 0.75, noise: torch.Tensor | None = None,
                               title: str | None = None) -> Path:
    """Rows: original, masked input, reconstruction, reconstruction + visible patches; one column per
    image of ``imgs`` ``(N, C, H, W)`` (normalised with ``mean``/``std``, which de-normalise it for display:
    pass the run's own, e.g. a grey dataset's, never ImageNet's for other data). Masked patches show mid-grey;
    one-channel images show grey, images of other than 1 or 3 channels their first channel."""
    out = mae_reconstruction(model, imgs, mask_ratio, noise)
    grey = (0.5 - torch.tensor(mean, dtype=torch.float32)) / torch.tensor(std, dtype=torch.float32)
    removed = model.unpatchify(out["mask"].unsqueeze(-1).expand(-1, -1, model.patch_size ** 2 * imgs.shape[1])).bool()
    masked_show = torch.where(removed, grey.view(1, -1, 1, 1).to(out["original"].dtype), out["original"])
    rows = [("original", out["original"]), (f"masked {mask_ratio:.0%}", masked_show),
            ("reconstruction", out["recon"]), ("reconstruction + visible", out["paste"])]
    plt = _plt()
    n = imgs.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 1.2, 1.3 * len(rows) + 0.4), squeeze=False)
    for r, (name, batch) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(_to_display(batch[c], mean, std), interpolation="nearest", cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(plt, fig, path)


def save_loss_curve(records: list[dict], path: str | os.PathLike, key: str = "loss", title: str | None = None) -> Path:
    """Plot ``key`` against ``epoch`` (fractional) from log records (``log.jsonl`` lines); also the
    per-epoch means (``epoch_loss``) when present."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    pts = [(r["epoch"], r[key]) for r in records if key in r]
    if pts:
        ax.plot(*zip(*pts), lw=1, label=f"train {key} (logged steps)")
    ep = [(r["epoch"], r["epoch_loss"]) for r in records if "epoch_loss" in r]
    if ep:
        ax.plot(*zip(*ep), "o-", lw=1.5, label="epoch mean")
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)


def _top1_lines(points: dict[str, list[tuple[float, float]]], path: str | os.PathLike, xlabel: str, title: str,
                xticks: tuple[list, list] | None = None) -> Path:
    """Top-1 (%) lines, one per series of ``(x, top-1)`` points, each point labelled with its value;
    ``xticks`` = (positions, labels) where the x axis needs its own labels."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, pts in points.items():
        ax.plot([x for x, _ in pts], [v for _, v in pts], "o-", label=name)
        for x, v in pts:
            ax.annotate(f"{v:.1f}", (x, v), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
    if xticks is not None:
        ax.set_xticks(*xticks)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)


def save_sweep_plot(ratios: Sequence[float], series: dict[str, Sequence[float]], path: str | os.PathLike,
                    title: str = "masking ratio sweep") -> Path:
    """Top-1 (%) against masking ratio, one line per series (e.g. fine-tune, linear probe), as the
    paper's Figure 5."""
    points = {name: [(r * 100, v) for r, v in zip(ratios, vals)] for name, vals in series.items()}
    return _top1_lines(points, path, "masking ratio (%)", title)


def _numeric(labels: Sequence[str]) -> list[float] | None:
    """The labels as numbers (a trailing default marker ignored), or None if one is not a number."""
    try:
        return [float(x.rstrip(" *")) for x in labels]
    except ValueError:
        return None


def save_ablation_plot(panels: Sequence[dict], path: str | os.PathLike, title: str = "ablations") -> Path:
    """One subplot per ablation axis (the paper's Table 1 as figures): top-1 (%) of each series (e.g.
    fine-tune, linear probe) against the axis values; lines for numeric values, bars otherwise.

    panels: dicts with ``title``, ``labels`` (x values as text; the default marked with " *") and
    ``series`` ``{name: [top-1 or None (failed)]}``."""
    plt = _plt()
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        xs = _numeric(panel["labels"])
        pos = list(range(len(panel["labels"])))
        for i, (name, vals) in enumerate(panel["series"].items()):
            shift = 0.0 if xs is not None else (i - 0.5) * 0.38  # bars of a series side by side
            x = [p + shift for p, v in zip(pos, vals) if v is not None]
            y = [v for v in vals if v is not None]
            if xs is not None:
                ax.plot(x, y, "o-", label=name)
            else:
                ax.bar(x, y, 0.38, label=name)
            for px, v in zip(x, y):
                ax.annotate(f"{v:.1f}", (px, v), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=6)
        ax.set_xticks(pos, panel["labels"], fontsize=7, rotation=20 if xs is None else 0)
        ax.set_title(panel["title"], fontsize=9)
        ax.set_ylabel("top-1 (%)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{title} (* = default)", fontsize=10)
    return _save(plt, fig, path)


def save_partial_finetune_plot(blocks: Sequence[int], series: dict[str, Sequence[float | None]],
                               path: str | os.PathLike, depth: int, title: str = "partial fine-tuning") -> Path:
    """Top-1 (%) against the number of fine-tuned blocks, one line per checkpoint, as the paper's
    Figure 9 (0 = head only, ``depth`` = full fine-tuning). ``None`` values (failed runs) are left out."""
    points = {name: [(b, v) for b, v in zip(blocks, vals) if v is not None] for name, vals in series.items()}
    ticks = (list(blocks), [f"{b}\n(all)" if b == depth else str(b) for b in blocks])
    return _top1_lines(points, path, "blocks fine-tuned", title, xticks=ticks)


def _label_colours(n: int):
    """(n, 3) float colours for class ids 1..n-1 (0 = background is left uncoloured)."""
    plt = _plt()
    cmap = plt.get_cmap("tab10" if n <= 11 else "tab20")
    return [cmap((k - 1) % cmap.N)[:3] for k in range(n)]


def _overlay(img, labels, colours, alpha: float = 0.55):
    """``img`` (H, W, 3) uint8 with each non-zero label of ``labels`` (H, W) painted in its colour."""
    import numpy as np

    out = img.astype(np.float32) / 255.0
    for k in np.unique(labels):
        if k == 0 or k >= len(colours):
            continue
        m = labels == k
        out[m] = (1 - alpha) * out[m] + alpha * np.asarray(colours[k])
    return out


def save_transfer_figure(path: str | os.PathLike, images: Sequence, class_names: Sequence[str],
                         gt_labels: Sequence, gt_boxes: Sequence, rows: dict[str, dict]) -> Path:
    """The same validation scenes as each initialisation's detector and segmenter see them.

    Args:
        images: K scenes, each ``(H, W, 3)`` uint8.
        class_names: names of class ids 1..C (id 0 is background).
        gt_labels: K ground-truth label maps ``(H, W)`` (0 = background, k = class k).
        gt_boxes: K lists of ``(x0, y0, x1, y1, class_id)``.
        rows: init name -> ``{"det": [per scene: list of (x0, y0, x1, y1, class_id, score, mask (H, W) bool
            or None)] or None, "seg": [per scene: label map (H, W)] or None}``.
    Two panels of K columns each: detections (boxes, instance masks, class and score) and segmentation
    (label maps over the image); the first row is the ground truth, then one row per init.
    """
    plt = _plt()
    names = ["background", *class_names]
    colours = _label_colours(len(names))
    k = len(images)
    all_rows = [("ground truth", {"det": [[(*b[:5], None, None) for b in boxes] for boxes in gt_boxes],
                                  "seg": list(gt_labels)})] + list(rows.items())
    fig, axes = plt.subplots(len(all_rows), 2 * k, figsize=(1.5 * 2 * k + 0.6, 1.6 * len(all_rows) + 0.5),
                             squeeze=False)
    for r, (name, pred) in enumerate(all_rows):
        for j in range(k):
            ax_det, ax_seg = axes[r, j], axes[r, k + j]
            dets, seg = (pred.get("det") or [None] * k)[j], (pred.get("seg") or [None] * k)[j]
            inst = None
            if dets is not None:
                import numpy as np

                inst = np.zeros(images[j].shape[:2], dtype=np.int64)
                for x0, y0, x1, y1, c, score, mask in dets:
                    if mask is not None:
                        inst[mask] = c
            ax_det.imshow(_overlay(images[j], inst, colours) if inst is not None else images[j])
            for x0, y0, x1, y1, c, score, _ in dets or []:
                ax_det.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.0,
                                               color=colours[int(c)]))
                label = names[int(c)] if score is None else f"{names[int(c)]} {score:.2f}"
                ax_det.text(x0, y0 - 1, label, fontsize=4.5, color="white", va="bottom",
                            bbox=dict(facecolor=colours[int(c)], alpha=0.8, pad=0.5, lw=0))
            ax_seg.imshow(_overlay(images[j], seg, colours) if seg is not None else images[j])
            for ax in (ax_det, ax_seg):
                ax.set_xticks([])
                ax.set_yticks([])
            if dets is None:
                ax_det.text(0.5, 0.5, "no run", transform=ax_det.transAxes, ha="center", fontsize=7)
            if seg is None:
                ax_seg.text(0.5, 0.5, "no run", transform=ax_seg.transAxes, ha="center", fontsize=7)
        axes[r, 0].set_ylabel(name, fontsize=8)
    axes[0, 0].set_title("detection (Mask R-CNN)", loc="left", fontsize=8)
    axes[0, k].set_title("segmentation (UperNet)", loc="left", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[c]) for c in range(1, len(names))]
    fig.legend(handles, names[1:], loc="lower center", ncol=min(10, len(names) - 1), fontsize=6, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
