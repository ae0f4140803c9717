"""Detection configs: finding a LazyConfig by name, loading it with ``key=value`` overrides.

A detection config is a detectron2 LazyConfig (``model``, ``dataloader``, ``optimizer``, ``lr_multiplier``,
``train``) plus a ``data`` node saying where the data comes from (see :mod:`detection.datasets`).
"""

from __future__ import annotations

import inspect
from pathlib import Path

from detectron2.config import LazyConfig
from detectron2.utils.registry import locate
from omegaconf import DictConfig, OmegaConf

from mae_transfer.common import ConfigError, check_override_value, find_config

__all__ = ["ConfigError", "CONFIG_DIR", "resolve_config", "load_config"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "detection"


def resolve_config(name: str) -> Path:
    """A config path, or a bare name (``vitdet_mae_l`` / ``vitdet_mae_l.py``) in ``configs/detection``."""
    return find_config(name, CONFIG_DIR)


def _accepts(node: DictConfig, arg: str) -> bool:
    """Whether a LazyCall node's target takes ``arg`` (a constructor argument the config leaves at its default)."""
    target = node.get("_target_", None)
    if target is None:
        return False
    try:
        params = inspect.signature(locate(target) if isinstance(target, str) else target).parameters
    except (TypeError, ValueError, ImportError):
        return False
    return arg in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def load_config(name: str, overrides: list[str] = ()) -> DictConfig:
    """Load a LazyConfig and apply ``key=value`` overrides (errors name the key at fault)."""
    cfg = LazyConfig.load(str(resolve_config(name)))
    if "train" in cfg and "precision" not in cfg.train:
        cfg.train.precision = None  # fp32 | bf16 | fp16 | auto; None: train.amp.enabled decides (detection.engine)
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not of the form key=value")
        key = ov.split("=", 1)[0]
        parent, _, leaf = key.rpartition(".")
        try:
            node = OmegaConf.select(cfg, parent) if parent else cfg
        except Exception:  # noqa: BLE001 - re-raised with the key named
            node = None
        if node is None or not isinstance(node, DictConfig):
            raise ConfigError(f"override {ov!r}: config has no {parent or key!r}")
        if leaf not in node and not (key.startswith("data.") or _accepts(node, leaf)):
            raise ConfigError(f"override {ov!r}: {parent or 'config'} has no key {leaf!r} "
                           f"(keys: {', '.join(map(str, node.keys()))})")
    old = {ov.split("=", 1)[0]: OmegaConf.select(cfg, ov.split("=", 1)[0], default=None) for ov in overrides}
    try:
        cfg = LazyConfig.apply_overrides(cfg, list(overrides))
    except Exception as e:  # noqa: BLE001 - hydra's parser errors, re-raised naming the overrides
        raise ConfigError(f"cannot apply overrides {list(overrides)}: {e}") from None
    for ov in overrides:
        key = ov.split("=", 1)[0]
        check_override_value(ov, key, old[key], OmegaConf.select(cfg, key, default=None))
    precision = cfg.train.get("precision", None) if "train" in cfg else None
    if precision is not None and precision not in ("fp32", "bf16", "fp16", "auto"):
        raise ConfigError(f"train.precision must be one of fp32, bf16, fp16, auto (or null: follow "
                          f"train.amp.enabled), got {precision!r}")
    return cfg
