"""tools/predict.py on an MAE of one channel (pretrained on grey images): the reconstruction figures are
drawn from the files read at full depth, normalised with the statistics stored in the checkpoint."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mae_transfer.models.mae import MaskedAutoencoderViT

ROOT = Path(__file__).resolve().parent.parent
KWARGS = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
              decoder_num_heads=2, in_chans=1, norm_pix_loss=True)


def _predict_tool():
    spec = importlib.util.spec_from_file_location("predict", ROOT / "tools" / "predict.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_grey_mae_draws_reconstructions_with_its_own_statistics(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = tmp_path / "checkpoint-final.pth"
    torch.save({"model": MaskedAutoencoderViT(**KWARGS).state_dict(), "model_kwargs": KWARGS, "format": "mae_transfer",
                "config": {"mask_ratio": 0.75, "data": str(tmp_path / "folder")},
                "norm_stats": {"mean": (0.31,), "std": (0.12,), "source": "computed from the training images"}}, ckpt)
    images = tmp_path / "scans"
    images.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a.tif": (25, 25), "b.tif": (40, 30)}
    for name, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 65535, (h, w)).astype(np.uint16)).save(images / name)
    out = tmp_path / "out"
    assert _predict_tool().cli(["--weights", str(ckpt), "--images", str(images), "--out", str(out)]) == 0, \
        capsys.readouterr().err
    summary = json.loads((out / "predict.json").read_text())
    assert summary["predicted"] == 2 and summary["mean"] == [0.31] and summary["std"] == [0.12]
    assert "norm_stats" in summary["normalisation_from"]
    for name, (w, h) in sizes.items():
        fig = np.asarray(Image.open(out / "reconstructions" / f"{Path(name).stem}.png"))
        assert fig.shape == (h, 4 * w + 3 * 2, 3)
        # every panel grey (R = G = B): a one-channel model's output, no colour statistics mixed in
        assert (fig[..., 0] == fig[..., 1]).all() and (fig[..., 1] == fig[..., 2]).all()
