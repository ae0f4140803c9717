"""Training and evaluation of a detection LazyConfig with detectron2's own machinery.

The loop is detectron2's: ``SimpleTrainer`` (fp32), ``AMPTrainer`` (detectron2's fp16 mixed precision, CUDA)
or :class:`AutocastTrainer` (an ``AMPTrainer`` whose autocast works on CPUs too, bf16 or fp16, chosen by
``train.precision``, see :func:`training_precision`), the hooks of its
``lazyconfig_train_net.py`` (iteration timer, lr scheduler, periodic checkpointer, periodic COCO
evaluation, writers printing losses, lr and ETA, TensorBoard), DDP through ``launch``. What is ours:
``--weights`` loading (:mod:`detection.checkpoint`), dataset validation (:mod:`detection.data`), atomic
checkpoints, and the final ``metrics.json``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from torch.nn.parallel import DistributedDataParallel

from mae_transfer.common import ConfigError, atomic_write, is_random_init, write_json

from .checkpoint import SafeDetectionCheckpointer, load_weights

__all__ = ["AutocastTrainer", "build_model", "build_trainer", "training_precision", "do_test", "do_train",
           "flat_metrics", "write_metrics", "resolve_weights", "save_prediction_figure", "save_predictions",
           "preview_predictions", "finished_run_files", "check_output_dir"]

logger = logging.getLogger("detectron2.mae_transfer")


def resolve_weights(weights: str | None) -> str | None:
    """``None`` for random init ("none", "" or None), else an existing file (clear error otherwise)."""
    if weights is None or is_random_init(weights):
        return None
    if not Path(weights).is_file():
        raise ConfigError(f"weights file {weights!r} not found; pass --weights FILE, or --weights none "
                                f"for random initialisation")
    return str(weights)


def finished_run_files(output_dir: Path) -> list[str]:
    """The files of a finished training run in ``output_dir`` (``metrics.json`` of a training, not of an
    ``--eval-only``; ``model_final.pth``); empty if there is none."""
    found = []
    metrics = output_dir / "metrics.json"
    if metrics.is_file():
        try:
            import json
            eval_only = bool(json.loads(metrics.read_text()).get("eval_only"))
        except (ValueError, AttributeError, OSError):
            eval_only = False
        if not eval_only:
            found.append("metrics.json")
    if (output_dir / "model_final.pth").is_file():
        found.append("model_final.pth")
    return found


def check_output_dir(output_dir: Path, *, resume: bool, eval_only: bool, overwrite: bool):
    """Refuse to train into a folder holding a finished run unless ``--resume``, ``--eval-only`` or
    ``--overwrite`` says what to do with it (:class:`ConfigError` naming the folder and its files)."""
    found = finished_run_files(output_dir)
    if found and not (resume or eval_only or overwrite):
        raise ConfigError(f"--output-dir {str(output_dir)!r} holds a finished run ({', '.join(found)}): pass "
                          f"--resume to continue it, --eval-only to evaluate it, --overwrite to replace it, "
                          f"or choose another --output-dir")


def build_model(cfg) -> torch.nn.Module:
    device = cfg.train.device
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={device} but no CUDA device is available; add train.device=cpu")
    model = instantiate(cfg.model)
    return model.to(device)


TRAIN_PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def training_precision(cfg) -> str:
    """The precision of the training steps: ``fp32``, ``bf16``, ``fp16`` or ``auto`` (decided by a probe
    in :func:`build_trainer`). Evaluation always runs in fp32.

    ``train.precision`` decides when set. Unset (``None``, the default :func:`detection.config.load_config`
    gives every config), detectron2's own key ``train.amp.enabled`` decides as it always has: off is
    fp32; on is fp16 with a grad scaler (detectron2's ``AMPTrainer``) on CUDA, and bf16 on CPUs, where
    ``AMPTrainer``'s ``torch.cuda.amp.autocast`` would do nothing (and its CUDA assertion fails)."""
    train = cfg.train
    on_gpu = str(train.device).startswith("cuda")
    precision = train.get("precision", None)
    if precision is None:
        amp = bool(train.get("amp", {}).get("enabled", False))
        precision = ("fp16" if on_gpu else "bf16") if amp else "fp32"
    if precision not in TRAIN_PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(TRAIN_PRECISIONS)} (or null: follow "
                          f"train.amp.enabled), got {precision!r}")
    if precision == "bf16" and on_gpu and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision=bf16 but {torch.cuda.get_device_name()} has no bfloat16; use fp16 or auto")
    return precision


