"""`cli.py pseudo-label`: labelled classes only, threshold and cap, resumable, a COCO json that
pycocotools and the Mask R-CNN retrain read, and its quality against GT."""
import json

import numpy as np
import pytest
from test_data import TINY_RUN, tiny_demo_run

import pdsl.engine.pseudo_label as PL
from pdsl.errors import ConfigError



def test_selection_keeps_labelled_classes_threshold_cap_and_top():
    scores = [0.9, 0.8, 0.7, 0.2, 0.95, 0.1, 0.6]
    labels = [0, 0, 0, 1, 2, 1, 0]
    p = PL.PseudoLabelParams(score_thresh=0.5, per_class_cap=2, keep_top=True)
    # class 0: 0.9, 0.8 (cap 2 of four above 0.5); class 1: none above 0.5 -> its top, 0.2;
    # class 2 is not labelled: its 0.95 is dropped
    assert PL.select_pseudo_labels(scores, labels, [0, 1], p).tolist() == [0, 1, 3]
    p = PL.PseudoLabelParams(score_thresh=0.5, per_class_cap=10, keep_top=False)
    assert PL.select_pseudo_labels(scores, labels, [0, 1], p).tolist() == [0, 1, 2, 6]
    assert PL.select_pseudo_labels(scores, labels, [3], p).tolist() == []
    with pytest.raises(ConfigError, match="per_class_cap"):
        PL.PseudoLabelParams(per_class_cap=0)


