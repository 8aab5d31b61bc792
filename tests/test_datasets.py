"""Dataset converters -> manifest: VOC (+SBD), COCO passthrough, image folder + CSV.

A tiny fake VOCdevkit / SBD release is built in tmp_path: palette PNG masks (written by a small
zlib-based PNG writer below, so no PIL is needed), .mat files in the SBD struct layout, and lists.
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from pycocotools import mask as mask_utils

from pdsl.datasets import manifest_path, prepare_data
from pdsl.datasets.coco import convert_coco
from pdsl.datasets.folder import convert_folder
from pdsl.datasets.masks import read_index_png, voc_colormap
from pdsl.datasets.voc import VOC_CLASSES, convert_voc
from pdsl.errors import DataError
from pdsl.manifest import load_manifest

CAT = {n: i + 1 for i, n in enumerate(VOC_CLASSES)}


# ---------------------------------------------------------------------------------------------
# a minimal PNG writer (palette or greyscale, any PNG row filter)
# ---------------------------------------------------------------------------------------------
def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _filter_row(ftype, row, prev):
    out = bytearray(len(row))
    for i, x in enumerate(row):
        a = row[i - 1] if i else 0
        b = prev[i]
        c = prev[i - 1] if i else 0
        pred = (0, a, b, (a + b) // 2, _paeth(a, b, c))[ftype]
        out[i] = (x - pred) & 0xFF
    return bytes([ftype]) + bytes(out)


def write_png(path, arr, palette=True, bit_depth=8, filters=(0, 1, 2, 3, 4)):
    """Write ``uint8 [H, W]`` indices as a palette (or greyscale) PNG, cycling row filters."""
    arr = np.asarray(arr, dtype=np.uint8)
    h, w = arr.shape
    assert arr.max() < (1 << bit_depth)

    def chunk(t, body):
        return struct.pack(">I", len(body)) + t + body + struct.pack(">I", zlib.crc32(t + body))

    raw, prev = b"", None
    for y in range(h):
        vals = arr[y].tolist()
        if bit_depth < 8:  # pack several samples per byte, MSB first
            per = 8 // bit_depth
            packed = []
            for i in range(0, w, per):
                byte = 0
                for k in range(per):
                    v = vals[i + k] if i + k < w else 0
                    byte |= v << (8 - bit_depth * (k + 1))
                packed.append(byte)
            vals = packed
        row = bytes(vals)
        prev = prev if prev is not None else bytes(len(row))
        # the filter byte-distance is 1 for bit depth <= 8 greyscale/palette
        raw += _filter_row(filters[y % len(filters)], row, prev)
        prev = row
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, 3 if palette else 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    if palette:
        data += chunk(b"PLTE", voc_colormap(1 << bit_depth if bit_depth < 8 else 256).tobytes())
    data += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)


def write_jpg(path, h, w):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w, 3), 127, np.uint8)
    assert cv2.imwrite(str(path), img)


# ---------------------------------------------------------------------------------------------
# fake VOC devkit + SBD
# ---------------------------------------------------------------------------------------------
H, W = 24, 32


def _rect(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _with_border(obj, cls, m):
    """Draw VOC's 255 void border around instance mask ``m`` (outside it)."""
    ring = cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~m
    ring &= obj == 0
    obj[ring] = 255
    cls[ring] = 255


def make_voc_image(voc, name, instances, extra_void=None):
    """``instances`` = [(mask, class_id)]; instance ids are 1..N in order."""
    obj = np.zeros((H, W), np.uint8)
    cls = np.zeros((H, W), np.uint8)
    for i, (m, c) in enumerate(instances, 1):
        obj[m] = i
        cls[m] = c
    for m, _ in instances:
        _with_border(obj, cls, m)
    if extra_void is not None:
        obj[extra_void] = 255
        cls[extra_void] = 255
    write_png(voc / "SegmentationObject" / f"{name}.png", obj)
    write_png(voc / "SegmentationClass" / f"{name}.png", cls)
    write_jpg(voc / "JPEGImages" / f"{name}.jpg", H, W)
    return obj


