"""The training engine shared by every mode: one process or many (DDP), fp32 / bf16 / fp16, gradient
accumulation, warmup + cosine lr per iteration, NaN/inf stop, atomic checkpoints with exact resume,
progress bar, JSONL + TensorBoard logs.

A *task* supplies the model and the loss; the engine owns everything else. Task interface::

    task.model            nn.Module on the device (trainable parameters have requires_grad)
    task.train_set        dataset with set_epoch(epoch) whose items are dicts of tensors
    task.param_groups()   optimizer groups (each may carry 'lr_scale' and 'weight_decay')
    task.loss(model, batch) -> scalar loss  (called under autocast; ``model`` may be DDP-wrapped)
    task.train_mode(model)  put the modules in train / eval mode for training (frozen parts stay eval)
    task.evaluate(model) -> dict   optional, run every ``eval_every`` epochs on all ranks

Exact resume: a sample's augmentation and MAE mask come from ``(seed, epoch, index)`` (see
``mae_transfer.data.datasets.SeededDataset``), the data order from ``DistributedSampler(seed, epoch)``
with the already-consumed prefix skipped, and the remaining randomness (dropout, drop path, mixup) from
the torch / numpy / python RNG states of *every* rank, stored in the checkpoint with the model,
optimizer, grad scaler and progress counters. Checkpoints are only written at optimizer-step boundaries.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from timm.optim import Lars
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from mae_transfer.checkpoint import (CheckpointError, CheckpointMismatchError, check_state_dict, load_file,
                                     save_checkpoint)
from mae_transfer.optim import cosine_lr, scaled_lr, set_lr

from .config import ConfigError
from .distributed import DistEnv, all_gather_objects, all_reduce_sum, barrier

logger = logging.getLogger("pretrain")

__all__ = ["Trainer", "TrainingDiverged", "resolve_precision", "find_resume_checkpoint", "capture_rng",
           "restore_rng", "PERIODIC_RE", "FINAL_NAME"]

FINAL_NAME = "checkpoint-final.pth"
PERIODIC_RE = re.compile(r"^checkpoint-ep(\d{4})-it(\d{6})\.pth$")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where and which checkpoint is the last good one."""


def resolve_precision(precision: str, device: torch.device, probe=None) -> str:
    """``auto``: the fastest of fp32 / bf16 (fp16 on GPUs without bf16) measured by ``probe`` (a
    callable returning the choice, see :func:`mae_transfer.precision.probe_precision`); without a
    probe, bf16 on CUDA GPUs that support it, else fp16 there, and fp32 on CPU."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if precision != "auto":
        return precision
    if probe is not None:
        return probe()
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def capture_rng() -> dict:
    """This process's torch / CUDA / numpy / python RNG states as tensors and plain lists
    (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                      int(np_state[3]), float(np_state[4])],
            "python": [py_state[0], list(py_state[1]), py_state[2]]}


def restore_rng(state: dict):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def seed_everything(seed: int):
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