def _rle(m):
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def test_quality_counts_by_hand():
    h = w = 10
    g1 = np.zeros((h, w), bool); g1[0:4, 0:4] = True           # 16 px
    g2 = np.zeros((h, w), bool); g2[6:10, 6:10] = True         # 16 px
    d1 = np.zeros((h, w), bool); d1[0:4, 0:3] = True           # IoU 12/16 = 0.75 with g1
    d2 = np.zeros((h, w), bool); d2[0:4, 0:2] = True           # IoU 0.5 with g1, but g1 taken
    d3 = np.zeros((h, w), bool); d3[6:10, 8:10] = True         # IoU 8/16 = 0.5 with g2, class 2
    gts = [{"category_id": 1, "segmentation": _rle(g1)}, {"category_id": 2, "segmentation": _rle(g2)},
           {"category_id": 1, "segmentation": _rle(g2), "iscrowd": 1}]
    anns = [{"category_id": 1, "score": 0.9, "segmentation": _rle(d1)},
            {"category_id": 1, "score": 0.5, "segmentation": _rle(d2)},
            {"category_id": 2, "score": 0.7, "segmentation": _rle(d3)}]
    q = PL.QualityCounter()
    q.add(anns, gts, h, w)
    r = q.result()
    assert (r["labels"], r["gt_instances"], r["matched"]) == (3, 2, 2)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(1.0)
    assert r["matched_mask_iou"] == pytest.approx((0.75 + 0.5) / 2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_demo_run(tmp_path_factory.mktemp("pseudo"), num_images=5, seed=9)


def test_pseudo_labels_resume_and_load_in_pycocotools(run, tmp_path, monkeypatch):
    from pycocotools.coco import COCO

    from pdsl.manifest import load_manifest

    out = tmp_path / "pseudo.json"
    params = PL.PseudoLabelParams(score_thresh=0.0, per_class_cap=3)
    import pdsl.engine.inference as inf

    real, calls = inf.predict_image, []

    def killed_at_the_third_image(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(inf, "predict_image", killed_at_the_third_image)
    with pytest.raises(KeyboardInterrupt):
        PL.pseudo_label(run / "run", run / "train.json", run / "train.h5", out, params,
                        device="cpu", chunk_size=2)
    assert not out.exists() and len(list((tmp_path / "pseudo.json.parts").glob("part-*"))) == 1
    calls.clear()
    monkeypatch.setattr(inf, "predict_image", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    s = PL.pseudo_label(run / "run", run / "train.json", run / "train.h5", out, params,
                        device="cpu", chunk_size=2)
    assert len(calls) == 3  # the first chunk's two images were not labelled again
    assert not (tmp_path / "pseudo.json.parts").exists()
    coco = COCO(str(out))
    m = load_manifest(run / "train.json")
    assert len(coco.getImgIds()) == len(m.images) and s["annotations"] == len(coco.getAnnIds())
    for a in coco.loadAnns(coco.getAnnIds()):
        img = m.image_by_id[a["image_id"]]
        assert a["category_id"] in img["labels"]                # labelled classes only
        assert coco.annToMask(a).sum() == pytest.approx(a["area"])
    per = {}
    for a in coco.loadAnns(coco.getAnnIds()):
        per[(a["image_id"], a["category_id"])] = per.get((a["image_id"], a["category_id"]), 0) + 1
    assert max(per.values()) <= 3
    q = json.loads((tmp_path / "pseudo.quality.json").read_text())["quality"]
    assert q["labels"] == s["annotations"] and q["gt_instances"] > 0
    with pytest.raises(ConfigError, match="never overwritten"):
        PL.pseudo_label(run / "run", run / "train.json", run / "train.h5", out, params, device="cpu")

    # the retrain reads it (one step of the fully supervised Mask R-CNN on the pseudo labels)
    from pdsl.engine.supervised import train_supervised

    train_supervised("pipeline/configs/demo.yaml", run / "train.json", tmp_path / "retrain",
                     annotations=out, overrides=TINY_RUN[:1] + ["solver.max_iter=1", "train.threads=1",
                                                            "train.num_workers=0"])
    assert (tmp_path / "retrain" / "last_checkpoint").is_file()


def test_box_only_gt_labels_without_a_mask_quality(run, tmp_path):
    """Box-only GT (VOC XML, Roboflow): the labels are made; mask-IoU quality needs GT masks."""
    man = json.loads((run / "train.json").read_text())
    for a in man["annotations"]:
        a.pop("segmentation")
    (tmp_path / "boxes.json").write_text(json.dumps(man))
    out = tmp_path / "p.json"
    s = PL.pseudo_label(run / "run", tmp_path / "boxes.json", run / "train.h5", out,
                        PL.PseudoLabelParams(score_thresh=0.0), device="cpu")
    assert "quality" not in s and not (tmp_path / "p.quality.json").exists()
    assert len(json.loads(out.read_text())["annotations"]) == s["annotations"] > 0


def test_parts_of_another_labelling_are_refused(run, tmp_path):
    out = tmp_path / "p.json"
    parts = tmp_path / "p.json.parts"
    parts.mkdir()
    (parts / "stamp.json").write_text(json.dumps({"run": "elsewhere"}))
    with pytest.raises(ConfigError, match="parts of another labelling"):
        PL.pseudo_label(run / "run", run / "train.json", run / "train.h5", out, device="cpu")


def test_tta_scales_and_flip_reach_the_predictor(run, tmp_path, monkeypatch):
    import pdsl.engine.inference as inf

    real, seen = inf.predict_image, []

    def spy(model, image, boxes, scores, test, device, **k):
        seen.append((test.scales, test.flip))
        return real(model, image, boxes, scores, test, device, **k)

    monkeypatch.setattr(inf, "predict_image", spy)
    params = PL.PseudoLabelParams(tta=True, scales=[96, "128"], flip=True)
    PL.pseudo_label(run / "run", run / "train.json", run / "train.h5", tmp_path / "a.json", params,
                    device="cpu")
    assert set(seen) == {((96, 128), True)}
    seen.clear()  # without --tta the run's single middle scale, no flip, whatever was asked
    PL.pseudo_label(run / "run", run / "train.json", run / "train.h5", tmp_path / "b.json",
                    PL.PseudoLabelParams(scales=(96,), flip=True), device="cpu")
    assert set(seen) == {((160,), False)}
    with pytest.raises(ConfigError, match="scales must be positive integers"):
        PL.PseudoLabelParams(tta=True, scales=("big",))


def _disk_scene(seed=0):
    """A red disk (radius 20) on a noisy blue-grey background, 100 x 100, and its GT mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:100, 0:100]
    disk = (xx - 50) ** 2 + (yy - 50) ** 2 <= 20 ** 2
    img = np.empty((100, 100, 3), np.uint8)
    img[:] = (150, 120, 100)
    img[disk] = (40, 40, 200)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    return img, disk


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_label_masks_grabcut_and_refine_recover_the_object_from_a_poor_model_mask():
    from pdsl.cues.seeds import SeedParams

    img, disk = _disk_scene()
    box = np.array([[28.0, 28.0, 73.0, 73.0]], np.float32)
    poor = np.zeros((1, 100, 100), bool)
    poor[0, 40:70, 45:73] = True  # a model mask: a shifted block over part of the disk
    seeds = SeedParams()
    assert PL.label_masks(img, box, poor, "model", seeds) is not None
    assert (PL.label_masks(img, box, poor, "model", seeds) == poor).all()
    before = _iou(poor[0], disk)
    for how in ("grabcut", "refine"):
        m = PL.label_masks(img, box, poor, how, seeds)
        assert m.shape == poor.shape and m.dtype == bool
        assert _iou(m[0], disk) > 0.85 > before + 0.2, how
        assert not m[0, :27].any() and not m[0, :, :27].any()  # never outside its box


def test_label_masks_keep_the_model_mask_where_grabcut_degenerates():
    from pdsl.cues.grabcut import grabcut_from_prior
    from pdsl.cues.seeds import SeedParams

    img, _ = _disk_scene()
    tiny = np.array([[10.0, 10.0, 12.0, 12.0]], np.float32)   # under min_box_px
    model = np.zeros((1, 100, 100), bool)
    model[0, 10:12, 10:12] = True
    for how in ("grabcut", "refine"):
        assert (PL.label_masks(img, tiny, model, how, SeedParams()) == model).all()
    # a prior with no foreground in the box's core gives GrabCut no sure foreground: no result
    assert grabcut_from_prior(img, [28, 28, 73, 73], np.zeros((28, 28), np.float32)) is None
    with pytest.raises(ConfigError, match="masks must be one of"):
        PL.PseudoLabelParams(masks="sam")
    with pytest.raises(ConfigError, match="mask source 'sam'"):
        PL.label_masks(img, tiny, model, "sam", SeedParams())


def test_the_mask_source_and_the_caches_seed_settings_reach_the_labeller(run, tmp_path,
                                                                          monkeypatch):
    from pdsl.cues.store import CueStore

    seen = []

    def square(image, boxes, masks, how, seeds):
        """A known mask for every kept detection: the 5 x 5 top-left square."""
        seen.append((how, seeds.crop_size, seeds.method))
        out = np.zeros_like(masks)
        out[:, :5, :5] = True
        return out

    monkeypatch.setattr(PL, "label_masks", square)
    s = PL.pseudo_label(run / "run", run / "train.json", run / "train.h5", tmp_path / "g.json",
                        PL.PseudoLabelParams(score_thresh=0.0, masks="refine"), device="cpu")
    stored = CueStore(run / "train.h5").meta("seeds")
    assert seen and set(seen) == {("refine", stored["crop_size"], stored["method"])}
    assert json.loads((tmp_path / "g.quality.json").read_text())["params"]["masks"] == "refine"
    anns = json.loads((tmp_path / "g.json").read_text())["annotations"]
    assert s["annotations"] > 0  # what label_masks returned is what the json holds
    assert all(a["area"] == 25 and a["bbox"] == [0, 0, 5, 5] for a in anns)
