"""The fully supervised Mask R-CNN ceiling (`cli.py train-supervised`): losses, exact resume,
evaluation and prediction through the PDSL commands, `--annotations` targets and their errors.

A tiny synthetic split in tmp (6 + 3 images), the `tiny` backbone at 64 px, on the CPU."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pdsl.errors import ConfigError, DataError

FAST = ["model.backbone=tiny", "model.pretrained=null", "model.freeze_at=0", "model.fc6_dim=null",
        "model.hidden_dim=32", "model.mask_dim=16", "input.train_scales=[48, 64, 80]",
        "input.max_size=128", "input.test_scales=[64]", "solver.optimizer=sgd",
        "solver.base_lr=0.01", "solver.warmup_iters=2", "solver.steps=[3]",
        "solver.images_per_step=2", "solver.images_per_gpu=1", "train.num_workers=0",
        "train.threads=1", "train.device=cpu", "train.log_period=100",
        "train.checkpoint_period=1"]
MASKRCNN_LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                   "loss_rpn_box_reg"}


def _fake_cues(manifest_path, out):
    """A proposals-only cue file for the manifest (evaluation opens one; Mask R-CNN ignores it)."""
    from pdsl.cues.store import CueWriter
    from pdsl.io import file_sha1
    from pdsl.manifest import load_manifest

    m = load_manifest(manifest_path)
    meta = {"dataset": m.dataset, "split": m.split, "num_classes": m.num_classes,
            "class_names": m.class_names}
    with CueWriter(out, meta, kind="proposals") as w:
        for img in m.images:
            w.add(img["id"], img["height"], img["width"], file_sha1(m.image_path(img)),
                  np.array([[0, 0, 20, 20]], np.float32), np.ones(1, np.float32))
    return out


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    from pdsl.datasets import prepare_data

    d = tmp_path_factory.mktemp("supervised")
    for name, n in (("train", 6), ("val", 3)):
        prepare_data("synthetic", d / f"{name}.json", name, num_images=n, seed=3, progress=False)
    _fake_cues(d / "val.json", d / "val.h5")
    return d


@pytest.fixture(scope="module")
def run(split):
    from pdsl.engine.supervised import train_supervised

    train_supervised(None, split / "train.json", split / "run", max_iter=2, overrides=FAST)
    return split / "run"


def _metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_losses_are_the_mask_rcnn_terms_and_finite(run):
    m = _metrics(run)
    assert [x["step"] for x in m] == [1, 2]
    for line in m:
        assert MASKRCNN_LOSSES <= set(line), line
        assert all(math.isfinite(line[k]) for k in MASKRCNN_LOSSES)
        assert line["total"] == pytest.approx(sum(line[k] for k in MASKRCNN_LOSSES))
    ck = _state(run / "checkpoints/model_0000002.pth")
    assert ck["kind"] == "maskrcnn" and ck["maskrcnn"]["anchor_sizes"] == [16, 32, 64, 128]
    assert ck["class_names"][0] == "car" and ck["step"] == 2
    rec = json.loads((run / "run.json").read_text())
    assert rec["kind"] == "maskrcnn" and rec["targets"] == "manifest"
    # the backbone is PDSL's tiny CNN, the heads PDSL's widths, classes + background
    assert any(k.startswith("backbone.body.") for k in ck["model"])
    assert ck["model"]["roi_heads.box_head.fc7.weight"].shape == (32, 32)
    assert ck["model"]["roi_heads.box_predictor.cls_score.weight"].shape[0] == 8  # 7 + 1


def test_resume_continues_at_the_right_step_and_equals_uninterrupted(split, run, tmp_path):
    from pdsl.engine.supervised import train_supervised

    flip = FAST  # the fixture's config (same hash): resumable
    full = tmp_path / "full"
    train_supervised(None, split / "train.json", full, max_iter=4, overrides=flip)
    part = tmp_path / "part"
    shutil.copytree(run, part)
    (part / "checkpoints/model_0000002.pth").unlink()  # resume from step 1, not the last one
    (part / "last_checkpoint").write_text("checkpoints/model_0000001.pth\n")
    train_supervised(None, split / "train.json", part, max_iter=4, resume=True, overrides=flip)
    assert [x["step"] for x in _metrics(part)] == [1, 2, 3, 4]
    a, b = _state(full / "checkpoints/model_0000004.pth"), _state(part / "checkpoints/model_0000004.pth")
    assert a["step"] == b["step"] == 4 and b["scheduler"]["last_epoch"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for x, y in zip(_metrics(full), _metrics(part)):
        assert x["total"] == pytest.approx(y["total"], rel=1e-6) and x["lr"] == y["lr"]
    # a PDSL trainer does not resume it, nor this one a run with other targets
    from pdsl.config import load_config, to_dict
    from pdsl.rundir import check_run_dir

    with pytest.raises(ConfigError, match="holds a maskrcnn run"):
        check_run_dir(part, to_dict(load_config(None, flip)), resume=True)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ConfigError, match="trained on targets manifest"):
        train_supervised(None, split / "train.json", part, annotations=other, max_iter=5,
                         resume=True, overrides=flip)


def test_eval_and_predict_commands_score_it_like_a_pdsl_run(split, run, tmp_path, monkeypatch):
    import cli
    from pdsl.model import maskrcnn

    monkeypatch.setattr(maskrcnn, "TEST_SCORE_THRESH", 0.0)  # a 2-step model: keep every box
    r = CliRunner().invoke(cli.cli, ["eval", "--run", str(run), "--manifest", str(split / "val.json"),
                                     "--cues", str(split / "val.h5"), "--out", str(tmp_path / "ev"),
                                     "--device", "cpu", "--curve", "2"])
    assert r.exit_code == 0, r.output
    curve = [json.loads(x) for x in (run / "ap_curve.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curve] == [1, 2]  # every checkpoint scored
    m = json.loads((tmp_path / "ev/metrics.json").read_text())
    for kind in ("segm", "bbox"):
        assert {"AP", "AP50", "AP75"} <= set(m[kind]) and m[kind]["AP50"] is not None
    assert "CorLoc" in m["bbox"] and m["images"] == 3
    res = json.loads((tmp_path / "ev/coco_instances_results.json").read_text())
    assert res and {"segmentation", "bbox", "score", "category_id"} <= set(res[0])
    assert {x["category_id"] for x in res} <= set(range(1, 8))
    # predict: no proposals are computed for it; masks in the image frame
    from pdsl.manifest import load_manifest

    val = load_manifest(split / "val.json")
    img = val.image_path(val.images[0])
    r = CliRunner().invoke(cli.cli, ["predict", str(img), "--run", str(run), "--out",
                                     str(tmp_path / "pred"), "--score-thresh", "0", "--tta",
                                     "--device", "cpu"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "pred/predictions.json").read_text())
    assert doc["annotations"] and doc["annotations"][0]["segmentation"]["size"] == [160, 160]


def test_predict_image_frames_with_tta(split, run, monkeypatch):
    from pdsl.engine.evaluate import load_run
    from pdsl.engine.inference import TestParams, predict_image
    from pdsl.io import read_image
    from pdsl.manifest import load_manifest
    from pdsl.model import maskrcnn

    monkeypatch.setattr(maskrcnn, "TEST_SCORE_THRESH", 0.0)
    m = load_manifest(split / "val.json")
    model, cfg, names, _ = load_run(run, m.class_names)
    image = read_image(m.image_path(m.images[0]))
    p = predict_image(model, image, np.zeros((0, 4)), np.zeros(0),
                      TestParams(scales=(64, 96), flip=True, max_size=200, max_det=30))
    K = len(p["boxes"])
    assert 0 < K <= 30 and p["masks"].shape == (K, 160, 160) and p["masks"].dtype == bool
    assert (p["boxes"] >= -1e-3).all() and (p["boxes"] <= 160 + 1e-3).all()
    assert np.all(np.diff(p["scores"]) <= 1e-6) and p["labels"].max() < len(names)
    assert p["class_scores"].shape == (7,) and p["class_scores"].max() == pytest.approx(p["scores"][0])
    assert model.transform.min_size == (48, 64, 80)  # the training scales are restored


def _annotations(split):
    return json.loads((split / "train.json").read_text())


def test_annotations_replace_gt_crowd_and_dropped_class_are_no_targets(split, tmp_path):
    from pdsl.config import load_config
    from pdsl.engine.supervised_data import InstanceDataset
    from pdsl.manifest import load_manifest

    d = _annotations(split)
    manifest = load_manifest(split / "train.json")
    gt = InstanceDataset(manifest, load_config(None, FAST), verbose=False)
    counts = np.bincount(np.concatenate([gt.targets(i)["labels"] for i in range(len(gt))]),
                         minlength=8)
    drop = int(np.argmax(counts))  # the most frequent class (label = index + 1)
    cat = manifest.categories[drop - 1]["id"]
    anns = [a for a in d["annotations"] if a["category_id"] != cat]
    crowd = dict(anns[0], iscrowd=1, id=10_000)
    poly = {"image_id": anns[0]["image_id"], "category_id": anns[0]["category_id"], "iscrowd": 0,
            "segmentation": [[10, 10, 40, 10, 40, 30, 10, 30]]}  # a polygon, no bbox
    path = tmp_path / "pseudo.json"
    path.write_text(json.dumps({"images": d["images"], "categories": d["categories"],
                                "annotations": anns + [crowd, poly]}))
    ds = InstanceDataset(manifest, load_config(None, FAST), annotations=path, verbose=False)
    labels = [ds.targets(i)["labels"] for i in range(len(ds))]
    assert drop not in np.concatenate(labels) and len(np.concatenate(labels)) == len(anns) + 1
    with_anns = {a["image_id"] for a in anns}
    assert set(ds.ids) == with_anns  # images left without annotations are skipped
    k = ds.ids.index(poly["image_id"])
    t = ds.targets(k)
    assert t["masks"].shape[1:] == (160, 160) and t["masks"][-1].sum() == 30 * 20
    np.testing.assert_allclose(t["boxes"][-1], [10, 10, 40, 30])
    image, target = ds[(k, 0, 0)]
    assert image.shape == (3, 160, 160) and target["masks"].dtype == torch.uint8
    # flipped sample: masks and boxes mirror together
    tf = ds.targets(k, flip=True)
    np.testing.assert_array_equal(tf["masks"][-1], t["masks"][-1][:, ::-1])
    np.testing.assert_allclose(tf["boxes"][-1], [120, 10, 150, 30])
    # and the command trains on them, recording which targets it used
    import cli

    out = tmp_path / "run"
    r = CliRunner().invoke(cli.cli, ["train-supervised", "--manifest", str(split / "train.json"),
                                     "--out", str(out), "--annotations", str(path),
                                     "--max-iter", "1", *FAST])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "run.json").read_text())
    assert rec["kind"] == "maskrcnn" and rec["targets"] == str(path.resolve())
    assert len(rec["targets_sha1"]) == 40 and (out / "checkpoints/model_0000001.pth").is_file()


def test_annotations_errors_name_the_file(split, tmp_path):
    import cli

    d = _annotations(split)
    bad = tmp_path / "wrong_ids.json"
    bad.write_text(json.dumps({"annotations": [dict(a, image_id=a["image_id"] + 999)
                                               for a in d["annotations"][:3]]}))
    out = tmp_path / "run"
    args = ["train-supervised", "--manifest", str(split / "train.json"), "--out", str(out),
            "--annotations", str(bad), "--max-iter", "1", *FAST]
    r = CliRunner().invoke(cli.cli, args)
    assert r.exit_code == 2, r.output
    assert f"annotations {bad}" in r.output and "not images of manifest" in r.output
    assert not out.exists()  # nothing written
    from pdsl.config import load_config
    from pdsl.engine.supervised_data import InstanceDataset
    from pdsl.manifest import load_manifest

    manifest = load_manifest(split / "train.json")
    for doc, msg in (({"annotations": [dict(d["annotations"][0], category_id=99)]}, "category_id 99"),
                     ({"annotations": [dict(d["annotations"][0], segmentation={"size": [5, 5],
                                                                               "counts": "x"})]},
                      "RLE size"),
                     ({"foo": 1}, "COCO instances json")):
        p = tmp_path / "bad.json"
        p.write_text(json.dumps(doc))
        with pytest.raises(DataError, match=msg) as e:
            InstanceDataset(manifest, load_config(None, FAST), annotations=p, verbose=False)
        assert str(p) in str(e.value)