class AutocastTrainer(AMPTrainer):
    """detectron2's ``AMPTrainer`` with ``torch.autocast`` on the model's own device type, so that mixed
    precision works on CPUs (bf16 on those with AMX / avx512_bf16) as well as GPUs.

    Hooks, metrics, checkpointing and the after-backward behaviour are ``AMPTrainer``'s. The heads' loss
    functions (cross entropy, binary cross entropy, smooth L1) are on autocast's fp32 list, and their sum
    is taken in fp32 outside autocast. bf16 has fp32's range: its grad scaler is disabled (scaling is the
    identity, ``step`` is the optimizer's); fp16 scales the loss as ``AMPTrainer`` does.

    Args:
        model, data_loader, optimizer: as for ``SimpleTrainer``.
        precision: ``"bf16"`` or ``"fp16"``.
        device_type: ``"cpu"`` or ``"cuda"``, where the model runs.
        **kwargs: ``AMPTrainer``'s other arguments (``gather_metric_period``, ``zero_grad_before_forward``,
            ``log_grad_scaler``, ``async_write_metrics``).
    """

    def __init__(self, model, data_loader, optimizer, precision: str = "bf16", device_type: str = "cpu", **kwargs):
        if precision not in ("bf16", "fp16"):
            raise ValueError(f"AutocastTrainer: precision must be bf16 or fp16, got {precision!r}")
        scaler = torch.amp.GradScaler(device_type, enabled=precision == "fp16")
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        super().__init__(model, data_loader, optimizer, grad_scaler=scaler, precision=dtype, **kwargs)
        self.device_type = device_type

    def run_step(self):
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        losses = sum(v.float() for v in loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        if self.log_grad_scaler and self.grad_scaler.is_enabled():
            from detectron2.utils.events import get_event_storage
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())
        self.after_backward()
        if self.async_write_metrics:
            self.concurrent_executor.submit(self._write_metrics, loss_dict, data_time, iter=self.iter)
        else:
            self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def load_state_dict(self, state_dict):
        SimpleTrainer.load_state_dict(self, state_dict)
        if "grad_scaler" in state_dict:  # a checkpoint of an fp32 run has none: resuming it in bf16 is fine
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def _probe(model, data_loader, device: torch.device) -> tuple[str, dict]:
    """``train.precision=auto``: one forward + backward of ``model`` on the first training batch in
    fp32 and bf16 (fp16 on GPUs without bf16), timed by :func:`mae_transfer.precision.probe_precision`
    and cached per machine and model shape. The batch is drawn, and the model run, with every RNG state
    put back afterwards, so the training that follows is the same whether the choice was probed or cached."""
    from detectron2.utils.events import EventStorage

    from mae_transfer.precision import cache_path, cached_choice, kept_rng, probe_precision

    with kept_rng():
        batch = next(iter(data_loader))
        # detectron2's AspectRatioGroupedDataset keeps its half-filled aspect-ratio buckets on itself; what
        # the probe's iterator left there would join the training's first batches
        for bucket in getattr(data_loader, "_buckets", []):
            del bucket[:]
        model.train()
        n_params = sum(p.numel() for p in model.parameters())
        hw = max((tuple(d["image"].shape[-2:]) for d in batch), default=(0, 0))
        key = f"detectron2|{type(model).__name__}|{n_params}|batch {len(batch)} x {list(hw)}"

        def step():
            return sum(v.float() for v in model(batch).values())

        cached = cached_choice(device, key)
        with EventStorage(0):  # the heads log into the current storage
            choice, times = probe_precision(model, step, device, key)
    logger.info(f"train.precision=auto: {choice} ({'cached in ' + str(cache_path()) + ', ' if cached else ''}"
                f"one forward + backward on the first batch: "
                + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in times.items()) + ")")
    return choice, times


