"""The one Vision Transformer encoder of mae-transfer.

Used unchanged for MAE pretraining (``mae.py`` subclasses it), classification, the Detectron2 backbone
and the MMSegmentation backbone. Parameter names follow timm / the MAE reference
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.{i}.attn.qkv``, ``norm``, ``fc_norm``,
``head``) so official checkpoints load without renaming; ViTDet's decomposed relative position uses
detectron2's names (``attn.rel_pos_h``/``rel_pos_w``) and the BEiT-style bias uses
``attn.relative_position_bias_table``.

Shapes: images ``(B, C, H, W)``; tokens ``(B, N, D)`` with ``N = num_prefix_tokens + h * w`` where
``(h, w) = (H // patch_size, W // patch_size)``; feature maps ``(B, D, h, w)``.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, gen_relative_position_index, trunc_normal_

from .pos_embed import get_2d_sincos_pos_embed, resample_abs_pos_embed

__all__ = ["VisionTransformer", "Block", "Attention", "PatchEmbed", "VIT_PRESETS", "vit_from_preset"]


def _pair(x) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided conv. ``(B, C, H, W) -> (B, h*w, D)``."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.patch_size = _pair(patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        B, C, H, W = x.shape
        ph, pw = self.patch_size
        if C != self.proj.in_channels:
            raise ValueError(f"PatchEmbed: input has {C} channels, the model expects {self.proj.in_channels}")
        if H % ph or W % pw:
            raise ValueError(f"PatchEmbed: input size {H}x{W} is not a multiple of the patch size {ph}x{pw}")
        x = self.proj(x)
        hw = (x.shape[2], x.shape[3])
        # contiguous: without a cls token to concatenate (ViTDet), the residual stream would keep the
        # conv's (D, N) layout through every block, and every LayerNorm would copy it back
        return x.flatten(2).transpose(1, 2).contiguous(), hw


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linear resize of a ``(L, C)`` relative-position table to ``(length, C)`` (ViTDet's rule)."""
    if rel_pos.shape[0] == length:
        return rel_pos
    return F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=length,
                         mode="linear").reshape(-1, length).permute(1, 0)


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative positions along one axis, ``(q_size, k_size, C)``; ViTDet's rule, table resized linearly
    when its length is not ``2 * max(q_size, k_size) - 1``."""
    max_rel_dist = 2 * max(q_size, k_size) - 1
    rel_pos = resize_rel_pos(rel_pos, max_rel_dist)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative_coords.long()]


def decomposed_rel_terms(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                         hw: tuple[int, int], q_hw: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ViTDet's decomposed relative position as two small terms: ``rel_h = q . R_h`` (one value per key
    row) and ``rel_w = q . R_w`` (per key column), from the *unscaled* queries as detectron2.

    q: (B, heads, qh*qw, C), the queries of the top-left ``q_hw = (qh, qw)`` part of the key grid ``hw =
    (h, w)`` (default: all of it; a window's real tokens when the grid is padded). Returns rel_h (B,
    heads, qh, qw, h) and rel_w (B, heads, qh, qw, w); the logit of query (i, j) and key (k, l) gets
    ``rel_h[..., i, j, k] + rel_w[..., i, j, l]``."""
    h, w = hw
    qh, qw = q_hw or hw
    r_q = q.reshape(q.shape[0], q.shape[1], qh, qw, q.shape[3])
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, get_rel_pos(h, h, rel_pos_h)[:qh].to(q.dtype))
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, get_rel_pos(w, w, rel_pos_w)[:qw].to(q.dtype))
    return rel_h, rel_w


