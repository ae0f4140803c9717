"""MAE pretraining task: model, data, loss, and the held-out outputs (loss, reconstruction figure)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from mae_transfer.models.mae import MAE_PRESETS, MaskedAutoencoderViT
from mae_transfer.optim import param_groups
from mae_transfer.viz import save_loss_curve, save_reconstruction_figure

from .config import ConfigError
from .data import make_transform, norm_stats, seeded, splits
from .distributed import DistEnv, all_reduce_sum

logger = logging.getLogger("pretrain")

HELD_OUT_SEED = 20220101  # masks of the held-out loss and figure: the same for every run and ratio


def mae_kwargs(cfg: dict) -> dict:
    """Constructor arguments of the MAE for ``cfg`` (preset ``mae_<model>`` plus overrides)."""
    name = "mae_" + cfg["model"]
    if name not in MAE_PRESETS:
        raise ConfigError(f"model {cfg['model']!r} has no MAE preset {name!r}; known: "
                          f"{', '.join(k[4:] for k in MAE_PRESETS)}")
    kw = {**MAE_PRESETS[name], "img_size": cfg["img_size"], "norm_pix_loss": cfg["norm_pix_loss"]}
    for k in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads"):
        if cfg[k] is not None:
            kw[k] = cfg[k]
    return kw


class MAETask:
    """See ``pretrain/engine.py`` for the task interface."""

    def __init__(self, cfg: dict, env: DistEnv):
        self.cfg, self.env = cfg, env
        if not 0.0 <= cfg["mask_ratio"] < 1.0:
            raise ConfigError(f"mask_ratio must be in [0, 1), got {cfg['mask_ratio']}")
        self.model_kwargs = mae_kwargs(cfg)
        torch.manual_seed(cfg["seed"])  # same init on every rank
        self.model = MaskedAutoencoderViT(**self.model_kwargs).to(env.device)
        p = self.model.patch_size
        if cfg["img_size"] % p:
            raise ConfigError(f"img_size {cfg['img_size']} is not a multiple of the patch size {p}")
        train, self.val = splits(cfg, p, need_val=False)
        self.mean, self.std = norm_stats(cfg, train)
        self.num_patches = self.model.grid_size[0] * self.model.grid_size[1]
        self.train_set = seeded(train, make_transform(cfg, self.mean, self.std, train=True), cfg["seed"], self.num_patches)
        if self.val is None:
            logger.warning("no held-out folder (data/val or val_data): the held-out loss and figure use training images")
            self.val = train

    def param_groups(self):
        return param_groups(self.model, self.cfg["weight_decay"])

    def loss(self, model, batch: dict) -> torch.Tensor:
        loss, _, _ = model(batch["img"], mask_ratio=self.cfg["mask_ratio"], noise=batch["noise"])
        return loss

    def train_mode(self, model):
        model.train()

    def _held_out(self, n: int) -> dict:
        ds = seeded(self.val, make_transform(self.cfg, self.mean, self.std, train=False), HELD_OUT_SEED, self.num_patches)
        items = [ds[i] for i in range(min(n, len(ds)))]
        return {k: torch.stack([it[k] for it in items]).to(self.env.device) for k in ("img", "noise")}

    @torch.no_grad()
    def held_out_loss(self, n: int = 1000, batch: int = 250) -> float:
        """Mean loss on up to ``n`` held-out images with fixed masks (split across ranks)."""
        ds = seeded(self.val, make_transform(self.cfg, self.mean, self.std, train=False), HELD_OUT_SEED, self.num_patches)
        idx = list(range(self.env.rank, min(n, len(ds)), self.env.world_size))
        self.model.eval()
        tot = torch.zeros(2, dtype=torch.float64)
        for s in range(0, len(idx), batch):
            items = [ds[i] for i in idx[s:s + batch]]
            img = torch.stack([it["img"] for it in items]).to(self.env.device)
            noise = torch.stack([it["noise"] for it in items]).to(self.env.device)
            loss, _, _ = self.model(img, mask_ratio=self.cfg["mask_ratio"], noise=noise)
            tot += torch.tensor([loss.item() * len(items), len(items)], dtype=torch.float64)
        tot = all_reduce_sum(tot)
        return tot[0].item() / max(tot[1].item(), 1)

    def finish(self, out: Path, history: list[dict]) -> dict:
        """Held-out loss (all ranks), then on rank 0 the loss-curve and reconstruction PNGs."""
        metrics = {"val_loss": self.held_out_loss()}
        if self.env.is_main:
            records = history
            log = out / "log.jsonl"
            if log.is_file():  # includes the records of earlier (resumed) runs
                records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            save_loss_curve(records, out / "loss.png", title=f"MAE {self.cfg['model']} mask {self.cfg['mask_ratio']}")
            batch = self._held_out(self.cfg["recon_images"])
            save_reconstruction_figure(self.model, batch["img"], out / "reconstruction.png", self.mean, self.std,
                                       self.cfg["mask_ratio"], batch["noise"],
                                       title=f"held-out images, mask {self.cfg['mask_ratio']:.0%}, "
                                             f"val loss {metrics['val_loss']:.4f}")
        return metrics
