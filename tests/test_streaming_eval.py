"""Streaming evaluation: the same numbers as one COCOeval run, memory that does not
grow with the images, the results json written as images come; VOC AP beside COCO's 101-point
mAP, checked against precision-recall curves computed by hand."""
from __future__ import annotations

import functools
import json
import tracemalloc

import numpy as np
import pytest

import pdsl.evaluation.coco_stream
import pdsl.evaluation.spool
import pdsl.evaluation.voc_ap
from pdsl.datasets.masks import mask_annotation
from pdsl.evaluation import Evaluator, coco_instance_metrics, voc_ap_map, voc_wsis_map
from pdsl.manifest import Manifest
from pdsl.engine.evaluate import stream_evaluation
from pdsl.evaluation.voc_ap import voc07_ap, voc_ap

H = W = 64


def _box_mask(box, h=H, w=W):
    m = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = 1
    return m


def _manifest(gt_boxes: dict, names=("a", "b", "c"), crowd=(), size=(H, W)):
    """``gt_boxes``: {image id: [(class index, box)]}; category ids 10, 20, 30."""
    h, w = size
    anns = []
    for img, insts in gt_boxes.items():
        for c, box in insts:
            anns.append(dict(mask_annotation(_box_mask(box, h, w), img, 10 * (c + 1)),
                             id=len(anns) + 1, iscrowd=int((img, box) in crowd)))
    images = [{"id": i, "file_name": f"{i}.png", "height": h, "width": w,
               "labels": sorted({10 * (c + 1) for c, _ in gt_boxes[i]})} for i in gt_boxes]
    return Manifest(path="mem.json", info={"dataset": "t", "split": "val"}, images=images,
                    categories=[{"id": 10 * (k + 1), "name": n} for k, n in enumerate(names)],
                    annotations=anns)


def _pred(dets, h=H, w=W):
    """``dets``: [(class index, box, score)] -> an inference-style prediction."""
    boxes = np.array([d[1] for d in dets], np.float32).reshape(-1, 4)
    return {"boxes": boxes, "scores": np.array([d[2] for d in dets], np.float32),
            "labels": np.array([d[0] for d in dets], np.int64),
            "masks": (np.stack([_box_mask(d[1], h, w) for d in dets]).astype(bool) if dets
                      else np.zeros((0, h, w), bool))}


def _random_case(rng, n_images=9):
    gt, preds = {}, {}
    for i in rng.permutation(np.arange(1, n_images + 1)):   # ids not in processing order
        i = int(i)
        gt[i] = []
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.integers(0, 40, 2)
            gt[i].append((int(rng.integers(3)), (int(x), int(y), int(x + rng.integers(4, 24)),
                                                 int(y + rng.integers(4, 24)))))
        dets = []
        for c, (x1, y1, x2, y2) in gt[i]:               # jittered hits
            j = rng.integers(-3, 4, 4)
            dets.append((c, (max(0, x1 + j[0]), max(0, y1 + j[1]), x2 + j[2], y2 + j[3]),
                         float(rng.choice([0.3, 0.5, 0.9]))))  # ties across images
        for _ in range(int(rng.integers(0, 5))):           # false positives
            x, y = rng.integers(0, 50, 2)
            dets.append((int(rng.integers(3)), (int(x), int(y), int(x) + 10, int(y) + 10),
                         float(rng.choice([0.3, 0.5, 0.7]))))
        preds[i] = dets
    return gt, preds


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_equals_one_cocoeval_run_even_when_spilled(seed, monkeypatch):
    # tiny chunks: the rows of every image go through the temporary file
    monkeypatch.setattr(pdsl.evaluation.coco_stream, "RowSpool",
                        functools.partial(pdsl.evaluation.spool.RowSpool, chunk_rows=5))
    rng = np.random.default_rng(seed)
    gt, preds = _random_case(rng)
    m = _manifest(gt, crowd={(i, insts[0][1]) for i, insts in gt.items() if insts and i % 4 == 0})
    ev = Evaluator(m)
    for i, dets in preds.items():                            # arbitrary order
        ev.process(i, _pred(dets))
    got, res = ev.evaluate(), ev.results()
    for iou_type in ("segm", "bbox"):
        want = {**coco_instance_metrics(m, res, iou_type), **voc_wsis_map(m, res, iou_type=iou_type),
                **voc_ap_map(m, res, iou_type=iou_type)}
        assert _same({k: got[iou_type][k] for k in want}, want), iou_type


def _square(x, y, s=10):
    return (x, y, x + s, y + s)