def make_sbd_image(sbd, name, instances, record_form=False):
    seg = np.zeros((H, W), np.uint8)
    cls = np.zeros((H, W), np.uint8)
    for i, (m, c) in enumerate(instances, 1):
        seg[m] = i
        cls[m] = c
    cats = np.array([[c] for _, c in instances], dtype=np.uint8)
    bounds = np.empty((len(instances), 1), dtype=object)
    for i in range(len(instances)):
        bounds[i, 0] = np.zeros((H, W), np.uint8)
    if record_form:  # a 1x1 MATLAB struct given as a numpy record array
        gt = np.empty((1, 1), dtype=[("Segmentation", object), ("Categories", object),
                                     ("Boundaries", object)])
        gt[0, 0] = (seg, cats, bounds)
    else:
        gt = {"Segmentation": seg, "Categories": cats, "Boundaries": bounds}
    (sbd / "inst").mkdir(parents=True, exist_ok=True)
    (sbd / "cls").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(sbd / "inst" / f"{name}.mat", {"GTinst": gt})
    scipy.io.savemat(sbd / "cls" / f"{name}.mat", {"GTcls": {
        "Segmentation": cls, "CategoriesPresent": np.unique(cats).astype(np.uint8),
        "Boundaries": bounds}})
    return seg


def _lists(d, **lists):
    d.mkdir(parents=True, exist_ok=True)
    for split, names in lists.items():
        (d / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))


@pytest.fixture
def fake_voc(tmp_path):
    """Returns (devkit, sbd_release, expected) with expected[(name, source)] = [(mask, class)].

    * 2007_000001: VOC seg train + SBD train; VOC: one cat; SBD: dog + person (differ on purpose)
    * 2007_000002: VOC seg val + SBD val -> excluded from train_aug
    * 2008_000003: SBD train only (3 instances, record-form struct)
    * 2008_000004: VOC seg train only; chair instance partly void in the class mask
    * 2009_000005: VOC seg train only, no instances (background + void)
    """
    devkit = tmp_path / "VOCdevkit"
    voc = devkit / "VOC2012"
    release = tmp_path / "benchmark_RELEASE"
    sbd = release / "dataset"
    exp = {}

    exp["2007_000001", "voc"] = [(_rect(4, 20, 4, 28), CAT["cat"])]
    make_voc_image(voc, "2007_000001", exp["2007_000001", "voc"])
    exp["2007_000001", "sbd"] = [(_rect(2, 12, 2, 14), CAT["dog"]),
                                 (_rect(12, 22, 16, 30), CAT["person"])]
    make_sbd_image(sbd, "2007_000001", exp["2007_000001", "sbd"])

    exp["2007_000002", "voc"] = [(_rect(3, 10, 3, 12), CAT["aeroplane"]),
                                 (_rect(12, 20, 15, 29), CAT["person"])]
    make_voc_image(voc, "2007_000002", exp["2007_000002", "voc"])
    make_sbd_image(sbd, "2007_000002", [(_rect(0, 5, 0, 5), CAT["boat"])])

    exp["2008_000003", "sbd"] = [(_rect(1, 6, 1, 6), CAT["bird"]),
                                 (_rect(8, 14, 8, 14), CAT["bird"]),
                                 (_rect(15, 23, 17, 31), CAT["car"])]
    make_sbd_image(sbd, "2008_000003", exp["2008_000003", "sbd"], record_form=True)
    write_jpg(voc / "JPEGImages" / "2008_000003.jpg", H, W)

    chair = _rect(5, 18, 6, 20)
    exp["2008_000004", "voc"] = [(chair, CAT["chair"]), (_rect(19, 23, 22, 30), CAT["sofa"])]
    obj = make_voc_image(voc, "2008_000004", exp["2008_000004", "voc"])
    # a third of the chair is void in the class mask only: majority vote must still say chair
    cls = read_index_png(voc / "SegmentationClass" / "2008_000004.png")
    cls[5:9, 6:20] = 255
    write_png(voc / "SegmentationClass" / "2008_000004.png", cls)
    assert (obj[chair] == 1).all()

    exp["2009_000005", "voc"] = []
    make_voc_image(voc, "2009_000005", [], extra_void=_rect(5, 8, 5, 20))

    _lists(voc / "ImageSets" / "Segmentation",
           train=["2007_000001", "2008_000004", "2009_000005"], val=["2007_000002"],
           trainval=["2007_000001", "2007_000002", "2008_000004", "2009_000005"])
    _lists(sbd, train=["2007_000001", "2008_000003"], val=["2007_000002"])
    return devkit, release, exp