def build_trainer(cfg, model, ddp_model, data_loader, optimizer):
    """The trainer for :func:`training_precision`; returns ``(trainer, precision, probe times or {})``.
    ``model`` is the bare module (the probe runs on it, on rank 0), ``ddp_model`` what the trainer steps."""
    precision = training_precision(cfg)
    on_gpu = str(cfg.train.device).startswith("cuda")
    times = {}
    if precision == "auto":
        choice = None
        if comm.is_main_process():
            choice, times = _probe(model, data_loader, next(model.parameters()).device)
        precision = comm.all_gather(choice)[0] if comm.get_world_size() > 1 else choice
    if precision == "fp32":
        return SimpleTrainer(ddp_model, data_loader, optimizer), precision, times
    if on_gpu and precision == "fp16" and cfg.train.get("precision", None) is None:
        return AMPTrainer(ddp_model, data_loader, optimizer), precision, times  # train.amp.enabled as ever
    return AutocastTrainer(ddp_model, data_loader, optimizer, precision=precision,
                           device_type="cuda" if on_gpu else "cpu"), precision, times


def _ddp(cfg, model):
    if comm.get_world_size() == 1:
        return model
    on_gpu = str(cfg.train.device).startswith("cuda")
    ddp_cfg = dict(cfg.train.get("ddp", {}))
    fp16 = ddp_cfg.pop("fp16_compression", False)
    ddp = DistributedDataParallel(model, device_ids=[comm.get_local_rank()] if on_gpu else None, **ddp_cfg)
    if fp16 and on_gpu:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


def flat_metrics(results: dict) -> dict:
    """``{"bbox": {"AP": ..}, "segm": {..}}`` -> ``{"bbox/AP": .., "segm/AP": ..}``; NaN -> None, except
    a task's overall AP, which is 0.0 when the model made no prediction (nothing detected)."""
    out = {}
    for task, res in (results or {}).items():
        for k, v in (res.items() if isinstance(res, dict) else [("", res)]):
            v = float(v)
            name = f"{task}/{k}" if k else task
            out[name] = None if math.isnan(v) else v
            if k == "AP" and math.isnan(v):
                out[name] = 0.0
                out[f"{task}/no_predictions"] = True
    return out


def do_test(cfg, model) -> dict:
    """COCO evaluation of ``model`` on ``cfg.dataloader.test``; results on the main process, {} elsewhere."""
    if "evaluator" not in cfg.dataloader:
        return {}
    ret = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(ret)
    return ret


def _writers(output_dir: str, max_iter: int) -> list:
    """detectron2's default writers (console with ETA, JSON lines, TensorBoard), with the per-iteration
    JSON lines in ``train_log.json``: ``metrics.json`` holds the run's final metrics."""
    return [CommonMetricPrinter(max_iter), JSONWriter(os.path.join(output_dir, "train_log.json")),
            TensorboardXWriter(output_dir)]


class _Evals:
    """Keeps every periodic evaluation's results (and its wall time) for metrics.json."""

    def __init__(self, cfg, model):
        self.cfg, self.model, self.history, self.seconds = cfg, model, [], 0.0
        self.trainer = None

    def __call__(self) -> dict:
        t = time.perf_counter()
        ret = do_test(self.cfg, self.model)
        self.seconds += time.perf_counter() - t
        it = min(self.trainer.storage.iter + 1, self.trainer.max_iter) if self.trainer is not None else 0
        self.history.append({"iter": it, **{k: v for k, v in flat_metrics(ret).items() if k.endswith("/AP")}})
        self.last = ret
        return ret


