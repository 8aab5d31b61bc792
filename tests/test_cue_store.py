"""The cue-cache contract: round trip, O(1) access, atomicity, refusal of foreign/stale caches."""
import h5py
import numpy as np
import pytest

from pdsl.cues.store import (FORMAT_VERSION, STATUS_EMPTY, STATUS_OK, CueStore, CueWriter,
                             merge_cue_files)
from pdsl.errors import CacheError
from pdsl.manifest import Manifest

M = 28


def _image(rng, image_id, P=5, B=3):
    boxes = np.sort(rng.uniform(0, 50, (P, 4)).astype(np.float32).reshape(P, 2, 2), axis=1)
    boxes = boxes.transpose(0, 2, 1).reshape(P, 4)[:, [0, 2, 1, 3]]
    return dict(image_id=image_id, height=60, width=80, file_sha1=f"{image_id:040d}",
                boxes=boxes, scores=np.linspace(1, 0, P).astype(np.float32),
                bank_row=rng.integers(0, B, P).astype(np.int32),
                coverage=rng.uniform(0.5, 1, P).astype(np.float32),
                bank_boxes=boxes[:B].copy(),
                bank_masks=rng.integers(0, 256, (B, M, M)).astype(np.uint8),
                bank_status=np.array([STATUS_OK, STATUS_EMPTY, STATUS_OK][:B], np.uint8))


def _write(path, images, meta=None):
    meta = meta or {"dataset": "toy", "split": "train", "class_names": ["a", "b"]}
    with CueWriter(path, meta, kind="cues", mask_size=M) as w:
        for d in images:
            d = dict(d)
            w.add(d.pop("image_id"), d.pop("height"), d.pop("width"), d.pop("file_sha1"),
                  d.pop("boxes"), d.pop("scores"), **d)


def test_round_trip_and_random_access(tmp_path):
    rng = np.random.default_rng(0)
    imgs = [_image(rng, i, P=4 + i, B=1 + i % 3) for i in (10, 3, 7)]
    _write(tmp_path / "c.h5", imgs)
    s = CueStore(tmp_path / "c.h5")
    assert len(s) == 3 and 7 in s and 8 not in s
    for d in reversed(imgs):  # any order
        c = s.get(d["image_id"])
        np.testing.assert_array_equal(c.boxes, d["boxes"])
        np.testing.assert_array_equal(c.bank_masks, d["bank_masks"])
        np.testing.assert_array_equal(c.bank_row, d["bank_row"])
        np.testing.assert_array_equal(c.bank_status, d["bank_status"])
        assert (c.height, c.width, c.file_sha1) == (60, 80, d["file_sha1"])
    assert s.meta("class_names") == ["a", "b"]
    with pytest.raises(CacheError, match="image 8 is not in the cache"):
        s.get(8)


def test_store_pickles_without_handle(tmp_path):
    import pickle

    rng = np.random.default_rng(1)
    _write(tmp_path / "c.h5", [_image(rng, 1)])
    s = CueStore(tmp_path / "c.h5")
    s.get(1)  # opens the handle
    s2 = pickle.loads(pickle.dumps(s))
    assert s2._f is None
    np.testing.assert_array_equal(s2.get(1).boxes, s.get(1).boxes)


def test_failed_write_leaves_no_file(tmp_path):
    rng = np.random.default_rng(2)
    out = tmp_path / "c.h5"
    with pytest.raises(RuntimeError):
        with CueWriter(out, {"dataset": "toy"}, kind="cues") as w:
            d = _image(rng, 1)
            w.add(d.pop("image_id"), d.pop("height"), d.pop("width"), d.pop("file_sha1"),
                  d.pop("boxes"), d.pop("scores"), **d)
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_refuses_other_format_version_and_foreign_files(tmp_path):
    rng = np.random.default_rng(3)
    _write(tmp_path / "c.h5", [_image(rng, 1)])
    with h5py.File(tmp_path / "c.h5", "a") as f:
        f.attrs["pdsl_cues_format"] = FORMAT_VERSION + 1
    with pytest.raises(CacheError, match="format version"):
        CueStore(tmp_path / "c.h5")
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["a"] = 1
    with pytest.raises(CacheError, match="not a PDSL cue cache"):
        CueStore(tmp_path / "x.h5")
    (tmp_path / "y.h5").write_text("garbage")
    with pytest.raises(CacheError, match="not a readable HDF5"):
        CueStore(tmp_path / "y.h5")
    with pytest.raises(CacheError, match="file not found"):
        CueStore(tmp_path / "missing.h5")


def _manifest(tmp_path, images, classes=("a", "b"), dataset="toy", split="train"):
    return Manifest(path=tmp_path / "m.json",
                    info={"dataset": dataset, "split": split, "image_root": str(tmp_path)},
                    images=images, categories=[{"id": i + 1, "name": n} for i, n in enumerate(classes)])


def test_check_manifest_refuses_foreign_and_stale(tmp_path):
    rng = np.random.default_rng(4)
    _write(tmp_path / "c.h5", [_image(rng, 1)])
    s = CueStore(tmp_path / "c.h5")
    img = {"id": 1, "file_name": "1.png", "height": 60, "width": 80, "labels": [1]}
    (tmp_path / "1.png").write_bytes(b"not the cached bytes")
    s.check_manifest(_manifest(tmp_path, [img]))  # sizes match: fine without hashes
    with pytest.raises(CacheError, match="changed since it was cached"):
        s.check_manifest(_manifest(tmp_path, [img]), check_hashes=True)
    with pytest.raises(CacheError, match="built for split 'train'"):
        s.check_manifest(_manifest(tmp_path, [img], split="val"))
    with pytest.raises(CacheError, match="built for classes"):
        s.check_manifest(_manifest(tmp_path, [img], classes=("a", "c")))
    with pytest.raises(CacheError, match="stale cache"):
        s.check_manifest(_manifest(tmp_path, [dict(img, width=81)]))
    with pytest.raises(CacheError, match="image 2 .* is not cached"):
        s.check_manifest(_manifest(tmp_path, [img, dict(img, id=2, file_name="2.png")]))


def test_merge_concatenates_and_rejects_mismatch(tmp_path):
    rng = np.random.default_rng(5)
    a, b = [_image(rng, 1), _image(rng, 2)], [_image(rng, 3, P=9, B=2)]
    _write(tmp_path / "a.h5", a)
    _write(tmp_path / "b.h5", b)
    merge_cue_files([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "m.h5")
    s = CueStore(tmp_path / "m.h5")
    assert list(s.ids) == [1, 2, 3] and s.attrs["shard"] == "merged"
    for d in a + b:
        np.testing.assert_array_equal(s.get(d["image_id"]).bank_masks, d["bank_masks"])
        np.testing.assert_array_equal(s.get(d["image_id"]).bank_row, d["bank_row"])
    _write(tmp_path / "c.h5", [_image(rng, 4)], meta={"dataset": "other", "split": "train"})
    with pytest.raises(CacheError, match="dataset"):
        merge_cue_files([tmp_path / "a.h5", tmp_path / "c.h5"], tmp_path / "m2.h5")
    with pytest.raises(CacheError, match="appears in two shards"):
        merge_cue_files([tmp_path / "a.h5", tmp_path / "a.h5"], tmp_path / "m3.h5")
    assert not (tmp_path / "m3.h5").exists()
