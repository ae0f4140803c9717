"""Segmentation configs: finding one by name, applying the command line, the rule that moves what was
tied to an overridden ``train_cfg.max_iters`` (``--img-size``'s rule for the sizes: :mod:`segmentation.img_size`),
and the walk over a config's datasets."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

from mae_transfer.common import ConfigError, check_override_value, find_config, is_random_init

__all__ = ["CONFIG_DIR", "resolve_config", "prepare_config", "follow_max_iters", "leaf_datasets",
           "check_work_dir"]

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs" / "segmentation"
logger = logging.getLogger("train_seg")


def resolve_config(name: str) -> Path:
    """A config path, or a bare name (``upernet_mae_b_ade20k`` / ``...py``) in ``configs/segmentation``."""
    return find_config(name, CONFIG_DIR)


def leaf_datasets(cfg) -> list[tuple[str, dict]]:
    """``(split, dataset cfg)`` of the train / val / test loaders, wrapped datasets (``dataset``,
    ``datasets``) unwrapped; the dicts are the config's own, so edits apply to it."""
    found = []
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        ds = (cfg.get(loader) or {}).get("dataset")
        stack = [ds] if ds else []
        while stack:
            d = stack.pop()
            if "datasets" in d:
                stack.extend(d["datasets"])
            elif "dataset" in d:
                stack.append(d["dataset"])
            else:
                found.append((loader.split("_")[0], d))
    return found


def follow_max_iters(cfg, orig: int | None):
    """After ``train_cfg.max_iters`` is overridden, move what was tied to the old value with it: scheduler
    ends (the poly decay still reaches 0 at the last iteration), the validation and checkpoint interval."""
    new = (cfg.get("train_cfg") or {}).get("max_iters")
    if orig is None or new is None or new == orig:
        return
    scheds = []
    for sched in cfg.get("param_scheduler") or []:
        if sched.get("end") in (orig, None) or sched["end"] > new:
            sched["end"] = new
        if sched.get("begin", 0) < sched["end"]:  # a warmup longer than the whole run is cut, not kept
            scheds.append(sched)
    if "param_scheduler" in cfg:
        cfg.param_scheduler = scheds
    if cfg.train_cfg.get("val_interval") == orig:
        cfg.train_cfg.val_interval = new
    ckpt = (cfg.get("default_hooks") or {}).get("checkpoint") or {}
    if ckpt.get("interval") == orig:
        ckpt["interval"] = new


def _parse_value(v: str):
    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError):
        return v


def _accepts(node, leaf: str) -> bool:
    """Whether a ``type=...`` config node's class (looked up in mmseg's registries) takes ``leaf``."""
    import inspect

    from mmseg import registry

    typ = node.get("type")
    cls = typ if callable(typ) else None
    for name in dir(registry) if cls is None else ():
        reg = getattr(registry, name)
        if hasattr(reg, "get") and name.isupper():
            try:
                cls = reg.get(typ)
            except Exception:  # noqa: BLE001
                cls = None
            if cls is not None:
                break
    if cls is None:
        return True  # unknown here: the framework will say
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return True
    return leaf in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _check_option(cfg, option: str, key: str, value):
    """An override names an existing key (or a constructor argument of a ``type=`` node), and its value
    is of the kind and range of the config's (:func:`mae_transfer.common.check_override_value`)."""
    parent_key, _, leaf = key.rpartition(".")
    node = cfg
    for part in filter(None, parent_key.split(".")):
        node = node.get(part) if hasattr(node, "get") else None
        if node is None:
            raise ConfigError(f"--cfg-options {option!r}: the config has no {parent_key!r}")
    if not hasattr(node, "get"):
        return  # a list index or the like: mmengine checks it
    if leaf not in node:
        if "type" not in node or not _accepts(node, leaf):
            raise ConfigError(f"--cfg-options {option!r}: {parent_key or 'the config'} has no key {leaf!r} "
                              f"(keys: {', '.join(map(str, node.keys()))})")
        return
    check_override_value(f"--cfg-options {option}", key, node.get(leaf), value)


