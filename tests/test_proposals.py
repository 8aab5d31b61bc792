"""Proposal sources: MCG .mat (classic + v7.3), -proposals segments, pickles, sanitize, builtin."""
from __future__ import annotations

import pickle

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from pdsl.boxes import box_iou
from pdsl.errors import DataError
from pdsl.proposals import make_source, sanitize_proposals
from pdsl.proposals.builtin import BuiltinSource, generate, has_ximgproc, sliding_windows
from pdsl.proposals.mcg import load_mcg_mat, mcg_to_xyxy, segment_masks

IMG = {"id": 2008000002, "file_name": "JPEGImages/2008_000002.jpg", "height": 40, "width": 60,
       "labels": [1]}

# MCG convention: 1-based inclusive [y1 x1 y2 x2]
MAT_BOXES = np.array([[1, 1, 40, 60],       # whole image
                      [5, 10, 20, 30],      # rows 5..20, cols 10..30
                      [2, 3, 2, 3]],        # a single pixel (row 2, col 3)
                     dtype=np.float64)
MAT_SCORES = np.array([0.5, 0.9, 0.1])
# 0-based continuous x1 y1 x2 y2
XYXY = np.array([[0, 0, 60, 40], [9, 4, 30, 20], [2, 1, 3, 2]], dtype=np.float32)


def sanitize(b, s, **kw):
    return sanitize_proposals(np.asarray(b, np.float64), None if s is None else np.asarray(s),
                              40, 60, image_id=7, source="/x/7.mat", **kw)


# -- sanitize -----------------------------------------------------------------------------------
def test_sanitize_order_topk_dedupe_and_clip():
    b = [[0, 0, 10, 10], [5, 5, 20, 20], [0, 0, 10, 10], [-1, -1, 61, 41], [3, 3, 3.5, 9],
         [1, 1, 30, 30]]
    s = [0.2, 0.9, 0.5, 0.5, 1.0, 0.5]
    bb, ss, k = sanitize(b, s, return_index=True)
    # degenerate (w 0.5) dropped; duplicate [0,0,10,10] keeps the 0.5 copy; ties keep order
    assert k.tolist() == [1, 2, 3, 5]
    assert ss.tolist() == pytest.approx([0.9, 0.5, 0.5, 0.5])
    assert bb[2].tolist() == [0, 0, 60, 40]            # clipped (1 px over: within tolerance)
    assert bb.dtype == np.float32 and ss.dtype == np.float32
    bb, ss = sanitize(b, s, max_proposals=2)
    assert len(bb) == 2 and bb[0].tolist() == [5, 5, 20, 20]
    # no scores -> rank order kept
    bb, ss = sanitize([[0, 0, 5, 5], [1, 1, 9, 9]], None)
    assert bb[0].tolist() == [0, 0, 5, 5] and ss[0] > ss[1]


@pytest.mark.parametrize("boxes,scores,match", [
    ([[0, 0, np.nan, 5]], [1.0], "NaN"),
    ([[0, 0, 5, 5]], [np.inf], "NaN/inf"),
    ([[10, 0, 5, 5]], [1.0], r"x2 < x1.*\[y1 x1 y2 x2\]"),
    ([[0, 10, 5, 5]], [1.0], "y2 < y1"),
    ([[0, 0, 5, 55]], [1.0], "outside"),           # y2 55 > 40 + 2.4: e.g. swapped x/y
    ([[-10, 0, 5, 5]], [1.0], "outside"),
    ([[0, 0, 0.5, 5], [3, 3, 3, 3]], [1.0, 1.0], "none of the 2"),
    (np.zeros((0, 4)), np.zeros(0), "no proposals"),
    ([[0, 0, 5, 5]], [1.0, 2.0], "1 boxes but 2 scores"),
])
def test_sanitize_errors(boxes, scores, match):
    with pytest.raises(DataError, match=match) as e:
        sanitize(boxes, scores)
    assert "image 7 (/x/7.mat)" in str(e.value)


