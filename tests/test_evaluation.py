"""Evaluation: known answers on a tiny GT (4 images of 128×128, square instances), computed by
hand for COCOeval's 101-point interpolation, plus agreement with plain COCOeval."""
from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pdsl.datasets.masks import decode_rle, encode_rle, mask_annotation
from pdsl.errors import DataError
from pdsl.evaluation import (Evaluator, coco_instance_metrics, corloc, detection_map50,
                             image_level_map, voc_wsis_map)
from pdsl.manifest import load_manifest, save_manifest

H = W = 128
A, B, C = 0, 1, 2                  # category indices: ids 3 ("a"), 7 ("b"), 9 ("c", no GT)
CAT_ID = {A: 3, B: 7, C: 9}
# GT instances: (image id, category index, x1y1x2y2). Areas: a1 100 (small), b1 1600 (medium),
# b2 10000 (large), a2 1600 (medium). Image 4 has no annotation.
GT = {"a1": (1, A, (4, 4, 14, 14)), "b1": (1, B, (40, 40, 80, 80)),
      "b2": (2, B, (10, 10, 110, 110)), "a2": (3, A, (60, 60, 100, 100))}
# 101-point interpolated AP of a class with 2 GT and only one detection, a true positive:
# precision 1 at recall thresholds 0, 0.01, …, 0.50 (51 of 101), 0 above.
HALF = 51 / 101 * 100


def square(box) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = 1
    return m


