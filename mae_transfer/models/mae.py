"""Masked autoencoder (He et al. 2022) on the one ViT encoder.

The encoder is :class:`~mae_transfer.models.vit.VisionTransformer` itself (this class subclasses it),
so encoder parameters keep the MAE reference's names (``blocks.0.attn.qkv.weight``, ``norm.weight``)
and the decoder adds ``mask_token``, ``decoder_embed``, ``decoder_pos_embed``, ``decoder_blocks``,
``decoder_norm`` and ``decoder_pred``: the official ``mae_pretrain_vit_*.pth`` loads as it is.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from .pos_embed import get_2d_sincos_pos_embed
from .vit import VIT_PRESETS, Block, VisionTransformer, _init_module

__all__ = ["MaskedAutoencoderViT", "MAE_PRESETS", "TARGETS", "mae_from_preset", "fit_patch_pca"]

TARGETS = ("pixel", "norm_pix", "pca")


def fit_patch_pca(chunks, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA of patch vectors, accumulated chunk by chunk (float64 sums, so memory stays one chunk).

    chunks: iterable of (M_i, D) tensors. Returns mean (D,) and components (k, D): the top-k
    eigenvectors of the covariance, largest first, each signed so that its largest-magnitude entry is
    positive (a deterministic basis)."""
    n, total, outer = 0, 0.0, 0.0
    for x in chunks:
        x = x.double()
        n, total, outer = n + len(x), total + x.sum(0), outer + x.T @ x
    if n < 2:
        raise ValueError("fit_patch_pca: needs at least 2 patches")
    mean = total / n
    cov = (outer - n * torch.outer(mean, mean)) / (n - 1)
    _, vecs = torch.linalg.eigh(cov)                      # ascending eigenvalues
    comps = vecs[:, -k:].flip(1).T                        # (k, D), largest first
    sign = comps.gather(1, comps.abs().argmax(1, keepdim=True)).sign()
    return mean.float(), (comps * sign).float()