def fold_decomposed_rel_pos(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_h: torch.Tensor,
                            rel_pos_w: torch.Tensor, hw: tuple[int, int], q_hw: tuple[int, int] | None = None):
    """The decomposed relative position folded into queries and keys, so attention needs no bias tensor.

    With ``rel_h``, ``rel_w`` of :func:`decomposed_rel_terms`, ``q' = [q * scale, rel_h, rel_w]`` and
    ``k' = [k, onehot(key row), onehot(key column)]`` give ``q' . k' = scale * q . k + rel_h[row(k)] +
    rel_w[col(k)]``: the logits of ViTDet's ``add_decomposed_rel_pos`` (detectron2), but SDPA can use its
    flash / memory-efficient kernels and never materialises an ``(h*w, h*w)`` bias per head. q, k, v are
    zero-padded to one head width, a multiple of 8 (what those kernels need). Call SDPA with ``scale=1``
    and keep the first ``C`` output channels.

    q: (B, heads, Nq, C) for the query grid ``q_hw`` (default ``hw``); k, v: (B, heads, h*w, C). Returns
    q' (B, heads, Nq, C') and k', v' (B, heads, h*w, C'), C' >= C + h + w."""
    h, w = hw
    B, nh, Nq, C = q.shape
    Nk = k.shape[2]
    rel_h, rel_w = decomposed_rel_terms(q, rel_pos_h, rel_pos_w, hw, q_hw)
    pad = -(C + h + w) % 8
    idx = torch.arange(Nk, device=q.device)
    onehot = torch.cat([F.one_hot(idx // w, h), F.one_hot(idx % w, w), idx.new_zeros(Nk, pad)], dim=1).to(q.dtype)
    zeros = q.new_zeros(B, nh, Nq, pad)
    q = torch.cat([q * C ** -0.5, rel_h.reshape(B, nh, Nq, h), rel_w.reshape(B, nh, Nq, w), zeros], dim=-1)
    k = torch.cat([k, onehot.expand(B, nh, Nk, h + w + pad)], dim=-1)
    return q, k, F.pad(v, (0, h + w + pad))


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
                       rel: tuple[torch.Tensor, torch.Tensor] | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """``softmax(q k^T / sqrt(C) + bias + rel) v`` written out as matmul + softmax (what detectron2 and
    mmseg do). On a CPU this beats SDPA where SDPA needs a dense bias or widened heads (measured per
    shape by :func:`pick_attention_form`).

    q: (B, heads, Nq, C); k, v: (B, heads, Nk, C); bias: broadcastable to (B, heads, Nq, Nk); rel: the
    decomposed terms of :func:`decomposed_rel_terms`, added by broadcasting ``(B, heads, qh, qw, h, 1) +
    (B, heads, qh, qw, 1, w)`` (no (Nq, Nk) bias tensor is built). Returns (B, heads, Nq, C)."""
    B, nh, Nq, C = q.shape
    attn = (q * C ** -0.5) @ k.transpose(-2, -1)
    # in place: the matmul's backward needs its inputs, not its output
    if rel is not None:
        rel_h, rel_w = rel
        attn = (attn.view(*rel_h.shape, rel_w.shape[-1]).add_(rel_h.unsqueeze(-1)).add_(rel_w.unsqueeze(-2))
                .view(B, nh, Nq, -1))
    if bias is not None:
        attn = attn.add_(bias)
    attn = attn.softmax(dim=-1)
    if dropout_p:
        attn = F.dropout(attn, dropout_p)
    return attn @ v


_FORM_CHOICE: dict[tuple, str] = {}  # (device, dtype, shape, kind, grad) -> the measured faster form
FORMS = ("sdpa", "explicit")


def pick_attention_form(key: tuple, run, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, repeats: int = 2) -> str:
    """The faster of ``"sdpa"`` and ``"explicit"`` for this device, dtype and block shape, measured once
    per machine on stand-in tensors of the real shapes and cached with ``precision=auto``'s decisions
    (``$MAE_CACHE_DIR/precision.json``): the forms agree only to rounding, so a resumed run, or the next run
    on the machine, must take the form the first one measured, not a new measurement's (which load can flip).

    Neither form wins everywhere: on a GPU SDPA's fused kernels do (no (N, N) tensor in memory), on a CPU
    the explicit matmul + softmax is faster at some shapes (SDPA with a dense bias, or the widened heads
    of the folded relative position). ``run(form, q, k, v)`` computes the attention without dropout (the
    probe draws no random numbers, so a run's RNG stream is the same whether it probed or not); with grad
    enabled forward + backward are timed (gradients only for the stand-ins, never into the parameters).
    Each form once to warm up, then ``repeats`` interleaved calls, the fastest kept."""
    if key in _FORM_CHOICE:
        return _FORM_CHOICE[key]
    from ..precision import read_decision, write_decision  # here: precision imports nothing of the models

    disk_key = "attention " + " ".join(map(str, key[1:]))
    hit = read_decision(q.device, disk_key)
    if hit is not None and hit.get("choice") in FORMS:
        _FORM_CHOICE[key] = hit["choice"]
        return _FORM_CHOICE[key]
    grad = key[-1]
    ins = [t.detach().clone().requires_grad_(grad) for t in (q, k, v)]
    sync = torch.cuda.synchronize if q.device.type == "cuda" else (lambda: None)
    best = {}
    # identity hooks: inside a checkpointed block (grad_checkpointing) the probe's own saved tensors must
    # not enter the checkpoint's bookkeeping, which the recomputation (no probe then) replays
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        for r in range(repeats + 1):
            for form in FORMS if r % 2 else FORMS[::-1]:
                sync()
                t0 = time.perf_counter()
                out = run(form, *ins)
                if grad:
                    torch.autograd.grad(out.float().sum(), ins)
                sync()
                if r:
                    best[form] = min(best.get(form, float("inf")), time.perf_counter() - t0)
    _FORM_CHOICE[key] = min(best, key=best.get)
    write_decision(q.device, disk_key, {"choice": _FORM_CHOICE[key], "times": best})
    return _FORM_CHOICE[key]


def beit_relative_position_index(hw: tuple[int, int], num_prefix: int) -> torch.Tensor:
    """BEiT's index into a ``((2h-1)(2w-1) + 3, heads)`` table; the 3 extra rows are cls->token,
    token->cls and cls->cls. Returns ``(N, N)`` with ``N = h*w + num_prefix`` (num_prefix 0 or 1).
    timm's implementation, the one BEiT uses there."""
    return gen_relative_position_index(tuple(hw), class_token=bool(num_prefix))


def resize_beit_bias_table(table: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of the (2h-1)x(2w-1) part of a BEiT bias table; the 3 cls rows are kept."""
    if tuple(src_hw) == tuple(dst_hw):
        return table
    nh = table.shape[1]
    sh, sw = 2 * src_hw[0] - 1, 2 * src_hw[1] - 1
    dh, dw = 2 * dst_hw[0] - 1, 2 * dst_hw[1] - 1
    grid, extra = table[: sh * sw], table[sh * sw:]
    grid = grid.T.reshape(1, nh, sh, sw)
    grid = F.interpolate(grid.float(), size=(dh, dw), mode="bicubic", align_corners=False).to(table.dtype)
    return torch.cat([grid.reshape(nh, dh * dw).T, extra], dim=0)


class Attention(nn.Module):
    """Multi-head self-attention, as ``F.scaled_dot_product_attention`` or as explicit matmul + softmax,
    whichever measured faster for the device and block shape (``attn_form = "auto"``, the default; set
    ``"sdpa"`` or ``"explicit"`` to force one; both give the same outputs and gradients).

    Args:
        dim: token width.
        num_heads: number of heads.
        qkv_bias: bias on the qkv projection.
        rel_pos: ``None``; ``"decomposed"`` (ViTDet: per-axis tables ``rel_pos_h``/``rel_pos_w`` of shape
            ``(2 * size - 1, head_dim)``, added as a bias ``q . R``); or ``"bias"`` (BEiT: a learned
            per-head scalar for each relative offset, ``relative_position_bias_table``).
        rel_pos_size: the token grid ``(h, w)`` the tables are sized for (the window for window blocks).
        rel_pos_zero_init: start the tables at zero (so a checkpoint without them is unchanged at init).
        num_prefix_tokens: prefix (cls) tokens in the sequence; only the BEiT bias handles one.
        attn_drop, proj_drop: dropout rates.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, rel_pos: str | None = None,
                 rel_pos_size: tuple[int, int] | None = None, rel_pos_zero_init: bool = True,
                 num_prefix_tokens: int = 0, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        self.rel_pos = rel_pos
        self.num_prefix_tokens = num_prefix_tokens
        self.attn_form = "auto"  # or "sdpa" / "explicit"; both compute the same attention
        if rel_pos is not None and rel_pos_size is None:
            raise ValueError("Attention: rel_pos needs rel_pos_size (the token grid it is sized for)")
        if rel_pos == "decomposed":
            if num_prefix_tokens:
                raise ValueError("Attention: decomposed relative position does not support a cls token")
            h, w = rel_pos_size
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * h - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * w - 1, self.head_dim))
            if not rel_pos_zero_init:
                trunc_normal_(self.rel_pos_h, std=0.02)
                trunc_normal_(self.rel_pos_w, std=0.02)
        elif rel_pos == "bias":
            if num_prefix_tokens > 1:
                raise ValueError("Attention: the BEiT relative position bias supports at most one cls token")
            h, w = rel_pos_size
            self.rel_pos_size = (h, w)
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros((2 * h - 1) * (2 * w - 1) + 3, num_heads))
            if not rel_pos_zero_init:
                trunc_normal_(self.relative_position_bias_table, std=0.02)
            self.register_buffer("relative_position_index",
                                 beit_relative_position_index((h, w), num_prefix_tokens), persistent=False)
        elif rel_pos is not None:
            raise ValueError(f"Attention: unknown rel_pos {rel_pos!r}; use None, 'decomposed' or 'bias'")

    def _beit_bias(self, hw: tuple[int, int]) -> torch.Tensor:
        table, index = self.relative_position_bias_table, self.relative_position_index
        if tuple(hw) != self.rel_pos_size:
            table = resize_beit_bias_table(table, self.rel_pos_size, hw)
            index = beit_relative_position_index(hw, self.num_prefix_tokens).to(table.device)
        N = index.shape[0]
        return table[index.reshape(-1)].reshape(N, N, -1).permute(2, 0, 1).unsqueeze(0)

    def _attend_as(self, form: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw, bias,
                   p: float, q_hw=None) -> torch.Tensor:
        """Attention of (B, heads, Nq, C) q and (B, heads, Nk, C) k, v in ``form`` ("sdpa" or "explicit"),
        with this module's relative position for the key grid ``hw`` and the query grid ``q_hw`` (its
        top-left part; default all of it); ``bias`` is the BEiT bias for this grid (or None), ``p`` the
        attention dropout. Returns (B, heads, Nq, C)."""
        if form == "explicit":
            rel = (decomposed_rel_terms(q, self.rel_pos_h, self.rel_pos_w, hw, q_hw)
                   if self.rel_pos == "decomposed" else None)
            return explicit_attention(q, k, v, bias, rel, p)
        C, scale = q.shape[-1], None
        if self.rel_pos == "decomposed":
            q, k, v = fold_decomposed_rel_pos(q, k, v, self.rel_pos_h, self.rel_pos_w, hw, q_hw)
            scale = 1.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, dropout_p=p)[..., :C]

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw, q_hw=None) -> torch.Tensor:
        """Attention in the form ``attn_form`` names; ``"auto"``: the one measured faster for this shape."""
        bias = self._beit_bias(hw).to(q.dtype) if self.rel_pos == "bias" else None
        form = self.attn_form
        if form == "auto":
            if self.rel_pos is None or torch.compiler.is_compiling():
                form = "sdpa"  # no bias to add: SDPA computes the same products with fewer passes
            else:
                grad = torch.is_grad_enabled() and (q.requires_grad or bias is not None and bias.requires_grad)
                shape = tuple(q.shape) if q.shape == k.shape else (tuple(q.shape), tuple(k.shape))
                key = (str(q.device), q.dtype, shape, self.rel_pos, tuple(hw), grad)
                fixed = None if bias is None else bias.detach()
                form = pick_attention_form(
                    key, lambda f, q_, k_, v_: self._attend_as(f, q_, k_, v_, hw, fixed, 0.0, q_hw), q, k, v)
        return self._attend_as(form, q, k, v, hw, bias, self.attn_drop if self.training else 0.0, q_hw)

    def forward(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        """x: (B, N, D); hw: the token grid of x without prefix tokens (needed with rel_pos)."""
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = self._attend(q, k, v, hw)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, D)))

    def forward_windows(self, x: torch.Tensor, ws: int) -> torch.Tensor:
        """Attention within non-overlapping ``ws x ws`` windows (ViTDet). x: (B, h, w, D) -> (B, h, w, D).

        As detectron2, a grid that ``ws`` does not divide is zero-padded (after the norm); padded tokens
        take part as keys and values, and their queries are discarded. Here those queries are never
        computed: qkv runs on the real tokens, k and v are padded with the qkv bias (what a zero token
        projects to), and the windows go to attention in up to four groups of one shape (whole windows,
        the last column, the last row, the corner), each with its real queries and all ``ws * ws`` keys;
        ``proj`` runs on the real tokens. At 512 px (32x32 tokens, 14x14 windows padded to 42x42)
        that skips 42 % of the window blocks' qkv and proj rows and of their attention queries."""
        B, h, w, D = x.shape
        nh, C = self.num_heads, self.head_dim
        q, kv = self.qkv(x).split([D, 2 * D], dim=-1)  # split, not sliced: its backward is one cat
        pad_h, pad_w = (-h) % ws, (-w) % ws
        if pad_h or pad_w:  # concatenated, not padded + masked: its backward only slices
            b = self.qkv.bias[D:].to(kv.dtype) if self.qkv.bias is not None else kv.new_zeros(2 * D)
            kv = torch.cat([kv, b.expand(B, h, pad_w, 2 * D)], dim=2)
            kv = torch.cat([kv, b.expand(B, pad_h, w + pad_w, 2 * D)], dim=1)
        rows, cols = _window_groups(h, ws), _window_groups(w, ws)
        out = []
        for (nr, rr), q_r, kv_r in zip(rows, q.split([n * r for n, r in rows], 1),
                                       kv.split([n * ws for n, _ in rows], 1)):
            parts = []
            for (nc, cc), q_rc, kv_rc in zip(cols, q_r.split([n * c for n, c in cols], 2),
                                             kv_r.split([n * ws for n, _ in cols], 2)):
                q_w = (q_rc.reshape(B, nr, rr, nc, cc, nh, C).permute(0, 1, 3, 5, 2, 4, 6)
                       .reshape(B * nr * nc, nh, rr * cc, C))
                k_w, v_w = (kv_rc.reshape(B, nr, ws, nc, ws, 2, nh, C).permute(5, 0, 1, 3, 6, 2, 4, 7)
                            .reshape(2, B * nr * nc, nh, ws * ws, C).unbind(0))
                o = self._attend(q_w, k_w, v_w, (ws, ws), (rr, cc))  # (B * nr * nc, heads, rr * cc, C)
                parts.append(o.view(B, nr, nc, nh, rr, cc, C).permute(0, 1, 4, 2, 5, 3, 6)
                             .reshape(B, nr * rr, nc * cc, D))
            out.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
        return self.proj_drop(self.proj(torch.cat(out, dim=1) if len(out) > 1 else out[0]))


