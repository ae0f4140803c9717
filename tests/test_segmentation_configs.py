"""Every config in configs/segmentation builds its model, and the full recipes hold the published numbers."""

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import segmentation  # noqa: F401
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "configs" / "segmentation").glob("*.py"))
register_all_modules(init_default_scope=False)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_its_model(path):
    cfg = Config.fromfile(str(path))
    init_default_scope("mmseg")
    model = MODELS.build(cfg.model)
    vit = model.backbone.vit
    n_out = len(cfg.model.backbone.out_indices)
    assert n_out == 4 and model.neck.rescales[0] / model.neck.rescales[-1] == 8
    assert model.decode_head.num_classes == model.auxiliary_head.num_classes == cfg.num_classes
    assert all(b.attn.rel_pos == "bias" for b in vit.blocks)
    assert vit.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    if "mini" in path.stem:  # the CPU config: one forward pass at its crop size
        model.eval()
        with torch.no_grad():
            feats = model.neck(model.backbone(torch.randn(1, 3, *cfg.crop_size)))
        assert [f.shape[-1] for f in feats] == [32, 16, 8, 4]


@pytest.mark.parametrize("size", ["b", "l"])
@pytest.mark.parametrize("init", ["mae", "sup"])
def test_ade20k_recipe_numbers(size, init):
    cfg = Config.fromfile(str(Path(CONFIGS[0].parent) / f"upernet_{init}_{size}_ade20k.py"))
    bb = cfg.model.backbone
    assert bb.arch == {"b": "vit_base_patch16", "l": "vit_large_patch16"}[size]
    assert tuple(bb.out_indices) == {"b": (3, 5, 7, 11), "l": (7, 11, 15, 23)}[size]
    assert bb.img_size == 512 and cfg.crop_size == (512, 512) and bb.drop_path_rate == 0.1 and bb.pretrained is None
    assert cfg.train_dataloader.batch_size * 8 == 16
    assert cfg.train_cfg.max_iters == 160000
    ow = cfg.optim_wrapper
    assert ow.type == "AmpOptimWrapper" and ow.constructor == "ViTLayerDecayOptimizerConstructor"
    assert (ow.optimizer.type, ow.optimizer.lr, ow.optimizer.weight_decay) == ("AdamW", 1e-4, 0.05)
    assert ow.paramwise_cfg.layer_decay == 0.65
    warm, poly = cfg.param_scheduler
    assert (warm.type, warm.end, poly.type, poly.begin, poly.end) == ("LinearLR", 1500, "PolyLR", 1500, 160000)
    assert cfg.model.decode_head.type == "UPerHead" and cfg.model.auxiliary_head.type == "FCNHead"
    assert cfg.train_dataloader.dataset.reduce_zero_label and cfg.num_classes == 150