def uncompressed_rle(m: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths of the column-major flattening, zeros first."""
    flat = m.flatten(order="F").astype(np.int64)
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return {"size": list(m.shape), "counts": ([0] if flat[0] else []) + runs}


def make_gt(crowd=False) -> dict:
    anns = []
    for i, (img, c, box) in enumerate(GT.values()):
        anns.append(dict(mask_annotation(square(box), img, CAT_ID[c]), id=i + 1))
    if crowd:  # a crowd region of class a in image 2: detections on it are neither TP nor FP
        m = square((100, 0, 128, 30))
        a = dict(mask_annotation(m, 2, CAT_ID[A]), id=99, iscrowd=1)
        a["segmentation"] = uncompressed_rle(m)         # as COCO stores crowd regions
        anns.append(a)
    return {"info": {"dataset": "tiny", "split": "val"},
            "images": [{"id": i, "file_name": f"{i}.png", "height": H, "width": W, "labels": lab}
                       for i, lab in ((1, [3, 7]), (2, [7]), (3, [3]), (4, []))],
            "categories": [{"id": 7, "name": "b"}, {"id": 3, "name": "a"},
                           {"id": 9, "name": "c"}],
            "annotations": anns}


def det(img, c, box, score):
    return (img, c, box, score)


def perfect():
    """One exact detection per GT instance; scores descending in GT order."""
    return [det(img, c, box, 0.9 - 0.1 * i) for i, (img, c, box) in enumerate(GT.values())]


def predictions(dets, masks="array"):
    """Per image prediction dicts as inference gives them (x1y1x2y2, index labels)."""
    out = {}
    for img in (1, 2, 3, 4):
        mine = [d for d in dets if d[0] == img]
        boxes = np.array([d[2] for d in mine], np.float32).reshape(-1, 4)
        p = {"boxes": boxes, "scores": np.array([d[3] for d in mine], np.float32),
             "labels": np.array([d[1] for d in mine], np.int64)}
        if masks == "array":
            p["masks"] = np.stack([square(d[2]) for d in mine]).astype(bool) if mine else \
                np.zeros((0, H, W), bool)
        elif masks == "rle":
            p["masks"] = [encode_rle(square(d[2])) for d in mine]
        elif masks == "torch":
            p = {k: torch.as_tensor(v) for k, v in p.items()}
            p["masks"] = torch.as_tensor(np.stack([square(d[2]) for d in mine])
                                         if mine else np.zeros((0, H, W), np.uint8))
        out[img] = p
    return out


def evaluate(dets, masks="array", gt=None):
    ev = Evaluator(gt or make_gt())
    for img, p in predictions(dets, masks).items():
        ev.process(img, p)
    return ev.evaluate(), ev.results()


def coco_results(dets):
    return [{"image_id": img, "category_id": CAT_ID[c], "score": s,
             "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
             "segmentation": encode_rle(square(box))} for img, c, box, s in dets]


def same(a, b):
    """Equality of nested metric dicts with nan == nan."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-9)


COCO6 = ("AP", "AP50", "AP75", "APs", "APm", "APl")
VOC4 = ("mAP@0.25", "mAP@0.5", "mAP@0.7", "mAP@0.75")


def test_perfect_predictions_score_100():
    # a spurious detection of class c (no GT anywhere) changes nothing: c has no AP.
    m, res = evaluate(perfect() + [det(4, C, (0, 0, 50, 50), 0.99)])
    for t in ("bbox", "segm"):
        for k in COCO6 + VOC4:
            assert m[t][k] == pytest.approx(100.0), (t, k)
    assert m["bbox"]["CorLoc"] == pytest.approx(100.0)
    assert m["per_class"]["segm_AP50"]["a"] == pytest.approx(100.0)
    assert math.isnan(m["per_class"]["segm_AP50"]["c"])
    assert math.isnan(m["per_class"]["CorLoc"]["c"])
    assert m["num_images"] == m["num_gt_images"] == 4
    assert "classification" not in m
    # results: category index → sorted category id, xywh boxes, str RLE counts, JSON-ready
    r0 = res[0]
    assert r0["category_id"] == 3 and r0["bbox"] == [4.0, 4.0, 10.0, 10.0]
    assert isinstance(r0["segmentation"]["counts"], str) and r0["segmentation"]["size"] == [H, W]
    assert json.loads(json.dumps(res)) == res
    assert res[-1]["category_id"] == 9


def test_masks_as_arrays_rle_and_tensors_give_the_same_numbers():
    dets = perfect()[:3] + [det(3, A, (60, 60, 100, 90), 0.3), det(1, A, (4, 4, 14, 14), 0.85)]
    m_arr, r_arr = evaluate(dets, "array")
    m_rle, r_rle = evaluate(dets, "rle")
    m_t, _ = evaluate(dets, "torch")
    assert same(m_arr, m_rle) and same(m_arr, m_t)
    assert r_arr == r_rle


def test_missed_instance():
    m, _ = evaluate([d for d in perfect() if d[2] != GT["a2"][2]])       # a2 not detected
    for t in ("bbox", "segm"):
        assert m["per_class"][f"{t}_AP50"]["a"] == pytest.approx(HALF)      # ≈ 50.495
        assert m["per_class"][f"{t}_AP50"]["b"] == pytest.approx(100.0)
        for k in ("AP", "AP50", "AP75") + VOC4:
            assert m[t][k] == pytest.approx((HALF + 100) / 2), (t, k)
        assert m[t]["APs"] == pytest.approx(100.0)      # a1 (only small GT) found
        assert m[t]["APm"] == pytest.approx(50.0)       # a: a2 missed → 0; b: b1 → 100
        assert m[t]["APl"] == pytest.approx(100.0)      # b2
    assert m["bbox"]["CorLoc"] == pytest.approx(75.0)   # a: 1 of 2 images, b: 2 of 2


def test_wrong_class_gives_that_class_zero():
    # a1 and a2 found exactly but labelled b, with lower scores than the true b detections
    (ia1, _, a1), (ib1, _, b1), (ib2, _, b2), (ia2, _, a2) = GT.values()
    m, _ = evaluate([det(ib1, B, b1, 0.9), det(ib2, B, b2, 0.8), det(ia1, B, a1, 0.7),
                     det(ia2, B, a2, 0.6)])
    assert m["per_class"]["segm_AP50"] == pytest.approx({"a": 0.0, "b": 100.0,
                                                        "c": float("nan")}, nan_ok=True)
    assert m["segm"]["AP50"] == pytest.approx(50.0)
    assert m["per_class"]["CorLoc"]["a"] == 0.0 and m["bbox"]["CorLoc"] == pytest.approx(50.0)


def test_duplicate_detection():
    gt = make_gt()
    base = perfect()                                     # a1 0.9, b1 0.8, b2 0.7, a2 0.6
    # duplicate of a1 ranked between a1 and a2: class a ranks TP, FP, TP → recall .5, .5, 1 and
    # precision 1, 1/2, 2/3; interpolated: 1 at recall ≤ 0.5 (51 points), 2/3 above (50 points)
    dup = base + [det(1, A, GT["a1"][2], 0.65)]
    ap_a = (51 + 50 * 2 / 3) / 101 * 100                 # ≈ 83.498
    for t in ("segm", "bbox"):
        v = voc_wsis_map(gt, coco_results(dup), thresholds=(0.5,), iou_type=t, per_class=True)
        assert v["per_class"]["mAP@0.5"]["a"] == pytest.approx(ap_a)
        assert v["mAP@0.5"] == pytest.approx((ap_a + 100) / 2)
        assert coco_instance_metrics(gt, coco_results(dup), t)["AP"] == pytest.approx(
            (ap_a + 100) / 2)
    # ranked after every true positive of its class, a duplicate costs nothing
    last = base + [det(1, A, GT["a1"][2], 0.1)]
    assert coco_instance_metrics(gt, coco_results(last))["AP50"] == pytest.approx(100.0)
    # CorLoc only looks at the top box per (image, class)
    assert corloc(gt, coco_results(dup))["CorLoc"] == pytest.approx(100.0)


def test_single_iou_thresholds():
    gt = make_gt()
    # b2 found with a box 100 × 72 inside it (IoU 0.72), ranked after b1: a TP at 0.25, 0.5,
    # 0.7, a FP (class b recall ≤ 0.5 → 51/101) at 0.75 and above.
    dets = [d if d[2] != GT["b2"][2] else det(2, B, (10, 10, 110, 82), d[3]) for d in perfect()]
    half_b = (HALF + 100) / 2
    for t in ("segm", "bbox"):
        v = voc_wsis_map(gt, coco_results(dets), iou_type=t)
        assert v == pytest.approx({"mAP@0.25": 100.0, "mAP@0.5": 100.0, "mAP@0.7": 100.0,
                                   "mAP@0.75": half_b})
        # COCO AP: class b is right at 5 of the 10 thresholds (0.50 … 0.70)
        ap_b = (5 * 100 + 5 * HALF) / 10
        assert coco_instance_metrics(gt, coco_results(dets), t)["AP"] == pytest.approx(
            (100 + ap_b) / 2)
    # IoU 0.4: only the 0.25 threshold accepts it
    dets = [d if d[2] != GT["b2"][2] else det(2, B, (10, 10, 110, 50), d[3]) for d in perfect()]
    v = voc_wsis_map(gt, coco_results(dets), iou_type="bbox")
    assert v["mAP@0.25"] == pytest.approx(100.0) and v["mAP@0.5"] == pytest.approx(half_b)
    assert detection_map50(gt, coco_results(dets)) == pytest.approx(half_b)
    # the Evaluator's single COCOeval run (all thresholds at once) gives the same numbers
    m, _ = evaluate(dets)
    for t in ("segm", "bbox"):
        assert same({k: m[t][k] for k in VOC4}, voc_wsis_map(gt, coco_results(dets), iou_type=t))
        assert same({k: m[t][k] for k in COCO6},
                    coco_instance_metrics(gt, coco_results(dets), t))


def test_empty_results_give_zeros():
    gt = make_gt()
    for t in ("segm", "bbox"):
        assert coco_instance_metrics(gt, [], t) == {k: 0.0 for k in COCO6}
        assert voc_wsis_map(gt, [], iou_type=t) == {k: 0.0 for k in VOC4}
    assert detection_map50(gt, []) == 0.0
    assert corloc(gt, [])["CorLoc"] == 0.0
    m, res = evaluate([])                   # every image processed, nothing detected
    assert res == []
    assert all(m["bbox"][k] == 0.0 for k in COCO6 + VOC4 + ("CorLoc",))
    assert all(m["segm"][k] == 0.0 for k in COCO6 + VOC4)     # [0, H, W] masks were given
    m, _ = evaluate([], masks=None)         # no "masks" key at all: no mask metrics
    assert "segm" not in m and m["bbox"]["AP"] == 0.0


def test_foreign_results_are_ignored_with_a_warning():
    gt = make_gt()
    res = coco_results(perfect())
    foreign = coco_results([det(42, A, (0, 0, 10, 10), 0.99)])       # image 42 not in GT
    with pytest.warns(UserWarning, match="1 on image ids not in the manifest"):
        m = coco_instance_metrics(gt, res + foreign)
    assert m["AP"] == pytest.approx(100.0)
    with pytest.warns(UserWarning, match="ignored 1 of 1 results"):
        assert coco_instance_metrics(gt, foreign) == {k: 0.0 for k in COCO6}


def test_crowd_gt_is_ignored_region():
    gt = make_gt(crowd=True)
    on_crowd = det(2, A, (100, 0, 128, 30), 0.95)            # top-ranked, lies on the crowd
    res = coco_results(perfect() + [on_crowd])
    for t in ("segm", "bbox"):
        assert coco_instance_metrics(gt, res, t)["AP"] == pytest.approx(100.0)
    assert corloc(gt, res)["per_class"]["a"] == pytest.approx(100.0)    # (2, a) is no pair
    # an undetected crowd region is not a miss
    assert coco_instance_metrics(gt, coco_results(perfect()))["AP"] == pytest.approx(100.0)
    # without the crowd region the same detection is a false positive ranked first
    assert coco_instance_metrics(make_gt(), res)["AP"] < 100.0


def test_gt_from_path_and_fields_completed(tmp_path):
    d = make_gt()
    for a in d["annotations"]:      # a minimal manifest: no bbox, area, iscrowd or id
        for k in ("bbox", "area", "iscrowd", "id"):
            a.pop(k)
    path = tmp_path / "val.json"
    save_manifest(d, path)
    assert coco_instance_metrics(path, coco_results(perfect()), "bbox")["AP"] == \
        pytest.approx(100.0)
    assert coco_instance_metrics(load_manifest(path), coco_results(perfect()))["APs"] == \
        pytest.approx(100.0)
    # GT masks as polygons (COCO's usual form) are read too
    for a in d["annotations"]:
        x, y, w, h = mask_annotation(decode_rle(a["segmentation"]), 0, 0)["bbox"]
        a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    assert coco_instance_metrics(d, coco_results(perfect()))["AP50"] == pytest.approx(100.0)
    assert coco_instance_metrics(d, coco_results(perfect()), "bbox")["AP50"] == \
        pytest.approx(100.0)


def test_corloc_takes_the_top_box_of_each_class():
    gt = make_gt()
    dets = perfect() + [det(1, A, (90, 90, 120, 120), 0.95),       # wrong box, top for (1, a)
                        det(4, B, (0, 0, 30, 30), 0.99)]           # image without GT: no pair
    c = corloc(gt, coco_results(dets))
    assert c["per_class"]["a"] == pytest.approx(50.0) and c["per_class"]["b"] == 100.0
    assert c["CorLoc"] == pytest.approx(75.0) and math.isnan(c["per_class"]["c"])
    # no box at all for (2, b) → wrong; IoU 0.72 ≥ 0.5 → right
    dets = [d for d in perfect() if d[0] != 2] + [det(3, B, (60, 60, 100, 100), 0.9)]
    assert corloc(gt, coco_results(dets))["per_class"]["b"] == pytest.approx(50.0)
    dets = [d if d[2] != GT["b2"][2] else det(2, B, (10, 10, 110, 82), d[3]) for d in perfect()]
    assert corloc(gt, coco_results(dets))["CorLoc"] == pytest.approx(100.0)


def test_image_level_map_by_hand():
    gt = make_gt()                # labels: 1 {a, b}, 2 {b}, 3 {a}, 4 {}
    s = np.array([[0.9, 0.2, 0.0],
                  [0.8, 0.9, 0.0],
                  [0.3, 0.5, 0.0],
                  [0.1, 0.7, 0.0]])
    r = image_level_map(gt, s, [1, 2, 3, 4])
    # a: ranks 1(+) 2(-) 3(+) 4(-) → (1/1 + 2/3) / 2;  b: 2(+) 4(-) 3(-) 1(+) → (1/1 + 2/4) / 2
    ap_a, ap_b = (1 + 2 / 3) / 2 * 100, (1 + 2 / 4) / 2 * 100
    assert r["per_class"]["a"] == pytest.approx(ap_a)
    assert r["per_class"]["b"] == pytest.approx(ap_b)
    assert math.isnan(r["per_class"]["c"])                 # no positive image
    assert r["mAP"] == pytest.approx((ap_a + ap_b) / 2)
    # row order does not matter without ties
    perm = [2, 0, 3, 1]
    assert image_level_map(gt, s[perm], [[1, 2, 3, 4][i] for i in perm])["mAP"] == \
        pytest.approx(r["mAP"])
    # ties keep the given order (stable sort): all equal → ranking is 1, 2, 3, 4
    t = image_level_map(gt, np.full((4, 3), 0.5), [1, 2, 3, 4])
    assert t["per_class"]["a"] == pytest.approx(ap_a)                 # 1(+) 2(-) 3(+) 4(-)
    assert t["per_class"]["b"] == pytest.approx(100.0)                # 1(+) 2(+) 3(-) 4(-)
    perfect_scores = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]], float)
    assert image_level_map(gt, perfect_scores, [1, 2, 3, 4])["mAP"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match=r"\[N_img=4, C=3\]"):
        image_level_map(gt, s[:, :2], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="not in the manifest"):
        image_level_map(gt, s, [1, 2, 3, 77])


