"""``--img-size N`` for a detection LazyConfig: every key tied to the input size, set from one number.

The rule. The config's own size N0 is its backbone's ``img_size``, the square its loaders and padding are
made for (1024 for the ViTDet recipes, 128 / 48 for the scene configs). Every pixel size tied to it is
multiplied by N / N0:

- the ViT's ``img_size`` (the global blocks' relative-position tables, ``2 N / patch - 1`` rows) and the
  pyramid's ``square_pad`` (0, no square pad, stays 0);
- the sizes of the train and test augmentations (:data:`SIZED_AUGMENTATIONS`: the LSJ resize target and
  crop, the test resize); arguments a config leaves at the class default are not scaled;
- the anchor sizes and the box / mask poolers' ``canonical_box_size``: the loaders map an image's long
  side to N, so the same objects come out N / N0 times larger in pixels; anchors and the level rule
  scaled with them keep which anchors match an object and which pyramid level pools it.

Kept as they are: ``pretrain_img_size`` (``pos_embed`` is resampled on the fly), ``window_size`` (the
pretraining grid, as ViTDet's 14 = 224 / 16; a token grid that windows do not tile is zero-padded, as
ViTDet pads 64 tokens to 70 at 1024), the scale-jitter range, and the data (generated scenes keep their
size; the loaders resize them). A ``key=value`` override of a key this module sets wins over the rule.

A size that cannot work is a :class:`ConfigError` saying why and which sizes would work: not a multiple of
the patch size; not a multiple of the pyramid's coarsest stride (detectron2 pads every input up to a
multiple of it, so the square pad would not be N); a token grid smaller than one attention window.
"""

from __future__ import annotations

import inspect
import math
from fractions import Fraction

from detectron2.utils.registry import locate
from omegaconf import DictConfig, OmegaConf

from mae_transfer.common import ConfigError, sizes_that_work

__all__ = ["SIZED_AUGMENTATIONS", "set_img_size", "check_img_size", "own_img_size"]

# detectron2 augmentations whose arguments are pixel sizes tied to the input size: name -> arguments.
SIZED_AUGMENTATIONS = {
    "ResizeScale": ("target_height", "target_width"),
    "FixedSizeCrop": ("crop_size",),
    "ResizeShortestEdge": ("short_edge_length", "max_size"),
    "Resize": ("shape",),
    "RandomCrop": ("crop_size",),  # only crop_type "absolute" / "absolute_range": the others are fractions
}


def _vit_key(cfg: DictConfig) -> str:
    """Dotted path of the ViT node: ``model.backbone.net`` (simple pyramid) or ``...bottom_up.net`` (FPN)."""
    for key in ("model.backbone.net", "model.backbone.bottom_up.net"):
        if isinstance(OmegaConf.select(cfg, key, default=None), DictConfig):
            return key
    raise ConfigError("--img-size: the config has neither model.backbone.net nor model.backbone.bottom_up.net "
                      "(the ViT whose input size it sets)")


def _arg(node: DictConfig, name: str):
    """A LazyCall node's argument: the config's value, else its target's default (None if it has none)."""
    if name in node:
        return node[name]
    target = node.get("_target_", None)
    try:
        param = inspect.signature(locate(target) if isinstance(target, str) else target).parameters.get(name)
    except (TypeError, ValueError, ImportError):
        return None
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _target_name(node) -> str:
    target = node.get("_target_", "") if isinstance(node, DictConfig) else ""
    return target.rsplit(".", 1)[-1] if isinstance(target, str) else getattr(target, "__name__", "")


def own_img_size(cfg: DictConfig) -> int:
    """The input size the config is made for: its ViT's ``img_size``."""
    return int(_arg(OmegaConf.select(cfg, _vit_key(cfg)), "img_size"))


def _size_keys(cfg: DictConfig) -> list[tuple[str, str]]:
    """``(dotted key, kind)`` of every value tied to the input size; kind ``"anchors"`` (nested lists,
    fractional sizes kept) or ``"pixels"`` (an int or a list of ints)."""
    vit = _vit_key(cfg)
    keys = [(f"{vit}.img_size", "pixels")]
    pad_key = vit.rsplit(".", 1)[0].replace(".bottom_up", "") + ".square_pad"
    if OmegaConf.select(cfg, pad_key, default=None):
        keys.append((pad_key, "pixels"))
    for split in ("train", "test"):
        augs = OmegaConf.select(cfg, f"dataloader.{split}.mapper.augmentations", default=None) or []
        for i, aug in enumerate(augs):
            name = _target_name(aug)
            if name == "RandomCrop" and aug.get("crop_type", "relative_range") not in ("absolute", "absolute_range"):
                continue
            for arg in SIZED_AUGMENTATIONS.get(name, ()):
                if aug.get(arg, None) is not None:
                    keys.append((f"dataloader.{split}.mapper.augmentations.{i}.{arg}", "pixels"))
    if OmegaConf.select(cfg, "model.proposal_generator.anchor_generator.sizes", default=None) is not None:
        keys.append(("model.proposal_generator.anchor_generator.sizes", "anchors"))
    for pooler in ("box_pooler", "mask_pooler"):
        node = OmegaConf.select(cfg, f"model.roi_heads.{pooler}", default=None)
        if isinstance(node, DictConfig) and _arg(node, "canonical_box_size") is not None:
            # detectron2's default (224, the ImageNet object scale) counts as the config's too
            node.canonical_box_size = _arg(node, "canonical_box_size")
            keys.append((f"model.roi_heads.{pooler}.canonical_box_size", "pixels"))
    return keys