def test_voc_ap_and_coco_interpolation_against_hand_computed_pr_curve():
    # one class, 3 GT; ranked detections: TP, FP, TP, FP (duplicate of the first GT), TP
    g1, g2, g3 = _square(0, 0), _square(20, 20), _square(40, 40)
    m = _manifest({1: [(0, g1), (0, g2), (0, g3)]})
    dets = [(0, g1, 0.9), (0, _square(50, 0), 0.8), (0, g2, 0.7), (0, g1, 0.6), (0, g3, 0.5)]
    # precision 1, 1/2, 2/3, 1/2, 3/5 at recall 1/3, 1/3, 2/3, 2/3, 1
    prec, rec = [1, 1 / 2, 2 / 3, 1 / 2, 3 / 5], [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1]
    # VOC AP: area under the monotone envelope: 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5
    voc = (1 + 2 / 3 + 3 / 5) / 3
    assert voc_ap(prec, rec) == pytest.approx(voc)
    # COCO: envelope at recall 0, .01, ..., 1: 34 points at 1, 33 at 2/3, 34 at 3/5, over 101
    coco = (34 * 1 + 33 * 2 / 3 + 34 * 3 / 5) / 101
    # VOC07 11-point: recall levels 0, .1, .2, .3 -> 1; .4, .5, .6 -> 2/3; .7, .8, .9, 1 -> 3/5
    voc07 = (4 * 1 + 3 * 2 / 3 + 4 * 3 / 5) / 11
    assert voc07_ap(prec, rec) == pytest.approx(voc07)
    ev = Evaluator(m)
    ev.process(1, _pred(dets))
    out = ev.evaluate()
    for kind in ("segm", "bbox"):
        assert out[kind]["voc_mAP@0.5"] == pytest.approx(100 * voc)
        assert out[kind]["mAP@0.5"] == pytest.approx(100 * coco)
        assert out[kind]["voc07_mAP@0.5"] == pytest.approx(100 * voc07)
        assert out[kind]["voc_mAP@0.5"] != pytest.approx(out[kind]["mAP@0.5"])
        assert out[kind]["voc07_mAP@0.5"] != pytest.approx(out[kind]["voc_mAP@0.5"])
    assert voc_ap([], []) == 0.0
    # recall that stops at 1/2: the levels above it add nothing (6 of 11 points at precision 1)
    assert voc07_ap([1.0, 0.5], [0.5, 0.5]) == pytest.approx(6 / 11)
    assert voc07_ap([], []) == 0.0


def test_voc_matching_is_chainercvs_not_cocos():
    # two overlapping GT; both detections sit exactly on g2. chainercv: the second one's best GT
    # (g2) is taken -> FP (no fall-back to g1); COCO: it falls back to g1 (IoU 100/120) -> TP.
    g1, g2 = (0, 0, 10, 10), (0, 0, 10, 12)
    m = _manifest({1: [(0, g1), (0, g2)], 2: [(1, _square(30, 30))]})
    ev = Evaluator(m)
    ev.process(1, _pred([(0, g2, 0.9), (0, g2, 0.8)]))
    ev.process(2, _pred([(1, _square(30, 30), 0.9)]))
    out = ev.evaluate()
    # class a: VOC precision 1, 1/2 at recall 1/2, 1/2 -> AP 1/2; COCO: AP 1; class b: 1 both
    assert out["bbox"]["voc_mAP@0.5"] == pytest.approx(100 * (0.5 + 1) / 2)
    assert out["bbox"]["mAP@0.5"] == pytest.approx(100.0)
    assert out["per_class"]["bbox_voc_AP50"] == pytest.approx({"a": 50.0, "b": 100.0,
                                                                "c": float("nan")}, nan_ok=True)


def test_voc_difficult_crowd_regions_are_ignored():
    g, crowd = _square(0, 0), _square(30, 30, 20)
    m = _manifest({1: [(0, g), (0, crowd)]}, crowd={(1, crowd)})
    ev = Evaluator(m)
    # the crowd detection ranks first: ignored, not an FP (else AP would be 1/2)
    ev.process(1, _pred([(0, crowd, 0.9), (0, g, 0.8)]))
    assert ev.evaluate()["segm"]["voc_mAP@0.5"] == pytest.approx(100.0)
    assert pdsl.evaluation.voc_ap.match_detections(np.array([[0.9, 0.0], [0.8, 0.1]]),
                                                   [True, False], [0.5]).tolist() == [[-1, -1]]


def _big_case(n, dets=40, size=(120, 160)):
    h, w = size
    gt = {i: [(i % 3, (10, 10, 60, 60)), ((i + 1) % 3, (70, 40, 150, 110))] for i in range(1, n + 1)}
    m = _manifest(gt, size=size)
    rng = np.random.default_rng(0)

    def predict(img):
        boxes = rng.integers(0, 60, (dets, 2))
        boxes = np.concatenate([boxes, boxes + rng.integers(10, 60, (dets, 2))], 1)
        masks = np.zeros((dets, h, w), bool)
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            masks[k, y1:y2, x1:x2] = True
        return {"boxes": boxes.astype(np.float32), "scores": rng.random(dets).astype(np.float32),
                "labels": rng.integers(0, 3, dets), "masks": masks,
                "class_scores": rng.random(3).astype(np.float32)}
    return m, predict


