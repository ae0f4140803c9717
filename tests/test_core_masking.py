"""Table 1 axes in the model: mask sampling (random / block / grid), the PCA target, mask tokens in the
encoder."""

import numpy as np
import pytest
import torch

from mae_transfer.models.mae import MaskedAutoencoderViT, fit_patch_pca
from mae_transfer.models.masking import block_mask, grid_mask, mask_noise, num_masked
from pretrain.config import FIELDS
from pretrain.mae_task import mae_kwargs

TINY = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32,
            decoder_depth=1, decoder_num_heads=4)


def _components(mask: np.ndarray) -> list[int]:
    """Sizes of the 4-connected regions of a (h, w) bool mask."""
    seen, sizes = np.zeros_like(mask), []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        stack, size = [start], 0
        seen[start] = True
        while stack:
            y, x = stack.pop()
            size += 1
            for q in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= q[0] < mask.shape[0] and 0 <= q[1] < mask.shape[1] and mask[q] and not seen[q]:
                    seen[q] = True
                    stack.append(q)
        sizes.append(size)
    return sizes


@pytest.mark.parametrize("sampling,ratio", [("random", 0.75), ("random", 0.4), ("block", 0.5), ("block", 0.75),
                                            ("block", 0.9), ("grid", 0.75)])
def test_every_sampling_masks_exactly_the_requested_number(sampling, ratio):
    torch.manual_seed(0)
    m = MaskedAutoencoderViT(**TINY).eval()
    imgs = torch.randn(4, 3, 32, 32)
    for seed in range(8):
        rng = np.random.default_rng(seed)
        noise = torch.from_numpy(np.stack([mask_noise(sampling, rng, (8, 8), ratio) for _ in range(4)]))
        _, _, mask = m(imgs, ratio, noise)
        assert (mask.sum(1) == num_masked(64, ratio)).all()


def test_block_masks_are_contiguous_regions():
    block_regions, random_regions = [], []
    for seed in range(50):
        rng = np.random.default_rng(seed)
        mask = block_mask(rng, (14, 14), num_masked(196, 0.5))
        assert mask.sum() == 98
        sizes = _components(mask)
        assert min(sizes) >= 2, sizes  # no isolated patch: rectangles, and growth next to them
        block_regions.append(len(sizes))
        random_regions.append(len(_components(rng.permutation(196).reshape(14, 14) < 98)))
    assert np.mean(block_regions) < np.mean(random_regions) / 3


def test_grid_keeps_exactly_one_patch_per_2x2_cell():
    offsets = set()
    for seed in range(20):
        mask = grid_mask(np.random.default_rng(seed), (8, 6))
        kept = (~mask).reshape(4, 2, 3, 2).sum(axis=(1, 3))   # (cell row, cell col)
        assert (kept == 1).all()
        offsets.add(tuple(np.argwhere(~mask)[0]))
    assert len(offsets) == 4  # the offset is drawn per image
    with pytest.raises(ValueError, match="2x2"):
        grid_mask(np.random.default_rng(0), (7, 8))


def test_pca_target_shape_and_inverse():
    torch.manual_seed(0)
    m = MaskedAutoencoderViT(**TINY, target="pca", pca_dim=6)
    # images whose 48-d patches lie on a 6-d affine subspace: 6 coefficients reconstruct them exactly
    basis, offset = torch.randn(6, 48), torch.randn(48)
    patches = torch.randn(5, 64, 6) @ basis + offset
    imgs = m.unpatchify(patches)
    mean, comps = fit_patch_pca([m.patchify(imgs[:3]).flatten(0, 1), m.patchify(imgs[3:]).flatten(0, 1)], 6)
    m.set_pca(mean, comps)
    target = m.target_of(imgs)
    assert target.shape == (5, 64, 6)
    torch.testing.assert_close(m.prediction_to_patches(target, imgs), patches, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(comps @ comps.T, torch.eye(6), atol=1e-5, rtol=0)
    loss, pred, _ = m(imgs)
    assert pred.shape == (5, 64, 6) and torch.isfinite(loss)
    assert {"pca_mean", "pca_components"} <= set(m.state_dict())  # the basis travels with checkpoints


def test_target_field_and_its_older_spelling():
    cfg = {k: d for k, (d, _, _) in FIELDS.items()}
    assert mae_kwargs({**cfg, "norm_pix_loss": True})["target"] == "norm_pix"
    assert mae_kwargs({**cfg, "norm_pix_loss": False})["target"] == "pixel"
    assert mae_kwargs({**cfg, "target": "pixel"})["target"] == "pixel"  # target wins when set
    with pytest.raises(ValueError, match="contradicts"):
        MaskedAutoencoderViT(**TINY, norm_pix_loss=True, target="pca")


def test_mask_token_in_encoder_field_is_the_models_existing_path():
    cfg = {**{k: d for k, (d, _, _) in FIELDS.items()}, "model": "vit_micro_patch4", "mask_token_in_encoder": True}
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    torch.manual_seed(0)
    from_field = MaskedAutoencoderViT(**mae_kwargs(cfg)).eval()
    torch.manual_seed(0)
    kw = {k: v for k, v in mae_kwargs({**cfg, "mask_token_in_encoder": False}).items() if k != "encoder_mask_tokens"}
    direct = MaskedAutoencoderViT(**kw, encoder_mask_tokens=True).eval()
    assert from_field.encoder_mask_tokens
    assert torch.equal(from_field(imgs, 0.75, noise)[0], direct(imgs, 0.75, noise)[0])
