"""``--img-size N`` for a segmentation config: every key tied to the input size, set from one number.

The rule. The config's own size N0 is its backbone's ``img_size``, the square training crop it is made
for (512 for ADE20K, 64 / 48 for the scene configs). Every pixel size tied to it is multiplied by N / N0:

- ``crop_size``, ``model.data_preprocessor.size`` (the batch is padded to it), ``model.backbone.img_size``
  (position embeddings and relative-position bias for an ``N / patch`` grid, interpolated at load time);
- the sizes in every train, val and test pipeline (:data:`SIZED_TRANSFORMS`: ``RandomResize`` scale,
  ``RandomCrop`` crop_size, ``Resize`` scale, ...), ADE20K's ``(2048, 512)`` becoming ``(4 N, N)``;
- the sliding-window test's ``crop_size`` and ``stride`` (``model.test_cfg``).

A val / test pipeline without any resize (the demo evaluates its 48 px scenes at their own size, the size
its training resizes them to) gets ``Resize(scale=<the training resize's scale>, keep_ratio=True)`` after
``LoadImageFromFile`` when N differs from N0, so training and evaluation see objects at one scale.
Kept as they are: jitter ratios, class weights, the data. A ``--cfg-options`` key this module sets (or
one above it, e.g. a whole pipeline) keeps the value the option gave.

A size that cannot work is a :class:`ConfigError` saying why and which sizes would work: not a multiple of
the patch size, or of the pyramid's coarsest stride (patch / the neck's smallest rescale: a coarsest map
that does not tile the grid would be cropped and misaligned with the finer ones in UperNet's top-down path).
"""

from __future__ import annotations

import math
from fractions import Fraction

from mmengine.config import ConfigDict

from mae_transfer.common import ConfigError, sizes_that_work
from mae_transfer.models.vit import VIT_PRESETS

__all__ = ["SIZED_TRANSFORMS", "set_img_size", "check_img_size", "own_img_size"]

# mmseg / mmcv transforms whose arguments are pixel sizes tied to the input size: type -> arguments.
SIZED_TRANSFORMS = {
    "RandomResize": ("scale",),
    "Resize": ("scale",),
    "RandomCrop": ("crop_size",),
    "RandomChoiceResize": ("scales",),
    "ResizeShortestEdge": ("scale", "max_size"),
    "Pad": ("size",),
}
RESIZES = ("RandomResize", "Resize", "RandomChoiceResize", "ResizeShortestEdge")


def _square(value, what: str) -> int:
    if isinstance(value, int):
        return value
    h, w = value
    if h != w:
        raise ConfigError(f"--img-size: {what} is {tuple(value)}, not square; --img-size sets square inputs "
                          f"(set the sizes with --cfg-options instead)")
    return int(h)


def own_img_size(cfg) -> int:
    """The input size the config is made for: ``model.backbone.img_size``."""
    return _square(cfg.model.backbone.get("img_size", 512), "model.backbone.img_size")


def _layout(cfg) -> tuple[int, int, float]:
    """``(patch size, coarsest pyramid stride, smallest neck rescale)`` of a config's model."""
    backbone = cfg.model.backbone
    arch = backbone.get("arch", "vit_base_patch16")
    patch = backbone.get("patch_size") or (VIT_PRESETS[arch]["patch_size"] if isinstance(arch, str) and arch in
                                           VIT_PRESETS else dict(arch).get("patch_size", 16))
    rescales = (cfg.model.get("neck") or {}).get("rescales") or [1]
    smallest = min(rescales)
    return int(patch), math.lcm(int(patch), round(patch / smallest)), smallest


def check_img_size(cfg, n: int):
    """Raise :class:`ConfigError` if the config's model cannot train on ``n x n`` crops, saying why and
    which sizes would work."""
    patch, stride, smallest = _layout(cfg)
    if n < 1:
        reason = "must be a positive number of pixels"
    elif n % patch:
        reason = f"not a multiple of the patch size {patch} (model.backbone)"
    elif n % stride:
        reason = (f"not a multiple of the pyramid's coarsest stride {stride} (patch {patch} / model.neck.rescales "
                  f"{smallest}): that map would cover {n // stride * stride} of the {n} px and be misaligned with "
                  f"the finer ones")
    else:
        return
    raise ConfigError(f"--img-size {n}: {reason}; sizes that work: {sizes_that_work(max(n, 1), stride, stride)}")


def _scaled(value, ratio: Fraction):
    """``value`` (a size, or nested tuples / lists of sizes) times ``ratio``, rounded to whole pixels."""
    if isinstance(value, (list, tuple)):
        return type(value)(_scaled(v, ratio) for v in value)
    return value if value is None or isinstance(value, bool) else round(value * ratio)


