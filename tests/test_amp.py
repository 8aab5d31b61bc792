"""solver.amp: off | fp16 | bf16 — config words (and older booleans), the device policy, loss
scaling for fp16 only, autocast in the training step and in inference (bf16 runs on a CPU)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import pdsl.engine.train as T
from pdsl.amp import autocast, effective_amp, grad_scaler, why_not
from pdsl.config import config_from_dict, load_config
from pdsl.errors import ConfigError
from test_data import make_tiny_set
from test_train import FAST

CONFIGS = Path(__file__).resolve().parents[1] / "pipeline" / "configs"


@pytest.mark.parametrize("text, word", [("fp16", "fp16"), ("bf16", "bf16"), ("off", "off"),
                                        ("'off'", "off"), ("true", "fp16"), ("false", "off")])
def test_amp_words_and_older_booleans(tmp_path, text, word):
    p = tmp_path / "c.yaml"
    p.write_text(f"solver:\n  amp: {text}\n")
    assert load_config(p).solver.amp == word
    assert load_config(None, [f"solver.amp={text}"]).solver.amp == word
    # a run directory or checkpoint saved by an older version still loads
    assert config_from_dict({"solver": {"amp": yaml.safe_load(text)}}).solver.amp == word


def test_bad_amp_value_is_one_clear_error():
    with pytest.raises(ConfigError, match="solver.amp must be one of off, fp16, bf16, got 'fp32'"):
        load_config(None, ["solver.amp=fp32"])
    with pytest.raises(ConfigError, match="solver.amp must be str"):
        load_config(None, ["solver.amp=16"])


def test_shipped_configs_use_words():
    # the paper configs train in float32 as the authors' code does; fp16/bf16 are a switch
    for name, word in (("demo.yaml", "off"), ("voc2012_r50.yaml", "off"),
                       ("coco_r50.yaml", "off")):
        assert yaml.safe_load((CONFIGS / name).read_text())["solver"]["amp"] == word


def test_device_policy_and_loss_scaling_only_for_fp16():
    assert effective_amp("fp16", "cpu") == "off"  # CUDA-only; older `amp: true` configs on a CPU
    assert "CUDA-only" in why_not("fp16", "cpu")
    assert effective_amp("bf16", torch.device("cpu")) == "bf16"
    assert effective_amp("off", "cpu") == "off" and why_not("off", "cpu") is None
    assert grad_scaler("fp16", "cpu").is_enabled()
    assert not grad_scaler("bf16", "cpu").is_enabled()
    assert not grad_scaler("off", "cpu").is_enabled()
    with autocast("bf16", "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast("off", "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_set(tmp_path_factory.mktemp("tiny_amp"))


def _hook_first_conv(model, seen):
    """Record the output dtype of the model's first convolution (a norm layer may compute in
    float32 under autocast, a convolution does not)."""
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, out: seen.append(out.dtype))


def _backbone_dtypes(monkeypatch):
    """Record the dtype of the first convolution of models the trainer builds."""
    seen = []
    build = T.build_model

    def build_and_hook(cfg, num_classes):
        model = build(cfg, num_classes)
        _hook_first_conv(model, seen)
        return model

    monkeypatch.setattr(T, "build_model", build_and_hook)
    return seen


@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float32)])
def test_training_step_runs_under_the_amp_mode(tiny, tmp_path, monkeypatch, capsys, amp, dtype):
    seen = _backbone_dtypes(monkeypatch)
    manifest, cues = tiny
    T.train(None, manifest, cues, tmp_path, overrides=FAST + ["solver.max_iter=2",
                                                             f"solver.amp={amp}"])
    assert seen and set(seen) == {dtype}
    m = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(m) == 2 and all(np.isfinite(x["total"]) for x in m)
    effective = "bf16" if amp == "bf16" else "off"
    assert f"AMP {effective}" in capsys.readouterr().err
    ck = torch.load(tmp_path / "checkpoints/model_0000002.pth", weights_only=True)
    assert ck["config"]["solver"]["amp"] == amp


def test_inference_under_bf16_autocast_matches_float32():
    from pdsl.engine.inference import TestParams, predict_image

    cfg = load_config(None, FAST)
    torch.manual_seed(0)
    model = T.build_model(cfg, 3).eval()
    seen = []
    _hook_first_conv(model, seen)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    xy = rng.uniform(0, [60, 40], (30, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(8, 20, (30, 2))], 1).astype(np.float32)
    scores = np.linspace(1, 0.1, 30).astype(np.float32)
    out = {}
    for amp in ("off", "bf16"):
        p = TestParams(scales=(64, 80), flip=True, max_size=160, amp=amp)
        out[amp] = predict_image(model, image, boxes, scores, p, "cpu")
    assert seen == [torch.float32] * 4 + [torch.bfloat16] * 4  # 2 scales x 2 flips each
    a, b = out["off"], out["bf16"]
    assert b["boxes"].dtype == np.float32 and b["masks"].dtype == bool
    assert b["masks"].shape[1:] == (60, 80)
    # bfloat16 keeps ~3 significant digits: the image-level scores agree to that precision
    np.testing.assert_allclose(b["class_scores"], a["class_scores"], rtol=0.05, atol=2e-3)
    assert TestParams.from_config(load_config(None, ["solver.amp=bf16"]), tta=False).amp == "bf16"
