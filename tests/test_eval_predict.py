"""Inference, `cli.py eval` and `cli.py predict` on a run trained for a few steps."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pdsl.cues.cache import cache_cues
from pdsl.cues.seeds import SeedParams
from pdsl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = ["solver.max_iter=3", "train.checkpoint_period=2", "solver.warmup_iters=1",
        "solver.steps=[2]", "train.num_workers=0", "input.max_proposals=60"]


def _cli(*args):
    return subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from pdsl.datasets import prepare_data
    from pdsl.engine.train import train

    d = tmp_path_factory.mktemp("evalrun")
    for split, n in (("train", 6), ("val", 3)):
        prepare_data("synthetic", d / f"{split}.json", split, num_images=n, seed=5, progress=False)
        cache_cues(d / f"{split}.json", "builtin", d / f"{split}.h5", workers=1, shard_size=8,
                   params=SeedParams(crop_size=32, max_bank=20, iterations=2), log=lambda s: None)
    torch.manual_seed(0)
    train("pipeline/configs/demo.yaml", d / "train.json", d / "train.h5", d / "run",
          overrides=TINY)
    return d


def test_predict_image_output_frames(run):
    from pdsl.cues.store import CueStore
    from pdsl.engine.inference import TestParams, predict_image
    from pdsl.io import read_image
    from pdsl.manifest import load_manifest
    from pdsl.engine.evaluate import load_run

    m = load_manifest(run / "val.json")
    model, cfg, names, _ = load_run(run / "run", m.class_names)
    img = m.images[0]
    c = CueStore(run / "val.h5").get(img["id"], with_bank=False)
    image = read_image(m.image_path(img))
    for params in (TestParams.from_config(cfg, tta=False),
                   TestParams(scales=(128, 160), flip=True, max_size=320)):
        p = predict_image(model, image, c.boxes, c.scores, params)
        K = len(p["boxes"])
        assert 0 < K <= params.max_det
        assert p["masks"].shape == (K, img["height"], img["width"]) and p["masks"].dtype == bool
        assert (p["boxes"][:, [0, 2]] >= -1e-3).all() and (p["boxes"][:, 2] <= img["width"] + 1e-3).all()
        assert np.all(np.diff(p["scores"]) <= 1e-6)  # sorted by score after NMS
        assert p["labels"].min() >= 0 and p["labels"].max() < len(names)
        # each mask lies inside its box (pasted in the box frame)
        for k in range(K):
            ys, xs = np.nonzero(p["masks"][k])
            if len(xs):
                x1, y1, x2, y2 = p["boxes"][k]
                assert xs.min() >= np.floor(x1) and xs.max() <= np.ceil(x2)


def test_cli_eval_writes_results_metrics_report(run):
    out = run / "run" / "eval" / "val"
    r = _cli("eval", "--run", run / "run", "--manifest", run / "val.json", "--cues",
             run / "val.h5", "--curve", 2)
    assert r.returncode == 0, r.stderr
    assert "| mask |" in r.stdout and "| box |" in r.stdout
    metrics = json.loads((out / "metrics.json").read_text())  # strict JSON (no NaN)
    for kind in ("bbox", "segm"):
        assert {"AP", "AP50", "AP75", "mAP@0.25", "mAP@0.7"} <= set(metrics[kind])
    assert "CorLoc" in metrics["bbox"] and "mAP" in metrics["classification"]
    results = json.loads((out / "coco_instances_results.json").read_text())
    assert results and isinstance(results[0]["segmentation"]["counts"], str)
    report = (out / "report.md").read_text()
    assert "| mask |" in report
    for png in ("predictions.png", "seed_masks.png", "loss_curves.png", "ap_curve.png"):
        assert (out / png).is_file() and f"]({png})" in report, png
    curve = [json.loads(line) for line in (run / "run" / "ap_curve.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curve] == [2, 3]


def test_eval_box_only_and_mixed_gt(run, tmp_path):
    """Box-only GT: box AP, CorLoc, image-level mAP and the VOC box protocols; mask metrics are
    skipped for the images holding box-only instances, and it says how many."""
    man = json.loads((run / "val.json").read_text())
    for a in man["annotations"]:
        a.pop("segmentation")
    (tmp_path / "boxes.json").write_text(json.dumps(man))
    r = _cli("eval", "--run", run / "run", "--manifest", tmp_path / "boxes.json", "--cues",
             run / "val.h5", "--out", tmp_path / "ev")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert "segm" not in m and "mAP" in m["classification"]
    assert {"AP", "AP50", "AP75", "CorLoc", "voc_mAP@0.5", "voc07_mAP@0.5"} <= set(m["bbox"])
    assert m["mask_metrics_skipped"] == {"instances": len(man["annotations"]),
                                         "images": len({a["image_id"] for a in
                                                        man["annotations"]}),
                                         "reason": "no GT masks"}
    assert f"Mask metrics skipped {len(man['annotations'])} GT instances" in r.stdout
    assert "skipped" in (tmp_path / "ev" / "report.md").read_text()
    from pdsl.engine.evaluate import evaluate_run

    full = evaluate_run(run / "run", run / "val.json", run / "val.h5", out_dir=tmp_path / "ev0",
                        report=False)
    assert m["bbox"]["AP50"] == full["bbox"]["AP50"]  # box GT unchanged: same box numbers

    # a mix: one image box-only; mask metrics on the other images alone
    man = json.loads((run / "val.json").read_text())
    first = man["images"][0]["id"]
    for a in man["annotations"]:
        if a["image_id"] == first:
            a["segmentation"] = []
    (tmp_path / "mixed.json").write_text(json.dumps(man))
    mixed = evaluate_run(run / "run", tmp_path / "mixed.json", run / "val.h5",
                         out_dir=tmp_path / "ev2", report=False)
    sub = dict(man, images=man["images"][1:],
               annotations=[a for a in man["annotations"] if a["image_id"] != first])
    (tmp_path / "rest.json").write_text(json.dumps(sub))
    rest = evaluate_run(run / "run", tmp_path / "rest.json", run / "val.h5",
                        out_dir=tmp_path / "ev3", report=False)
    assert mixed["segm"]["AP"] == rest["segm"]["AP"]
    assert mixed["bbox"]["AP"] == full["bbox"]["AP"]
    assert mixed["mask_metrics_skipped"]["images"] == 1


def test_eval_refuses_another_class_set(run, tmp_path):
    from pdsl.engine.evaluate import load_run

    with pytest.raises(ConfigError, match="trained on classes"):
        load_run(run / "run", ["cat", "dog"])
    man = json.loads((run / "val.json").read_text())
    man["categories"][0]["name"] = "zebra"
    (tmp_path / "val.json").write_text(json.dumps(man))
    r = _cli("eval", "--run", run / "run", "--manifest", tmp_path / "val.json", "--cues",
             run / "val.h5")
    assert r.returncode == 2 and "Error:" in r.stderr and "Traceback" not in r.stderr


def test_predict_skips_unreadable_images(run, tmp_path):
    from pdsl.manifest import load_manifest

    m = load_manifest(run / "val.json")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for img in m.images[:2]:
        (imgs / Path(img["file_name"]).name).write_bytes(m.image_path(img).read_bytes())
    (imgs / "broken.png").write_bytes(b"not a png")
    r = _cli("predict", imgs, "--run", run / "run", "--out", tmp_path / "out",
             "--score-thresh", 0.0)
    assert r.returncode == 0, r.stderr
    assert "skipped" in r.stderr and "broken.png" in r.stderr
    doc = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(doc["images"]) == 2 and doc["skipped"][0].endswith("broken.png")
    assert len(list((tmp_path / "out").glob("*_pred.png"))) == 2
