"""MAE: masking by argsort, shuffle/unshuffle, loss only on masked patches, norm-pix target."""

import torch

from mae_transfer.models.mae import MaskedAutoencoderViT, mae_from_preset

TINY = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32,
            decoder_depth=1, decoder_num_heads=4)


def test_keeps_exact_number_of_tokens_and_masks_the_rest():
    torch.manual_seed(0)
    m = MaskedAutoencoderViT(**TINY)
    imgs = torch.randn(5, 3, 32, 32)
    for ratio in (0.75, 0.5, 0.9):
        latent, mask, ids_restore = m.forward_encoder(imgs, ratio)
        keep = int(64 * (1 - ratio))
        assert latent.shape == (5, 1 + keep, 64)
        assert (mask.sum(1) == 64 - keep).all()
        assert sorted(ids_restore[0].tolist()) == list(range(64))


def test_unshuffle_inverts_shuffle_and_kept_tokens_are_the_lowest_noise():
    x = torch.randn(3, 16, 8)
    noise = torch.rand(3, 16)
    x_masked, mask, ids_restore = MaskedAutoencoderViT.random_masking(x, 0.75, noise)
    ids_shuffle = torch.argsort(noise, dim=1)
    shuffled = torch.gather(x, 1, ids_shuffle[..., None].expand(-1, -1, 8))
    restored = torch.gather(shuffled, 1, ids_restore[..., None].expand(-1, -1, 8))
    torch.testing.assert_close(restored, x)
    kept = noise.argsort(1)[:, :4]
    torch.testing.assert_close(x_masked, torch.gather(x, 1, kept[..., None].expand(-1, -1, 8)))
    assert (mask.gather(1, kept) == 0).all() and mask.sum() == 3 * 12


def test_same_noise_same_mask_and_loss():
    torch.manual_seed(0)
    m = MaskedAutoencoderViT(**TINY).eval()
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 64)
    l1, p1, m1 = m(imgs, 0.75, noise)
    l2, p2, m2 = m(imgs, 0.75, noise.clone())
    assert torch.equal(m1, m2) and torch.equal(p1, p2) and l1 == l2
    _, _, m3 = m(imgs, 0.75, torch.rand(2, 64))
    assert not torch.equal(m1, m3)


def test_loss_ignores_target_pixels_of_visible_patches():
    torch.manual_seed(0)
    m = MaskedAutoencoderViT(**TINY, norm_pix_loss=True).eval()
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 64)
    loss, pred, mask = m(imgs, 0.75, noise)
    target = m.patchify(imgs)
    changed = target + 5.0 * (1 - mask)[..., None] * torch.randn_like(target)
    assert torch.allclose(m.forward_loss(m.unpatchify(changed), pred, mask), loss)
    changed_masked = target + 5.0 * mask[..., None] * torch.randn_like(target)
    assert not torch.allclose(m.forward_loss(m.unpatchify(changed_masked), pred, mask), loss)


def test_norm_pix_target_equals_direct_computation():
    torch.manual_seed(0)
    m = MaskedAutoencoderViT(**TINY, norm_pix_loss=True)
    imgs = torch.rand(2, 3, 32, 32)
    pred = torch.randn(2, 64, 48)
    mask = (torch.rand(2, 64) > 0.5).float()
    # direct: per patch, (x - mean) / sqrt(unbiased var + 1e-6), patch rows ordered (row, col, channel)
    patches = imgs.unfold(2, 4, 4).unfold(3, 4, 4)            # (N, C, h, w, p, q)
    patches = patches.permute(0, 2, 3, 4, 5, 1).reshape(2, 64, 48)
    mu, var = patches.mean(-1, keepdim=True), patches.var(-1, unbiased=True, keepdim=True)
    target = (patches - mu) / torch.sqrt(var + 1e-6)
    expected = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(m.forward_loss(imgs, pred, mask), expected)


def test_patchify_roundtrip_and_presets():
    m = mae_from_preset("mae_vit_micro_patch4")
    imgs = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m.unpatchify(m.patchify(imgs)), imgs)
    loss, pred, mask = m(imgs)
    loss.backward()
    assert pred.shape == (2, 64, 48) and torch.isfinite(loss)
    assert m.patch_embed.proj.weight.grad is not None and m.decoder_pred.weight.grad is not None


def test_mask_tokens_in_encoder_baseline_runs_all_tokens():
    torch.manual_seed(0)
    m = MaskedAutoencoderViT(**TINY, encoder_mask_tokens=True)
    latent, mask, _ = m.forward_encoder(torch.randn(2, 3, 32, 32), 0.75)
    assert latent.shape == (2, 65, 64) and mask.sum() == 2 * 48
    loss, pred, _ = m(torch.randn(2, 3, 32, 32))
    assert pred.shape == (2, 64, 48) and torch.isfinite(loss)
