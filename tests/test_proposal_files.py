"""Proposal files as WSOD code ships them, each built here in its published layout: per-image
.mat (scipy savemat), .npy, .txt and Python-2 pickles (protocol 2, str as Python 2 writes it),
Fast R-CNN's dataset-level .mat, and the --box-format / --box-base conventions."""
from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import scipy.io

from pdsl.errors import DataError
from pdsl.proposals import make_source
from pdsl.proposals.convention import to_xyxy

IMG = {"id": 5, "file_name": "000005.jpg", "height": 40, "width": 60, "labels": [1]}
# PDSL's convention: 0-based continuous x1y1x2y2
XYXY = np.array([[0, 0, 60, 40], [9.5, 4.25, 30, 20], [2, 1, 3, 2]])


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2's str (SHORT_BINSTRING / BINSTRING), as a pickle made by
    Python 2 holds them (numpy arrays' raw data included)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256
                   else pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _py2_pickle(path, obj):
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _get(spec, img=IMG, **kw):
    return make_source(spec, **kw).get(img)


def test_conventions_round_trip():
    yxyx1 = np.stack([XYXY[:, 1] + 1, XYXY[:, 0] + 1, XYXY[:, 3], XYXY[:, 2]], 1)
    xywh = np.concatenate([XYXY[:, :2], XYXY[:, 2:] - XYXY[:, :2]], 1)
    assert np.allclose(to_xyxy(XYXY, "x1y1x2y2", 0), XYXY)
    assert np.allclose(to_xyxy(yxyx1, "y1x1y2x2", 1), XYXY)
    assert np.allclose(to_xyxy(xywh, "xywh", 0), XYXY)
    assert np.allclose(to_xyxy(xywh + [1, 1, 0, 0], "xywh", 1), XYXY)
    assert np.allclose(to_xyxy(XYXY + [1, 1, 0, 0], "x1y1x2y2", 1), XYXY)


def test_per_image_mat_boxes_only_and_scored(tmp_path):
    d = tmp_path / "ss"
    d.mkdir()
    scipy.io.savemat(d / "000005.mat", {"boxes": XYXY})          # 0-based x1y1x2y2, no scores
    src = make_source(f"boxes:{d}")
    assert src.convention() == "x1y1x2y2, 0-based continuous"
    p = src.get(IMG)
    assert np.allclose(p["boxes"], XYXY) and p["scores"][0] > p["scores"][1]  # file order = rank
    # a dict with scores, under the <stem>_boxes name: sorted by score
    (d / "000005.mat").unlink()
    scipy.io.savemat(d / "000005_boxes.mat", {"boxes": XYXY, "scores": [0.1, 0.9, 0.5]})
    p = _get(f"boxes:{d}")
    assert np.allclose(p["boxes"], XYXY[[1, 2, 0]])
    assert p["scores"].tolist() == pytest.approx([0.9, 0.5, 0.1])


def test_per_image_npy_txt_and_python2_pickles(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    xywh = np.concatenate([XYXY[:, :2], XYXY[:, 2:] - XYXY[:, :2]], 1)
    np.save(d / "000005.npy", np.concatenate([xywh, [[0.2], [0.7], [0.4]]], 1))  # N x 5
    src = make_source(f"boxes:{d}", box_format="xywh")
    assert src.convention() == "xywh, 0-based continuous"
    p = src.get(IMG)
    assert np.allclose(p["boxes"], XYXY[[1, 2, 0]]) and p["scores"][0] == pytest.approx(0.7)
    (d / "000005.npy").unlink()
    (d / "000005.txt").write_text("\n".join(",".join(map(str, r)) for r in XYXY))
    assert np.allclose(_get(f"boxes:{d}")["boxes"], XYXY)
    (d / "000005.txt").unlink()

    # Python 2 pickles: a bare array, and a dict of str keys, 1-based y1x1y2x2 (MATLAB export)
    yxyx1 = np.stack([XYXY[:, 1] + 1, XYXY[:, 0] + 1, XYXY[:, 3], XYXY[:, 2]], 1) + 1e-9
    _py2_pickle(d / "000005.pkl", yxyx1)
    with open(d / "000005.pkl", "rb") as f, pytest.raises(UnicodeDecodeError):
        pickle.load(f)                                   # not readable without latin1
    p = _get(f"boxes:{d}", box_format="y1x1y2x2", box_base=1)
    assert np.allclose(p["boxes"], XYXY, atol=1e-6)
    _py2_pickle(d / "000005.pkl", {b"boxes": yxyx1, b"scores": np.array([0.3, 0.2, 0.9])})
    p = _get(f"boxes:{d}", box_format="y1x1y2x2", box_base=1)
    assert np.allclose(p["boxes"][0], XYXY[2], atol=1e-6)


def test_wrong_convention_is_a_clear_error_naming_the_flags(tmp_path):
    d = tmp_path / "mcgish"
    d.mkdir()
    yxyx1 = np.stack([XYXY[:, 1] + 1, XYXY[:, 0] + 1, XYXY[:, 3], XYXY[:, 2]], 1)
    scipy.io.savemat(d / "000005.mat", {"boxes": yxyx1})
    with pytest.raises(DataError, match=r"outside the 60x40.*read as x1y1x2y2, 0-based "
                                        r"continuous: .*--box-format x1y1x2y2\|y1x1y2x2\|xywh "
                                        r"and --box-base 0\|1"):
        _get(f"boxes:{d}")
    assert np.allclose(_get(f"boxes:{d}", box_format="y1x1y2x2", box_base=1)["boxes"], XYXY)
    # mcg: keeps MCG's published convention unless a flag is given
    scipy.io.savemat(d / "000005.mat", {"boxes": yxyx1, "scores": [0.3, 0.2, 0.1]})
    assert make_source(f"mcg:{d}").convention() == "y1x1y2x2, 1-based inclusive"
    assert np.allclose(_get(f"mcg:{d}")["boxes"], XYXY)
    scipy.io.savemat(d / "000005.mat", {"boxes": XYXY, "scores": [0.3, 0.2, 0.1]})
    assert np.allclose(_get(f"mcg:{d}", box_format="x1y1x2y2", box_base=0)["boxes"], XYXY)
    with pytest.raises(DataError, match="box format 'yxyx'"):
        make_source(f"boxes:{d}", box_format="yxyx")
    with pytest.raises(DataError, match="box base 2"):
        make_source(f"boxes:{d}", box_base=2)
    with pytest.raises(DataError, match=r"image 7 .*no proposal file .*000007\[_boxes\]"):
        _get(f"boxes:{d}", img=dict(IMG, id=7, file_name="000007.jpg"))


def test_fastrcnn_dataset_file(tmp_path):
    """selective_search_data/voc_2007_trainval.mat: cell arrays images and boxes (1-based
    y1x1y2x2, no scores), as scipy.io.savemat writes object arrays."""
    yxyx1 = np.stack([XYXY[:, 1] + 1, XYXY[:, 0] + 1, XYXY[:, 3], XYXY[:, 2]], 1)
    images = np.empty((2, 1), dtype=object)
    images[0, 0], images[1, 0] = "000005", "000007"
    boxes = np.empty((1, 2), dtype=object)
    boxes[0, 0], boxes[0, 1] = yxyx1, yxyx1[:1]
    path = tmp_path / "voc_2007_trainval.mat"
    scipy.io.savemat(path, {"images": images, "boxes": boxes})
    src = make_source(f"fastrcnn:{path}")
    assert src.convention() == "y1x1y2x2, 1-based inclusive"
    p = src.get(IMG)                                  # matched by the stem '000005' / id 5
    assert np.allclose(p["boxes"], XYXY) and p["scores"][0] > p["scores"][2]
    p = src.get(dict(IMG, id=7, file_name="000007.jpg"))
    assert np.allclose(p["boxes"], XYXY[:1])
    with pytest.raises(DataError, match=r"image 9 .*not in .*voc_2007_trainval\.mat"):
        src.get(dict(IMG, id=9, file_name="000009.jpg"))
    scipy.io.savemat(path, {"boxes": boxes})
    with pytest.raises(DataError, match="needs cell arrays 'images' and 'boxes'"):
        make_source(f"fastrcnn:{path}").get(IMG)
    pickle.loads(pickle.dumps(src))                   # picklable for joblib workers


def test_cache_cues_reads_a_folder_of_files_in_the_stated_convention(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from pdsl.datasets import prepare_data

    import cv2

    repo = Path(__file__).resolve().parents[1]
    photos = tmp_path / "photos"                      # not square: a swap of x and y shows
    photos.mkdir()
    rng = np.random.default_rng(0)
    for k in (1, 2):
        cv2.imwrite(str(photos / f"p{k}.png"), rng.integers(0, 255, (40, 60, 3), np.uint8))
    (photos / "labels.csv").write_text("file_name,labels\np1.png,cat\np2.png,dog\n")
    m = prepare_data("folder", tmp_path / "val.json", "val", root=photos, progress=False)
    d = tmp_path / "props"
    d.mkdir()
    for img in m.images:                             # 1-based [y1 x1 y2 x2], as MATLAB writes
        h, w = img["height"], img["width"]
        xyxy = np.array([[0, 0, w, h], [w / 4, h / 8, w / 2, h / 2]])
        yxyx1 = np.stack([xyxy[:, 1] + 1, xyxy[:, 0] + 1, xyxy[:, 3], xyxy[:, 2]], 1)
        scipy.io.savemat(d / f"{Path(img['file_name']).stem}.mat", {"boxes": yxyx1})
    args = [sys.executable, "cli.py", "cache-cues", "--manifest", str(tmp_path / "val.json"),
            "--proposals", f"boxes:{d}", "--out", str(tmp_path / "c.h5"), "--max-bank", "2",
            "--crop-size", "32"]
    r = subprocess.run(args + ["--box-format", "y1x1y2x2", "--box-base", "1"], cwd=repo,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "boxes read as y1x1y2x2, 1-based inclusive" in r.stderr
    from pdsl.cues.store import CueStore

    c = CueStore(tmp_path / "c.h5").get(m.images[0]["id"], with_bank=False)
    w, h = m.images[0]["width"], m.images[0]["height"]
    assert np.allclose(c.boxes[0], [0, 0, w, h])
    (tmp_path / "c.h5").unlink()
    r = subprocess.run(args, cwd=repo, capture_output=True, text=True)   # read as x1y1x2y2
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert lines[-1].startswith("Error: ") and "--box-format" in lines[-1]
