"""MAE pretraining task: model, data, loss, and the held-out outputs (loss, reconstruction figure)."""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

import torch

from mae_transfer.models.mae import MAE_PRESETS, MaskedAutoencoderViT, fit_patch_pca
from mae_transfer.models.masking import mask_noise
from mae_transfer.optim import param_groups
from mae_transfer.viz import save_loss_curve, save_reconstruction_figure

from .config import ConfigError
from .data import make_transform, norm_stats, seeded, splits
from .distributed import DistEnv, all_reduce_sum

logger = logging.getLogger("pretrain")

HELD_OUT_SEED = 20220101  # masks of the held-out loss and figure: the same for every run and ratio
PCA_FIT_IMAGES = 2000     # target=pca: training images whose patches the basis is fitted on


def target_of(cfg: dict) -> str:
    """The MAE target of ``cfg``: ``target``, or for None the older ``norm_pix_loss`` spelling."""
    return cfg["target"] or ("norm_pix" if cfg["norm_pix_loss"] else "pixel")


def check_mae_config(cfg: dict, patch_size: int, in_chans: int = 3):
    """Raise :class:`ConfigError` naming both fields for a combination that cannot be run."""
    if not 0.0 < cfg["mask_ratio"] < 1.0:
        raise ConfigError(f"mask_ratio must be in (0, 1), got {cfg['mask_ratio']}"
                          f"{': with no patch masked the MAE loss (over masked patches) is undefined' if cfg['mask_ratio'] == 0 else ''}")
    if cfg["img_size"] % patch_size:
        raise ConfigError(f"img_size {cfg['img_size']} is not a multiple of the patch size {patch_size}")
    if cfg["mask_sampling"] == "grid":
        if cfg["mask_ratio"] != 0.75:
            raise ConfigError(f"mask_sampling=grid keeps one patch of every 2x2, so it needs mask_ratio=0.75, "
                              f"got mask_ratio={cfg['mask_ratio']}")
        if (cfg["img_size"] // patch_size) % 2:
            raise ConfigError(f"mask_sampling=grid needs an even patch grid: img_size={cfg['img_size']} gives "
                              f"{cfg['img_size'] // patch_size} patches of {patch_size} a side")
    if cfg["pca_dim"] is not None and target_of(cfg) != "pca":
        raise ConfigError(f"pca_dim={cfg['pca_dim']} is for target=pca, got target={target_of(cfg)}")
    if cfg["pca_dim"] is not None and not 0 < cfg["pca_dim"] <= in_chans * patch_size ** 2:
        raise ConfigError(f"pca_dim={cfg['pca_dim']}: a patch of {patch_size} a side and {in_chans} channel(s) has "
                          f"{in_chans * patch_size ** 2} values")


def mae_kwargs(cfg: dict, in_chans: int = 3) -> dict:
    """Constructor arguments of the MAE for ``cfg`` (preset ``mae_<model>`` plus overrides) on images of
    ``in_chans`` channels (the decoder predicts ``in_chans * patch_size**2`` values per patch)."""
    name = "mae_" + cfg["model"]
    if name not in MAE_PRESETS:
        raise ConfigError(f"model {cfg['model']!r} has no MAE preset {name!r}; known: "
                          f"{', '.join(k[4:] for k in MAE_PRESETS)}")
    target = target_of(cfg)
    kw = {**MAE_PRESETS[name], "img_size": cfg["img_size"], "in_chans": in_chans, "norm_pix_loss": target == "norm_pix",
          "target": target, "pca_dim": cfg["pca_dim"], "encoder_mask_tokens": cfg["mask_token_in_encoder"]}
    for k in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads"):
        if cfg[k] is not None:
            kw[k] = cfg[k]
    if kw["decoder_embed_dim"] % kw["decoder_num_heads"]:
        raise ConfigError(f"decoder_embed_dim={kw['decoder_embed_dim']} is not a multiple of "
                          f"decoder_num_heads={kw['decoder_num_heads']}")
    return kw


class MAETask:
    """See ``pretrain/engine.py`` for the task interface."""

    def __init__(self, cfg: dict, env: DistEnv):
        self.cfg, self.env = cfg, env
        name = "mae_" + cfg["model"]
        train, self.val = splits(cfg, MAE_PRESETS[name]["patch_size"] if name in MAE_PRESETS else 1, need_val=False)
        self.model_kwargs = mae_kwargs(cfg, train.channels)
        check_mae_config(cfg, self.model_kwargs["patch_size"], train.channels)
        self.norm_stats = norm_stats(cfg, train, env=env)  # stored in every checkpoint, reused downstream
        self.mean, self.std = self.norm_stats["mean"], self.norm_stats["std"]
        torch.manual_seed(cfg["seed"])  # same init on every rank
        self.model = MaskedAutoencoderViT(**self.model_kwargs).to(env.device)
        self.model.set_grad_checkpointing(cfg["grad_checkpointing"])  # memory, not architecture: not in model_kwargs
        self.num_patches = self.model.grid_size[0] * self.model.grid_size[1]
        # block / grid masks as masking noise (a module function and plain values: picklable for workers)
        self.noise_fn = partial(mask_noise, cfg["mask_sampling"], grid=tuple(self.model.grid_size),
                                mask_ratio=cfg["mask_ratio"])
        self.train_set = self._seeded(train, True, cfg["seed"])
        if self.model.target == "pca":
            self._fit_pca(train)
        if self.val is None:
            logger.warning("no held-out folder (data/val or val_data): the held-out loss and figure use training images")
            self.val = train

    def _seeded(self, base, train: bool, seed: int):
        """``base`` with the training (or evaluation) transform and this run's masks."""
        tf = make_transform(self.cfg, self.mean, self.std, train=train)
        noise_fn = None if self.cfg["mask_sampling"] == "random" else self.noise_fn  # random: as before
        return seeded(base, tf, seed, self.num_patches, noise_fn)

    @torch.no_grad()
    def _fit_pca(self, train):
        """target=pca: fit the basis on the patches of up to PCA_FIT_IMAGES training images (evaluation
        transform, the same on every rank); the model keeps it as buffers, so checkpoints carry it."""
        ds = seeded(train, make_transform(self.cfg, self.mean, self.std, train=False), self.cfg["seed"])
        n = min(PCA_FIT_IMAGES, len(ds))

        def chunks(batch=256):
            for s in range(0, n, batch):
                imgs = torch.stack([ds[i]["img"] for i in range(s, min(s + batch, n))])
                yield self.model.patchify(imgs).flatten(0, 1)

        mean, comps = fit_patch_pca(chunks(), self.model.pca_components.shape[0])
        self.model.set_pca(mean.to(self.env.device), comps.to(self.env.device))
        logger.info("target=pca: %d coefficients per %d-d patch, fitted on the patches of %d training images",
                    comps.shape[0], comps.shape[1], n)

    def param_groups(self):
        return param_groups(self.model, self.cfg["weight_decay"])

    def loss(self, model, batch: dict) -> torch.Tensor:
        loss, _, _ = model(batch["img"], mask_ratio=self.cfg["mask_ratio"], noise=batch["noise"])
        return loss

    def train_mode(self, model):
        model.train()

    def _held_out(self, n: int) -> dict:
        ds = self._seeded(self.val, False, HELD_OUT_SEED)
        items = [ds[i] for i in range(min(n, len(ds)))]
        return {k: torch.stack([it[k] for it in items]).to(self.env.device) for k in ("img", "noise")}

    @torch.no_grad()
    def held_out_loss(self, n: int = 1000, batch: int = 250) -> float:
        """Mean loss on up to ``n`` held-out images with fixed masks (split across ranks)."""
        ds = self._seeded(self.val, False, HELD_OUT_SEED)
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
