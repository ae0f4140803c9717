"""Built-in scenes: deterministic, COCO json readable by pycocotools, masks agree with the label maps."""

import json

import numpy as np
from PIL import Image

from mae_transfer.data import scenes
from mae_transfer.data.fashion_mnist import DataError, read_idx
from mae_transfer.data.scenes import ensure_scenes, generate_scenes, mask_to_rle, silhouette


def test_scenes_are_deterministic_and_consistent(tmp_path):
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO

    a = generate_scenes(tmp_path / "a", num_train=6, num_val=4, image_size=96, seed=3, progress=False)
    b = generate_scenes(tmp_path / "b", num_train=6, num_val=4, image_size=96, seed=3, progress=False)
    for split in ("training", "validation"):
        assert (a / f"coco/instances_{split}.json").read_text() == (b / f"coco/instances_{split}.json").read_text()
        coco = COCO(str(a / f"coco/instances_{split}.json"))
        assert len(coco.getImgIds()) == (6 if split == "training" else 4)
        for img_id in coco.getImgIds():
            info = coco.loadImgs(img_id)[0]
            img = np.array(Image.open(a / "images" / split / info["file_name"]))
            sem = np.array(Image.open(a / "annotations" / split / info["file_name"].replace(".jpg", ".png")))
            assert img.shape == (96, 96, 3) and sem.shape == (96, 96)
            union = np.zeros_like(sem, dtype=bool)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
                m = coco.annToMask(ann).astype(bool)
                assert m.sum() == ann["area"] > 0
                assert (sem[m] == ann["category_id"]).all()
                assert mask_util.toBbox(mask_util.encode(np.asfortranarray(m.astype(np.uint8)))).tolist() == ann["bbox"]
                union |= m
            assert ((sem > 0) == union).all()  # every labelled pixel belongs to an annotated instance
    c = generate_scenes(tmp_path / "c", num_train=6, num_val=4, image_size=96, seed=4, progress=False)
    assert (a / "coco/instances_training.json").read_text() != (c / "coco/instances_training.json").read_text()


def test_splits_use_their_own_items(tmp_path, monkeypatch):
    asked = []
    real = scenes.load_fashion_mnist
    monkeypatch.setattr(scenes, "load_fashion_mnist", lambda split, root=None: asked.append(split) or real(split, root))
    root = ensure_scenes(tmp_path / "s", num_train=2, num_val=2, image_size=64)
    assert asked == ["train", "test"]
    ensure_scenes(root, num_train=2, num_val=2, image_size=64)  # complete: not regenerated
    assert asked == ["train", "test"]
    assert json.loads((root / "scenes.json").read_text())["num_val"] == 2


def test_rle_and_silhouette():
    m = np.zeros((4, 3), dtype=bool)
    m[1:3, 1] = True
    assert mask_to_rle(m) == {"size": [4, 3], "counts": [5, 2, 5]}
    ring = np.zeros((28, 28), dtype=np.uint8)
    ring[5:20, 5:20] = 200
    ring[8:15, 8:15] = 0  # a dark print inside the item is still the item
    assert silhouette(ring).sum() == 15 * 15


def test_truncated_idx_is_named(tmp_path):
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 100)
    try:
        read_idx(p)
    except DataError as e:
        assert "t10k-images-idx3-ubyte" in str(e) and "truncated" in str(e)
    else:
        raise AssertionError("truncated IDX file was accepted")


def test_scene_roots_differ_by_item_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_DATA_DIR", str(tmp_path))
    assert scenes.default_scenes_root(2000, 300, 128, 0) == tmp_path / "scenes-128px-2000-300-seed0"
    demo = scenes.default_scenes_root(2000, 300, 48, 0, num_items=(1, 3), item_size=(18, 36))
    assert demo == tmp_path / "scenes-48px-2000-300-seed0-items1-3-size18-36"
    root = ensure_scenes(None, num_train=2, num_val=1, image_size=48, num_items=(1, 3), item_size=(18, 36))
    assert root == tmp_path / "scenes-48px-2-1-seed0-items1-3-size18-36"
    assert json.loads((root / "scenes.json").read_text())["item_size"] == [18, 36]


def test_photos_show_one_item_on_a_background():
    from mae_transfer.data.fashion_mnist import load_fashion_mnist

    items, labels = load_fashion_mnist("test")
    a = scenes.render_photos(items[:8], labels[:8], size=32, seed=0, progress=False)
    b = scenes.render_photos(items[:8], labels[:8], size=32, seed=0, progress=False)
    assert a.shape == (8, 32, 32, 3) and a.dtype == np.uint8 and (a == b).all()
    assert not (a == scenes.render_photos(items[:8], labels[:8], size=32, seed=1, progress=False)).all()
    for i in range(8):  # each photo is a one-item scene of item i, covering a good part of the image
        img, sem, inst = scenes.render_scene(np.random.default_rng([0, 7, i]), items[i:i + 1], labels[i:i + 1], 32,
                                             num_items=(1, 1), item_size=(22, 32))
        assert (img == a[i]).all() and len(inst) == 1 and inst[0][0] == labels[i] and 0.05 < (sem > 0).mean() < 0.95


def test_photos_render_the_same_in_worker_processes():
    """The demo renders its 70k photos on every core: image i comes from its own generator, so the pixels do
    not depend on how the work is split."""
    from mae_transfer.data.scenes import render_photos

    rng = np.random.default_rng(0)
    items = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    items[:, :4], items[:, -4:] = 0, 0
    labels = np.arange(10) % 10
    one = render_photos(items, labels, progress=False)
    two = render_photos(items, labels, progress=False, workers=2, chunk=3)
    assert one.shape == (10, 32, 32, 3) and np.array_equal(one, two)


def test_file_lock_lets_one_holder_in_at_a_time(tmp_path):
    import threading

    from mae_transfer.common import file_lock

    order, held = [], threading.Event()

    def first():
        with file_lock(tmp_path / "x.lock"):
            held.set()
            order.append("first in")
            threading.Event().wait(0.3)  # the second must not enter meanwhile
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    held.wait()
    with file_lock(tmp_path / "x.lock"):
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]