def _pipelines(cfg) -> list[tuple[str, str, list]]:
    """``(dotted key, split, transforms)`` of every pipeline: the top-level ``*_pipeline`` lists and
    each dataset's (wrapped datasets unwrapped), each list once."""
    found, seen = [], set()

    def add(key, split, pipe):
        if isinstance(pipe, list) and id(pipe) not in seen:
            seen.add(id(pipe))
            found.append((key, split, pipe))

    for key in list(cfg.keys()):
        if key.endswith("_pipeline"):
            add(key, "train" if key.startswith("train") else "test", cfg[key])
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        stack = [(f"{loader}.dataset", (cfg.get(loader) or {}).get("dataset"))]
        while stack:
            key, ds = stack.pop()
            if not ds:
                continue
            if "datasets" in ds:
                stack.extend((f"{key}.datasets.{i}", d) for i, d in enumerate(ds["datasets"]))
            elif "dataset" in ds:
                stack.append((f"{key}.dataset", ds["dataset"]))
            else:
                add(f"{key}.pipeline", loader.split("_")[0], ds.get("pipeline"))
    return found


def _transforms(pipe: list, key: str):
    """``(dotted key, transform dict)`` of a pipeline's transforms, test-time-augmentation lists included."""
    for i, t in enumerate(pipe):
        if not hasattr(t, "get"):
            continue
        yield f"{key}.{i}", t
        for j, sub in enumerate(t.get("transforms") or ()):
            yield from _transforms(sub if isinstance(sub, list) else [sub], f"{key}.{i}.transforms.{j}")


def set_img_size(cfg, n: int, options: list[str] = ()) -> list[str]:
    """Set every key of ``cfg`` tied to the input size for ``n x n`` crops (the rule of this module).

    Args:
        cfg: an mmengine segmentation config, its ``--cfg-options`` already applied; edited in place.
        n: the new crop size in pixels.
        options: those ``KEY=VALUE`` options; a key among them (or under one) keeps its value.
    Returns the lines to print: the derived values, one key a line. Raises :class:`ConfigError` for a
    size that cannot work (:func:`check_img_size`), an option that also sets ``model.backbone.img_size``,
    or a non-square config."""
    check_img_size(cfg, n)
    given = [kv.split("=", 1)[0] for kv in options]
    clash = [k for k in given if k in ("model.backbone.img_size", "model.backbone", "model")]
    if clash:
        raise ConfigError(f"--img-size {n} and --cfg-options {clash[0]}=... both set the backbone's input size: "
                          f"give one")
    own = own_img_size(cfg)
    cfg.model.backbone.img_size = cfg.model.backbone.get("img_size", own)  # the backbone's default, made explicit
    ratio = Fraction(n, own)
    patch, stride, _ = _layout(cfg)

    def kept(key):
        return any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in given)

    lines = [f"--img-size {n} (the config is made for {own}; pixel sizes x {n}/{own}):"]
    for key, node, leaf in (("crop_size", cfg, "crop_size"),
                            ("model.data_preprocessor.size", cfg.model.get("data_preprocessor") or {}, "size"),
                            ("model.backbone.img_size", cfg.model.backbone, "img_size")):
        if node.get(leaf) is None:
            continue
        if not kept(key):
            node[leaf] = _scaled(node[leaf], ratio)
        note = " (as --cfg-options gave it)" if kept(key) else ""
        if leaf == "img_size":
            note = f" (position embeddings and relative-position bias for a {n // patch}x{n // patch} token grid)"
        lines.append(f"  {key} = {node[leaf]}{note}")
    test_cfg = cfg.model.get("test_cfg") or {}
    if test_cfg.get("mode") == "slide" and not kept("model.test_cfg"):
        for arg in ("crop_size", "stride"):
            test_cfg[arg] = _scaled(test_cfg[arg], ratio)
    lines.append(f"  model.test_cfg = {dict(test_cfg)}")

    found, train_scale = [], None
    for key, split, pipe in _pipelines(cfg):
        sizes, has_resize = [], False
        for tkey, t in _transforms(pipe, key):
            has_resize |= t.get("type") in RESIZES
            for arg in SIZED_TRANSFORMS.get(t.get("type"), ()):
                if t.get(arg) is None:
                    continue
                if not kept(f"{tkey}.{arg}"):
                    t[arg] = _scaled(t[arg], ratio)
                sizes.append(f"{t['type']} {arg}={t[arg]}")
                if split == "train" and train_scale is None and t["type"] in RESIZES:
                    train_scale = t[arg]
        found.append((key, split, pipe, sizes, has_resize))
    for key, split, pipe, sizes, has_resize in found:
        if split != "train" and not has_resize and ratio != 1 and train_scale is not None and not kept(key):
            at = next((i + 1 for i, t in enumerate(pipe) if t.get("type") == "LoadImageFromFile"), 0)
            pipe.insert(at, ConfigDict(type="Resize", scale=train_scale, keep_ratio=True))
            sizes.append(f"Resize scale={train_scale} (added: the config tested images at their own size, "
                         f"which matched its {own} px training scale)")
        if "dataloader" in key:  # the top-level *_pipeline lists are the datasets' templates: set, not printed
            lines.append(f"  {key}: {', '.join(sizes) or 'no sizes (images at their own size)'}")
    strides = ", ".join(f"{patch / r:g}" for r in (cfg.model.get("neck") or {}).get("rescales") or [1])
    lines.append(f"  pyramid strides {strides} on the {n // patch}x{n // patch} token grid")
    return lines