def _check_image(d, name, expected):
    iid = int(name.replace("_", ""))
    img = next(i for i in d["images"] if i["id"] == iid)
    assert img["file_name"] == f"{name}.jpg"
    assert (img["height"], img["width"]) == (H, W)
    assert img["labels"] == sorted({c for _, c in expected})
    anns = [a for a in d["annotations"] if a["image_id"] == iid]
    assert len(anns) == len(expected)
    for a, (m, c) in zip(anns, expected):
        assert a["category_id"] == c
        assert isinstance(a["segmentation"]["counts"], str)
        rle = dict(a["segmentation"], counts=a["segmentation"]["counts"].encode())
        dec = mask_utils.decode(rle).astype(bool)
        np.testing.assert_array_equal(dec, m)
        ys, xs = np.nonzero(m)
        assert a["area"] == m.sum()
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert a["iscrowd"] == 0


# ---------------------------------------------------------------------------------------------
# palette PNG decoding
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bit_depth", [1, 2, 4, 8])
def test_read_index_png_palette_all_filters(tmp_path, bit_depth):
    rng = np.random.default_rng(bit_depth)
    a = rng.integers(0, 1 << bit_depth, (13, 21)).astype(np.uint8)
    if bit_depth == 8:
        a[0, :5] = 255
    p = tmp_path / "m.png"
    write_png(p, a, bit_depth=bit_depth)
    # sanity: OpenCV alone would give colours, not indices
    assert cv2.imread(str(p), cv2.IMREAD_UNCHANGED).ndim == 3
    out = read_index_png(p)
    assert out.shape == a.shape
    np.testing.assert_array_equal(out, a)


def test_read_index_png_grey_and_rgb(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (9, 11)).astype(np.uint8)
    write_png(tmp_path / "g.png", a, palette=False)
    np.testing.assert_array_equal(read_index_png(tmp_path / "g.png"), a)
    cv2.imwrite(str(tmp_path / "rgb.png"), voc_colormap()[a][..., ::-1])
    np.testing.assert_array_equal(read_index_png(tmp_path / "rgb.png"), a)


