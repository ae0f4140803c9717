"""Classification tasks: linear probe, fine-tune, partial fine-tune, supervised training from scratch.

- ``linprobe``: frozen encoder; features = cls token after the final norm (``linprobe_pool=token``, the
  paper's protocol) or mean of patch tokens; head = ``BatchNorm1d(affine=False, eps=1e-6)`` + linear,
  as the MAE reference. Without augmentation (``augment=none``) and with ``cache_features`` the frozen
  features are extracted once and the head trains on them (same result, far cheaper on CPU).
- ``finetune``: the whole encoder, layer-wise lr decay, drop path, timm Mixup/CutMix, label smoothing,
  global average pooling + ``fc_norm`` (the MAE fine-tuning default).
- ``partial``: as fine-tune, but only the last ``blocks`` blocks (+ ``fc_norm``/``norm`` and the head)
  train; ``blocks=0`` trains the head alone (the paper's Figure 9).
- ``supervised``: the same ViT from scratch with labels; its final checkpoint is the "supervised
  pretrained" initialisation for detection / segmentation.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from tqdm import tqdm

from mae_transfer.checkpoint import extract_state_dict, load_file, load_pretrained, to_mae_transfer_keys
from mae_transfer.common import is_random_init
from mae_transfer.models.vit import VIT_PRESETS, VisionTransformer
from mae_transfer.optim import param_groups

from .config import ConfigError
from .data import make_transform, norm_stats, seeded, splits
from .distributed import DistEnv, all_gather_objects, all_reduce_sum

logger = logging.getLogger("pretrain")


def vit_kwargs(cfg: dict, num_classes: int, in_chans: int = 3) -> dict:
    if cfg["model"] not in VIT_PRESETS:
        raise ConfigError(f"unknown model {cfg['model']!r}; known: {', '.join(VIT_PRESETS)}")
    mode = cfg["mode"]
    pool = cfg["linprobe_pool"] if mode == "linprobe" else cfg["global_pool"]
    if pool not in ("token", "avg"):
        raise ConfigError(f"{'linprobe_pool' if mode == 'linprobe' else 'global_pool'} must be token or avg, got {pool!r}")
    return {**VIT_PRESETS[cfg["model"]], "img_size": cfg["img_size"], "in_chans": in_chans, "num_classes": num_classes,
            "global_pool": pool, "drop_path_rate": 0.0 if mode == "linprobe" else cfg["drop_path"]}


FINETUNE_MODES = ("finetune", "partial", "supervised")


def _check_weights_flag(mode: str, weights: str | None):
    """supervised starts from scratch; the transfer modes need ``--weights`` (a file, or ``none``)."""
    if mode == "supervised" and weights is not None and not is_random_init(weights):
        raise ConfigError("supervised trains from scratch: drop --weights (use --mode finetune to start from weights)")
    if mode != "supervised" and weights is None:
        raise ConfigError(f"--mode {mode} needs --weights CHECKPOINT (or --weights none for a random-init encoder)")


def _pool_for_checkpoint(cfg: dict, raw: dict | None) -> dict:
    """``cfg``, with the linear probe on average-pooled features when the checkpoint has no final norm."""
    if cfg["mode"] != "linprobe" or raw is None or cfg["linprobe_pool"] != "token":
        return cfg
    keys = to_mae_transfer_keys(extract_state_dict(raw, cfg["weights"]))[0]
    if "norm.weight" not in keys and "fc_norm.weight" in keys:
        # an encoder trained with average pooling (our supervised / fine-tuned checkpoints) has no
        # final norm for the cls token: probe the features it was trained to produce
        logger.info("%s has fc_norm and no final norm: linear probe on average-pooled features", cfg["weights"])
        return {**cfg, "linprobe_pool": "avg"}
    return cfg


def _set_trainable(model: VisionTransformer, cfg: dict):
    """linprobe: the head alone; partial: the last ``blocks`` blocks, the norms and the head; else all."""
    if cfg["mode"] == "linprobe":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("head.")
    elif cfg["mode"] == "partial":
        k = cfg["blocks"]
        if not 0 <= k <= model.depth:
            raise ConfigError(f"blocks={k}: the encoder has {model.depth} blocks")
        trainable = tuple(f"blocks.{i}." for i in range(model.depth - k, model.depth)) + ("norm.", "fc_norm.", "head.")
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(trainable)


class _Features(torch.utils.data.Dataset):
    """Cached features: items ``{"img": (D,), "label": ()}``."""

    def __init__(self, feats: torch.Tensor, labels: torch.Tensor):
        self.feats, self.labels = feats, labels

    def set_epoch(self, epoch: int):
        pass

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"img": self.feats[i], "label": self.labels[i]}


class ClassifyTask:
    """See ``pretrain/engine.py`` for the task interface."""

    def __init__(self, cfg: dict, env: DistEnv):
        self.cfg, self.env, mode = cfg, env, cfg["mode"]
        weights = cfg["weights"]
        _check_weights_flag(mode, weights)
        raw = None if weights is None or is_random_init(weights) else load_file(weights)
        # a checkpoint of ours says which channels its encoder saw: the data is fitted to them
        ckpt_chans = (raw.get("model_kwargs") or {}).get("in_chans") if raw is not None else None
        train, val = splits(cfg, VIT_PRESETS.get(cfg["model"], {}).get("patch_size", 1), need_val=True,
                            in_chans=cfg["in_chans"] or ckpt_chans)
        self.num_classes = cfg["num_classes"] or len(train.classes)
        self.class_names = [str(c) for c in train.classes][:self.num_classes]
        self.class_names += [f"class_{i}" for i in range(len(self.class_names), self.num_classes)]
        self.cfg = cfg = _pool_for_checkpoint(cfg, raw)
        self.model_kwargs = vit_kwargs(cfg, self.num_classes, train.channels)
        self.norm_stats = norm_stats(cfg, train, raw, env)  # stored in this run's checkpoints too
        model = self._build_model(raw)
        _set_trainable(model, cfg)
        self.full_model = model.to(env.device)
        self._build_data(train, val)
        self._build_criterion()
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        logger.info("%s: %d trainable parameters, %d training / %d test images, %d classes", mode, n_train,
                    len(train), len(val), self.num_classes)

    def _build_model(self, raw: dict | None) -> VisionTransformer:
        """The ViT with the checkpoint ``raw`` loaded (None: random init); sets ``weights_format``."""
        cfg = self.cfg
        torch.manual_seed(cfg["seed"])
        model = VisionTransformer(**self.model_kwargs)
        model.set_grad_checkpointing(cfg["grad_checkpointing"])  # memory, not architecture: not in model_kwargs
        if cfg["img_size"] % model.patch_size:
            raise ConfigError(f"img_size {cfg['img_size']} is not a multiple of the patch size {model.patch_size}")
        self.weights_format = "random init"
        if raw is not None:
            self.load_report = load_pretrained(model, raw, source=cfg["weights"], log=False)
            self.weights_format = self.load_report.format
            logger.info("%s", self.load_report)
        if cfg["mode"] == "linprobe":
            model.head = nn.Sequential(nn.BatchNorm1d(model.embed_dim, affine=False, eps=1e-6), model.head)
            trunc_normal_(model.head[1].weight, std=0.01)  # the MAE linear-probe head init
        return model

    def _build_data(self, train, val):
        """Test set, training set (or, for the cached linear probe, their frozen features) and ``model``."""
        cfg, mode = self.cfg, self.cfg["mode"]
        self.mean, self.std = self.norm_stats["mean"], self.norm_stats["std"]
        self.eval_tf = make_transform(cfg, self.mean, self.std, train=False)
        self.val = seeded(val, self.eval_tf, cfg["seed"])
        self.cached = mode == "linprobe" and cfg["cache_features"] and cfg["augment"] == "none"
        if self.cached:
            self.train_set = _Features(*self._extract(seeded(train, self.eval_tf, cfg["seed"]), "train"))
            self.val_feats = self._extract(self.val, "val")
            self.model = self.full_model.head
        else:
            finetune = mode in FINETUNE_MODES
            self.train_set = seeded(train, make_transform(cfg, self.mean, self.std, train=True, finetune=finetune),
                                    cfg["seed"])
            self.model = self.full_model

    def _build_criterion(self):
        """Mixup / CutMix (fine-tuning modes) and the loss that fits them."""
        cfg = self.cfg
        self.mixup = None
        if cfg["mode"] in FINETUNE_MODES and (cfg["mixup"] > 0 or cfg["cutmix"] > 0):
            from timm.data import Mixup
            self.mixup = Mixup(mixup_alpha=cfg["mixup"], cutmix_alpha=cfg["cutmix"], label_smoothing=cfg["smoothing"],
                               num_classes=self.num_classes)
        if self.mixup is not None:
            from timm.loss import SoftTargetCrossEntropy
            self.criterion = SoftTargetCrossEntropy()
        elif cfg["smoothing"] > 0:
            from timm.loss import LabelSmoothingCrossEntropy
            self.criterion = LabelSmoothingCrossEntropy(smoothing=cfg["smoothing"])
        else:
            self.criterion = nn.CrossEntropyLoss()

    # ---- features (cached linear probe) -----------------------------------------------------------
    @torch.no_grad()
    def _extract(self, ds, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen pooled features of ``ds``, each rank a strided share, gathered on every rank."""
        enc, dev = self.full_model, self.env.device
        enc.eval()
        idx = list(range(self.env.rank, len(ds), self.env.world_size))
        bs = max(self.cfg["batch_size"], 256)
        feats = []
        for s in tqdm(range(0, len(idx), bs), desc=f"features ({name})", disable=not (self.env.is_main and self.cfg["progress"]),
                      dynamic_ncols=True):
            items = [ds[i] for i in idx[s:s + bs]]
            x = torch.stack([it["img"] for it in items]).to(dev)
            feats.append(enc.forward_head(enc.forward_features(x), pre_logits=True).float().cpu())
        mine = torch.cat(feats) if feats else torch.zeros(0, enc.embed_dim)
        out = torch.zeros(len(ds), enc.embed_dim)
        for r, part in enumerate(all_gather_objects(mine)):
            out[r::self.env.world_size] = part
        labels = torch.as_tensor(ds.base.labels)
        return out, labels

    # ---- engine interface -------------------------------------------------------------------------
    def param_groups(self):
        ld = self.cfg["layer_decay"] if self.cfg["mode"] in ("finetune", "partial") else None
        if self.cached:
            return param_groups(self.model, self.cfg["weight_decay"])
        return param_groups(self.model, self.cfg["weight_decay"], layer_decay=ld)

    def train_mode(self, model):
        if self.cfg["mode"] == "linprobe":
            self.full_model.eval()
            self.full_model.head.train()
        else:
            model.train()

    def loss(self, model, batch: dict) -> torch.Tensor:
        x, y = batch["img"], batch["label"]
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        return self.criterion(model(x).float(), y)

    @torch.no_grad()
    def evaluate(self, model=None) -> dict:
        """Top-1 / top-5 (%) on the whole test set, exact under DDP (each rank a disjoint share), and
        ``per_class``: ``{class name: {"accuracy": top-1 % of its test images, "images": n}}``."""
        dev, W, r = self.env.device, self.env.world_size, self.env.rank
        self.full_model.eval()
        stats = torch.zeros(3, dtype=torch.float64)
        per_class = torch.zeros(2, self.num_classes, dtype=torch.float64)  # correct, images
        bs = max(self.cfg["batch_size"], 256)
        if self.cached:
            feats, labels = self.val_feats
            chunks = [(feats[r::W][s:s + bs], labels[r::W][s:s + bs]) for s in range(0, len(labels[r::W]), bs)]
            forward = self.full_model.head
        else:
            idx = list(range(r, len(self.val), W))
            chunks = (([self.val[i] for i in idx[s:s + bs]]) for s in range(0, len(idx), bs))
            chunks = ((torch.stack([it["img"] for it in c]), torch.stack([it["label"] for it in c])) for c in chunks)
            forward = self.full_model
        for x, y in chunks:
            logits = forward(x.to(dev)).float()
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices.cpu()
            stats += torch.tensor([(top5[:, 0] == y).sum().item(), (top5 == y[:, None]).any(1).sum().item(), len(y)],
                                  dtype=torch.float64)
            per_class[0].index_add_(0, y, (top5[:, 0] == y).double())
            per_class[1].index_add_(0, y, torch.ones(len(y), dtype=torch.float64))
        stats, per_class = all_reduce_sum(stats), all_reduce_sum(per_class)
        return {"top1": 100.0 * stats[0].item() / stats[2].item(), "top5": 100.0 * stats[1].item() / stats[2].item(),
                "per_class": {name: {"accuracy": 100.0 * per_class[0, i].item() / per_class[1, i].item()
                                     if per_class[1, i] else None, "images": int(per_class[1, i].item())}
                              for i, name in enumerate(self.class_names)}}

    def finish(self, out, history) -> dict:
        """The final evaluation; logs the per-class accuracy table under the class names."""
        metrics = self.evaluate()
        width = max(len(n) for n in self.class_names)
        lines = [f"{'class':{width}s}  top-1 %  images"]
        for name, m in metrics["per_class"].items():
            acc = "-" if m["accuracy"] is None else f"{m['accuracy']:.2f}"
            lines.append(f"{name:{width}s}  {acc:>7s}  {m['images']:6d}")
        logger.info("per-class accuracy on the test images:\n%s", "\n".join(lines))
        return metrics
