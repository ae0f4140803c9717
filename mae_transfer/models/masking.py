"""Mask sampling for the MAE (the paper's Table 1f): random, block-wise (as BEiT) and grid.

Every sampler ends as the per-patch *noise* that :meth:`MaskedAutoencoderViT.random_masking` argsorts:
kept patches get noise in [0, 0.5), removed ones in [0.5, 1). So the model keeps its one masking path
(argsort, keep the lowest ``len_keep``), any pattern reaches it through ``forward(imgs, ratio, noise)``,
and a sample's mask stays a function of its own seed (see ``SeededDataset``).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MASK_SAMPLINGS", "num_masked", "block_mask", "grid_mask", "mask_to_noise", "mask_noise"]

MASK_SAMPLINGS = ("random", "block", "grid")


def num_masked(num_patches: int, mask_ratio: float) -> int:
    """Patches removed at ``mask_ratio``: all but the model's ``int(L * (1 - mask_ratio))`` kept ones."""
    return num_patches - int(num_patches * (1 - mask_ratio))


def _add_block(mask: np.ndarray, rng: np.random.Generator, budget: int, min_area: int, min_aspect: float) -> int:
    """Mask one random rectangle that adds between 1 and ``budget`` new patches; 10 tries (as BEiT).

    mask: (h, w) bool, changed in place. Returns the number of patches added (0: no rectangle fitted)."""
    h, w = mask.shape
    log_aspect = (math.log(min_aspect), -math.log(min_aspect))
    for _ in range(10):
        area = rng.uniform(min_area, max(min_area, budget))
        aspect = math.exp(rng.uniform(*log_aspect))
        bh, bw = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if not (0 < bh <= h and 0 < bw <= w):
            continue
        top, left = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        new = int((~mask[top:top + bh, left:left + bw]).sum())
        if 0 < new <= budget:
            mask[top:top + bh, left:left + bw] = True
            return new
    return 0


def _grow(mask: np.ndarray, rng: np.random.Generator, count: int):
    """Mask ``count`` more patches, each 4-adjacent to a masked one, so that the regions stay contiguous
    (closes the few patches no rectangle fits exactly). mask: (h, w) bool, changed in place."""
    for _ in range(count):
        near = np.zeros_like(mask)
        near[1:] |= mask[:-1]
        near[:-1] |= mask[1:]
        near[:, 1:] |= mask[:, :-1]
        near[:, :-1] |= mask[:, 1:]
        free = np.flatnonzero((near if mask.any() else np.ones_like(mask)) & ~mask)
        mask.flat[free[rng.integers(len(free))]] = True


def block_mask(rng: np.random.Generator, grid: tuple[int, int], count: int, min_area: int = 4,
               min_aspect: float = 0.3) -> np.ndarray:
    """Block-wise masking (BEiT's rule): rectangles of random area (``min_area`` up to what is still to be
    masked) and aspect ratio (``min_aspect`` to its inverse) until exactly ``count`` patches are masked.

    Args:
        rng: the sample's generator.
        grid: (h, w) patches.
        count: patches to mask, at most h * w.
        min_area, min_aspect: smallest rectangle area (patches) and aspect ratio, BEiT's defaults.
    Returns (h, w) bool, True = masked."""
    h, w = grid
    if not 0 <= count <= h * w:
        raise ValueError(f"block_mask: cannot mask {count} of {h * w} patches")
    mask = np.zeros((h, w), dtype=bool)
    done = 0
    while done < count:
        added = _add_block(mask, rng, count - done, min_area, min_aspect)
        if added == 0:
            _grow(mask, rng, count - done)
            break
        done += added
    return mask


def grid_mask(rng: np.random.Generator, grid: tuple[int, int]) -> np.ndarray:
    """Grid-wise masking: keep one patch of every 2x2 cell, at the same offset in every cell (drawn per
    image), mask the other three (75 %). grid: (h, w), both even. Returns (h, w) bool, True = masked."""
    h, w = grid
    if h % 2 or w % 2:
        raise ValueError(f"grid_mask: a {h}x{w} patch grid does not split into 2x2 cells")
    dy, dx = rng.integers(0, 2, size=2)
    mask = np.ones((h, w), dtype=bool)
    mask[dy::2, dx::2] = False
    return mask


def mask_to_noise(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(h, w) or (L,) bool mask -> (L,) float32 noise: kept patches in [0, 0.5), masked in [0.5, 1),
    random within each group, so argsort keeps exactly the unmasked patches."""
    flat = mask.reshape(-1)
    return ((rng.random(flat.size) + flat) / 2).astype(np.float32)


def mask_noise(sampling: str, rng: np.random.Generator, grid: tuple[int, int], mask_ratio: float) -> np.ndarray:
    """(L,) float32 masking noise for ``sampling`` (random | block | grid) at ``mask_ratio`` (grid: 0.75)."""
    L = grid[0] * grid[1]
    if sampling == "random":
        return rng.random(L, dtype=np.float32)
    if sampling == "block":
        return mask_to_noise(block_mask(rng, grid, num_masked(L, mask_ratio)), rng)
    if sampling == "grid":
        return mask_to_noise(grid_mask(rng, grid), rng)
    raise ValueError(f"mask sampling must be one of {', '.join(MASK_SAMPLINGS)}, got {sampling!r}")
