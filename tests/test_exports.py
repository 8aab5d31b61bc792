"""Datasets as annotation tools export them: CVAT's VOC layout with labelmap.txt and a 'default'
split, VOC XML boxes (labelImg), and Roboflow's COCO export (placeholder category, box-only
annotations, boxes that leave the image or disagree with their polygon). Every file is built here.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from test_datasets import H, W, _rect, write_jpg, write_png

from pdsl.datasets import prepare_data
from pdsl.datasets.coco import convert_coco
from pdsl.datasets.voc import VOC_CLASSES, convert_voc
from pdsl.errors import DataError

LABELMAP = """# label:color_rgb:parts:actions
background:0,0,0::
crack:250,50,83::
pothole:51,221,255::
"""


def _write_rgb(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def _cvat_export(tmp_path):
    """CVAT 'Segmentation mask 1.1': RGB class masks in labelmap colours, RGB instance masks in
    the VOC colour map, ImageSets/Segmentation/default.txt, non-VOC image names."""
    from pdsl.datasets.masks import voc_colormap

    root = tmp_path / "cvat"
    cmap = voc_colormap()
    colours = {"crack": (250, 50, 83), "pothole": (51, 221, 255)}
    truth = {}
    images = {"road-1": [("crack", _rect(2, 10, 3, 20)), ("pothole", _rect(12, 20, 5, 9))],
              "road_2": [("pothole", _rect(1, 5, 1, 5))]}
    for name, insts in images.items():
        cls = np.zeros((H, W, 3), np.uint8)
        obj = np.zeros((H, W, 3), np.uint8)
        for k, (c, m) in enumerate(insts, 1):
            cls[m] = colours[c]
            obj[m] = cmap[k]
        _write_rgb(root / "SegmentationClass" / f"{name}.png", cls)
        _write_rgb(root / "SegmentationObject" / f"{name}.png", obj)
        write_jpg(root / "JPEGImages" / f"{name}.jpg", H, W)
        truth[name] = insts
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("road-1\nroad_2\n")
    (root / "labelmap.txt").write_text(LABELMAP)
    return root, truth


def test_cvat_labelmap_and_any_split_name(tmp_path, capsys):
    root, truth = _cvat_export(tmp_path)
    m = prepare_data("voc", tmp_path / "out", "default", root=root)
    assert m.class_names == ["crack", "pothole"]
    assert "2 classes from the labelmap" in capsys.readouterr().out
    by_name = {img["file_name"]: img for img in m.images}
    for name, insts in truth.items():
        img = by_name[f"{name}.jpg"]
        anns = m.annotations_of(img["id"])
        got = sorted((m.class_names[m.cat_id_to_index[a["category_id"]]], a["area"])
                     for a in anns)
        assert got == sorted((c, int(mk.sum())) for c, mk in insts)

    # a colour the labelmap lacks is refused, naming the labelmap
    bad = cv2.imread(str(root / "SegmentationClass" / "road_2.png"))
    bad[0, 0] = (1, 2, 3)
    cv2.imwrite(str(root / "SegmentationClass" / "road_2.png"), bad)
    with pytest.raises(DataError, match=r"road_2.*RGB\(3,2,1\).*labelmap\.txt"):
        convert_voc(root, "default")
    # without labelmap.txt these colours are not VOC's: the error says to keep the labelmap
    (root / "labelmap.txt").unlink()
    with pytest.raises(DataError, match="VOC colour map.*labelmap.txt"):
        convert_voc(root, "default")
    with pytest.raises(DataError, match=r"'test': unknown.*splits here: default"):
        convert_voc(root, "test")

    (root / "labelmap.txt").write_text("background:0,0,0::\ncrack:250,50::\n")
    with pytest.raises(DataError, match=r"labelmap .*line 2 'crack:250,50::'"):
        convert_voc(root, "default")


def _xml(objects, size=(H, W)):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects)
    return (f"<annotation><filename>x.jpg</filename><size><width>{size[1]}</width>"
            f"<height>{size[0]}</height><depth>3</depth></size>{objs}</annotation>")


def test_voc_xml_box_only(tmp_path, capsys):
    root = tmp_path / "labelimg"
    write_jpg(root / "JPEGImages" / "IMG_1.jpg", H, W)
    write_jpg(root / "JPEGImages" / "IMG_2.jpg", H, W)
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "IMG_1.xml").write_text(
        _xml([("helmet", (1, 1, 10, 8), False), ("vest", (5, 6, 40, 20), True)]))
    (root / "Annotations" / "IMG_2.xml").write_text(_xml([("vest", (3, 3, 6, 9), False)]))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("IMG_1\nIMG_2\n")
    m = prepare_data("voc", tmp_path / "m.json", "train", root=root)
    out = capsys.readouterr().out
    assert "2 images with boxes only" in out and "3 box-only instances" in out
    assert m.class_names == ["helmet", "vest"]
    img1 = next(i for i in m.images if i["file_name"] == "IMG_1.jpg")
    anns = m.annotations_of(img1["id"])
    assert all("segmentation" not in a for a in anns)
    # VOC's 1-based inclusive corners -> 0-based continuous xywh; xmax 40 clipped to W = 32
    assert anns[0]["bbox"] == [0.0, 0.0, 10.0, 8.0] and anns[0]["iscrowd"] == 0
    assert anns[1]["bbox"] == [4.0, 5.0, W - 4.0, 15.0] and anns[1]["iscrowd"] == 1
    assert img1["labels"] == [1, 2]

    # VOC's own class names keep VOC's class list (ids 1..20)
    (root / "Annotations" / "IMG_1.xml").write_text(_xml([("dog", (1, 1, 10, 8), False)]))
    (root / "Annotations" / "IMG_2.xml").write_text(_xml([("cat", (1, 1, 10, 8), False)]))
    d = convert_voc(root, "train")
    assert [c["name"] for c in d["categories"]] == list(VOC_CLASSES)
    (root / "Annotations" / "IMG_2.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match=r"IMG_2: .*IMG_2\.xml: not a readable VOC XML"):
        convert_voc(root, "train")


def _roboflow(tmp_path):
    """Roboflow COCO export: ROOT/<split>/_annotations.coco.json beside the images, a placeholder
    category 0 named after the dataset (also a class name here), box-only annotations."""
    root = tmp_path / "rf"
    for split in ("train", "valid"):
        for i in (1, 2):
            write_jpg(root / split / f"im{i}_jpg.rf.abc.jpg", H, W)
    cats = [{"id": 0, "name": "helmets", "supercategory": "none"},
            {"id": 1, "name": "head", "supercategory": "helmets"},
            {"id": 2, "name": "helmets", "supercategory": "helmets"}]
    anns = [
        # inside the image, box-only
        {"id": 0, "image_id": 0, "category_id": 1, "bbox": [2, 3, 10, 6], "area": 60,
         "segmentation": [], "iscrowd": 0},
        # leaves the image (x + w = 52 > W = 32): clipped
        {"id": 1, "image_id": 0, "category_id": 2, "bbox": [20, 4, 32, 10], "area": 320,
         "segmentation": [], "iscrowd": 0},
        # the box disagrees with its polygon (IoU < 0.5): replaced by the polygon's extent
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 30, 22], "area": 24,
         "segmentation": [[4.5, 5, 10.5, 5, 10.5, 9, 4.5, 9]], "iscrowd": 0},
        # agrees with its polygon (IoU >= 0.5): kept as it is
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [12, 12, 8, 8], "area": 49,
         "segmentation": [[12, 12, 19, 12, 19, 19, 12, 19]], "iscrowd": 0}]
    for split in ("train", "valid"):
        d = {"info": {"description": "helmets"}, "categories": cats,
             "images": [{"id": i - 1, "file_name": f"im{i}_jpg.rf.abc.jpg", "height": H,
                         "width": W} for i in (1, 2)], "annotations": anns}
        (root / split / "_annotations.coco.json").write_text(json.dumps(d))
    return root, d


def test_roboflow_coco_export(tmp_path, capsys):
    root, src = _roboflow(tmp_path)
    m = prepare_data("coco", tmp_path / "m", "valid", root=root)
    out = capsys.readouterr().out
    assert ("1 placeholder categories dropped (id 0 'helmets': supercategory 'none', unused), "
            "1 bboxes clipped to the image, 1 replaced by their segmentation's extent") in out
    assert "2 box-only instances" in out
    assert [(c["id"], c["name"]) for c in m.categories] == [(1, "head"), (2, "helmets")]
    a = {x["id"]: x for x in m.annotations}
    assert a[0]["bbox"] == [2, 3, 10, 6] and "segmentation" not in a[0]
    assert a[1]["bbox"] == [20.0, 4.0, 12.0, 10.0]
    assert a[2]["bbox"] == [4.5, 5.0, 6.0, 4.0]      # the polygon's exact extent
    assert a[3]["bbox"] == [12, 12, 8, 8]
    assert m.image_path(0).is_file() and m.images[0]["labels"] == [1, 2]

    # two used categories sharing a name: an error naming both ids
    src["categories"][1]["name"] = "helmets"
    (root / "train" / "_annotations.coco.json").write_text(json.dumps(src))
    with pytest.raises(DataError, match=r"categories 1 and 2 are both named 'helmets'"):
        convert_coco(root, "train")
    with pytest.raises(DataError, match=r"_annotations\.coco\.json"):
        convert_coco(root, "test")