def _apply_cfg_options(cfg, options: list[str]):
    """``KEY=VALUE`` overrides (values as Python literals, else strings), then :func:`follow_max_iters`."""
    if not options:
        return
    orig_iters = (cfg.get("train_cfg") or {}).get("max_iters")
    opts = {}
    for kv in options:
        if "=" not in kv:
            raise ConfigError(f"--cfg-options expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        opts[k] = _parse_value(v)
        _check_option(cfg, kv, k, opts[k])
    cfg.merge_from_dict(opts)
    follow_max_iters(cfg, orig_iters)


def _apply_img_size(cfg, args):
    """``--img-size N``: every key tied to the input size set for N x N crops (:mod:`segmentation.img_size`;
    ``--cfg-options`` of those keys win), the derived values printed as one block."""
    n = getattr(args, "img_size", None)
    if n is None:
        return
    from .img_size import set_img_size
    logger.warning("\n".join(set_img_size(cfg, n, getattr(args, "cfg_options", []))))


def _apply_data_root(cfg, data_root: str | None):
    """Point every dataset at ``data_root``; without one, generate the config's ``scenes`` if it has them."""
    if data_root is None and cfg.get("scenes"):
        from mae_transfer.data.scenes import ensure_scenes
        data_root = str(ensure_scenes(**cfg.scenes))
    if data_root is None:
        return
    if not Path(data_root).is_dir():
        raise ConfigError(f"--data-root {data_root} is not a folder")
    cfg.data_root = data_root
    for _, ds in leaf_datasets(cfg):
        ds["data_root"] = data_root


def _train_labels(cfg):
    """The train loader's dataset config (``{}`` without one) and where its label maps are: ``(dataset,
    data root, :class:`segmentation.classes.TrainLayout`, ignore_index)``."""
    from .classes import TrainLayout
    train = next((ds for split, ds in leaf_datasets(cfg) if split == "train"), {})
    return (train, train.get("data_root") or cfg.get("data_root"), TrainLayout.of(train),
            int(train.get("ignore_index", 255)))


def _apply_classes(cfg, args):
    """With ``--data-root``, ``--num-classes`` or ``--reduce-zero-label``: classes from the data (see
    :mod:`segmentation.classes`), both heads and every dataset sized to them; the choice is printed."""
    num, rzl = getattr(args, "num_classes", None), getattr(args, "reduce_zero_label", None)
    if getattr(args, "data_root", None) is None and num is None and rzl is None:
        return
    if num is not None and num < 1:
        raise ConfigError(f"--num-classes {num}: must be at least 1")
    from .classes import apply_classes, discover_classes
    cfg_rzl = next((bool(ds.get("reduce_zero_label", False)) for _, ds in leaf_datasets(cfg)), False)
    rzl = cfg_rzl if rzl is None else rzl
    _, root, layout, ignore_index = _train_labels(cfg)
    classes, rzl = discover_classes(root, rzl, num, known_names=tuple(cfg.get("classes") or ()), layout=layout,
                                    ignore_index=ignore_index)
    notes = apply_classes(cfg, classes, rzl, leaf_datasets)
    logger.warning("classes: %d (%s), reduce_zero_label=%s", len(classes), ", ".join(classes[:12]), rzl)
    for note in notes:
        logger.warning(note)


def _apply_class_weights(cfg, mode: str):
    """``--class-weights``: ``config`` leaves the losses as they are; ``none`` unweights every cross-entropy
    loss; ``balanced`` weights them by the classes' shares of the training pixels
    (:func:`segmentation.classes.balanced_class_weights`). The weights are printed beside the class names."""
    if mode == "config":
        return
    from .classes import balanced_class_weights, set_class_weights
    weights = None
    if mode == "balanced":
        train, root, layout, ignore_index = _train_labels(cfg)
        if not train:
            raise ConfigError("--class-weights balanced: the config has no train_dataloader.dataset")
        n = int(cfg.model.decode_head.num_classes)
        weights, share = balanced_class_weights(root, n, bool(train.get("reduce_zero_label", False)), layout,
                                                ignore_index)
        names = list(cfg.get("classes") or (train.get("metainfo") or {}).get("classes") or range(n))
        logger.warning("class weights (balanced, from the training pixels): %s", ", ".join(
            f"{name} {w:g} ({100 * f:.1f} %)" for name, w, f in zip(names, weights, share)))
    else:
        logger.warning("class weights: none (unweighted cross-entropy)")
    for key in set_class_weights(cfg, weights):
        logger.warning("--class-weights %s: %s left as it is (not a CrossEntropyLoss)", mode, key)


def _apply_checkpoint_norm(cfg, options: list[str]):
    """A pretrained checkpoint of ours brings the statistics its encoder was trained with (``norm_stats``):
    they replace the config's ``model.data_preprocessor`` mean / std (0-255 units) unless ``--cfg-options``
    sets them; the choice is logged and kept as ``cfg.norm_stats`` (in the config mmengine dumps)."""
    from mae_transfer.data.norm_stats import (checkpoint_norm_stats, checkpoint_source, framework_norm,
                                              pick_norm_source)

    pre = cfg.model.data_preprocessor
    weights = cfg.model.backbone.get("pretrained")
    user = {k for k in ("mean", "std") for o in options
            if o.split("=", 1)[0].strip() == f"model.data_preprocessor.{k}"}
    stats = checkpoint_norm_stats(weights) if weights else None
    source = None
    if stats is not None:
        try:
            values = dict(zip(("mean", "std"), framework_norm(stats, len(pre.mean))))
        except ValueError as e:
            raise ConfigError(f"--weights {weights}: normalisation statistics do not fit the model ({e}); set "
                              f"--cfg-options model.data_preprocessor.mean=[...] model.data_preprocessor.std=[...]"
                              ) from None
        source = checkpoint_source(weights, stats)
    sources, src = pick_norm_source(user, source)
    for key in ("mean", "std"):
        if source is not None and sources[key] == source:
            pre[key] = values[key]
    cfg.norm_stats = dict(mean=list(pre.mean), std=list(pre.std), source=src)
    logger.warning("normalisation (0-255 units) from %s: mean %s std %s", src, list(pre.mean), list(pre.std))


def _apply_test_mode(cfg, test_mode: str):
    """``whole``-image or ``slide`` inference (crop = the training crop, stride 2/3 of it); ``config``: as is."""
    if test_mode == "config":
        return
    crop = tuple(cfg.get("crop_size") or cfg.model.data_preprocessor.get("size"))
    cfg.model.test_cfg = (dict(mode="whole") if test_mode == "whole" else
                          dict(mode="slide", crop_size=crop, stride=tuple(max(1, c * 2 // 3) for c in crop)))


def _fit_to_device(cfg, launcher: str):
    """Without CUDA: fp32 instead of mixed precision, and gloo processes under ``--launcher pytorch``."""
    import torch

    if torch.cuda.is_available():
        return
    if cfg.optim_wrapper.get("type") == "AmpOptimWrapper":
        logger.warning("no CUDA device: mixed precision (AmpOptimWrapper) off, fp32")
        cfg.optim_wrapper.type = "OptimWrapper"
        cfg.optim_wrapper.pop("loss_scale", None)
        cfg.optim_wrapper.pop("dtype", None)
    if launcher == "pytorch":
        # CPU processes (gloo): mmengine's own init would call torch.cuda.set_device, and its DDP wrapper
        # would pass a device id; a CPU module takes none
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)


def prepare_config(args):
    """Load the config and apply the command line; returns ``(cfg, config path)``.

    ``args`` has the attributes of ``tools/train_seg.py``'s parser: ``config``, ``cfg_options``,
    ``launcher``, ``work_dir``, ``seed``, ``weights``, ``resume``, ``data_root``, ``test_mode``, ``img_size``,
    ``class_weights`` (optional, default ``config``) and ``precision`` (optional, default ``config``: see
    :func:`segmentation.precision.apply_precision`)."""
    from mmengine.config import Config

    path = resolve_config(args.config)
    cfg = Config.fromfile(str(path))
    _apply_cfg_options(cfg, args.cfg_options)
    _apply_img_size(cfg, args)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or str(REPO / "output" / "segmentation" / path.stem)
    cfg.randomness = dict(seed=args.seed, deterministic=False)
    if args.weights is not None:
        cfg.model.backbone.pretrained = None if is_random_init(args.weights) else args.weights
    if args.resume == "auto":
        from .checkpoint import remove_orphans, resume_candidate
        remove_orphans(cfg.work_dir) if Path(cfg.work_dir).is_dir() else None
        found = resume_candidate(cfg.work_dir)
        if found is None:
            from .checkpoint import _warn
            _warn(f"--resume: no checkpoint in {cfg.work_dir} to resume from; starting from iteration 0")
        cfg.resume, cfg.load_from = (True, str(found)) if found else (False, None)
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    _apply_data_root(cfg, args.data_root)
    _apply_classes(cfg, args)
    _apply_class_weights(cfg, getattr(args, "class_weights", "config"))
    _apply_checkpoint_norm(cfg, args.cfg_options)
    _apply_test_mode(cfg, args.test_mode)
    from .precision import apply_precision
    apply_precision(cfg, getattr(args, "precision", "config"))
    _fit_to_device(cfg, args.launcher)
    return cfg, path


def check_work_dir(work_dir: str | Path, *, resume, overwrite: bool):
    """Refuse to train into a work dir holding a finished run (``metrics.json`` / ``weights.pth``) unless
    ``--resume`` or ``--overwrite`` is given (:class:`ConfigError` naming the folder and its files)."""
    found = [n for n in ("metrics.json", "weights.pth") if (Path(work_dir) / n).is_file()]
    if found and not (resume or overwrite):
        raise ConfigError(f"--work-dir {str(work_dir)!r} holds a finished run ({', '.join(found)}): pass "
                          f"--resume to continue it, --overwrite to replace it, or choose another --work-dir")