# -- MCG ---------------------------------------------------------------------------------------
def _write_v73(path, boxes, scores, superpixels=None, labels=None):
    """MATLAB v7.3 layout: HDF5, every array stored transposed, cells as object references."""
    with h5py.File(path, "w") as f:
        f.create_dataset("boxes", data=boxes.T)
        f.create_dataset("scores", data=scores.reshape(-1, 1).T)
        if superpixels is not None:
            f.create_dataset("superpixels", data=superpixels.T.astype(np.uint16))
            refs = f.create_group("#refs#")
            rr = []
            for i, ids in enumerate(labels):
                d = refs.create_dataset(f"r{i}", data=np.asarray(ids, float).reshape(1, -1).T)
                rr.append(d.ref)
            f.create_dataset("labels", data=np.array(rr, dtype=h5py.ref_dtype).reshape(1, -1))


def test_mcg_conversion_scipy_and_v73(tmp_path):
    assert np.array_equal(mcg_to_xyxy(MAT_BOXES), XYXY)
    d1, d2 = tmp_path / "classic", tmp_path / "v73"
    d1.mkdir(), d2.mkdir()
    scipy.io.savemat(d1 / "2008_000002.mat", {"boxes": MAT_BOXES, "scores": MAT_SCORES[:, None]})
    _write_v73(d2 / "2008000002.mat", MAT_BOXES, MAT_SCORES)       # found by image id
    order = np.argsort(-MAT_SCORES, kind="stable")
    for d in (d1, d2):
        src = make_source(f"mcg:{d}")
        out = src.get(IMG, None)
        assert np.array_equal(out["boxes"], XYXY[order])
        assert out["scores"].tolist() == pytest.approx(MAT_SCORES[order].tolist())
        assert "segments" not in out
        assert src.describe()["kind"] == "mcg" and src.name == f"mcg:{d}"
        assert pickle.loads(pickle.dumps(src)).get(IMG)["boxes"].shape == (3, 4)


def test_mcg_errors(tmp_path):
    src = make_source(f"mcg:{tmp_path}")
    with pytest.raises(DataError, match=r"image 2008000002 .*2008_000002\.mat.*2008000002\.mat"):
        src.get(IMG)
    scipy.io.savemat(tmp_path / "2008_000002.mat", {"bbs": MAT_BOXES})
    with pytest.raises(DataError, match=r"2008_000002\.mat: no 'boxes'.*bbs"):
        src.get(IMG)
    (tmp_path / "2008_000002.mat").write_bytes(b"garbage, not a mat file" * 10)
    with pytest.raises(DataError, match="cannot read"):
        src.get(IMG)
    # swapped convention (boxes given as x1y1x2y2 1-based) -> out of bounds for a 60x40 image
    scipy.io.savemat(tmp_path / "2008_000002.mat", {"boxes": np.array([[1., 1., 60., 40.]]),
                                                     "scores": np.ones(1)})
    with pytest.raises(DataError, match="outside"):
        src.get(IMG)
    with pytest.raises(DataError, match="not found"):
        make_source(f"mcg:{tmp_path / 'nope'}")


def _proposals_case():
    # 8x8 image: superpixel 1 = left half (cols 0-3), 2 = right half
    sp = np.ones((8, 8), np.uint16)
    sp[:, 4:] = 2
    boxes = np.array([[1, 1, 8, 4],        # left half, segment {1}
                      [1, 1, 8, 8],        # whole image, segment {1, 2}
                      [1, 1, 8, 8]], float)  # whole image box, but segment {2} only
    scores = np.array([0.3, 0.2, 0.1])
    labels = [[1], [1, 2], [2]]
    return sp, boxes, scores, labels


