"""Tests of the embedded synthetic benchmark (pdsl.datasets.synthetic)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pdsl.datasets import synthetic
from pdsl.io import read_image
from pdsl.manifest import load_manifest

N = 24


def _digest(manifest_path: Path) -> dict:
    m = load_manifest(manifest_path)
    out = {"__manifest__": hashlib.sha1(manifest_path.read_bytes()).hexdigest()}
    for img in m.images:
        out[img["file_name"]] = hashlib.sha1(m.image_path(img).read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_a")
    m = synthetic.generate(root / "train.json", "train", N, seed=7)
    return root, m


def test_class_names():
    assert len(synthetic.CLASS_NAMES) >= 6
    assert len(set(synthetic.CLASS_NAMES)) == len(synthetic.CLASS_NAMES)


def test_manifest_fields(train):
    root, m = train
    assert m.info["dataset"] == "synthetic" and m.info["split"] == "train"
    assert m.info["format"] == "synthetic" and m.info["seed"] == 7
    assert Path(m.info["image_root"]).is_absolute()
    assert Path(m.info["image_root"]) == (root / "images" / "train").resolve()
    assert [c["id"] for c in m.categories] == list(range(1, len(synthetic.CLASS_NAMES) + 1))
    assert m.class_names == synthetic.CLASS_NAMES
    assert len(m.images) == N
    # no temp files left behind
    assert not list(Path(m.info["image_root"]).glob(".*"))
    assert not list(root.glob(".*"))


def test_determinism_and_split_streams(train, tmp_path):
    root, _ = train
    synthetic.generate(tmp_path / "train.json", "train", N, seed=7)
    a, b = _digest(root / "train.json"), _digest(tmp_path / "train.json")
    # the manifest stores the absolute image_root, so compare it without that field
    da = json.loads((root / "train.json").read_text())
    db = json.loads((tmp_path / "train.json").read_text())
    da["info"].pop("image_root"), db["info"].pop("image_root")
    assert da == db
    a.pop("__manifest__"), b.pop("__manifest__")
    assert a == b  # identical image bytes

    v = synthetic.generate(tmp_path / "val.json", "val", N, seed=7)
    tr = load_manifest(root / "train.json")
    tr_hashes = {hashlib.sha1(tr.image_path(i).read_bytes()).hexdigest() for i in tr.images}
    va_hashes = {hashlib.sha1(v.image_path(i).read_bytes()).hexdigest() for i in v.images}
    assert not tr_hashes & va_hashes
    assert Path(v.info["image_root"]) == (tmp_path / "images" / "val").resolve()

    s = synthetic.generate(tmp_path / "s8.json", "train", 4, seed=8, image_dir=tmp_path / "s8")
    s_hashes = {hashlib.sha1(s.image_path(i).read_bytes()).hexdigest() for i in s.images}
    assert not s_hashes & tr_hashes


def test_counts_masks_labels(train):
    from pycocotools import mask as mask_utils

    _, m = train
    C = len(synthetic.CLASS_NAMES)
    for img in m.images:
        anns = m.annotations_of(img["id"])
        assert 1 <= len(anns) <= 4
        cats = sorted({a["category_id"] for a in anns})
        assert 1 <= len(cats) <= 3
        assert img["labels"] == cats
        assert all(1 <= c <= C for c in cats)
        pixels = read_image(m.image_path(img), img["id"])
        assert pixels.shape == (img["height"], img["width"], 3)
        union = np.zeros((img["height"], img["width"]), np.int32)
        for a in anns:
            assert a["iscrowd"] == 0
            mk = mask_utils.decode(a["segmentation"])
            assert mk.shape == (img["height"], img["width"])
            area = int(mk.sum())
            assert area >= 40 and area == a["area"]
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0
            inside = np.zeros_like(mk)
            inside[y:y + h, x:x + w] = 1
            assert mk[inside == 0].sum() == 0
            # bbox is tight around the visible mask
            ys, xs = np.nonzero(mk)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
            union += mk
        assert union.max() <= 1  # visible masks never overlap


def test_image_size_option(tmp_path):
    m = synthetic.generate(tmp_path / "t.json", "test", 3, seed=1, image_size=128)
    for img in m.images:
        assert img["height"] == img["width"] == 128
        assert read_image(m.image_path(img)).shape == (128, 128, 3)


def test_pycocotools_loads(train):
    from pycocotools.coco import COCO

    root, m = train
    coco = COCO(str(root / "train.json"))
    assert len(coco.getImgIds()) == N
    assert len(coco.getAnnIds()) == len(m.annotations)
    ann = coco.loadAnns(coco.getAnnIds())[0]
    assert coco.annToMask(ann).sum() == ann["area"]