class _SkipSampler(Sampler):
    """Yields ``sampler``'s indices after the first ``skip`` (resuming inside an epoch)."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        it = iter(self.sampler)
        for _ in range(self.skip):
            next(it)
        yield from it

    def __len__(self):
        return len(self.sampler) - self.skip


def find_resume_checkpoint(out_dir: Path) -> list[Path]:
    """Resume candidates in ``out_dir``, most advanced first (final, then periodic by progress)."""
    periodic = sorted((p for p in out_dir.glob("checkpoint-ep*-it*.pth") if PERIODIC_RE.match(p.name)), reverse=True)
    final = [out_dir / FINAL_NAME] if (out_dir / FINAL_NAME).is_file() else []
    return final + periodic


def lars_groups(groups: list[dict]) -> list[dict]:
    """Parameter groups for ``timm.optim.Lars`` with the MAE reference's rule: weight decay and the trust
    ratio apply to parameters of 2+ dims only, biases and norms take plain momentum SGD steps.

    timm adapts a whole group (``always_adapt``) or none of it, so a group holding both kinds is split
    in two; every other key of a group (``lr_scale``, ``param_names``, ...) is kept in both halves."""
    out = []
    for g in groups:
        names = g.get("param_names", [None] * len(g["params"]))
        for adapt in (True, False):
            picked = [(p, n) for p, n in zip(g["params"], names) if (p.ndim > 1) == adapt]
            if not picked:
                continue
            part = {**g, "params": [p for p, _ in picked], "always_adapt": adapt}
            if "param_names" in g:
                part["param_names"] = [n for _, n in picked]
            if not adapt:
                part["weight_decay"] = 0.0
            out.append(part)
    return out


def fused_adamw(groups: list[dict], lr: float, betas) -> torch.optim.AdamW:
    """torch's fused AdamW (one kernel per parameter for the whole update, on CPU and GPU since torch 2.4)
    where this torch and device take it, else the default implementation.

    The default on a CPU is the per-tensor loop, about ten passes over every parameter per step; for MAE
    ViT-B (111 M parameters) that is a tenth of a batch-8 step on one core. Fused rounds the update in a
    different order, so results differ from the loop in the last bits (not in what is computed)."""
    try:  # copies: a refused construction would leave ``fused`` set in the caller's group dicts
        return torch.optim.AdamW([dict(g) for g in groups], lr=lr, betas=tuple(betas), fused=True)
    except (RuntimeError, ValueError, TypeError) as e:
        logger.info("fused AdamW not available here (%s); using the default implementation", e)
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def build_optimizer(name: str, groups: list[dict], lr: float, betas, momentum: float):
    if name == "adamw":
        return fused_adamw(groups, lr, betas)
    if name == "lars":
        return Lars(lars_groups(groups), lr=lr, momentum=momentum)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    raise ConfigError(f"optimizer must be adamw, lars or sgd, got {name!r}")


class Trainer:
    """Runs ``task`` for ``cfg['epochs']`` epochs, writing checkpoints and logs under ``out_dir``.

    Args:
        cfg: the resolved run config (see ``pretrain/config.py``).
        task: see the module docstring.
        env: process-group info from :func:`pretrain.distributed.init_distributed`.
        out_dir: output folder (shared by all ranks; rank 0 writes).
        checkpoint_extra: extra entries for every checkpoint (e.g. ``model_kwargs`` to rebuild the model).
    """

    def __init__(self, cfg: dict, task, env: DistEnv, out_dir: Path, checkpoint_extra: dict | None = None):
        self.cfg, self.task, self.env, self.out = cfg, task, env, Path(out_dir)
        self.extra = checkpoint_extra or {}
        self.precision = resolve_precision(cfg["precision"], env.device, probe=lambda: self._probe_precision(cfg))
        if self.precision == "bf16" and env.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("precision bf16 requested but this GPU does not support bfloat16")
        self.batch, self.accum = cfg["batch_size"], cfg["accum_iter"]
        if self.batch < 1 or self.accum < 1:
            raise ConfigError(f"batch_size ({self.batch}) and accum_iter ({self.accum}) must be >= 1")
        self.sampler = DistributedSampler(task.train_set, num_replicas=env.world_size, rank=env.rank,
                                          shuffle=True, seed=cfg["seed"], drop_last=False)
        self.iters_per_epoch = (len(self.sampler) // self.batch // self.accum) * self.accum
        if self.iters_per_epoch == 0:
            raise ConfigError(f"the training set has {len(task.train_set)} images, fewer than one effective batch "
                             f"(batch_size {self.batch} x {env.world_size} processes x accum_iter {self.accum})")
        self.eff_batch = self.batch * env.world_size * self.accum
        self.peak_lr = cfg["lr"] if cfg["lr"] is not None else scaled_lr(cfg["blr"], self.eff_batch)
        self.model = task.model
        self.ddp = (DistributedDataParallel(self.model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
                    if env.distributed else self.model)
        self.optimizer = build_optimizer(cfg["optimizer"], task.param_groups(), self.peak_lr, cfg["betas"], cfg["momentum"])
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=self.precision == "fp16")
        # train_s: training wall time summed over this run and the runs it resumed
        self.progress = {"epoch": 0, "iter": 0, "step": 0, "last_epoch_loss": None, "train_s": 0.0}
        # per-rank running sums (this epoch's loss, unusable images met), checkpointed per rank
        self.local = {"loss_sum": 0.0, "loss_n": 0, "skipped": 0}
        self.history: list[dict] = []
        self.last_checkpoint: Path | None = None
        self._writer = None
        self._purge_step = None
        self._t_fit, self._train_s0 = None, 0.0

    def _probe_precision(self, cfg: dict) -> str:
        """``precision=auto``: time one forward + backward of the task's loss on the first batch in each
        precision (:mod:`mae_transfer.precision`); rank 0's choice holds for all ranks. RNG states are
        restored afterwards, so a run is the same whether the decision was probed or cached."""
        from mae_transfer.precision import probe_precision
        if self.env.is_main:
            rng = capture_rng()
            batch = self._to_device(next(iter(DataLoader(self.task.train_set, batch_size=cfg["batch_size"]))))
            batch.pop("skipped", None)
            model = self.task.model
            self.task.train_mode(model)
            n_params = sum(p.numel() for p in model.parameters())
            shapes = ",".join(f"{k}{list(v.shape)}" for k, v in sorted(batch.items()))
            choice, _ = probe_precision(model, lambda: self.task.loss(model, batch), self.env.device,
                                        f"{cfg['mode']}|{type(model).__name__}|{n_params}|{shapes}")
            restore_rng(rng)
        else:
            choice = None
        return all_gather_objects(choice)[0]

    # ---- checkpoints --------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"model": self.model.state_dict(), "config": self.cfg, "mode": self.cfg["mode"],
                "format": "mae_transfer", **self.extra,
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "progress": dict(self.progress), "world_size": self.env.world_size,
                "ranks": all_gather_objects({"rng": capture_rng(), **self.local})}

    def save(self, final: bool = False) -> Path:
        """Write a checkpoint (collective: every rank must call it); rank 0 writes atomically."""
        if self._t_fit is not None:
            self.progress["train_s"] = self._train_s0 + time.time() - self._t_fit
        state = self._state()
        p = self.progress
        path = self.out / (FINAL_NAME if final else f"checkpoint-ep{p['epoch']:04d}-it{p['iter']:06d}.pth")
        if self.env.is_main:
            save_checkpoint(state, path)
            if not final:
                periodic = sorted(q for q in self.out.glob("checkpoint-ep*-it*.pth") if PERIODIC_RE.match(q.name))
                for old in periodic[:-max(self.cfg["keep_last"], 1)]:
                    old.unlink(missing_ok=True)
        barrier()
        self.last_checkpoint = path
        return path

    def resume(self, path: Path):
        ck = load_file(path)
        missing = [k for k in ("model", "optimizer", "progress", "ranks") if k not in ck]
        if missing:
            raise CheckpointError(f"cannot resume from {path}: not a training checkpoint of this tool "
                                  f"(no {', '.join(missing)})")
        check_state_dict(ck["model"], self.model, source=str(path),
                         header=f"cannot resume from {path}: it holds another model ({type(self.model).__name__})")
        self.model.load_state_dict(ck["model"])
        try:
            self.optimizer.load_state_dict(ck["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointMismatchError(f"cannot resume from {path}: optimizer state does not fit ({e})") from None
        self.scaler.load_state_dict(ck.get("scaler") or {})
        self.progress.update(ck["progress"])
        if ck.get("world_size") == self.env.world_size:
            mine = ck["ranks"][self.env.rank]
            restore_rng(mine["rng"])
            self.local.update({k: mine[k] for k in self.local})
        else:
            logger.warning("resuming %s written by %s processes with %s: data order and masks are kept, the "
                           "dropout / mixup RNG streams restart", path, ck.get("world_size"), self.env.world_size)
            seed_everything(self.cfg["seed"] * 1000 + self.env.rank + 7919 * self.progress["step"])
        changed = {k: (ck["config"].get(k), v) for k, v in self.cfg.items()
                   if k not in ("out", "resume", "progress", "epochs") and ck["config"].get(k) != v}
        if changed:
            logger.warning("config differs from the checkpoint's in: %s",
                           ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in changed.items()))
        self.last_checkpoint = path
        logger.info("resumed from %s at epoch %d, iteration %d (optimizer step %d)", path,
                    self.progress["epoch"], self.progress["iter"], self.progress["step"])

    def maybe_resume(self):
        """Apply ``cfg['resume']``: ``auto`` takes the most advanced loadable checkpoint in the output dir.
        Log records written after the resumed point (by the interrupted run) are dropped."""
        mode = self.cfg["resume"]
        if mode not in ("none", "auto"):
            self.resume(Path(mode))
        elif mode == "auto":
            for cand in find_resume_checkpoint(self.out):
                try:
                    self.resume(cand)
                    break
                except CheckpointError as e:
                    logger.warning("skipping unusable checkpoint: %s", e)
        self._purge_step = self.progress["step"] + 1 if self.progress["step"] else None
        log = self.out / "log.jsonl"
        if self.env.is_main and log.is_file():
            keep = [line for line in log.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= self.progress["step"]]
            log.write_text("".join(line + "\n" for line in keep))

    # ---- logging ----------------------------------------------------------------------------------
    def _log(self, record: dict):
        self.history.append(record)
        if not self.env.is_main:
            return
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            # purge events of an interrupted run beyond the resumed step
            self._writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=self._purge_step)
        for k, v in record.items():
            if k not in ("step", "epoch", "iter", "time") and isinstance(v, (int, float)) and v is not None:
                self._writer.add_scalar(k, v, record["step"])

    # ---- the loop ---------------------------------------------------------------------------------
    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.env.device, non_blocking=True) for k, v in batch.items()}

    def fit(self) -> dict:
        """Train to ``epochs``; returns a summary (final loss, steps, wall time, lr, precision)."""
        cfg, p = self.cfg, self.progress
        t_start = self._t_fit = time.time()
        self._train_s0 = p.get("train_s", 0.0)
        epochs, ipe = cfg["epochs"], self.iters_per_epoch
        total = epochs * ipe
        bar = tqdm(total=total, initial=min(p["epoch"] * ipe + p["iter"], total), dynamic_ncols=True,
                   disable=not (self.env.is_main and cfg["progress"]), desc=cfg["mode"], unit="it")
        self._window = [0.0, 0, time.time()]  # loss sum, iterations, start time of the logging window
        while p["epoch"] < epochs:
            epoch, start = p["epoch"], p["iter"]
            loader = self._epoch_loader(epoch, start)
            self.task.train_mode(self.model)
            batches = iter(loader)
            for it in range(start, ipe):
                batch = self._to_device(next(batches))
                self.local["skipped"] += int(batch.pop("skipped").sum()) if "skipped" in batch else 0
                if it % self.accum == 0:
                    set_lr(self.optimizer, cosine_lr(epoch + it / ipe, epochs, cfg["warmup_epochs"], self.peak_lr,
                                                     cfg["min_lr"]))
                sync = (it + 1) % self.accum == 0
                self._forward_backward(batch, sync, epoch, it, bar)
                bar.update(1)
                if not sync:
                    continue
                self._optimizer_step()
                p["iter"] = it + 1
                if p["step"] % cfg["log_every"] == 0 or it + 1 == ipe:
                    self._log_window(epoch + (it + 1) / ipe, bar)
                if cfg["save_every_steps"] and p["step"] % cfg["save_every_steps"] == 0 and it + 1 < ipe:
                    self.save()
            self._end_epoch(epoch)
        bar.close()
        self.save(final=True)
        if self._writer is not None:
            self._writer.flush()
        return {"final_loss": p["last_epoch_loss"], "steps": p["step"], "epochs": p["epoch"],
                "train_wall_s": time.time() - t_start, "train_wall_s_total": p["train_s"], "lr": self.peak_lr,
                "effective_batch": self.eff_batch,
                "precision": self.precision, "world_size": self.env.world_size,
                "skipped_images": int(all_reduce_sum(torch.tensor([self.local["skipped"]])).item())}

    def _epoch_loader(self, epoch: int, start: int) -> DataLoader:
        """This epoch's batches from iteration ``start`` on (the sampler's order, resumable mid-epoch)."""
        self.sampler.set_epoch(epoch)
        self.task.train_set.set_epoch(epoch)
        gen = torch.Generator().manual_seed(self.cfg["seed"] * 100_003 + epoch)
        return DataLoader(self.task.train_set, batch_size=self.batch, drop_last=True,
                          sampler=_SkipSampler(self.sampler, start * self.batch), num_workers=self.cfg["num_workers"],
                          generator=gen, pin_memory=self.env.device.type == "cuda")

    def _forward_backward(self, batch: dict, sync: bool, epoch: int, it: int, bar):
        """Loss and backward of one batch (gradients kept local until ``sync``); a non-finite loss on
        any rank raises :class:`TrainingDiverged`."""
        env = self.env
        ctx = self.ddp.no_sync() if (env.distributed and not sync) else contextlib.nullcontext()
        with ctx:
            with self._autocast():
                loss = self.task.loss(self.ddp, batch)
            value = loss.item()
            bad = torch.tensor([0.0 if math.isfinite(value) else 1.0])
            if env.distributed:
                all_reduce_sum(bad)
            if bad.item() > 0:
                bar.close()
                where = self.last_checkpoint or "none written yet"
                raise TrainingDiverged(
                    f"loss is {value if not math.isfinite(value) else 'non-finite on another rank'} at epoch "
                    f"{epoch}, iteration {it} (optimizer step {self.progress['step']}); stopped. Last good "
                    f"checkpoint: {where}. Try a lower lr, warmup, clip_grad=1.0 or precision=fp32.")
            self.scaler.scale(loss / self.accum).backward()
        self._window[0] += value
        self._window[1] += 1
        self.local["loss_sum"] += value
        self.local["loss_n"] += 1

    def _optimizer_step(self):
        """Gradient clipping (``clip_grad``), the (scaled) optimizer step, zeroed gradients."""
        if self.cfg["clip_grad"] is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["clip_grad"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress["step"] += 1

    def _log_window(self, epoch: float, bar):
        """Log the mean loss over all ranks, the lr and the speed since the last record; start a new window."""
        loss_sum, n, t0 = self._window
        stats = all_reduce_sum(torch.tensor([loss_sum, n], dtype=torch.float64))
        dt = time.time() - t0
        g = self.optimizer.param_groups[0]
        rec = {"step": self.progress["step"], "epoch": epoch, "loss": stats[0].item() / stats[1].item(),
               "lr": g["lr"] / g.get("lr_scale", 1.0),
               "img_per_s": n * self.batch * self.env.world_size / max(dt, 1e-9), "time": time.time()}
        self._log(rec)
        bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
        self._window = [0.0, 0, time.time()]

    def _end_epoch(self, epoch: int):
        """The epoch's mean loss, skipped images, periodic evaluation and checkpoint."""
        cfg, p, epochs = self.cfg, self.progress, self.cfg["epochs"]
        stats = all_reduce_sum(torch.tensor([self.local["loss_sum"], self.local["loss_n"]], dtype=torch.float64))
        self.local.update(loss_sum=0.0, loss_n=0)
        p.update(epoch=epoch + 1, iter=0, last_epoch_loss=stats[0].item() / max(stats[1].item(), 1))
        rec = {"step": p["step"], "epoch": epoch + 1, "epoch_loss": p["last_epoch_loss"]}
        skipped = int(all_reduce_sum(torch.tensor([self.local["skipped"]])).item())
        if skipped:
            rec["skipped_images"] = skipped
            logger.warning("%d unusable images skipped so far", skipped)
        if cfg["eval_every"] and (epoch + 1) % cfg["eval_every"] == 0 and epoch + 1 < epochs \
                and hasattr(self.task, "evaluate"):
            rec.update({f"val_{k}": v for k, v in self.task.evaluate(self.model).items()
                        if isinstance(v, (int, float))})  # the scalars: per-class tables go in metrics.json
            self.task.train_mode(self.model)
        self._log(rec)
        if cfg["save_every_epochs"] and (epoch + 1) % cfg["save_every_epochs"] == 0 and epoch + 1 < epochs:
            self.save()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
