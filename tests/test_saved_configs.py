"""Configs saved before a model key existed keep the behaviour they were trained with: the released
demo model predicts exactly as it did when it was released (a fixture recorded with the code of
that time), and an old run's config resumes with the values it was trained with.

Re-record the prediction fixture (only on purpose):

    PDSL_REGEN_RELEASE=1 PYTHONPATH=$PWD python -m pytest tests/test_saved_configs.py -q
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from pdsl.engine.release import RELEASED_DEMO

FIXTURE = Path(__file__).with_name("fixtures") / "demo_release_prediction.npz"


def _release_prediction(tmp_path) -> dict:
    from pdsl.datasets.synthetic import render_image
    from pdsl.engine.evaluate import load_run
    from pdsl.engine.inference import TestParams, predict_image
    from pdsl.proposals import make_source

    img, _ = render_image(np.random.default_rng(3))
    path = tmp_path / "shapes.png"
    cv2.imwrite(str(path), img)
    image = cv2.imread(str(path))
    H, W = image.shape[:2]
    prop = make_source("builtin").get({"id": 1, "file_name": path.name, "height": H, "width": W},
                                      path, image=image)
    model, cfg, _, _ = load_run(RELEASED_DEMO)
    p = predict_image(model, image, prop["boxes"], prop["scores"], TestParams.from_config(cfg, False))
    return {"boxes": p["boxes"], "scores": p["scores"], "labels": p["labels"],
            "masks": np.packbits(p["masks"].astype(bool), axis=-1)}


def test_released_demo_predicts_as_when_released(tmp_path):
    import torch

    torch.set_num_threads(1)
    got = _release_prediction(tmp_path)
    if os.environ.get("PDSL_REGEN_RELEASE"):
        FIXTURE.parent.mkdir(exist_ok=True)
        np.savez_compressed(FIXTURE, **got)
        pytest.skip(f"recorded {FIXTURE}")
    ref = dict(np.load(FIXTURE))
    assert len(ref["scores"]) > 0
    assert got["labels"].tolist() == ref["labels"].tolist()
    assert np.allclose(got["scores"], ref["scores"], rtol=1e-4, atol=1e-6)
    assert np.allclose(got["boxes"], ref["boxes"], atol=1e-3)
    a, b = np.unpackbits(got["masks"], axis=-1), np.unpackbits(ref["masks"], axis=-1)
    assert a.shape == b.shape and (a != b).mean() < 1e-4