def test_mcg_proposals_segments(tmp_path):
    sp, boxes, scores, labels = _proposals_case()
    img = {"id": 5, "file_name": "a/img5.png", "height": 8, "width": 8, "labels": []}
    cells = np.empty((3, 1), dtype=object)
    for i, l in enumerate(labels):
        cells[i, 0] = np.array(l, float).reshape(1, -1)
    d1, d2 = tmp_path / "c", tmp_path / "h"
    d1.mkdir(), d2.mkdir()
    scipy.io.savemat(d1 / "img5.mat", {"boxes": boxes, "scores": scores, "superpixels": sp,
                                       "labels": cells})
    _write_v73(d2 / "img5.mat", boxes, scores, sp, labels)
    half = np.zeros((4, 4), np.uint8)
    half[:, 2:] = 255
    for d in (d1, d2):
        data = load_mcg_mat(d / "img5.mat")
        assert data["superpixels"].shape == (8, 8)
        assert [l.tolist() for l in data["labels"]] == labels
        out = make_source(f"mcg:{d}", segment_size=4).get(img)
        assert out["boxes"].tolist() == [[0, 0, 4, 8], [0, 0, 8, 8], [0, 0, 8, 8]]
        seg = out["segments"]
        assert seg.shape == (3, 4, 4) and seg.dtype == np.uint8
        assert (seg[0] == 255).all() and (seg[1] == 255).all()
        assert np.array_equal(seg[2], half)
    # segment_masks directly, with a subset of proposals in another order
    data = load_mcg_mat(d1 / "img5.mat")
    m = segment_masks(data, [2, 0], np.array([[0, 0, 8, 8], [2, 0, 6, 8]]), M=4)
    assert np.array_equal(m[0], half)
    assert np.array_equal(m[1][:, :2], np.full((4, 2), 255)) and (m[1][:, 2:] == 0).all()
    # boxes derived from the segments when the file has none
    scipy.io.savemat(d1 / "img5.mat", {"scores": scores, "superpixels": sp, "labels": cells})
    out = make_source(f"mcg:{d1}", segments=False).get(img)
    assert out["boxes"].tolist() == [[0, 0, 4, 8], [0, 0, 8, 8], [4, 0, 8, 8]]
    assert "segments" not in out


# -- pickle -------------------------------------------------------------------------------------
def test_pickle_indexes_and_ids(tmp_path):
    boxes = [np.array([[0, 0, 9, 9], [10, 5, 29, 19]], np.float32),
             np.array([[1, 1, 4, 4]], np.float32)]
    p1 = tmp_path / "ss_ids.pkl"
    with open(p1, "wb") as f:
        pickle.dump({"boxes": boxes, "scores": [np.array([0.1, 0.8]), np.array([1.0])],
                     "ids": ["2008_000002", "2008_000003"]}, f)
    p2 = tmp_path / "ss_idx.pkl"
    with open(p2, "wb") as f:
        pickle.dump({"boxes": boxes, "indexes": [2008000002, 2008000003]}, f)

    src = make_source(f"pickle:{p1}")
    out = src.get(IMG)                                  # matched by file stem
    # inclusive (Detectron) -> continuous: +1 on x2/y2; sorted by score
    assert out["boxes"].tolist() == [[10, 5, 30, 20], [0, 0, 10, 10]]
    assert out["scores"].tolist() == pytest.approx([0.8, 0.1])
    src2 = pickle.loads(pickle.dumps(src))
    assert src2._data is None and np.array_equal(src2.get(IMG)["boxes"], out["boxes"])

    out = make_source(f"pickle:{p2}", inclusive=False).get(IMG)    # matched by id, no scores
    assert out["boxes"].tolist() == [[0, 0, 9, 9], [10, 5, 29, 19]]
    assert out["scores"][0] > out["scores"][1]

    missing = dict(IMG, id=1, file_name="x/2009_000001.jpg")
    with pytest.raises(DataError, match=r"image 1 .*not in proposal pickle.*2008000002"):
        make_source(f"pickle:{p2}").get(missing)
    with open(p1, "wb") as f:
        pickle.dump({"boxes": boxes}, f)
    with pytest.raises(DataError, match="no 'indexes' or 'ids'"):
        make_source(f"pickle:{p1}").get(IMG)


def test_make_source_errors(tmp_path):
    for bad in ("", "selective", "mcg:", "foo:bar"):
        with pytest.raises(DataError, match="builtin, mcg:DIR, pickle:FILE"):
            make_source(bad)
    with pytest.raises(DataError, match="unknown parameter"):
        make_source("builtin", colour=3)
    with pytest.raises(DataError, match="not found"):
        make_source(f"pickle:{tmp_path / 'x.pkl'}")
    s = make_source("builtin:quality", max_side=300)
    assert s.mode == "quality" and s.describe()["params"]["max_side"] == 300


# -- builtin ------------------------------------------------------------------------------------
def _synthetic():
    rng = np.random.default_rng(0)
    im = rng.integers(40, 90, size=(96, 128, 3), dtype=np.uint8)
    im = cv2.GaussianBlur(im, (5, 5), 0)
    im[20:70, 30:90] = (230, 220, 210)
    return im, np.array([[30, 20, 90, 70]], np.float32)


