"""Segmentation data checks: every kind of bad input gives an error naming the file, or a logged skip."""

import numpy as np
import pytest
from PIL import Image

import segmentation  # noqa: F401
from segmentation.data import CheckSegLabels, SegDataError, validate_seg_folder


def _write(root, name, label, size=None, split="training", mode="L"):
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    h, w = size or label.shape[:2]
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(root / "images" / split / f"{name}.jpg")
    Image.fromarray(label.astype(np.uint8), mode=None if mode == "L" else mode).save(
        root / "annotations" / split / f"{name}.png")


def _check(root, num_classes=11, reduce_zero_label=False, **kw):
    return validate_seg_folder(root / "images/training", root / "annotations/training", num_classes,
                               reduce_zero_label, **kw)


def _label(values=(0, 3, 10), shape=(16, 16)):
    lbl = np.zeros(shape, np.uint8)
    for i, v in enumerate(values):
        lbl[i] = v
    return lbl


def test_good_split_passes(tmp_path):
    _write(tmp_path, "a", _label())
    _write(tmp_path, "b", _label((0, 255)))  # 255 = ignore
    report = _check(tmp_path)
    assert report.names == ["a", "b"] and report.problems == [] and report.max_label == 10


def test_out_of_range_label_names_the_file(tmp_path):
    _write(tmp_path, "a", _label())
    _write(tmp_path, "bad", _label((0, 12)))
    with pytest.raises(SegDataError, match=r"bad\.png: label ids \[12\] outside the class range 0\.\.10"):
        _check(tmp_path)


def test_ade_style_labels_without_reduce_zero_label_get_a_hint(tmp_path):
    _write(tmp_path, "ade", _label((0, 5, 150)))
    with pytest.raises(SegDataError, match=r"ade\.png.*\[150\].*set reduce_zero_label=True"):
        _check(tmp_path, num_classes=150)
    assert _check(tmp_path, num_classes=150, reduce_zero_label=True).names == ["ade"]


def test_zero_based_labels_with_reduce_zero_label_refused(tmp_path):
    _write(tmp_path, "a", _label((0, 1, 10)))
    with pytest.raises(SegDataError, match=r"reduce_zero_label=True, but no label map reaches id 11.*a\.png"):
        _check(tmp_path, num_classes=11, reduce_zero_label=True)
    # 10 classes with the background ignored is a consistent use of reduce_zero_label
    assert _check(tmp_path, num_classes=10, reduce_zero_label=True).names == ["a"]


def test_size_mismatch_and_rgb_label_maps(tmp_path):
    _write(tmp_path, "small", _label(), size=(20, 16))
    with pytest.raises(SegDataError, match=r"small\.png: label size 16x16 != image .*small\.jpg size 16x20"):
        _check(tmp_path)
    (tmp_path / "images/training/small.jpg").unlink()
    (tmp_path / "annotations/training/small.png").unlink()
    _write(tmp_path, "rgb", np.zeros((16, 16, 3), np.uint8), mode="RGB")
    with pytest.raises(SegDataError, match=r"rgb\.png: label map has mode RGB"):
        _check(tmp_path)


def test_missing_files_and_skip_mode(tmp_path):
    for n in "abc":
        _write(tmp_path, n, _label())
    (tmp_path / "annotations/training/b.png").unlink()
    (tmp_path / "images/training/c.jpg").unlink()
    with pytest.raises(SegDataError, match=r"2 bad image/label pair\(s\)(.|\n)*b\.jpg: no label map(.|\n)*c\.png: no image"):
        _check(tmp_path, check="pairs")
    report = _check(tmp_path, on_bad="skip")
    assert report.names == ["a"] and len(report.problems) == 2 and "1 usable" in str(report)
    with pytest.raises(SegDataError, match=r"annotation folder .*validation does not exist"):
        validate_seg_folder(tmp_path / "images/training", tmp_path / "annotations/validation", 11, False)


def test_per_sample_check_in_the_pipeline():
    check = CheckSegLabels(num_classes=11)
    ok = dict(gt_seg_map=_label(), ori_shape=(16, 16), seg_map_path="x.png", img_path="x.jpg")
    assert check(ok) is ok
    with pytest.raises(SegDataError, match=r"y\.png: label size 16x16 != image y\.jpg size 16x8"):
        check(dict(ok, ori_shape=(8, 16), seg_map_path="y.png", img_path="y.jpg"))
    with pytest.raises(SegDataError, match=r"z\.png: label ids \[11\] outside 0\.\.10.*set reduce_zero_label=True"):
        check(dict(ok, gt_seg_map=_label((0, 11)), seg_map_path="z.png", reduce_zero_label=False))