def test_read_index_png_pil_palette_if_available(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    a = np.random.default_rng(1).integers(0, 21, (30, 40)).astype(np.uint8)
    a[3] = 255
    im = Image.frombytes("P", (a.shape[1], a.shape[0]), a.tobytes())
    im.putpalette(voc_colormap().ravel().tolist())
    im.save(tmp_path / "pil.png")
    np.testing.assert_array_equal(read_index_png(tmp_path / "pil.png"), a)


def test_read_index_png_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_index_png(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png.*not a PNG"):
        read_index_png(tmp_path / "bad.png")
    write_png(tmp_path / "t.png", np.zeros((5, 5), np.uint8))
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[:60])
    with pytest.raises(DataError, match="t.png"):
        read_index_png(tmp_path / "t.png")


# ---------------------------------------------------------------------------------------------
# VOC
# ---------------------------------------------------------------------------------------------
def test_voc_train_and_val_use_voc_masks(fake_voc):
    devkit, release, exp = fake_voc
    d = convert_voc(devkit, "train", sbd_root=release)  # SBD given but unused for 'train'
    names = [f"{i['id']}" for i in d["images"]]
    assert names == ["2007000001", "2008000004", "2009000005"]
    _check_image(d, "2007_000001", exp["2007_000001", "voc"])
    _check_image(d, "2008_000004", exp["2008_000004", "voc"])
    _check_image(d, "2009_000005", [])
    assert [c["name"] for c in d["categories"]] == list(VOC_CLASSES)
    assert [c["id"] for c in d["categories"]] == list(range(1, 21))
    assert len({a["id"] for a in d["annotations"]}) == len(d["annotations"]) == 3

    v = convert_voc(devkit / "VOC2012", "val")  # the VOC2012 folder works too
    assert [i["id"] for i in v["images"]] == [2007000002]
    _check_image(v, "2007_000002", exp["2007_000002", "voc"])
    assert Path(v["info"]["image_root"]).is_absolute()
    assert (Path(v["info"]["image_root"]) / v["images"][0]["file_name"]).is_file()


def test_voc_train_aug_prefers_sbd_and_excludes_val(fake_voc):
    devkit, release, exp = fake_voc
    d = convert_voc(devkit, "train_aug", sbd_root=release / "dataset")
    ids = [i["id"] for i in d["images"]]
    assert ids == [2007000001, 2008000003, 2008000004, 2009000005]  # 2007_000002 is VOC val
    _check_image(d, "2007_000001", exp["2007_000001", "sbd"])  # SBD wins over VOC's "cat"
    _check_image(d, "2008_000003", exp["2008_000003", "sbd"])
    _check_image(d, "2008_000004", exp["2008_000004", "voc"])
    _check_image(d, "2009_000005", [])
    assert len(d["annotations"]) == 2 + 3 + 2
    assert any("2 from SBD, 2 from VOC" in n for n in d["info"]["notes"])
    # the SBD parent folder (benchmark_RELEASE) is accepted too, and gives the same result
    d2 = convert_voc(devkit, "train_aug", sbd_root=release)
    assert d2["images"] == d["images"] and d2["annotations"] == d["annotations"]


def test_voc_train_aug_parallel_matches(fake_voc):
    devkit, release, _ = fake_voc
    a = convert_voc(devkit, "train_aug", sbd_root=release)
    b = convert_voc(devkit, "train_aug", sbd_root=release, n_jobs=2)
    assert a["images"] == b["images"] and a["annotations"] == b["annotations"]


def test_prepare_data_voc_writes_manifest(fake_voc, tmp_path, capsys):
    devkit, release, exp = fake_voc
    m = prepare_data("voc", tmp_path / "out", "train_aug", root=devkit, sbd=release)
    path = tmp_path / "out" / "train_aug.json"
    assert m.path == path and path.is_file()
    out = capsys.readouterr().out
    assert "4 images" in out and "7 instances" in out and "20 classes" in out
    assert "1 images without instances" in out
    m2 = load_manifest(path)
    assert m2.info["format"] == "voc" and m2.info["split"] == "train_aug"
    assert m2.info["dataset"] == "voc2012"
    assert m2.image_path(2008000003).is_file()
    assert m2.label_vector(2007000001)[[CAT["dog"] - 1, CAT["person"] - 1]].tolist() == [1, 1]
    assert m2.label_vector(2009000005).sum() == 0
    assert len(m2.annotations_of(2008000003)) == 3
    # pycocotools reads the manifest as is
    from pycocotools.coco import COCO
    coco = COCO(str(path))
    assert len(coco.getAnnIds(imgIds=[2008000003])) == 3

    sub = prepare_data("voc", tmp_path / "sub.json", "train_aug", root=devkit, sbd=release,
                       num_images=2, seed=3)
    assert len(sub.images) == 2 and sub.path == tmp_path / "sub.json"
    assert "left out" in capsys.readouterr().out


def test_voc_errors(fake_voc):
    devkit, release, _ = fake_voc
    voc = devkit / "VOC2012"
    with pytest.raises(DataError, match="SBD"):
        convert_voc(devkit, "train_aug")
    with pytest.raises(DataError, match="unknown"):
        convert_voc(devkit, "test")
    with pytest.raises(DataError, match="JPEGImages"):
        convert_voc(release, "val")

    (voc / "JPEGImages" / "2008_000004.jpg").unlink()
    with pytest.raises(DataError, match=r"2008_000004.*JPEGImages/2008_000004\.jpg"):
        convert_voc(devkit, "train")
    write_jpg(voc / "JPEGImages" / "2008_000004.jpg", H + 1, W)
    with pytest.raises(DataError, match=r"2008_000004.*is 32x25 but its mask"):
        convert_voc(devkit, "train")
    write_jpg(voc / "JPEGImages" / "2008_000004.jpg", H, W)

    (voc / "SegmentationObject" / "2009_000005.png").unlink()
    with pytest.raises(DataError, match=r"image 2009_000005: instance mask .*not found"):
        convert_voc(devkit, "train")

    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DataError, match=r"VOC split 'val': unknown, no list file .*val\.txt.*"
                                        r"splits here: train, trainval"):
        convert_voc(devkit, "val")


