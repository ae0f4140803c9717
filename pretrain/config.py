"""Run configuration: one flat table of fields, Python config files, ``key=value`` overrides.

Precedence (later wins): the field defaults below -> the config file (and the files it names in
``_base_``) -> the config file's section for the mode being run (a dict named after the mode, e.g.
``finetune = dict(epochs=100, ...)``) -> command-line flags -> ``key=value`` / ``mode.key=value``
overrides. A config file is a Python module whose top-level variables are fields (names starting with
``_`` other than ``_base_`` are private helpers). Every value must be a plain Python literal so that the
resolved config can be stored in checkpoints (``weights_only``) and in ``config.json``.
"""

from __future__ import annotations

import ast
import runpy
from pathlib import Path
from typing import Any

from mae_transfer.common import ConfigError

__all__ = ["ConfigError", "FIELDS", "CHOICES", "MODES", "DEFAULT_CONFIG", "load_config", "parse_overrides", "resolve"]

MODES = ("pretrain", "linprobe", "finetune", "partial", "supervised", "sweep")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "pretrain"
DEFAULT_CONFIG = CONFIG_DIR / "mini_fashion_mnist.py"


# name: (default, type, help). type is the type of non-None values; tuples are typed by their items.
FIELDS: dict[str, tuple[Any, type, str]] = {
    # --- what to run ---
    "mode": ("pretrain", str, "pretrain | linprobe | finetune | partial | supervised | sweep"),
    "model": ("vit_mini_patch4", str, "ViT preset (mae_transfer VIT_PRESETS); MAE adds MAE_PRESETS['mae_' + model]'s decoder"),
    "decoder_embed_dim": (None, int, "MAE decoder width (None: the preset's)"),
    "decoder_depth": (None, int, "MAE decoder blocks (None: the preset's)"),
    "decoder_num_heads": (None, int, "MAE decoder heads (None: the preset's)"),
    "weights": (None, str, "linprobe/finetune/partial: checkpoint to start from (ours, official MAE, timm/DeiT, HF; .pth/.safetensors), or 'none'"),
    "seed": (0, int, "seed of everything: init, data order, augmentation, masks"),
    "device": ("auto", str, "auto | cpu | cuda"),
    "precision": ("auto", str, "auto | fp32 | bf16 | fp16 (auto: the fastest, timed on the first batch and cached per machine, see mae_transfer/precision.py)"),
    # --- data ---
    "data": (None, str, "Fashion-MNIST IDX dir, or an ImageFolder (with train/ and val/ inside, or the train folder itself); None: built-in Fashion-MNIST"),
    "val_data": (None, str, "held-out ImageFolder for evaluation / reconstructions (default: <data>/val)"),
    "img_size": (32, int, "input size (Fashion-MNIST 28x28 is padded to 32, then resized if different)"),
    "in_chans": (None, int, "image channels the ViT takes (None: the data's: 1 grey, 3 colour, N for N-channel TIFF stacks; a checkpoint's own when fine-tuning one of ours); grey data with 3 is copied to RGB, colour with 1 turned grey"),
    "alpha": ("drop", str, "RGBA / LA images: drop the alpha channel (logged) | keep it as the last channel"),
    "mean": (None, float, "per-channel normalisation mean (None: a checkpoint's of ours, else the built-in data's, else computed from the training images and cached)"),
    "std": (None, float, "per-channel normalisation std (None: as mean)"),
    "norm_images": (2000, int, "training images the normalisation statistics are computed from (an evenly spaced sample of larger folders)"),
    "crop_scale": ((0.2, 1.0), float, "RandomResizedCrop scale range for training (MAE: 0.2-1)"),
    "hflip": (True, bool, "random horizontal flip for training"),
    "augment": ("crop_rand", str, "train-time augmentation (Table 1e): none (eval transform) | crop_fixed (fixed-size random crop + flip) | crop_rand (RandomResizedCrop + flip) | crop_rand_jitter (+ colour jitter); true/false: crop_rand/none"),
    "auto_augment": (None, str, "timm RandAugment spec for fine-tuning ImageFolders, e.g. rand-m9-mstd0.5-inc1"),
    "reprob": (0.0, float, "timm random-erasing probability (fine-tuning ImageFolders)"),
    "eval_crop_pct": (1.0, float, "eval: resize to img_size / eval_crop_pct, centre crop img_size (ImageNet 224/256)"),
    "train_subset": (0, int, "use the first N training images of a fixed random permutation (0: all)"),
    "eval_subset": (0, int, "evaluate on the first N test images of a fixed random permutation (0: all)"),
    "bad_images": ("skip", str, "ImageFolder images that cannot be used: skip (counted, logged) | error"),
    "num_workers": (0, int, "DataLoader worker processes per device"),
    # --- optimisation ---
    "epochs": (1, int, "training epochs"),
    "warmup_epochs": (0.0, float, "linear lr warmup, in epochs (fractional allowed)"),
    "batch_size": (64, int, "per-device batch; effective batch = batch_size * devices * accum_iter"),
    "accum_iter": (1, int, "gradient accumulation steps"),
    "optimizer": ("adamw", str, "adamw | lars | sgd"),
    "blr": (1.5e-4, float, "base lr; lr = blr * effective batch / 256 unless lr is set"),
    "lr": (None, float, "absolute peak lr (overrides blr)"),
    "min_lr": (0.0, float, "cosine schedule floor"),
    "weight_decay": (0.05, float, "decoupled weight decay (not on norms, biases, tokens, position tables)"),
    "betas": ((0.9, 0.95), float, "AdamW betas"),
    "momentum": (0.9, float, "SGD / LARS momentum"),
    "clip_grad": (None, float, "clip the global grad norm to this (None: no clipping)"),
    "grad_checkpointing": (False, bool, "recompute each transformer block's activations in the backward pass (torch.utils.checkpoint, encoder and MAE decoder): less activation memory for about one more forward per step, same gradients"),
    # --- MAE ---
    "mask_ratio": (0.75, float, "fraction of patches removed"),
    "norm_pix_loss": (True, bool, "regress per-patch normalised pixels (the older spelling of target: used when target is None)"),
    "target": (None, str, "MAE regression target (Table 1d): pixel | norm_pix | pca (None: norm_pix if norm_pix_loss else pixel)"),
    "pca_dim": (None, int, "target=pca: PCA coefficients per patch, fitted on training patches (None: patch_dim // 8, the paper's 96 of 768)"),
    "mask_sampling": ("random", str, "which patches are masked (Table 1f): random | block (BEiT block-wise) | grid (keep one of every 2x2; mask_ratio 0.75)"),
    "mask_token_in_encoder": (False, bool, "MAE: mask tokens enter the encoder with the visible patches (Table 1c 'encoder w/ [M]')"),
    "recon_images": (8, int, "held-out images in the reconstruction figure"),
    # --- classification ---
    "num_classes": (None, int, "classes (None: from the dataset)"),
    "global_pool": ("avg", str, "finetune/partial/supervised pooling: avg (mean of patches + fc_norm) | token"),
    "linprobe_pool": ("token", str, "linear-probe features: token (cls after the final norm, as the paper) | avg"),
    "cache_features": (True, bool, "linprobe without augmentation: extract frozen features once, then train the head on them"),
    "layer_decay": (None, float, "layer-wise lr decay (finetune/partial)"),
    "drop_path": (0.0, float, "stochastic depth rate"),
    "mixup": (0.0, float, "timm Mixup alpha (0: off)"),
    "cutmix": (0.0, float, "timm CutMix alpha (0: off)"),
    "smoothing": (0.0, float, "label smoothing"),
    "blocks": (0, int, "partial: fine-tune only the last K blocks (+ final norm and head)"),
    "eval_every": (0, int, "classification: evaluate every N epochs (0: only at the end)"),
    # --- sweep ---
    "ratios": ((0.25, 0.5, 0.75, 0.9), float, "sweep: mask ratios to pretrain at"),
    # --- bookkeeping ---
    "out": (None, str, "output directory (default output/pretrain/<mode>-<timestamp>)"),
    "resume": ("auto", str, "auto (latest checkpoint in out, if any) | none | path to a checkpoint"),
    "save_every_epochs": (1, int, "checkpoint every N epochs (0: only the final one)"),
    "save_every_steps": (0, int, "also checkpoint every N optimizer steps inside an epoch (0: off)"),
    "keep_last": (2, int, "periodic checkpoints kept (the final one is always kept)"),
    "log_every": (10, int, "optimizer steps between log records (JSONL, TensorBoard, progress bar)"),
    "progress": (True, bool, "show a tqdm progress bar"),
}
_TUPLE_FIELDS = {k for k, (d, _, _) in FIELDS.items() if isinstance(d, tuple)} | {"mean", "std"}
# Fields with a closed set of values (None stays allowed where it is the default).
CHOICES = {"augment": ("none", "crop_fixed", "crop_rand", "crop_rand_jitter"), "target": ("pixel", "norm_pix", "pca"),
           "mask_sampling": ("random", "block", "grid"), "alpha": ("drop", "keep")}