def _window_groups(size: int, ws: int) -> list[tuple[int, int]]:
    """Windows of ``ws`` along an axis of ``size`` tokens as ``(windows, real tokens per window)`` groups:
    the whole windows, then the last, partly padded one (if ``ws`` does not divide ``size``)."""
    n, last = -(-size // ws), size % ws
    if not last:
        return [(n, ws)]
    return ([(n - 1, ws)] if n > 1 else []) + [(1, last)]


class Block(nn.Module):
    """Pre-norm transformer block: ``x + drop_path(ls1(attn(norm1(x))))``, then the same with the MLP.

    Args:
        dim, num_heads, mlp_ratio, qkv_bias: the usual transformer sizes.
        drop_path: stochastic depth rate of this block.
        init_values: layer-scale init (``None``: no layer scale).
        window_size: 0 for global attention, else attention within non-overlapping windows of this many
            tokens a side (ViTDet), zero-padding the grid when it does not divide.
        rel_pos, rel_pos_size, rel_pos_zero_init, num_prefix_tokens: see :class:`Attention`.
        norm_layer: normalisation constructor.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, init_values: float | None = None, window_size: int = 0,
                 rel_pos: str | None = None, rel_pos_size: tuple[int, int] | None = None,
                 rel_pos_zero_init: bool = True, num_prefix_tokens: int = 0, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, norm_layer=partial(nn.LayerNorm, eps=1e-6)):
        super().__init__()
        if window_size and num_prefix_tokens:
            raise ValueError("Block: window attention needs a sequence without cls token")
        self.window_size = window_size
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, rel_pos,
                              (window_size, window_size) if window_size else rel_pos_size,
                              rel_pos_zero_init, num_prefix_tokens, attn_drop, proj_drop)
        self.ls1 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()

    def forward(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        """x: (B, N, D); hw: the token grid (required for window attention and relative position)."""
        y = self.norm1(x)
        if self.window_size:
            B, N, D = y.shape
            y = self.attn.forward_windows(y.view(B, hw[0], hw[1], D), self.window_size).reshape(B, N, D)
        else:
            y = self.attn(y, hw)
        x = x + self.drop_path(self.ls1(y))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class VisionTransformer(nn.Module):
    """ViT encoder with optional classifier head.

    Args:
        img_size: the input size the absolute position embeddings (and BEiT bias tables) are made for;
            other sizes work, the embeddings are resampled bicubically on the fly.
        patch_size: patch size (16; 14 for ViT-H/14; 4 for the small CPU presets).
        in_chans: image channels.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer sizes.
        class_token: prepend a learned cls token.
        pos_embed: ``"sincos"`` (fixed 2-D sin-cos, as MAE pretraining), ``"learned"`` (trainable,
            initialised at sin-cos like MAE fine-tuning from a checkpoint) or ``"none"``.
        pos_embed_cls: whether ``pos_embed`` has a row for the cls token even when the sequence has no cls
            token (ViTDet keeps the pretraining layout ``(1, 1 + h*w, D)`` and ignores the first row).
        global_pool: ``"token"`` (cls token, final norm), ``"avg"`` (mean of patch tokens, then
            ``fc_norm``; the final ``norm`` is removed, as MAE fine-tuning), or ``""`` (no pooling).
        num_classes: classifier outputs; 0 for none.
        drop_rate, attn_drop_rate, drop_path_rate: dropout, attention dropout, stochastic depth (linear
            over depth).
        init_values: layer-scale init, ``None`` for no layer scale.
        window_size: window attention size for blocks not in ``global_blocks`` (0: all global).
        global_blocks: indices of global-attention blocks when ``window_size`` > 0.
        rel_pos: ``None``, ``"decomposed"`` (ViTDet) or ``"bias"`` (BEiT); see :class:`Attention`.
        rel_pos_zero_init: start relative-position tables at zero.
        rel_pos_size: the token grid ``(h, w)`` the relative-position tables of global blocks are sized
            for (default ``img_size // patch_size``). ViTDet sizes them for the detection input (64x64 at
            1024 px) while ``pos_embed`` keeps the pretraining grid (14x14) and is resampled on the fly.
        final_norm: apply ``norm`` after the last block in :meth:`forward_features`.
        grad_checkpointing: recompute each block's activations in the backward pass instead of keeping
            them (``torch.utils.checkpoint``, non-reentrant), trading one more forward for activation
            memory; only in training mode with grad enabled. Outputs and gradients are unchanged (the RNG of
            drop path / dropout is replayed). Settable later with :meth:`set_grad_checkpointing`.
    """

    def __init__(self, img_size=224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 class_token: bool = True, pos_embed: str = "sincos", pos_embed_cls: bool | None = None,
                 global_pool: str = "token", num_classes: int = 0, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, init_values: float | None = None,
                 window_size: int = 0, global_blocks: Sequence[int] = (), rel_pos: str | None = None,
                 rel_pos_zero_init: bool = True, rel_pos_size=None, final_norm: bool = True,
                 norm_layer=partial(nn.LayerNorm, eps=1e-6), grad_checkpointing: bool = False):
        super().__init__()
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"VisionTransformer: global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("VisionTransformer: global_pool='token' needs class_token=True")
        if pos_embed not in ("sincos", "learned", "none"):
            raise ValueError(f"VisionTransformer: pos_embed must be 'sincos', 'learned' or 'none', got {pos_embed!r}")
        self.img_size = _pair(img_size)
        self.patch_size = patch_size
        self.embed_dim = self.num_features = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.global_pool = global_pool
        self.num_classes = num_classes
        self.num_prefix_tokens = 1 if class_token else 0
        self.grad_checkpointing = bool(grad_checkpointing)
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        num_patches = self.grid_size[0] * self.grid_size[1]

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed_cls = class_token if pos_embed_cls is None else pos_embed_cls
        if pos_embed == "none":
            self.pos_embed = None
        else:
            n = num_patches + (1 if self.pos_embed_cls else 0)
            self.pos_embed = nn.Parameter(torch.zeros(1, n, embed_dim), requires_grad=pos_embed == "learned")
        self.pos_drop = nn.Dropout(drop_rate)

        rel_pos_grid = self.grid_size if rel_pos_size is None else _pair(rel_pos_size)
        dpr = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]  # linear rule
        global_blocks = set(global_blocks)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i], init_values,
                  window_size=0 if (window_size == 0 or i in global_blocks) else window_size,
                  rel_pos=rel_pos, rel_pos_size=rel_pos_grid, rel_pos_zero_init=rel_pos_zero_init,
                  num_prefix_tokens=self.num_prefix_tokens, proj_drop=drop_rate, attn_drop=attn_drop_rate,
                  norm_layer=norm_layer)
            for i in range(depth)])
        use_fc_norm = global_pool == "avg"
        self.norm = norm_layer(embed_dim) if final_norm and not use_fc_norm else nn.Identity()
        self.fc_norm = norm_layer(embed_dim) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    # ---- init -------------------------------------------------------------------------------------
    def _init_weights(self):
        # As the MAE reference: fixed sin-cos positions, xavier for linear layers and the patch conv.
        if self.pos_embed is not None:
            pe = get_2d_sincos_pos_embed(self.embed_dim, self.grid_size, cls_token=self.pos_embed_cls)
            self.pos_embed.data.copy_(pe.unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        self.apply(_init_module)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=2e-5)  # MAE fine-tuning's head init

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        """Turn per-block activation checkpointing on or off (timm's name for it)."""
        self.grad_checkpointing = bool(enable)

    # ---- forward ----------------------------------------------------------------------------------
    def run_block(self, blk: nn.Module, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        """``blk(x, hw)``, checkpointed when ``grad_checkpointing`` is on, training and grad enabled.

        Non-reentrant, so it composes with autocast (its state is replayed), inputs that do not require
        grad (the first block under a frozen patch embed) and DDP's unused-parameter search."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(blk, x, hw, use_reentrant=False)
        return blk(x, hw)

    def abs_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor | None:
        """Patch position embeddings for grid ``hw``, ``(1, h*w, D)``, resampled if needed."""
        if self.pos_embed is None:
            return None
        pe = self.pos_embed[:, 1:] if self.pos_embed_cls else self.pos_embed
        if tuple(hw) != self.grid_size:
            pe = resample_abs_pos_embed(pe, hw, self.grid_size, num_prefix_tokens=0)
        return pe

    def prepare_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images ``(B, C, H, W)`` -> tokens ``(B, prefix + h*w, D)`` with positions added, and ``(h, w)``."""
        x, hw = self.patch_embed(x)
        pe = self.abs_pos_embed(hw)
        if pe is not None:
            x = x + pe
        if self.cls_token is not None:
            cls = self.cls_token
            if self.pos_embed is not None and self.pos_embed_cls:
                cls = cls + self.pos_embed[:, :1]
            x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x), hw

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> normalised tokens ``(B, prefix + h*w, D)``."""
        x, hw = self.prepare_tokens(x)
        for blk in self.blocks:
            x = self.run_block(blk, x, hw)
        return self.norm(x)

    def forward_feature_maps(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        """Outputs of blocks ``indices`` (0-based, negative counts from the end) as maps ``(B, D, h, w)``.

        Raw block outputs (no final norm), as ViTDet and the MAE segmentation recipe use them; blocks
        after the last requested one are not run."""
        idx = sorted({i % self.depth for i in indices})
        x, hw = self.prepare_tokens(x)
        out = {}
        for i, blk in enumerate(self.blocks[: idx[-1] + 1]):
            x = self.run_block(blk, x, hw)
            if i in idx:
                t = x[:, self.num_prefix_tokens:]
                out[i] = t.transpose(1, 2).reshape(x.shape[0], -1, hw[0], hw[1])
        return [out[i % self.depth] for i in indices]

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, N, D)`` -> ``(B, D)`` by the cls token or the mean of patch tokens."""
        if self.global_pool == "avg":
            return self.fc_norm(x[:, self.num_prefix_tokens:].mean(dim=1))
        if self.global_pool == "token":
            return x[:, 0]
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> logits ``(B, num_classes)`` (pooled features if no head)."""
        return self.forward_head(self.forward_features(x))


def _init_module(m: nn.Module):
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# Architecture presets: (patch, embed_dim, depth, heads). ViT-T/S/B/L/H as in the papers; the "mini"
# presets are sized for a few CPU minutes on 32x32 Fashion-MNIST (docs/experiments.md, CPU calibration).
VIT_PRESETS: dict[str, dict] = {
    "vit_tiny_patch16": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "vit_huge_patch14": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
    "vit_huge_patch16": dict(patch_size=16, embed_dim=1280, depth=32, num_heads=16),
    "vit_mini_patch4": dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4),
    "vit_micro_patch4": dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4),
}


def vit_from_preset(name: str, **overrides) -> VisionTransformer:
    """``vit_from_preset("vit_base_patch16", num_classes=1000, global_pool="avg")``."""
    if name not in VIT_PRESETS:
        raise KeyError(f"unknown ViT preset {name!r}; known: {', '.join(VIT_PRESETS)}")
    return VisionTransformer(**{**VIT_PRESETS[name], **overrides})


def _preset_fn(name):
    def fn(**kwargs) -> VisionTransformer:
        return vit_from_preset(name, **kwargs)
    fn.__name__ = name
    fn.__doc__ = f"ViT preset {name}: {VIT_PRESETS[name]}"
    return fn


vit_tiny_patch16 = _preset_fn("vit_tiny_patch16")
vit_small_patch16 = _preset_fn("vit_small_patch16")
vit_base_patch16 = _preset_fn("vit_base_patch16")
vit_large_patch16 = _preset_fn("vit_large_patch16")
vit_huge_patch14 = _preset_fn("vit_huge_patch14")
vit_huge_patch16 = _preset_fn("vit_huge_patch16")
vit_mini_patch4 = _preset_fn("vit_mini_patch4")
vit_micro_patch4 = _preset_fn("vit_micro_patch4")