def test_evaluator_image_scores_give_classification_map():
    ev = Evaluator(make_gt())
    s = {1: [0.9, 0.2, 0.0], 2: [0.8, 0.9, 0.0], 3: [0.3, 0.5, 0.0], 4: [0.1, 0.7, 0.0]}
    for img, p in predictions(perfect()).items():
        ev.process(img, dict(p, image_scores=np.array(s[img])))
    m = ev.evaluate()
    assert m["classification"]["mAP"] == pytest.approx(((1 + 2 / 3) / 2 + 0.75) / 2 * 100)
    assert m["per_class"]["cls_AP"]["b"] == pytest.approx(75.0)


def test_evaluator_reset_and_partial_runs():
    ev = Evaluator(make_gt())
    preds = predictions(perfect())
    ev.process(1, preds[1])
    with pytest.warns(UserWarning, match="1 of 4 manifest images"):
        m = ev.evaluate()
    # unprocessed images count as having no detection: a2 and b2 are missed
    assert m["segm"]["AP50"] == pytest.approx(HALF)
    ev.reset()
    assert ev.results() == []
    for img, p in preds.items():
        ev.process(img, p)
    assert ev.evaluate()["segm"]["AP"] == pytest.approx(100.0)


def test_evaluator_rejects_bad_input():
    ev = Evaluator(make_gt())
    good = predictions(perfect())[1]
    with pytest.raises(ValueError, match="not in the manifest"):
        ev.process(77, good)
    with pytest.raises(ValueError, match=r"boxes \[K, 4\]"):
        ev.process(1, dict(good, boxes=good["boxes"][:, :3]))
    with pytest.raises(ValueError, match="0..2"):
        ev.process(1, dict(good, labels=np.array([0, 3])))
    with pytest.raises(ValueError, match=r"masks \[K=2, H=128, W=128\].*\(2, 64, 64\)"):
        ev.process(1, dict(good, masks=good["masks"][:, :64, :64]))
    ev.process(1, good)
    with pytest.raises(ValueError, match="already processed"):
        ev.process(1, good)
    no_masks = {k: v for k, v in predictions(perfect())[2].items() if k != "masks"}
    with pytest.raises(ValueError, match="'masks' given for some images"):
        ev.process(2, no_masks)
    with pytest.raises(ValueError, match="has no 'segmentation'"):
        coco_instance_metrics(make_gt(), [{"image_id": 1, "category_id": 3, "score": 1.0,
                                           "bbox": [0, 0, 1, 1]}], "segm")
    empty = make_gt()
    empty["annotations"] = []
    with pytest.raises(DataError, match="no GT annotations"):
        Evaluator(empty)
    with pytest.raises(DataError, match="no GT annotations"):
        coco_instance_metrics(empty, [])


