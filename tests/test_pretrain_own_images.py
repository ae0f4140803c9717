"""A user's own image folder by flags alone: 16-bit grey TIFFs in class subfolders (real Fashion-MNIST
photos, stored as a camera would: an offset and a gain into 16 bits), MAE-pretrained for a few steps and
then linear-probed from that checkpoint. Nothing is configured beyond command-line flags: the channel
count, the class names and the normalisation statistics all come from the data."""

import json

import numpy as np
import pytest
from PIL import Image

from mae_transfer.checkpoint import load_file
from mae_transfer.data.fashion_mnist import CLASSES, load_fashion_mnist
from pretrain.run import main

PICKED = {1: "Trouser", 7: "Sneaker", 8: "Bag"}  # Fashion-MNIST label -> class folder
GAIN, OFFSET = 200, 1000                          # 8-bit photo -> 16-bit values up to 52000


@pytest.fixture(scope="module")
def tiff_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("scans")
    for split, source, n in (("train", "train", 60), ("val", "test", 30)):
        images, labels = load_fashion_mnist(source)
        for label, name in PICKED.items():
            assert CLASSES[label] == name
            (root / split / name).mkdir(parents=True)
            for k, i in enumerate(np.flatnonzero(labels == label)[:n]):
                Image.fromarray(images[i].astype(np.uint16) * GAIN + OFFSET).save(root / split / name / f"{k:03d}.tif")
    return root


def test_16bit_grey_tiff_folder_pretrains_then_linear_probes_by_flags(tiff_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_DATA_DIR", str(tmp_path / "cache"))  # where the statistics are cached
    small = ["model=vit_micro_patch4", "batch_size=32", "progress=false", "log_every=1", "recon_images=3"]
    pre = tmp_path / "pretrain"
    assert main(["--data-path", str(tiff_folder), "--out", str(pre), *small, "epochs=1"]) == 0
    ck = load_file(pre / "checkpoint-final.pth")
    # one channel end to end: patch embedding (D, 1, p, p), decoder predicting 1 * p * p values per patch
    assert ck["model_kwargs"]["in_chans"] == 1 and ck["model"]["patch_embed.proj.weight"].shape[1] == 1
    assert ck["model"]["decoder_pred.weight"].shape[0] == 4 * 4
    # the statistics of the 16-bit pixels themselves (not ImageNet's, not the 8-bit photos')
    pixels = np.concatenate([np.asarray(Image.open(p), np.float64).ravel() / 65535
                             for p in sorted((tiff_folder / "train").rglob("*.tif"))])
    assert ck["norm_stats"]["mean"] == pytest.approx([pixels.mean()], rel=1e-6)
    assert ck["norm_stats"]["std"] == pytest.approx([pixels.std()], rel=1e-5)
    assert len(list((tmp_path / "cache" / "norm-stats").glob("train-*.json"))) == 1
    assert (pre / "reconstruction.png").is_file()

    probe = tmp_path / "linprobe"
    assert main(["--mode", "linprobe", "--weights", str(pre / "checkpoint-final.pth"), "--data-path", str(tiff_folder),
                 "--out", str(probe), *small, "batch_size=60", "epochs=10", "lr=0.03"]) == 0
    m = json.loads((probe / "metrics.json").read_text())
    assert set(m["per_class"]) == set(PICKED.values())  # reported under the folder names
    assert all(v["images"] == 30 for v in m["per_class"].values())
    # the class mean of per-class accuracies is top-1 here (equal class sizes)
    assert np.mean([v["accuracy"] for v in m["per_class"].values()]) == pytest.approx(m["top1"])
    assert m["top1"] > 60  # three classes: chance is 33 %
    log = (probe / "log.txt").read_text()
    assert "normalisation (the checkpoint)" in log and "Trouser" in log.split("per-class accuracy")[1]
    assert load_file(probe / "checkpoint-final.pth")["norm_stats"]["mean"] == ck["norm_stats"]["mean"]


def test_normalisation_precedence_config_then_checkpoint_then_data(tiff_folder, tmp_path, monkeypatch):
    from mae_transfer.data.datasets import DataError, ImageFolder
    from pretrain.config import resolve
    from pretrain.data import norm_stats
    monkeypatch.setenv("MAE_DATA_DIR", str(tmp_path / "cache"))
    cfg = resolve({}, "linprobe", {"data": str(tiff_folder)}, {})
    train = ImageFolder(tiff_folder / "train")
    computed = norm_stats(cfg, train)
    assert computed["source"] == "computed from the training images" and len(computed["mean"]) == 1
    ours = {"norm_stats": {"mean": [0.1], "std": [0.2]}}
    assert norm_stats(cfg, train, ours) == {"mean": (0.1,), "std": (0.2,), "source": "the checkpoint"}
    mixed = norm_stats({**cfg, "mean": (0.3,)}, train, ours)
    assert (mixed["mean"], mixed["std"]) == ((0.3,), (0.2,)) and "mean: the config" in mixed["source"]
    # statistics for other channels than the data's are not used
    rgb = {"norm_stats": {"mean": [0.4] * 3, "std": [0.2] * 3}}
    assert norm_stats(cfg, train, rgb)["mean"] == computed["mean"]
    with pytest.raises(DataError, match="mean has 2 values .* 1 channel"):
        norm_stats({**cfg, "mean": (0.3, 0.4)}, train)