def _resume(checkpointer, trainer) -> int:
    """Resume from ``last_checkpoint``'s target, or, if that one is torn (an interrupted write), from the
    newest readable ``model_*.pth`` with a warning; returns the first iteration to run. An unsafe file
    (pickled code) is never passed over silently: its error stands."""
    from mae_transfer.checkpoint import CheckpointError

    last = checkpointer.get_checkpoint_file()
    try:
        checkpointer.resume_or_load("", resume=True)
    except CheckpointError as e:
        if "refusing" in str(e):
            raise
        folder = Path(checkpointer.save_dir)
        others = sorted((p for p in folder.glob("model_*.pth") if str(p) != str(last)),
                        key=lambda p: (p.name == "model_final.pth", p.name), reverse=True)  # newest first
        for cand in others:
            checkpointer._parsed_url_during_load = None  # left set by detectron2's failed load
            try:
                checkpointer.load(str(cand))
            except CheckpointError as e2:
                if "refusing" in str(e2):
                    raise
                continue
            logger.warning(f"--resume: {last} is unreadable ({e}); resumed from the newest intact checkpoint "
                           f"{cand} instead")
            last = cand
            break
        else:
            raise
    start_iter = trainer.iter + 1
    logger.info(f"resumed from {last} at iteration {start_iter}")
    return start_iter


