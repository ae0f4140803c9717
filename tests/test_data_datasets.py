"""Datasets and transforms: Fashion-MNIST as 3x32x32, ImageFolder with unusable-image skipping, seeded
per-sample augmentation, and clear errors naming the file at fault."""

import gzip
import random

import numpy as np
import pytest
import torch
from PIL import Image

from mae_transfer.data.datasets import (DataError, FashionMNIST, ImageFolder, SeededDataset, Subset, open_dataset,
                                        sample_seed)
from mae_transfer.data.fashion_mnist import load_fashion_mnist
from mae_transfer.data.transforms import EvalTransform, RandomResizedCropFlip, eval_transform, train_transform


@pytest.fixture(scope="module")
def fmnist_test():
    return FashionMNIST("test")


def test_fashion_mnist_is_zero_padded_grey_rgb(fmnist_test):
    raw, labels = load_fashion_mnist("test")
    img, label, skipped = fmnist_test.load(7)
    a = np.asarray(img)
    assert img.size == (32, 32) and a.shape == (32, 32, 3) and skipped == 0 and label == labels[7]
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    assert (a[2:30, 2:30, 0] == raw[7]).all()
    assert a[:2].max() == 0 and a[:, :2].max() == 0 and a[30:].max() == 0 and a[:, 30:].max() == 0