@pytest.mark.parametrize("method", ["auto", "fallback"])
def test_builtin_finds_rectangle(method):
    im, gt = _synthetic()
    img = {"id": 3, "file_name": "s.png", "height": 96, "width": 128, "labels": []}
    out = BuiltinSource(method=method, windows=False).get(img, None, image=im)
    b, s = out["boxes"], out["scores"]
    assert 0 < len(b) <= 2000 and b.dtype == np.float32 and s.dtype == np.float32
    assert np.all(np.diff(s) <= 0)
    assert box_iou(b, gt).max() > 0.7                    # found by the regions, not windows
    src = BuiltinSource(method=method, max_proposals=50)
    b = src.get(img, None, image=im)["boxes"]
    assert len(b) <= 50 and [0, 0, 128, 96] in b.tolist()   # windows kept even when truncated
    with pytest.raises(DataError, match="differs from the manifest"):
        src.get(dict(img, width=100), None, image=im)


def test_builtin_downscale_maps_back():
    im, gt = _synthetic()
    big = cv2.resize(im, (512, 384), interpolation=cv2.INTER_NEAREST)
    boxes, scores = generate(big, max_side=128, windows=False)
    assert boxes[:, 2].max() > 128 and boxes[:, 2].max() <= 512
    assert box_iou(boxes, gt * 4).max() > 0.7
    w = sliding_windows(96, 128)
    assert (w[:, 2] <= 128).all() and (w[:, 3] <= 96).all() and len(w) < 200
    assert has_ximgproc() in (True, False)


def test_builtin_is_deterministic():
    """Selective search ranks by libc rand(); the source seeds it, so repeated calls agree."""
    import cv2

    from pdsl.proposals import make_source

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (96, 128, 3)).astype(np.uint8), (9, 9), 0)
    cv2.rectangle(img, (30, 20), (90, 70), (0, 0, 255), -1)
    src = make_source("builtin")
    meta = {"id": 1, "file_name": "x.png", "height": 96, "width": 128}
    a = src.get(meta, "x.png", image=img)
    rng.integers(0, 10, 5)  # unrelated randomness in between
    b = src.get(meta, "x.png", image=img)
    np.testing.assert_array_equal(a["boxes"], b["boxes"])
    np.testing.assert_array_equal(a["scores"], b["scores"])


def test_builtin_variants_only_on_downscaled_images():
    """Rescaled copies of the region boxes (and denser windows) fill the list up to
    max_proposals, at the lowest ranks, only where selective search ran on a downscaled image."""
    im, gt = _synthetic()
    plain_a, _ = generate(im, max_side=500, variants=False)
    plain_b, _ = generate(im, max_side=500, variants=True)
    np.testing.assert_array_equal(plain_a, plain_b)  # 128 px < max_side: nothing added
    big = cv2.resize(im, (512, 384), interpolation=cv2.INTER_NEAREST)
    base, _ = generate(big, max_side=128, variants=False, max_proposals=600)
    more, scores = generate(big, max_side=128, variants=True, max_proposals=600)
    assert len(base) < len(more) <= 600 and np.all(np.diff(scores) < 0)
    np.testing.assert_array_equal(more[:len(base)], base)  # the originals keep their ranks
    extra = more[len(base):]
    assert (extra[:, :2] >= 0).all() and (extra[:, 2] <= 512).all() and (extra[:, 3] <= 384).all()
    # every extra box is a small window or shares its centre with a region box (clipping aside)
    from pdsl.proposals.builtin import SMALL_WINDOW_SCALES

    wins = sliding_windows(384, 512, scales=SMALL_WINDOW_SCALES)
    is_win = np.abs(extra[:, None, :] - wins[None]).max(-1).min(1) < 1e-6
    centres = (base[:, :2] + base[:, 2:]) / 2
    inside = (extra[:, 0] > 0) & (extra[:, 1] > 0) & (extra[:, 2] < 512) & (extra[:, 3] < 384)
    c = (extra[:, :2] + extra[:, 2:]) / 2
    centred = np.abs(c[:, None, :] - centres[None]).max(-1).min(1) < 1e-6
    assert is_win.any() and centred.any()
    assert (is_win | centred | ~inside).all()
    again, _ = generate(big, max_side=128, variants=True, max_proposals=600)
    np.testing.assert_array_equal(again, more)  # deterministic
