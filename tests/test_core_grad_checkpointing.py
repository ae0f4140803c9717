"""grad_checkpointing (per-block torch.utils.checkpoint): the same loss and gradients as without it, for
the ViT (global, windowed, both relative positions, drop path, cls token or not), the MAE encoder and
decoder (same noise), under bf16 autocast; blocks are recomputed in backward only when training."""

import pytest
import torch

from grad_ckpt import assert_same_step, step_off_and_on
from mae_transfer.models.mae import MaskedAutoencoderViT
from mae_transfer.models.vit import VisionTransformer

SMALL = dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4)
VARIANTS = {
    "global-cls-droppath": dict(drop_path_rate=0.5),
    "layerscale-dropout": dict(init_values=0.1, drop_rate=0.1, attn_drop_rate=0.1, global_pool="avg"),
    "window-decomposed": dict(class_token=False, global_pool="", pos_embed_cls=True, window_size=3,
                              global_blocks=(1, 3), rel_pos="decomposed", rel_pos_zero_init=False,
                              drop_path_rate=0.3),
    "beit-bias-cls": dict(rel_pos="bias", rel_pos_zero_init=False, drop_path_rate=0.3),
}


def _vit(**kw):
    torch.manual_seed(0)
    return VisionTransformer(**{**SMALL, **kw}).train()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_vit_gradients_equal_with_and_without(variant):
    m = _vit(**VARIANTS[variant])
    x = torch.randn(2, 3, 32, 40)  # 8x10 tokens: the 3x3 windows pad, the tables resize
    assert_same_step(m, m, list(m.blocks), lambda: m.forward_features(x).square().mean())


def test_drop_path_is_random_so_the_equality_above_is_the_rng_replay():
    m = _vit(drop_path_rate=0.5)
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    a = m.forward_features(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, m.forward_features(x))


def test_feature_maps_and_bf16_autocast():
    m = _vit(**VARIANTS["window-decomposed"])
    x = torch.randn(2, 3, 32, 32)

    def loss():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            maps = m.forward_feature_maps(x, [1, 3])
        return sum(t.float().square().mean() for t in maps)

    # the recomputation replays the autocast state: the same bf16 kernels on the same inputs
    assert_same_step(m, m, list(m.blocks), loss, atol=0, rtol=0)


def test_mae_encoder_and_decoder_same_noise():
    torch.manual_seed(0)
    m = MaskedAutoencoderViT(img_size=32, patch_size=4, embed_dim=64, depth=3, num_heads=4, decoder_embed_dim=32,
                             decoder_depth=2, decoder_num_heads=4, norm_pix_loss=True).train()
    imgs, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 64)
    assert_same_step(m, m, list(m.blocks) + list(m.decoder_blocks), lambda: m(imgs, 0.75, noise)[0])


def test_mae_constructor_flag_and_encoder_mask_tokens():
    torch.manual_seed(0)
    m = MaskedAutoencoderViT(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32,
                             decoder_depth=1, decoder_num_heads=4, encoder_mask_tokens=True,
                             grad_checkpointing=True).train()
    assert m.grad_checkpointing
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    assert_same_step(m, m, list(m.blocks) + list(m.decoder_blocks), lambda: m(imgs, 0.75, noise)[0])


def test_inactive_in_eval_and_without_grad():
    m = _vit(grad_checkpointing=True)
    x = torch.randn(2, 3, 32, 32)
    calls = []
    for b in m.blocks:
        b.register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        m.forward_features(x)  # training mode, no grad: nothing to recompute
    m.eval()
    m.forward_features(x).sum().backward()  # eval: plain blocks even with grad
    assert len(calls) == 2 * len(m.blocks)
    m.train()
    (_, _, off), (_, _, on) = step_off_and_on(m, m, list(m.blocks), lambda: m.forward_features(x).sum())
    assert (off, on) == (len(m.blocks), 2 * len(m.blocks))


@pytest.mark.parametrize("variant", ["window-decomposed", "beit-bias-cls"])
def test_attention_form_probe_inside_the_first_checkpointed_step(variant):
    """attn_form='auto' measures its forms on the first call of a shape; when that first call is inside a
    checkpointed block, the recomputation (which no longer probes) must still give the same gradients."""
    from mae_transfer.models import vit as vit_mod

    m = _vit(**VARIANTS[variant])
    x = torch.randn(2, 3, 32, 40)
    grads = []
    for on in (True, False):
        vit_mod._FORM_CHOICE.clear()
        m.set_grad_checkpointing(on)
        m.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        m.forward_features(x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5, msg=n)