def test_eval_transform_normalises_without_resampling(fmnist_test):
    img = fmnist_test.load(0)[0]
    x = eval_transform(32, (0.5,) * 3, (0.25,) * 3)(img)
    expect = (torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    assert x.shape == (3, 32, 32) and torch.allclose(x, expect)


def test_random_resized_crop_follows_the_scale_range():
    t = RandomResizedCropFlip(32, scale=(0.2, 1.0), hflip=False)
    rng = random.Random(0)
    areas = []
    for _ in range(500):
        left, top, w, h = t.params(100, 80, rng)
        assert 0 <= left and left + w <= 100 and 0 <= top and top + h <= 80
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05 or (w, h) == (100, 80)
        areas.append(w * h / 8000)
    assert 0.19 <= min(areas) and max(areas) <= 1.0 and 0.45 < np.mean(areas) < 0.75


def test_flip_is_a_mirror_image():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    t = RandomResizedCropFlip(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=True, mean=(0,) * 3, std=(1,) * 3)
    outs = {tuple(t(img, random.Random(s)).flatten()[:8].tolist()) for s in range(20)}
    assert len(outs) == 2  # identity or mirrored, nothing else
    plain = EvalTransform(16, (0,) * 3, (1,) * 3)(img)
    views = [t(img, random.Random(s)) for s in range(20)]
    assert any(torch.allclose(v, plain) for v in views) and any(torch.allclose(v, plain.flip(-1)) for v in views)


def test_seeded_dataset_is_a_function_of_seed_epoch_index(fmnist_test):
    tf = train_transform(32, (0.2,) * 3, (0.3,) * 3)
    a, b = SeededDataset(fmnist_test, tf, seed=1, noise_len=64), SeededDataset(fmnist_test, tf, seed=1, noise_len=64)
    torch.manual_seed(123)
    x = a[5]
    torch.manual_seed(999)  # global RNG state must not matter
    y = b[5]
    assert torch.equal(x["img"], y["img"]) and torch.equal(x["noise"], y["noise"]) and x["noise"].shape == (64,)
    b.set_epoch(1)
    z = b[5]
    assert not torch.equal(x["noise"], z["noise"])
    assert sample_seed(1, 0, 5) != sample_seed(1, 1, 5) != sample_seed(2, 0, 5)


def test_subset_is_fixed_and_seed_independent(fmnist_test):
    s1, s2 = Subset(fmnist_test, 100), Subset(fmnist_test, 100)
    assert len(s1) == 100 and (s1.indices == s2.indices).all()
    assert (s1.labels == fmnist_test.labels[s1.indices]).all()
    assert len(Subset(fmnist_test, 0)) == len(fmnist_test)


def _folder(tmp_path):
    root = tmp_path / "imgs"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((40, 48, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    good = root / "cat" / "0.png"
    (root / "dog" / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    data = good.read_bytes()
    (root / "dog" / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "dog" / "tiny.png")
    return root


def test_image_folder_skips_and_counts_unusable_images(tmp_path, caplog):
    ds = ImageFolder(_folder(tmp_path), min_size=16)
    assert ds.classes == ["cat", "dog"] and len(ds) == 9
    loaded = [ds.load(i) for i in range(len(ds))]
    assert all(img.size == (48, 40) for img, _, _ in loaded)
    # dog/: 0, 1, 2, corrupt, tiny, truncated: a bad file is replaced by the next usable one (wrapping round)
    assert [s for _, _, s in loaded] == [0, 0, 0, 0, 0, 0, 3, 2, 1]
    assert loaded[6][1] == 0  # wrapped round to cat/0.png
    text = caplog.text
    assert "corrupt.jpg" in text and "truncated.png" in text and "tiny.png" in text and "smaller than one 16x16 patch" in text


@pytest.mark.parametrize("name,needle", [("corrupt.jpg", "cannot read image"), ("truncated.png", "cannot read image"),
                                         ("tiny.png", "is 8x8, smaller than one 16x16 patch")])
def test_image_folder_error_mode_names_the_file(tmp_path, name, needle):
    root = _folder(tmp_path)
    ds = ImageFolder(root, min_size=16, bad_images="error")
    i = [p for p, _ in ds.samples].index(str(root / "dog" / name))
    with pytest.raises(DataError, match=needle) as e:
        ds.load(i)
    assert name in str(e.value) and "\n" not in str(e.value)


def test_empty_folder_and_missing_path_errors(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images .* found in .*empty"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(str(tmp_path / "nope"), "train")


def test_flat_folder_is_one_class_and_train_val_layout(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "ds" / split / "a").mkdir(parents=True)
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "ds" / split / "a" / "x.jpg")
    assert len(open_dataset(str(tmp_path / "ds"), "train")) == 1 and len(open_dataset(str(tmp_path / "ds"), "val")) == 1
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(flat / "y.png")
    ds = open_dataset(str(flat), "train")
    assert ds.classes == ["flat"] and open_dataset(str(flat), "val") is None


def test_truncated_idx_file_is_named(tmp_path):
    src = "/usr/share/datasets/fashion-mnist"
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        data = gzip.open(f"{src}/{stem}.gz").read()
        if "images" in stem:
            data = data[:5000]
        (tmp_path / stem).write_bytes(data)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte holds .* truncated or corrupt"):
        FashionMNIST("test", tmp_path)


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_photos_render_once_and_load_from_cache(tmp_path, monkeypatch):
    from mae_transfer.data import datasets
    from mae_transfer.data.datasets import PHOTOS, FashionMNISTPhotos

    src = tmp_path / "fm"
    src.mkdir()
    real = FashionMNIST("test")
    _write_idx(src / "t10k-images-idx3-ubyte.gz", real.images[:5, 2:-2, 2:-2])
    _write_idx(src / "t10k-labels-idx1-ubyte.gz", real.labels[:5])
    monkeypatch.setenv("MAE_DATA_DIR", str(tmp_path / "cache"))
    ds = FashionMNISTPhotos("test", src)
    img, label, skipped = ds.load(3)
    assert len(ds) == 5 and img.size == (32, 32) and img.mode == "RGB" and label == real.labels[3] and skipped == 0
    (cached,) = (tmp_path / "cache").glob(f"{PHOTOS}-32px-seed0-*/test.npz")
    monkeypatch.setattr(datasets, "load_fashion_mnist", lambda *a: pytest.fail("re-rendered despite the cache"))
    again = FashionMNISTPhotos("test", src)
    assert (np.asarray(again.load(3)[0]) == np.asarray(img)).all()
    cached.write_bytes(b"garbage")
    with pytest.raises(DataError, match="test.npz"):
        FashionMNISTPhotos("test", src)


def test_table1e_augmentations_are_seeded_and_distinct():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 36, 3), dtype=np.uint8))
    out = {}
    for aug in ("crop_fixed", "crop_rand", "crop_rand_jitter"):
        tf = train_transform(32, (0.5,) * 3, (0.25,) * 3, augment=aug)
        a, b = tf(img, random.Random(7)), tf(img, random.Random(7))
        assert a.shape == (3, 32, 32) and torch.equal(a, b)  # a function of the sample's seed
        out[aug] = a
    assert not torch.equal(out["crop_rand"], out["crop_rand_jitter"])  # same crop, then jitter
    with pytest.raises(ValueError, match="random-size crops"):
        train_transform(32, (0.5,) * 3, (0.25,) * 3, auto_augment="rand-m9-mstd0.5-inc1", augment="crop_fixed")