def test_stream_evaluation_memory_does_not_grow_with_images(tmp_path, monkeypatch):
    monkeypatch.setattr(pdsl.evaluation.coco_stream, "RowSpool",
                        functools.partial(pdsl.evaluation.spool.RowSpool, chunk_rows=2000))
    m, predict = _big_case(60)
    one_image = 40 * 120 * 160                      # bytes of one image's masks
    traced = {}

    def predict_and_measure(img):
        if img["id"] in (15, 60):
            traced[img["id"]] = tracemalloc.get_traced_memory()[0]
        return predict(img)

    tracemalloc.start()
    try:
        metrics, kept = stream_evaluation(m, predict_and_measure, tmp_path / "r.json", keep=[1])
    finally:
        tracemalloc.stop()
    # 45 more images processed: memory held grows by less than one image's masks
    assert traced[60] - traced[15] < one_image, traced
    assert list(kept) == [1] and kept[1]["masks"].shape == (40, 120, 160)
    assert metrics["num_images"] == 60


def test_results_json_streamed_complete_and_atomic(tmp_path):
    m, predict = _big_case(5, dets=3)
    _, _ = stream_evaluation(m, predict, tmp_path / "r.json")
    res = json.loads((tmp_path / "r.json").read_text())
    assert len(res) == 15 and {r["image_id"] for r in res} == {1, 2, 3, 4, 5}
    assert {r["category_id"] for r in res} <= {10, 20, 30}
    assert isinstance(res[0]["segmentation"]["counts"], str)

    def failing(img):
        if img["id"] == 3:
            raise RuntimeError("boom")
        return predict(img)

    with pytest.raises(RuntimeError):
        stream_evaluation(m, failing, tmp_path / "r2.json")
    assert not (tmp_path / "r2.json").exists()
    assert not list(tmp_path.glob(".r2.json*"))          # no temp file left behind


def test_report_table_labels_both_voc_protocols():
    from pdsl.evaluation.report import metrics_table

    g1, g2, g3 = _square(0, 0), _square(20, 20), _square(40, 40)
    m = _manifest({1: [(0, g1), (0, g2), (0, g3)]})
    ev = Evaluator(m)
    ev.process(1, _pred([(0, g1, 0.9), (0, _square(50, 0), 0.8), (0, g2, 0.7), (0, g1, 0.6),
                         (0, g3, 0.5)]))
    table = metrics_table(ev.evaluate())
    coco = next(line for line in table.splitlines() if line.startswith("| mask, COCO 101-point"))
    voc = next(line for line in table.splitlines() if line.startswith("| mask, VOC AP"))
    assert coco.split("|")[3].strip() == "75.6" and voc.split("|")[3].strip() == "75.6"
    assert "75.6" in coco and "(PDSL paper)" in coco and "(IRN, BESTIE, CIM)" in voc


def test_score_a_results_file_under_every_protocol(tmp_path):
    """`cli.py score`'s library side: a COCO results json (here the hand-computed PR curve of
    the test above) gives the same numbers as the evaluator, all three AP protocols."""
    from pdsl.evaluation.score import format_score, score_predictions
    from pdsl.manifest import save_manifest

    g1, g2, g3 = _square(0, 0), _square(20, 20), _square(40, 40)
    m = _manifest({1: [(0, g1), (0, g2), (0, g3)], 2: []})
    mpath = tmp_path / "m.json"
    save_manifest(json.loads(json.dumps(m.to_dict())), mpath)
    dets = [(0, g1, 0.9), (0, _square(50, 0), 0.8), (0, g2, 0.7), (0, g1, 0.6), (0, g3, 0.5)]
    ev = Evaluator(m)
    records = ev.process(1, _pred(dets))
    records.append({"image_id": 99, "category_id": 10, "score": 1.0, "bbox": [0, 0, 5, 5]})
    (tmp_path / "r.json").write_text(json.dumps(records))
    out = score_predictions(tmp_path / "r.json", mpath, out=tmp_path / "s.json")
    voc, voc07 = (1 + 2 / 3 + 3 / 5) / 3, (4 * 1 + 3 * 2 / 3 + 4 * 3 / 5) / 11
    coco = (34 * 1 + 33 * 2 / 3 + 34 * 3 / 5) / 101
    for kind in ("bbox", "segm"):
        assert out[kind]["voc_mAP@0.5"] == pytest.approx(100 * voc)
        assert out[kind]["voc07_mAP@0.5"] == pytest.approx(100 * voc07)
        assert out[kind]["mAP@0.5"] == pytest.approx(100 * coco)
    assert out["records"] == 5 and out["left_out"] == {"unknown_image": 1, "unknown_category": 0}
    assert json.loads((tmp_path / "s.json").read_text())["bbox"]["CorLoc"] == 100.0
    import subprocess
    import sys
    from pathlib import Path

    r = subprocess.run([sys.executable, "cli.py", "score", "--predictions", str(tmp_path / "r.json"),
                        "--manifest", str(mpath)], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == format_score(out).strip()
    assert "VOC07 11-point" in r.stdout and "left out 1 on images" in r.stdout
    # boxes only (another tool's detection output): box metrics, and it says so
    for r in records:
        r.pop("segmentation", None)
    (tmp_path / "b.json").write_text(json.dumps({"annotations": records}))
    out = score_predictions(tmp_path / "b.json", mpath)
    assert "segm" not in out and out["bbox"]["voc07_mAP@0.5"] == pytest.approx(100 * voc07)
    assert "boxes only" in format_score(out)