def test_agrees_with_plain_cocoeval_summarize():
    """Noisy detections: our numbers are COCOeval.summarize's stats[0:6] × 100."""
    rng = np.random.default_rng(0)
    gt = make_gt()
    dets = []
    for img, c, box in GT.values():
        for _ in range(4):
            j = np.clip(np.array(box) + rng.integers(-6, 7, 4), 0, H)
            j[2:] = np.maximum(j[2:], j[:2] + 2)
            dets.append(det(img, int(rng.choice([c, c, c, 1 - c])), tuple(int(v) for v in j),
                            float(rng.random())))
    res = coco_results(dets)
    for t in ("segm", "bbox"):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt.createIndex()
            field = "bbox" if t == "segm" else "segmentation"      # as detectron2 does
            coco_dt = coco_gt.loadRes([{k: v for k, v in r.items() if k != field}
                                       for r in json.loads(json.dumps(res))])
            e = COCOeval(coco_gt, coco_dt, t)
            e.evaluate()
            e.accumulate()
            e.summarize()
        ours = coco_instance_metrics(gt, res, t)
        for i, k in enumerate(COCO6):
            want = e.stats[i] * 100 if e.stats[i] >= 0 else float("nan")
            assert same(ours[k], want), (t, k, ours[k], want)
        m, _ = evaluate(dets)
        assert same({k: m[t][k] for k in COCO6}, ours)
