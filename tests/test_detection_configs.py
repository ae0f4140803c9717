"""Every detection config loads, instantiates its model (on the meta device: no weights allocated) and
has the parameter count of its size class; the full recipes carry the published ViTDet numbers."""

from pathlib import Path

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.config import instantiate  # noqa: E402
from detectron2.modeling.backbone.vit import ViT  # noqa: E402

from detection.backbone import MultiLevelViT, ViTDetBackbone  # noqa: E402
from detection.config import CONFIG_DIR, ConfigError, load_config, resolve_config  # noqa: E402

# Mask R-CNN parameter counts in millions (ViTDet paper Table: B 111M, L 331M, H 662M; the multi-level
# FPN adds 3 transposed convs of 768^2 x 4 and FPN laterals).
EXPECTED_M = {
    "vitdet_mae_b": (108, 114), "vitdet_sup_b": (108, 114), "vitdet_mae_l": (325, 337), "vitdet_sup_l": (325, 337),
    "vitdet_mae_h": (650, 672), "fpn_mae_b": (112, 120), "vitdet_scenes_mini": (1.5, 4), "vitdet_scenes_demo": (1.5, 4),
}
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.name.startswith("_"))


def test_every_config_has_an_expected_size():
    assert set(CONFIGS) == set(EXPECTED_M), "a config was added or removed: give it an expected size"


@pytest.mark.parametrize("name", CONFIGS)
def test_config_instantiates_with_expected_size(name):
    cfg = load_config(name)
    with torch.device("meta"):
        model = instantiate(cfg.model)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    lo, hi = EXPECTED_M[name]
    assert lo <= n <= hi, f"{name}: {n:.1f}M parameters, expected {lo}-{hi}M"
    vit = model.backbone.net if hasattr(model.backbone, "net") else model.backbone.bottom_up.net
    assert isinstance(vit, ViTDetBackbone)
    if name.startswith("fpn_"):
        assert isinstance(model.backbone.bottom_up, MultiLevelViT)
        assert model.backbone.bottom_up.out_indices == [2, 5, 8, 11]
    # our ViT has exactly the parameters of detectron2's ViTDet ViT of the same size (built for real:
    # detectron2's ViT cannot be built on the meta device; B and smaller take a few seconds on CPU)
    if vit.embed_dim <= 768:
        ref = ViT(img_size=_global_grid(vit) * vit.patch_size,
                  pretrain_img_size=vit.img_size[0], patch_size=vit.patch_size, embed_dim=vit.embed_dim,
                  depth=vit.depth, num_heads=vit.num_heads, window_size=vit.blocks[0].window_size,
                  window_block_indexes=[i for i, b in enumerate(vit.blocks) if b.window_size], use_rel_pos=True)
        assert {k: tuple(v.shape) for k, v in vit.state_dict().items()} == \
            {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def _global_grid(vit) -> int:
    """Token grid side the global blocks' relative-position tables are sized for."""
    g = next(b for b in vit.blocks if b.window_size == 0)
    return (g.attn.rel_pos_h.shape[0] + 1) // 2


def test_full_recipes_carry_the_vitdet_numbers():
    b, l, h = (load_config(n) for n in ("vitdet_mae_b", "vitdet_mae_l", "vitdet_mae_h"))
    for cfg, dp, glob, decay, depth in ((b, 0.1, (2, 5, 8, 11), 0.7, 12), (l, 0.4, (5, 11, 17, 23), 0.8, 24),
                                        (h, 0.5, (7, 15, 23, 31), 0.9, 32)):
        net = cfg.model.backbone.net
        assert (net.drop_path_rate, tuple(net.global_blocks), net.window_size) == (dp, glob, 14)
        assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (1e-4, 0.1)
        f = cfg.optimizer.params.lr_factor_func
        assert (f.keywords["layer_decay"], f.keywords["depth"]) == (decay, depth)
        assert cfg.dataloader.train.total_batch_size == 64 and cfg.train.amp.enabled
        jitter = cfg.dataloader.train.mapper.augmentations[1]
        assert (jitter.min_scale, jitter.max_scale, jitter.target_height) == (0.1, 2.0, 1024)
    assert b.train.max_iter == 184375 and list(b.lr_multiplier.scheduler.milestones) == [163889, 177546]
    assert b.lr_multiplier.warmup_length * b.train.max_iter == pytest.approx(250)
    assert h.train.max_iter == 184375 * 3 // 4  # ViTDet's H recipe is 75 epochs


def test_config_names_and_overrides():
    assert resolve_config("vitdet_mae_l.py") == resolve_config("vitdet_mae_l") == CONFIG_DIR / "vitdet_mae_l.py"
    assert resolve_config(str(CONFIG_DIR / "fpn_mae_b.py")) == Path(CONFIG_DIR / "fpn_mae_b.py")
    with pytest.raises(ConfigError, match="vitdet_mae_b.py"):
        resolve_config("vitdet_mae_x")
    cfg = load_config("vitdet_scenes_mini", ["train.max_iter=7", "optimizer.lr=0.001"])
    assert cfg.train.max_iter == 7 and cfg.optimizer.lr == 0.001
    cfg = load_config("vitdet_scenes_mini", ["model.backbone.net.mlp_ratio=2.0"])  # a constructor default
    assert cfg.model.backbone.net.mlp_ratio == 2.0
    with pytest.raises(ConfigError, match="has no key 'mlp_ratoi'"):
        load_config("vitdet_scenes_mini", ["model.backbone.net.mlp_ratoi=2.0"])
    with pytest.raises(ConfigError, match="max_itr"):
        load_config("vitdet_scenes_mini", ["train.max_itr=7"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config("vitdet_scenes_mini", ["train.max_iter"])
