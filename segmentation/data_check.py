"""The up-front data check of a segmentation config: every split's image / label folders validated once
(:func:`segmentation.data.validate_seg_folder`), bad pairs left out on request."""

from __future__ import annotations

from pathlib import Path

from .config import leaf_datasets
from .data import validate_seg_folder

__all__ = ["check_data"]


def _groups(cfg) -> list[list[tuple[str, dict]]]:
    """The config's datasets grouped by the files they read (a folder used by val and test is checked once)."""
    groups: dict[tuple, list] = {}
    for split, ds in leaf_datasets(cfg):
        prefix = ds.get("data_prefix", {})
        key = (ds.get("data_root"), prefix.get("img_path"), prefix.get("seg_map_path"), ds.get("ann_file"))
        groups.setdefault(key, []).append((split, ds))
    return list(groups.values())


def _keep_good_pairs(cfg, split: str, report, members: list, logger):
    """Write the good names as the datasets' ``ann_file`` (and the bad ones beside it) in the work dir."""
    lst = Path(cfg.work_dir) / f"data_{split}.txt"
    lst.parent.mkdir(parents=True, exist_ok=True)
    lst.write_text("".join(n + "\n" for n in report.names))
    lst.with_suffix(".skipped.txt").write_text("".join(p + "\n" for p in report.problems))
    for _, d in members:
        d["ann_file"] = str(lst.resolve())
    logger.warning(f"{split}: skipped {len(report.problems)} bad image/label pairs (listed in "
                   f"{lst.with_suffix('.skipped.txt')})")


def check_data(cfg, mode: str, skip_bad: bool, logger) -> dict:
    """Validate every split up front; with ``skip_bad`` the good names become the dataset's ann_file.

    Args:
        cfg: the prepared mmengine config (see :func:`segmentation.config.prepare_config`).
        mode: ``pairs`` (file pairs only), ``full`` (also every label map), ``none``, or ``config``
            (the config's ``data_check``, default ``pairs``).
        skip_bad: leave bad pairs out (logged, listed) instead of raising :class:`SegDataError`.
        logger: where the per-split reports go.
    Returns ``{split: {"folder", "pairs", "skipped"}}`` for metrics.json."""
    if mode == "config":
        mode = cfg.get("data_check", "pairs")
    summary = {}
    if mode == "none":
        return summary
    num_classes = int(cfg.model.decode_head.num_classes)
    for members in _groups(cfg):
        split, ds = members[0]
        root = Path(ds.get("data_root") or "")
        prefix = ds.get("data_prefix", {})
        if "img_path" not in prefix or "seg_map_path" not in prefix or ds.get("ann_file"):
            continue
        report = validate_seg_folder(root / prefix["img_path"], root / prefix["seg_map_path"], num_classes,
                                     bool(ds.get("reduce_zero_label", False)), ds.get("img_suffix", ".jpg"),
                                     ds.get("seg_map_suffix", ".png"), ds.get("ignore_index", 255), check=mode,
                                     on_bad="skip" if skip_bad else "error")
        logger.info(f"data check ({mode}) {split}: {report}")
        summary[split] = {"folder": report.img_dir, "pairs": len(report.names), "skipped": len(report.problems)}
        if report.problems:
            _keep_good_pairs(cfg, split, report, members, logger)
    return summary