def do_train(cfg, weights: str | None, resume: bool = False) -> tuple[dict, torch.nn.Module]:
    """Train ``cfg`` (evaluating every ``train.eval_period`` and at the end). Returns (metrics, model)."""
    t0 = time.perf_counter()
    model = build_model(cfg)
    logger.info(f"Model:\n{model}")
    n_params = sum(p.numel() for p in model.parameters())
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    ddp_model = _ddp(cfg, model)
    trainer, precision, probe_times = build_trainer(cfg, model, ddp_model, train_loader, optim)
    logger.info(f"training precision: {precision} ({type(trainer).__name__}); evaluation in fp32")
    checkpointer = SafeDetectionCheckpointer(model, cfg.train.output_dir, optimizer=optim, trainer=trainer)
    evals = _Evals(cfg, ddp_model)
    evals.trainer = trainer
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, evals),
        hooks.PeriodicWriter(_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
        if comm.is_main_process() else None,
    ])
    start_iter = 0
    if resume and comm.is_main_process():
        for orphan in Path(cfg.train.output_dir).glob(".model_*.pth.*.tmp"):  # a write killed before its rename
            orphan.unlink(missing_ok=True)
            logger.warning(f"removed {orphan}, left by a checkpoint write that was killed")
    if resume and checkpointer.has_checkpoint():
        start_iter = _resume(checkpointer, trainer)
    elif weights:
        load_weights(model, weights)
    else:
        if resume:
            logger.warning(f"--resume: no checkpoint in {cfg.train.output_dir} to resume from; starting from "
                           f"iteration 0")
        logger.info("no --weights: the whole detector starts from random initialisation")
    if comm.get_world_size() > 1:
        comm.synchronize()
    trainer.train(start_iter, cfg.train.max_iter)

    metrics = flat_metrics(getattr(evals, "last", {}))
    losses = trainer.storage.history("total_loss").values() if "total_loss" in trainer.storage.histories() else []
    loss_values = [v for v, _ in losses]
    k = max(1, min(20, len(loss_values) // 4))
    metrics.update({
        "wall_s": time.perf_counter() - t0, "eval_s": evals.seconds, "evals": evals.history,
        "max_iter": int(cfg.train.max_iter), "start_iter": start_iter, "num_params": n_params,
        "precision": precision, "precision_probe_s": probe_times,
        "loss_first": sum(loss_values[:k]) / k if loss_values else None,
        "loss_last": sum(loss_values[-k:]) / k if loss_values else None,
    })
    return metrics, model


def _finite(x):
    """NaN / inf (a diverged loss) -> None, so metrics.json stays strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def write_metrics(path: str | os.PathLike, metrics: dict):
    """Atomic ``metrics.json`` (rank 0 only)."""
    if not comm.is_main_process():
        return
    write_json(_finite(metrics), path, allow_nan=False)
    logger.info(f"metrics written to {path}: " + ", ".join(
        f"{k} {v:.2f}" for k, v in metrics.items() if k in ("bbox/AP", "segm/AP", "wall_s") and v is not None))


def preview_predictions(cfg, model, num_images: int = 6) -> tuple[list[dict], object, list]:
    """The model's outputs on the first ``num_images`` test images, run once for every output drawn from
    them: ``(dataset dicts, metadata, Instances on the CPU per image)``."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = cfg.dataloader.test.dataset.names
    name = name if isinstance(name, str) else name[0]
    dicts, meta = DatasetCatalog.get(name)[:num_images], MetadataCatalog.get(name)
    mapper = instantiate(cfg.dataloader.test.mapper)
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        preds = [model([mapper(dict(d))])[0]["instances"].to("cpu") for d in dicts]
    model.train(was_training)
    return dicts, meta, preds


def save_prediction_figure(path: str | os.PathLike, dicts: list[dict], meta, preds: list, score_thresh: float = 0.5):
    """PNG of the detections ``preds`` (boxes, masks, classes with score >= ``score_thresh``) of the test
    images ``dicts``, beside their ground truth (see :func:`preview_predictions`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from detectron2.data import detection_utils
    from detectron2.utils.visualizer import Visualizer

    fig, axes = plt.subplots(2, len(dicts), figsize=(2.6 * len(dicts), 5.4), squeeze=False)
    for j, (d, inst) in enumerate(zip(dicts, preds)):
        img = detection_utils.read_image(d["file_name"], format="RGB")
        axes[0, j].imshow(Visualizer(img, meta, scale=3.0).draw_dataset_dict(d).get_image())
        shown = inst[inst.scores >= score_thresh]
        axes[1, j].imshow(Visualizer(img, meta, scale=3.0).draw_instance_predictions(shown).get_image())
        for ax in axes[:, j]:
            ax.axis("off")
    axes[0, 0].set_title("ground truth", loc="left", fontsize=9)
    axes[1, 0].set_title(f"predictions (score >= {score_thresh})", loc="left", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    logger.info(f"prediction figure written to {path}")


def save_predictions(path: str | os.PathLike, dicts: list[dict], preds: list, score_thresh: float = 0.05,
                     max_per_image: int = 20):
    """The detections ``preds`` of the test images ``dicts`` (see :func:`preview_predictions`) as plain arrays
    in an ``.npz``: ``file_names`` (K,), and per detection ``image_index``, ``boxes`` (x0, y0, x1, y1),
    ``classes`` (contiguous ids 0..C-1), ``scores`` and ``masks`` (H, W) bool, at most ``max_per_image``
    per image with score >= ``score_thresh``. ``tools/compare.py`` draws them beside the other
    initialisations'. Written atomically."""
    import numpy as np

    out = {k: [] for k in ("image_index", "boxes", "classes", "scores", "masks")}
    for i, (d, inst) in enumerate(zip(dicts, preds)):
        inst = inst[inst.scores >= score_thresh][:max_per_image]
        out["image_index"] += [i] * len(inst)
        out["boxes"] += inst.pred_boxes.tensor.tolist()
        out["classes"] += inst.pred_classes.tolist()
        out["scores"] += inst.scores.tolist()
        masks = inst.pred_masks.numpy() if inst.has("pred_masks") else np.zeros((len(inst), d["height"], d["width"]))
        out["masks"] += list(masks.astype(bool))
    h, w = (dicts[0]["height"], dicts[0]["width"]) if dicts else (0, 0)
    arrays = {"file_names": np.array([d["file_name"] for d in dicts]),
              "image_index": np.array(out["image_index"], dtype=np.int64),
              "boxes": np.array(out["boxes"], dtype=np.float32).reshape(-1, 4),
              "classes": np.array(out["classes"], dtype=np.int64),
              "scores": np.array(out["scores"], dtype=np.float32),
              "masks": np.array(out["masks"], dtype=bool).reshape(-1, h, w)}
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