def test_sbd_errors(fake_voc):
    devkit, release, _ = fake_voc
    sbd = release / "dataset"
    scipy.io.savemat(sbd / "inst" / "2008_000003.mat", {"Other": np.zeros(3)})
    with pytest.raises(DataError, match=r"image 2008_000003: .*2008_000003\.mat: no 'GTinst'"):
        convert_voc(devkit, "train_aug", sbd_root=release)

    scipy.io.savemat(sbd / "inst" / "2008_000003.mat", {"GTinst": {"Segmentation": np.zeros(3)}})
    with pytest.raises(DataError, match=r"2008_000003.*(no field 'Categories'|2-D)"):
        convert_voc(devkit, "train_aug", sbd_root=release)

    seg = np.zeros((H, W), np.uint8)
    seg[:4, :4] = 1
    seg[5:9, 5:9] = 2
    scipy.io.savemat(sbd / "inst" / "2008_000003.mat",
                     {"GTinst": {"Segmentation": seg, "Categories": np.uint8(4)}})
    with pytest.raises(DataError, match=r"instance id 2 .* only 1"):
        convert_voc(devkit, "train_aug", sbd_root=release)

    # one instance: Categories squeezes to a scalar and must still work
    scipy.io.savemat(sbd / "inst" / "2008_000003.mat",
                     {"GTinst": {"Segmentation": (seg == 1).astype(np.uint8),
                                 "Categories": np.uint8(4)}})
    d = convert_voc(devkit, "train_aug", sbd_root=release)
    img = next(i for i in d["images"] if i["id"] == 2008000003)
    assert img["labels"] == [CAT["boat"]]

    (sbd / "inst" / "2008_000003.mat").write_bytes(b"garbage" * 50)
    with pytest.raises(DataError, match=r"2008_000003\.mat: not a readable \.mat"):
        convert_voc(devkit, "train_aug", sbd_root=release)
    (sbd / "inst" / "2008_000003.mat").unlink()
    with pytest.raises(DataError, match=r"2008_000003\.mat: file not found"):
        convert_voc(devkit, "train_aug", sbd_root=release)
    with pytest.raises(DataError, match="SBD root"):
        convert_voc(devkit, "train_aug", sbd_root=devkit)


# ---------------------------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------------------------
def _fake_coco(tmp_path, split="val2017"):
    root = tmp_path / "coco"
    write_jpg(root / split / "000000000001.jpg", H, W)
    write_jpg(root / split / "000000000002.jpg", H, W)
    write_jpg(root / split / "000000000003.jpg", H, W)
    crowd = mask_utils.encode(np.asfortranarray(_rect(0, 5, 0, 5).astype(np.uint8)))
    d = {"info": {"year": 2017}, "licenses": [],
         "images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": H, "width": W}
                    for i in (1, 2, 3)],
         "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                        {"id": 18, "name": "dog", "supercategory": "animal"},
                        {"id": 90, "name": "toothbrush", "supercategory": "indoor"}],
         "annotations": [
             {"id": 10, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 50.0,
              "bbox": [2, 2, 10, 5], "segmentation": [[2, 2, 12, 2, 12, 7, 2, 7]]},
             {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 25.0,
              "bbox": [0, 0, 5, 5],
              "segmentation": {"size": crowd["size"], "counts": crowd["counts"].decode()}},
             {"id": 12, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 20.0,
              "bbox": [1, 1, 4, 5], "segmentation": [[1, 1, 5, 1, 5, 6, 1, 6]]}]}
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(d))
    return root, d


def test_coco_passthrough(tmp_path, capsys):
    root, src = _fake_coco(tmp_path)
    d = convert_coco(root, "val2017")
    assert d["annotations"] == src["annotations"]
    assert d["categories"] == src["categories"]
    labels = {i["id"]: i["labels"] for i in d["images"]}
    assert labels == {1: [1, 18], 2: [1], 3: []}  # crowd counts; image 3 has none
    assert d["info"]["image_root"] == str((root / "val2017").resolve())

    m = prepare_data("coco", tmp_path / "m", "val2017", root=root)
    assert m.path == manifest_path(tmp_path / "m", "val2017")
    assert m.image_path(2).is_file() and m.num_classes == 3
    assert m.label_vector(1).tolist() == [1, 1, 0]
    assert "3 images, 3 instances, 3 classes" in capsys.readouterr().out
    from pycocotools.coco import COCO
    coco = COCO(str(m.path))
    assert coco.annToMask(coco.anns[10]).sum() > 0


def test_coco_errors(tmp_path):
    root, src = _fake_coco(tmp_path)
    with pytest.raises(DataError, match=r"instances_train2017\.json not found"):
        convert_coco(root, "train2017")
    (root / "val2017" / "000000000002.jpg").unlink()
    with pytest.raises(DataError, match=r"image 2 file .*000000000002\.jpg not found"):
        convert_coco(root, "val2017")
    src["annotations"].append({"id": 99, "image_id": 7, "category_id": 1})
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(src))
    with pytest.raises(DataError, match="unknown image id 7"):
        convert_coco(root, "val2017", check_files=False)
    (root / "annotations" / "instances_val2017.json").write_text("{oops")
    with pytest.raises(DataError, match="not valid JSON"):
        convert_coco(root, "val2017")