class MaskedAutoencoderViT(VisionTransformer):
    """MAE with a ViT encoder that sees only the visible patches and a light decoder.

    Args:
        img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio: the encoder
            (see :class:`VisionTransformer`); the encoder uses a cls token and fixed sin-cos positions.
        decoder_embed_dim, decoder_depth, decoder_num_heads: the decoder (512-d x 8 blocks in the paper).
        norm_pix_loss: regress per-patch normalised pixels (mean 0, var 1 per patch) instead of raw ones;
            the older spelling of ``target="norm_pix"``, used when ``target`` is None.
        encoder_mask_tokens: put mask tokens into the *encoder* instead of the decoder (the paper's
            Table 1c / Table 2 baseline "encoder w/ [M]").
        target: what the decoder regresses (Table 1d): ``pixel``, ``norm_pix`` or ``pca`` (the first
            ``pca_dim`` PCA coefficients of each patch; set the basis with :meth:`set_pca` before training).
        pca_dim: coefficients per patch for ``target="pca"`` (None: patch_dim // 8, the paper's 96 of 768).
        grad_checkpointing: per-block activation checkpointing in the encoder and the decoder (see
            :class:`VisionTransformer`); a memory setting, not part of the architecture.
    """

    def __init__(self, img_size=224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, mlp_ratio: float = 4.0, decoder_embed_dim: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, norm_pix_loss: bool = False,
                 encoder_mask_tokens: bool = False, target: str | None = None, pca_dim: int | None = None,
                 norm_layer=partial(nn.LayerNorm, eps=1e-6), grad_checkpointing: bool = False):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, class_token=True,
                         pos_embed="sincos", global_pool="", num_classes=0, norm_layer=norm_layer,
                         grad_checkpointing=grad_checkpointing)
        del self.head, self.fc_norm, self.head_drop  # not part of the pretraining model
        self.in_chans = in_chans
        out_dim = self._init_target(target, norm_pix_loss, pca_dim, patch_size ** 2 * in_chans)
        self.encoder_mask_tokens = encoder_mask_tokens
        num_patches = self.grid_size[0] * self.grid_size[1]
        if encoder_mask_tokens:
            self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer,
                  num_prefix_tokens=1)
            for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, out_dim, bias=True)

        self.decoder_pos_embed.data.copy_(
            get_2d_sincos_pos_embed(decoder_embed_dim, self.grid_size, cls_token=True).unsqueeze(0))
        nn.init.normal_(self.mask_token, std=0.02)
        if encoder_mask_tokens:
            nn.init.normal_(self.encoder_mask_token, std=0.02)
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            m.apply(_init_module)

    def _init_target(self, target: str | None, norm_pix_loss: bool, pca_dim: int | None, patch_dim: int) -> int:
        """Set ``self.target`` (and the PCA buffers); returns the decoder's output size per patch."""
        target = target or ("norm_pix" if norm_pix_loss else "pixel")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        if norm_pix_loss and target != "norm_pix":
            raise ValueError(f"norm_pix_loss=True contradicts target={target!r}")
        self.target, self.norm_pix_loss = target, target == "norm_pix"
        if target != "pca":
            return patch_dim
        k = pca_dim or max(1, patch_dim // 8)
        if not 0 < k <= patch_dim:
            raise ValueError(f"pca_dim must be in 1..{patch_dim} (the patch dimension), got {k}")
        # the basis is data: fitted on training patches, kept in the state dict (so in the checkpoint)
        self.register_buffer("pca_mean", torch.zeros(patch_dim))
        self.register_buffer("pca_components", torch.zeros(k, patch_dim))
        return k

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "mask_token", "decoder_pos_embed", "encoder_mask_token"}

    # ---- patches ----------------------------------------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (N, C, H, W) -> (N, L, p*p*C), each row ordered (row, column, channel) as the reference."""
        p = self.patch_size
        N, C, H, W = imgs.shape
        if H % p or W % p:
            raise ValueError(f"patchify: image size {H}x{W} is not a multiple of the patch size {p}")
        h, w = H // p, W // p
        x = imgs.reshape(N, C, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(N, h * w, p * p * C)

    def unpatchify(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        """x: (N, L, p*p*C) -> imgs (N, C, H, W); ``hw`` is the patch grid (default: the model's)."""
        p, C = self.patch_size, self.in_chans
        h, w = hw or self.grid_size
        if h * w != x.shape[1]:
            raise ValueError(f"unpatchify: {x.shape[1]} patches do not form a {h}x{w} grid")
        x = x.reshape(x.shape[0], h, w, p, p, C)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], C, h * p, w * p)

    # ---- masking ----------------------------------------------------------------------------------
    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Per-sample random masking by argsort of noise.

        x: (N, L, D) tokens; noise: (N, L) in [0, 1) (random if None; small noise is kept).
        Returns x_masked (N, len_keep, D), mask (N, L) with 0 keep / 1 remove, ids_restore (N, L)."""
        N, L, D = x.shape
        len_keep = int(L * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(N, L, device=x.device)
        elif noise.shape != (N, L):
            raise ValueError(f"random_masking: noise has shape {tuple(noise.shape)}, expected {(N, L)}")
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
        mask = torch.ones(N, L, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_masked, mask, ids_restore

    # ---- encoder / decoder / loss -----------------------------------------------------------------
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """imgs (N, C, H, W) -> latent (N, 1 + len_keep, D), mask (N, L), ids_restore (N, L)."""
        x, hw = self.patch_embed(imgs)
        pe = self.abs_pos_embed(hw)
        if self.encoder_mask_tokens:
            # Table 2 baseline: every position enters the encoder, masked ones as a mask token.
            _, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
            x = torch.where(mask.unsqueeze(-1).bool(), self.encoder_mask_token.to(x.dtype), x)
            x = x + pe
        else:
            x, mask, ids_restore = self.random_masking(x + pe, mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = self.run_block(blk, x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (N, 1 + len_keep, D) -> per-patch predictions (N, L, out_dim)."""
        x = self.decoder_embed(x)
        if not self.encoder_mask_tokens:
            n_mask = ids_restore.shape[1] + 1 - x.shape[1]
            x_ = torch.cat([x[:, 1:], self.mask_token.to(x.dtype).expand(x.shape[0], n_mask, -1)], dim=1)
            x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
            x = torch.cat([x[:, :1], x_], dim=1)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = self.run_block(blk, x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:]

    # ---- targets ----------------------------------------------------------------------------------
    def set_pca(self, mean: torch.Tensor, components: torch.Tensor):
        """Set the ``target="pca"`` basis: mean (D,), components (k, D) from :func:`fit_patch_pca`."""
        if self.target != "pca":
            raise ValueError(f"set_pca: the model's target is {self.target!r}, not 'pca'")
        self.pca_mean.copy_(mean)
        self.pca_components.copy_(components)

    def target_of(self, imgs: torch.Tensor) -> torch.Tensor:
        """The regression target: imgs (N, C, H, W) -> (N, L, p*p*C), or (N, L, pca_dim) for ``pca``."""
        x = self.patchify(imgs)
        if self.target == "norm_pix":
            mean = x.mean(dim=-1, keepdim=True)
            var = x.var(dim=-1, keepdim=True)
            return (x - mean) / (var + 1.0e-6) ** 0.5
        if self.target == "pca":
            return (x.float() - self.pca_mean) @ self.pca_components.T
        return x

    def prediction_to_patches(self, pred: torch.Tensor, imgs: torch.Tensor) -> torch.Tensor:
        """Predictions back in pixel space, (N, L, p*p*C): ``norm_pix`` is undone with each patch's own
        mean and variance from ``imgs`` (as the MAE demo does), ``pca`` with the basis."""
        pred = pred.float()
        if self.target == "norm_pix":
            x = self.patchify(imgs.float())
            return pred * (x.var(-1, keepdim=True) + 1e-6) ** 0.5 + x.mean(-1, keepdim=True)
        if self.target == "pca":
            return pred @ self.pca_components + self.pca_mean
        return pred

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the masked patches only. imgs (N, C, H, W); pred (N, L, out_dim) with
        out_dim p*p*C (pca: pca_dim); mask (N, L)."""
        target = self.target_of(imgs)
        loss = ((pred.float() - target.float()) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
        """Returns ``loss, pred, mask`` as the reference: pred (N, L, out_dim), mask (N, L), 1 = masked.
        ``noise`` (N, L) decides the mask (lowest kept); see ``masking.mask_noise`` for block / grid."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask



# Decoders: the paper's 512-d x 8 blocks for B/L/H; the mini presets' 64-d x 2 keeps pretraining
# within a few CPU minutes (docs/experiments.md, CPU calibration).
MAE_PRESETS: dict[str, dict] = {
    "mae_vit_base_patch16": dict(**VIT_PRESETS["vit_base_patch16"], decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "mae_vit_large_patch16": dict(**VIT_PRESETS["vit_large_patch16"], decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "mae_vit_huge_patch14": dict(**VIT_PRESETS["vit_huge_patch14"], decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "mae_vit_tiny_patch16": dict(**VIT_PRESETS["vit_tiny_patch16"], decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
    "mae_vit_small_patch16": dict(**VIT_PRESETS["vit_small_patch16"], decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8),
    "mae_vit_mini_patch4": dict(**VIT_PRESETS["vit_mini_patch4"], decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4),
    "mae_vit_micro_patch4": dict(**VIT_PRESETS["vit_micro_patch4"], decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4),
}


def mae_from_preset(name: str, **overrides) -> MaskedAutoencoderViT:
    """``mae_from_preset("mae_vit_base_patch16", norm_pix_loss=True)``."""
    if name not in MAE_PRESETS:
        raise KeyError(f"unknown MAE preset {name!r}; known: {', '.join(MAE_PRESETS)}")
    return MaskedAutoencoderViT(**{**MAE_PRESETS[name], **overrides})


def mae_vit_base_patch16(**kwargs) -> MaskedAutoencoderViT:
    return mae_from_preset("mae_vit_base_patch16", **kwargs)


def mae_vit_large_patch16(**kwargs) -> MaskedAutoencoderViT:
    return mae_from_preset("mae_vit_large_patch16", **kwargs)


def mae_vit_huge_patch14(**kwargs) -> MaskedAutoencoderViT:
    return mae_from_preset("mae_vit_huge_patch14", **kwargs)
