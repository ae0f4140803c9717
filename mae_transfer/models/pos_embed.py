"""Position embeddings: the MAE reference's fixed 2-D sin-cos table and bicubic resampling."""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed as timm_resample_abs_pos_embed


def get_1d_sincos_pos_embed(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """pos: (M,) positions -> (M, embed_dim): sin of the first half of frequencies, then cos."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos position embedding needs an even width, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size, cls_token: bool = False) -> torch.Tensor:
    """The MAE reference table, ``(h*w [+1], embed_dim)`` float32, row-major over the grid.

    As in the reference, the first half of the channels encodes the column (x) coordinate and the
    second half the row; the cls row is zeros."""
    h, w = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs a width divisible by 4, got {embed_dim}")
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    emb = torch.cat([get_1d_sincos_pos_embed(embed_dim // 2, gx), get_1d_sincos_pos_embed(embed_dim // 2, gy)], 1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def resample_abs_pos_embed(pos_embed: torch.Tensor, new_size, old_size=None, num_prefix_tokens: int = 1,
                           antialias: bool = False) -> torch.Tensor:
    """Bicubic resampling of ``(1, prefix + h*w, D)`` position embeddings to grid ``new_size``.

    Prefix (cls) rows are kept as they are. ``old_size`` defaults to a square grid; grids that do not
    fit raise ``ValueError`` naming the row count, then timm's resampling does the interpolation. ``antialias=False``
    is what ViTDet, MMSegmentation and the MAE reference do on the fly; checkpoint conversion uses
    ``antialias=True`` as timm does (PyTorch's antialiased bicubic, which also differs when upsampling)."""
    new_size = (new_size, new_size) if isinstance(new_size, int) else tuple(new_size)
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n, D = grid.shape[1], grid.shape[2]
    if old_size is None:
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError(f"position embedding with {n} patch rows is not a square grid; pass old_size")
        old_size = (side, side)
    old_size = (old_size, old_size) if isinstance(old_size, int) else tuple(old_size)
    if old_size[0] * old_size[1] != n:
        raise ValueError(f"position embedding has {n} patch rows, not the {old_size[0]}x{old_size[1]} grid given")
    if old_size == new_size:
        return pos_embed
    return timm_resample_abs_pos_embed(pos_embed, list(new_size), list(old_size), num_prefix_tokens=num_prefix_tokens,
                                       antialias=antialias)