# augment was a bool before Table 1e's variants: True meant RandomResizedCrop + flip, False the eval transform.
_LEGACY_BOOL = {"augment": ("crop_rand", "none")}


def _legacy(key: str, value):
    """A bool (or its spelling) for a field that used to be one -> its value today; anything else as is."""
    if key in _LEGACY_BOOL:
        on, off = _LEGACY_BOOL[key]
        low = value.lower() if isinstance(value, str) else value
        if low is True or low in ("true", "yes", "on", "1"):
            return on
        if low is False or low in ("false", "no", "off", "0"):
            return off
    return value


def _check_choice(key: str, value, origin: str):
    if key in CHOICES and value is not None and value not in CHOICES[key]:
        raise ConfigError(f"{origin}: {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    return value


def _parse_value(key: str, text: str, origin: str):
    typ = FIELDS[key][1]
    if text.lower() in ("none", "null"):
        return None
    if key in CHOICES:
        return _check_choice(key, _legacy(key, text), origin)
    try:
        if key in _TUPLE_FIELDS:
            items = ast.literal_eval(text) if text[:1] in "([" else [s for s in text.split(",") if s.strip()]
            items = items if isinstance(items, (list, tuple)) else [items]
            return tuple(typ(v) for v in items)
        if typ is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if typ is int:
            return int(float(text)) if float(text).is_integer() else int(text)
        return typ(text)
    except (ValueError, SyntaxError, TypeError):
        raise ConfigError(f"{origin}: cannot read {key}={text!r} as {typ.__name__}"
                          f"{' values' if key in _TUPLE_FIELDS else ''}") from None


def _check_value(key: str, value, origin: str):
    if key not in FIELDS:
        raise ConfigError(f"{origin}: unknown config key {key!r}")
    if value is None:
        return None
    value = _legacy(key, value)
    typ = FIELDS[key][1]
    if key in _TUPLE_FIELDS:
        if not isinstance(value, (list, tuple)):
            value = (value,)
        try:
            return tuple(typ(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"{origin}: {key} must be a sequence of {typ.__name__}, got {value!r}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"{origin}: {key} must be {typ.__name__}, got {type(value).__name__} {value!r}")
    return _check_choice(key, value, origin)


def load_config(path: str | Path, _seen: tuple = ()) -> dict:
    """Read a config file (following ``_base_``) into ``{field: value, mode: {field: value}}``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    if path.resolve() in _seen:
        raise ConfigError(f"config file {path}: _base_ cycle")
    try:
        ns = runpy.run_path(str(path))
    except Exception as e:  # noqa: BLE001 - a user file; name it
        raise ConfigError(f"config file {path} fails to execute: {type(e).__name__}: {e}") from None
    cfg: dict = {}
    base = ns.get("_base_")
    if base:
        cfg = load_config((path.parent / base) if not Path(base).is_absolute() else base, _seen + (path.resolve(),))
    for key, value in ns.items():
        if key.startswith("_") or key in ("__builtins__",) or callable(value) or type(value).__name__ == "module":
            continue
        if key in MODES and isinstance(value, dict):
            section = dict(cfg.get(key, {}))
            for k, v in value.items():
                section[k] = _check_value(k, v, f"{path} [{key}]")
            cfg[key] = section
        else:
            cfg[key] = _check_value(key, value, str(path))
    return cfg


def parse_overrides(items: list[str]) -> dict:
    """``["epochs=3", "finetune.blr=1e-3"]`` -> ``{"epochs": 3, "finetune": {"blr": 0.001}}``."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        section = None
        if "." in key:
            section, key = key.split(".", 1)
            if section not in MODES:
                raise ConfigError(f"override {item!r}: unknown section {section!r} (modes: {', '.join(MODES)})")
        if key not in FIELDS:
            raise ConfigError(f"unknown config key {key!r} in override {item!r}")
        value = _parse_value(key, text, "override")
        if section:
            out.setdefault(section, {})[key] = value
        else:
            out[key] = value
    return out


def resolve(file_cfg: dict, mode: str, flags: dict, overrides: dict) -> dict:
    """The flat config for ``mode``: defaults < file < file[mode] < flags < overrides < overrides[mode]."""
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r} (modes: {', '.join(MODES)})")
    cfg = {k: d for k, (d, _, _) in FIELDS.items()}
    for layer in (file_cfg, file_cfg.get(mode, {}), flags, overrides, overrides.get(mode, {})):
        cfg.update({k: v for k, v in layer.items() if k not in MODES})
    cfg["mode"] = mode
    return cfg