# ---------------------------------------------------------------------------------------------
# folder + CSV
# ---------------------------------------------------------------------------------------------
def _fake_folder(tmp_path):
    root = tmp_path / "imgs"
    write_jpg(root / "a.jpg", 10, 20)
    write_jpg(root / "sub" / "b.jpg", 12, 8)
    cv2.imwrite(str(root / "c.png"), np.zeros((7, 9, 3), np.uint8))
    write_jpg(root / "d.jpg", 5, 5)
    return root


def test_folder_csv(tmp_path, capsys):
    root = _fake_folder(tmp_path)
    (root / "labels.csv").write_text("file_name,labels\n"
                                     "a.jpg,cat;dog\n"
                                     "\n"
                                     "sub/b.jpg,zebra | cat\n"
                                     'c.png,"dog  ant"\n'
                                     "d.jpg,\n")
    d = convert_folder(root, "train")
    assert [c["name"] for c in d["categories"]] == ["ant", "cat", "dog", "zebra"]
    assert [c["id"] for c in d["categories"]] == [1, 2, 3, 4]
    imgs = d["images"]
    assert [i["file_name"] for i in imgs] == ["a.jpg", "sub/b.jpg", "c.png", "d.jpg"]
    assert [i["labels"] for i in imgs] == [[2, 3], [2, 4], [1, 3], []]
    assert [(i["height"], i["width"]) for i in imgs] == [(10, 20), (12, 8), (7, 9), (5, 5)]
    assert d["annotations"] == []

    m = prepare_data("folder", tmp_path / "f.json", "train", root=root)
    assert not m.has_gt and m.image_path(imgs[1]["id"]).is_file()
    out = capsys.readouterr().out
    assert "4 images" in out and "4 classes" in out and "1 images without labels" in out


def test_folder_csv_errors(tmp_path):
    root = _fake_folder(tmp_path)
    csv = tmp_path / "l.csv"
    csv.write_text("file_name,labels\na.jpg,cat\nmissing.jpg,dog\n")
    with pytest.raises(DataError, match=r"l\.csv line 3: .*missing\.jpg.*not found"):
        convert_folder(root, "train", labels_csv=csv)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    csv.write_text("file_name,labels\na.jpg,cat\nbroken.jpg,dog\n")
    with pytest.raises(DataError, match=r"line 3: .*broken\.jpg.*not a readable image"):
        convert_folder(root, "train", labels_csv=csv)
    csv.write_text("image,classes\na.jpg,cat\n")
    with pytest.raises(DataError, match=r"l\.csv: unknown column layout"):
        convert_folder(root, "train", labels_csv=csv)
    csv.write_text("file_name,labels\na.jpg,cat,dog\n")
    with pytest.raises(DataError, match=r"line 2: 3 fields .*not commas"):
        convert_folder(root, "train", labels_csv=csv)
    csv.write_text("file_name,labels\na.jpg,cat\na.jpg,dog\n")
    with pytest.raises(DataError, match=r"line 3: image a\.jpg is already listed on line 2"):
        convert_folder(root, "train", labels_csv=csv)
    with pytest.raises(DataError, match=r"labels\.csv: file not found"):
        convert_folder(root, "train")


# ---------------------------------------------------------------------------------------------
# dispatcher
# ---------------------------------------------------------------------------------------------
def test_prepare_data_bad_args(tmp_path):
    with pytest.raises(DataError, match="unknown dataset format 'kitti'"):
        prepare_data("kitti", tmp_path / "o", "train")
    with pytest.raises(DataError, match="--root is required"):
        prepare_data("voc", tmp_path / "o", "train")
    with pytest.raises(DataError, match="--root is required"):
        prepare_data("coco", tmp_path / "o", "val2017")
    with pytest.raises(DataError, match="directory not found"):
        prepare_data("folder", tmp_path / "o", "train", root=tmp_path / "nope")
    with pytest.raises(DataError, match="--num-images is required"):
        prepare_data("synthetic", tmp_path / "o", "train")
    with pytest.raises(DataError, match="--sbd only applies"):
        prepare_data("coco", tmp_path / "o", "val2017", root=tmp_path, sbd=tmp_path)
    assert not (tmp_path / "o").exists()


def test_prepare_data_synthetic_dispatch(tmp_path, capsys):
    pytest.importorskip("pdsl.datasets.synthetic")
    m = prepare_data("synthetic", tmp_path / "syn", "val", num_images=2, seed=0)
    assert m.path == tmp_path / "syn" / "val.json" and len(m.images) == 2
    assert m.image_path(m.images[0]).is_file()
    assert "prepared synthetic val (synthetic): 2 images" in capsys.readouterr().out
