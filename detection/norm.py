"""Input normalisation of a detector from its pretrained encoder's checkpoint.

A checkpoint of ours stores the statistics its encoder was trained with (``norm_stats``, computed from the
pretraining images: :mod:`mae_transfer.data.norm_stats`). Unless the user sets ``model.pixel_mean`` /
``model.pixel_std`` on the command line, those replace the config's values (in detectron2's 0-255 units),
so the detector sees its inputs scaled as the encoder learnt them. ``--eval-only`` and ``--resume`` with a
detector checkpoint (which holds no statistics) take them from the training run's ``config.yaml``.
"""

from __future__ import annotations

from pathlib import Path

from mae_transfer.common import ConfigError
from mae_transfer.data.norm_stats import checkpoint_norm_stats, checkpoint_source, framework_norm, pick_norm_source

__all__ = ["apply_checkpoint_norm"]

_KEYS = ("pixel_mean", "pixel_std")


def _user_keys(opts: list[str]) -> set[str]:
    """Which of pixel_mean / pixel_std the ``key=value`` overrides set."""
    return {k for k in _KEYS for o in opts if o.split("=", 1)[0].strip() == f"model.{k}"}


def _saved_run_stats(output_dir: Path) -> dict | None:
    """pixel_mean / pixel_std of the training run's ``config.yaml`` in ``output_dir`` (0-255 units)."""
    from .predict import load_run_config  # reads plain values only: no code in a yaml runs

    path = output_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        model = load_run_config(path).get("model") or {}
    except ConfigError:
        return None
    if not (model.get("pixel_mean") and model.get("pixel_std")):
        return None
    return {"pixel_mean": [float(v) for v in model["pixel_mean"]], "pixel_std": [float(v) for v in model["pixel_std"]]}


def apply_checkpoint_norm(cfg, weights: str | None, opts: list[str], *, reuse_run: bool = False) -> str:
    """Set ``cfg.model.pixel_mean`` / ``pixel_std`` from ``weights``' ``norm_stats`` (keys given in
    ``opts`` win); record the choice as ``cfg.train.norm_stats`` (dumped into ``config.yaml``, copied into
    metrics.json). Returns the line to log.

    Args:
        cfg: the detectron2 LazyConfig (``model.pixel_mean`` / ``pixel_std`` in 0-255 units).
        weights: the ``--weights`` file (or the config's ``train.weights``), ``None`` for random init.
        opts: the command line's ``key=value`` overrides.
        reuse_run: ``--eval-only`` / ``--resume``: without statistics in ``weights``, take those of the
            run's ``config.yaml`` in ``cfg.train.output_dir``.
    """
    user = _user_keys(opts)
    values, source = None, None
    stats = checkpoint_norm_stats(weights) if weights else None
    if stats is not None:
        try:
            mean, std = framework_norm(stats, len(cfg.model.pixel_mean))
        except ValueError as e:
            raise ConfigError(f"--weights {weights}: normalisation statistics do not fit the detector ({e}); "
                              f"set model.pixel_mean=[...] model.pixel_std=[...]") from None
        values = {"pixel_mean": mean, "pixel_std": std}
        source = checkpoint_source(weights, stats)
    elif reuse_run:
        values = _saved_run_stats(Path(cfg.train.output_dir))
        source = f"the run's {Path(cfg.train.output_dir) / 'config.yaml'}" if values else None
    sources, src = pick_norm_source({k.removeprefix("pixel_") for k in user}, source)
    for key in _KEYS:
        if sources[key.removeprefix("pixel_")] == source and values is not None:
            setattr(cfg.model, key, values[key])
    cfg.train.norm_stats = {"pixel_mean": list(cfg.model.pixel_mean), "pixel_std": list(cfg.model.pixel_std),
                            "source": src}
    return (f"normalisation (0-255 units) from {src}: pixel_mean {list(cfg.model.pixel_mean)} "
            f"pixel_std {list(cfg.model.pixel_std)}")
