"""`cli.py export-model` and the released demo model that `cli.py predict` uses by default."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from test_data import tiny_demo_run
from pdsl.engine.release import RELEASED_DEMO, export_model
from pdsl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_demo_run(tmp_path_factory.mktemp("release"), num_images=3, seed=4)


def _image(path, seed=11):
    from pdsl.datasets.synthetic import render_image

    img, insts = render_image(np.random.default_rng(seed))
    cv2.imwrite(str(path), img)
    return insts


def _predict(run_dir, image_path):
    from pdsl.engine.evaluate import load_run
    from pdsl.engine.inference import TestParams, predict_image
    from pdsl.io import read_image
    from pdsl.proposals import make_source

    model, cfg, names, _ = load_run(run_dir)
    image = read_image(image_path)
    H, W = image.shape[:2]
    prop = make_source("builtin").get({"id": 1, "file_name": image_path.name, "height": H,
                                       "width": W}, image_path, image=image)
    return predict_image(model, image, prop["boxes"], prop["scores"], TestParams.from_config(cfg, False)), names


def test_export_is_weights_only_and_predicts_like_the_run(run, tmp_path):
    out = tmp_path / "rel"
    path = export_model(run / "run", out)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert set(ckpt) >= {"model", "config", "class_names"}
    assert not set(ckpt) & {"optimizer", "scheduler", "scaler", "rng"}
    assert path.stat().st_size < (run / "run" / (run / "run" / "last_checkpoint").read_text().strip()).stat().st_size
    assert json.loads((out / "run.json").read_text())["categories"]
    _image(tmp_path / "x.png")
    p_run, _ = _predict(run / "run", tmp_path / "x.png")
    p_rel, _ = _predict(out, tmp_path / "x.png")
    assert np.allclose(p_run["scores"], p_rel["scores"]) and (p_run["masks"] == p_rel["masks"]).all()
    # half precision: half the bytes, predictions loaded back in float32
    half = export_model(run / "run", tmp_path / "half", half=True)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    p_half, _ = _predict(tmp_path / "half", tmp_path / "x.png")
    assert len(p_half["scores"]) > 0
    with pytest.raises(ConfigError, match="never overwritten"):
        export_model(run / "run", out)
    export_model(run / "run", out, force=True)


def test_released_demo_model_predicts_a_generated_image(tmp_path):
    assert (RELEASED_DEMO / "model.pth").stat().st_size <= 10 * 1024 * 1024
    metrics = json.loads((RELEASED_DEMO / "metrics.json").read_text())
    assert metrics["segm"]["AP50"] > 0 and metrics["bbox"]["AP50"] > 0
    seeds = (3, 4, 5, 11)
    truths = [{c for c, _ in _image(tmp_path / f"shapes{k}.png", seed=k)} for k in seeds]
    # from another directory: nothing of the training run (its backbone.pth) is needed
    r = subprocess.run([sys.executable, str(REPO / "cli.py"), "predict",
                        *[f"shapes{k}.png" for k in seeds], "--out", "pred", "--device", "cpu"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from pdsl.datasets.synthetic import CLASS_NAMES

    preds = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    names = {c["id"]: c["name"] for c in preds["categories"]}
    assert sorted(names.values()) == sorted(CLASS_NAMES)
    assert all((tmp_path / "pred" / f"shapes{k}_pred.png").is_file() for k in seeds)
    # the trained model finds a class of the generated objects in most images (one draw of
    # the demo finds nothing above the 0.3 score threshold on some images: its weakest class
    # has mask AP50 ~35)
    image = {im["file_name"]: im["id"] for im in preds["images"]}
    hits = 0
    for k, truth in zip(seeds, truths):
        found = {names[a["category_id"]] for a in preds["annotations"]
                 if a["image_id"] == image[f"shapes{k}.png"]}
        hits += bool(found & {CLASS_NAMES[c] for c in truth})
    assert hits >= 3, hits
