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


# ---------------------------------------------------------------- an old run resumes unchanged
def test_saved_config_without_the_new_keys_loads_with_the_old_values():
    from pdsl.config import LEGACY, config_from_dict, default_config, load_config, to_dict

    old = to_dict(default_config())
    for key in LEGACY:
        section, name = key.split(".")
        del old[section][name]
    cfg = config_from_dict(old)
    for key, value in LEGACY.items():
        assert cfg.get_path(key) == value != default_config().get_path(key)
    # a saved config that has the keys keeps its own values; a new run gets the new defaults
    assert config_from_dict(to_dict(default_config())).model.mask0_channels == "per_class"
    assert load_config(None).model.seed_pool == "foreground"
    assert load_config(None, saved=old).model.mask_loss_mean == "image"
    assert load_config(None, ["model.mask_sampling_ratio=1"], saved=old).model.mask_sampling_ratio == 1


def _make_old(run_dir: Path) -> None:
    """Rewrite a run directory as if it had been trained before the LEGACY keys existed."""
    import json

    import torch
    import yaml

    from pdsl.config import LEGACY
    from pdsl.rundir import RECORD, config_hash

    def strip(d):
        for key in LEGACY:
            section, name = key.split(".")
            d[section].pop(name)
        return d

    cfg = strip(yaml.safe_load((run_dir / "config.yaml").read_text()))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    rec = json.loads((run_dir / RECORD).read_text())
    rec["config_sha1"] = config_hash(cfg)
    (run_dir / RECORD).write_text(json.dumps(rec))
    for path in (run_dir / "checkpoints").glob("*.pth"):
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        strip(ckpt["config"])
        torch.save(ckpt, path)


def test_old_run_resumes_with_the_values_it_was_trained_with(tmp_path):
    import torch

    from test_data import make_tiny_set
    from test_train import FAST
    import pdsl.engine.train as T
    from pdsl.config import LEGACY

    manifest, cues = make_tiny_set(tmp_path / "data")
    old_values = [f"{k}={v}" for k, v in LEGACY.items()]
    common = FAST + ["train.checkpoint_period=2"]
    T.train(None, manifest, cues, tmp_path / "full", max_iter=4, overrides=common + old_values)
    T.train(None, manifest, cues, tmp_path / "part", max_iter=2, overrides=common + old_values)
    _make_old(tmp_path / "part")
    # resumed with today's defaults on the command line: the run keeps its old values
    T.train(None, manifest, cues, tmp_path / "part", max_iter=4, overrides=common, resume=True)
    a = torch.load(tmp_path / "full/checkpoints/model_0000004.pth", weights_only=False)
    b = torch.load(tmp_path / "part/checkpoints/model_0000004.pth", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for key, value in LEGACY.items():
        section, name = key.split(".")
        assert b["config"][section][name] == value