def _scaled(value, ratio: Fraction, kind: str):
    """``value`` (a number or nested lists of numbers) times ``ratio``: pixels to ints, anchors to 0.01 px."""
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return [_scaled(v, ratio, kind) for v in value]
    if kind == "pixels":
        return round(value * ratio)
    v = round(float(value * ratio), 2)
    return int(v) if v.is_integer() else v


def _grid_note(n: int, patch: int, window: int, windowed: bool) -> str:
    g = n // patch
    if not windowed:
        return f"all blocks global on the {g}x{g} token grid"
    padded = -(-g // window) * window
    tiling = f", zero-padded to {padded}x{padded}" if padded != g else ""
    return f"kept; the {g}x{g} token grid{tiling} makes {padded // window}x{padded // window} windows"


def _layout(cfg: DictConfig) -> tuple[str, int, int, bool, int]:
    """``(vit key, patch, window, has window blocks, coarsest pyramid stride)`` of a config."""
    vit = _vit_key(cfg)
    node = OmegaConf.select(cfg, vit)
    patch, window = int(_arg(node, "patch_size")), int(_arg(node, "window_size") or 0)
    windowed = window > 0 and len(set(_arg(node, "global_blocks") or ())) < int(_arg(node, "depth"))
    strides = OmegaConf.select(cfg, "model.proposal_generator.anchor_generator.strides", default=None)
    return vit, patch, window, windowed, max([patch, *(strides or ())])


def check_img_size(cfg: DictConfig, n: int):
    """Raise :class:`ConfigError` if the config's model cannot take ``n x n`` inputs, saying why and
    which sizes would work."""
    vit, patch, window, windowed, stride = _layout(cfg)
    step = math.lcm(patch, stride)
    minimum = max(step, window * patch if windowed else 0)
    if n < 1:
        reason = "must be a positive number of pixels"
    elif n % patch:
        reason = f"not a multiple of the patch size {patch} ({vit}.patch_size)"
    elif n % stride:
        reason = (f"not a multiple of the coarsest pyramid stride {stride} (model.proposal_generator.anchor_generator"
                  f".strides): detectron2 pads every input up to a multiple of it, so inputs would be "
                  f"{-(-n // stride) * stride} px, not {n}")
    elif windowed and n // patch < window:
        reason = (f"its {n // patch}x{n // patch} token grid is smaller than one {window}x{window}-token attention "
                  f"window ({vit}.window_size)")
    else:
        return
    raise ConfigError(f"--img-size {n}: {reason}; sizes that work: {sizes_that_work(max(n, 1), step, minimum)}")


def set_img_size(cfg: DictConfig, n: int, overrides: list[str] = ()) -> list[str]:
    """Set every key of ``cfg`` tied to the input size for ``n x n`` inputs (the rule of this module).

    Args:
        cfg: a loaded detection LazyConfig, its ``key=value`` overrides already applied; edited in place.
        n: the new input size in pixels.
        overrides: those ``key=value`` overrides; a key among them (or under one) keeps its value.
    Returns the lines to print: the derived values, one key a line. Raises :class:`ConfigError` for a
    size that cannot work (:func:`check_img_size`) or an override that also sets the ViT's ``img_size``."""
    check_img_size(cfg, n)
    vit, patch, window, windowed, _ = _layout(cfg)
    given = [ov.split("=", 1)[0] for ov in overrides]
    if any(f"{vit}.img_size" == k or f"{vit}.img_size".startswith(k + ".") for k in given):
        raise ConfigError(f"--img-size {n} and the override of {vit}.img_size both set the input size: give one")
    own = own_img_size(cfg)
    OmegaConf.select(cfg, vit).img_size = own  # a constructor default becomes the config's own value
    ratio = Fraction(n, own)
    lines = [f"--img-size {n} (the config is made for {own}; pixel sizes x {n}/{own}):"]
    for key, kind in _size_keys(cfg):
        kept = any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in given)
        if not kept:
            OmegaConf.update(cfg, key, _scaled(OmegaConf.select(cfg, key), ratio, kind), merge=False)
        value = OmegaConf.select(cfg, key)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        note = " (as the key=value override gave it)" if kept else ""
        if key == f"{vit}.img_size":
            note = f" (global blocks' relative positions for a {n // patch}x{n // patch} token grid)"
        elif ".augmentations." in key:
            note = f" ({_target_name(OmegaConf.select(cfg, key.rsplit('.', 1)[0]))}){note}"
        lines.append(f"  {key} = {value}{note}")
    lines.append(f"  {vit}.window_size = {window} ({_grid_note(n, patch, window, windowed)})")
    return lines
