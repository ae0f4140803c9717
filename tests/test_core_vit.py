"""The one ViT: equal to timm's VisionTransformer with the same weights; window / relative position paths."""

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from mae_transfer.models.pos_embed import get_2d_sincos_pos_embed
from mae_transfer.models.vit import VisionTransformer, vit_from_preset

SMALL = dict(img_size=32, patch_size=4, embed_dim=64, depth=3, num_heads=4)


@pytest.mark.parametrize("global_pool,init_values", [("token", None), ("avg", None), ("token", 0.1)])
def test_matches_timm_vit(global_pool, init_values):
    torch.manual_seed(0)
    ref = TimmViT(**SMALL, num_classes=7, global_pool=global_pool, init_values=init_values).eval()
    # randomise every tensor (timm inits some to zero/one) so a wrong mapping cannot hide
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.2)
    ours = VisionTransformer(**SMALL, num_classes=7, global_pool=global_pool, init_values=init_values,
                             pos_embed="learned").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)


def test_sincos_equals_reference_formula():
    """The MAE reference (util/pos_embed.py), transcribed with numpy: meshgrid(w, h), first half from grid[0]."""
    import numpy as np

    def ref_1d(d, pos):
        omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
        omega = 1.0 / 10000 ** omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    d, g = 64, 5
    grid = np.stack(np.meshgrid(np.arange(g, dtype=np.float32), np.arange(g, dtype=np.float32)), axis=0)
    ref = np.concatenate([ref_1d(d // 2, grid[0]), ref_1d(d // 2, grid[1])], axis=1)
    ref = np.concatenate([np.zeros([1, d]), ref], axis=0)
    torch.testing.assert_close(get_2d_sincos_pos_embed(d, g, cls_token=True), torch.tensor(ref, dtype=torch.float32))


def test_feature_maps_are_block_outputs():
    torch.manual_seed(0)
    m = VisionTransformer(**SMALL).eval()
    x = torch.randn(2, 3, 32, 48)
    maps = m.forward_feature_maps(x, [0, -1])
    assert [t.shape for t in maps] == [torch.Size([2, 64, 8, 12])] * 2
    tokens, hw = m.prepare_tokens(x)
    for blk in m.blocks:
        tokens = blk(tokens, hw)
    torch.testing.assert_close(maps[1], tokens[:, 1:].transpose(1, 2).reshape(2, 64, 8, 12))


def test_window_covering_grid_equals_global_attention():
    torch.manual_seed(0)
    kw = dict(SMALL, class_token=False, global_pool="", pos_embed_cls=True)
    glob = VisionTransformer(**kw).eval()
    win = VisionTransformer(**kw, window_size=8).eval()
    win.load_state_dict(glob.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(win.forward_features(x), glob.forward_features(x), atol=1e-5, rtol=0)
    # a grid the window does not divide (10x14 tokens, window 4) runs with padding and keeps the grid
    win4 = VisionTransformer(**kw, window_size=4, global_blocks=(1,), rel_pos="decomposed", rel_pos_zero_init=False)
    assert win4.forward_feature_maps(torch.randn(1, 3, 40, 56), [-1])[0].shape == (1, 64, 10, 14)
    # one row of padded windows at batch 1 (4x10 tokens): the partition is not a contiguous view
    assert win4.forward_feature_maps(torch.randn(1, 3, 16, 40), [-1])[0].shape == (1, 64, 4, 10)


def test_beit_bias_is_applied_and_resized():
    torch.manual_seed(0)
    m = VisionTransformer(**SMALL, rel_pos="bias").eval()
    x = torch.randn(1, 3, 32, 32)
    base = m.forward_features(x)
    with torch.no_grad():
        m.blocks[0].attn.relative_position_bias_table.normal_(0, 1)
    assert not torch.allclose(m.forward_features(x), base)
    assert m.forward_features(torch.randn(1, 3, 48, 40)).shape == (1, 1 + 12 * 10, 64)


def test_bad_input_sizes_are_named():
    m = vit_from_preset("vit_micro_patch4")
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        m(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="1 channels"):
        m(torch.randn(1, 1, 32, 32))
    with pytest.raises(KeyError, match="unknown ViT preset"):
        vit_from_preset("vit_gigantic")


def _forms_agree(model, x, forms=("sdpa", "explicit")):
    """Outputs and gradients of ``model`` with every Attention forced to each form; returns them."""
    from mae_transfer.models.vit import Attention

    results = []
    for form in forms:
        for m in model.modules():
            if isinstance(m, Attention):
                m.attn_form = form
        model.zero_grad(set_to_none=True)
        out = model.forward_feature_maps(x, [-1])[0]
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("grid", [(6, 6), (5, 7)], ids=["windows-divide", "padded-windows"])
def test_attention_forms_agree_decomposed_rel_pos(grid):
    """SDPA with the relative position folded into q/k and the explicit matmul + softmax with the
    broadcast terms are the same function (windows with and without padding, global blocks)."""
    torch.manual_seed(0)
    m = VisionTransformer(img_size=(grid[0] * 4, grid[1] * 4), patch_size=4, embed_dim=32, depth=2, num_heads=2,
                          class_token=False, pos_embed="learned", global_pool="", window_size=3, global_blocks=(1,),
                          rel_pos="decomposed", rel_pos_zero_init=False, final_norm=False)
    with torch.no_grad():
        for blk in m.blocks:
            blk.attn.qkv.bias.normal_(0, 0.5)  # padded tokens project to this bias: make it matter
    _forms_agree(m, torch.randn(2, 3, grid[0] * 4, grid[1] * 4))


def test_attention_forms_agree_beit_bias_with_cls_token():
    torch.manual_seed(0)
    m = VisionTransformer(**SMALL, class_token=True, pos_embed="learned", global_pool="", rel_pos="bias",
                          rel_pos_zero_init=False, init_values=0.5, final_norm=False)
    _forms_agree(m, torch.randn(2, 3, 32, 32))


def test_auto_attention_form_is_measured_once_per_shape_and_leaves_no_gradients():
    from mae_transfer.models import vit

    torch.manual_seed(0)
    m = VisionTransformer(**SMALL, class_token=True, pos_embed="learned", global_pool="", rel_pos="bias",
                          rel_pos_zero_init=False)
    vit._FORM_CHOICE.clear()
    x = torch.randn(2, 3, 32, 32)
    out = m.forward_features(x)
    assert len(vit._FORM_CHOICE) == 1 and set(vit._FORM_CHOICE.values()) <= {"sdpa", "explicit"}
    assert all(p.grad is None for p in m.parameters())  # the probe's backward only reached its stand-ins
    out.sum().backward()
    assert len(vit._FORM_CHOICE) == 1
    with torch.no_grad():
        m.forward_features(x)
    assert len(vit._FORM_CHOICE) == 2  # inference (no backward) is a shape of its own


def test_attention_form_is_kept_per_machine_so_a_resumed_run_computes_the_same():
    """The forms agree only to rounding: a later process on the same machine (a resumed run) must take the
    first measurement's form from the cache, not measure again."""
    import json

    from mae_transfer import precision
    from mae_transfer.models import vit

    m = VisionTransformer(**SMALL, class_token=True, pos_embed="learned", global_pool="", rel_pos="bias")
    vit._FORM_CHOICE.clear()
    x = torch.randn(2, 3, 32, 32)
    m.forward_features(x).sum().backward()
    path = precision.cache_path()
    data = json.loads(path.read_text())
    keys = [k for k in data if "|attention " in k]
    assert len(keys) == 1 and data[keys[0]]["choice"] in vit.FORMS and set(data[keys[0]]["times"]) == set(vit.FORMS)
    measured = data[keys[0]]["choice"]
    other = "explicit" if measured == "sdpa" else "sdpa"
    data[keys[0]]["choice"] = other  # as if the first process had measured the other form
    path.write_text(json.dumps(data))
    vit._FORM_CHOICE.clear()  # a new process
    m.forward_features(x).sum().backward()
    assert set(vit._FORM_CHOICE.values()) == {other}
