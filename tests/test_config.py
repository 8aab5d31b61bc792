"""Config: defaults ← file ← KEY=VALUE overrides, typed; unknown keys refused, valid ones listed."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import yaml

from pdsl.config import (DEFAULTS_PATH, default_config, load_config, parse_override, save_config,
                         to_dict)
from pdsl.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "pipeline" / "configs"
RUN_CONFIGS = ["demo.yaml", "voc2012_r50.yaml", "coco_r50.yaml"]


def test_every_default_key_has_a_comment():
    text = DEFAULTS_PATH.read_text().splitlines()
    leaves = []
    for i, line in enumerate(text):
        m = re.match(r"^(\s*)([a-z_0-9]+):(.*)$", line)
        if not m:
            continue
        value = m.group(3).split("#")[0].strip()
        # a leaf's comment is on its line, or (for long values) on a continuation line below
        block = [line] + [t for t in text[i + 1:i + 3] if t.startswith(" " * (len(m.group(1)) + 4))]
        leaves.append((m.group(2), value, any("#" in t for t in block)))
    assert len(leaves) > 40
    missing = [k for k, _, commented in leaves if not commented]
    assert not missing, f"keys without a comment in defaults.yaml: {missing}"


def test_defaults_have_the_paper_values():
    cfg = default_config()
    assert (cfg.model.n_refine, cfg.model.n_mask, cfg.model.n_seed) == (4, 4, 10)
    assert cfg.model.acl is True and cfg.model.tau == 5.0 and cfg.model.dropout == 0.5
    assert cfg.input.train_scales == list(range(480, 1217, 32))
    assert cfg.input.test_scales == list(range(480, 1153, 96))
    assert (cfg.input.hsv_jitter, cfg.input.crop) == (1.5, 0.9)
    s = cfg.solver
    assert (s.base_lr, s.momentum, s.weight_decay, s.gamma) == (0.01, 0.9, 0.0005, 0.1)
    assert (s.images_per_step, s.images_per_gpu) == (4, 1)


def test_defaults_have_the_authors_code_values():
    """Where the authors' code (pdsl_WSR_50_DC5_1x.yaml and its bases) differs from the paper's
    text, the default is the code's."""
    cfg = default_config()
    m = cfg.model
    assert (m.backbone, m.freeze_at, m.fc6_dim, m.hidden_dim, m.box_pooler) == (
        "resnet50_ws", 5, 2048, 4096, "roipool")
    assert (m.mil_reduction, m.refine_pseudo_box, m.refine_weight, m.refine_box_loss) == (
        "mean", "regressed", "image_score", "weighted_l1")
    assert (m.mask_targets, m.empty_mask_to_box, m.mask_specific_weight) == ("binary", True, "none")
    assert (m.acl_target, m.acl_agnostic, m.seed_match_iou) == ("matched_top", True, 0.0)
    assert cfg.cues.degenerate == "box"
    assert (cfg.input.max_proposals, cfg.input.test_nms) == (4000, 0.3)
    s = cfg.solver
    assert (s.steps, s.max_iter, s.warmup_iters, s.amp) == ([35000, 50000], 60000, 0, "off")
    assert (s.bias_lr_factor, s.weight_decay_bias) == (2.0, 0.0)


@pytest.mark.parametrize("override,msg", [
    ("model.mask_targets=hard", "model.mask_targets must be one of binary, soft"),
    ("model.acl_target=mine", "model.acl_target must be one of matched_top, own"),
    ("cues.degenerate=drop", "cues.degenerate must be one of box, ignore, keep"),
    ("model.freeze_at=6", "model.freeze_at must be in 0..5"),
    ("input.test_nms=0", "input.test_nms must be in"),
])
def test_authors_switches_reject_bad_values(override, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(None, [override])


def test_optimizer_bias_group_and_test_nms():
    import torch

    from pdsl.engine.inference import TestParams
    from pdsl.engine.train import build_optimizer

    cfg = load_config(None, ["solver.base_lr=0.01"])
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    net[0].requires_grad_(False)
    opt = build_optimizer(cfg, net)
    weights, biases = opt.param_groups
    assert [p is net[1].weight for p in weights["params"]] == [True]
    assert [p is net[1].bias for p in biases["params"]] == [True]
    assert (weights["lr"], weights["weight_decay"]) == (0.01, 0.0005)
    assert (biases["lr"], biases["weight_decay"]) == (0.02, 0.0)
    assert TestParams.from_config(cfg, tta=False).nms == 0.3


def test_unknown_key_in_file_lists_valid_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("solver:\n  base_lr: 0.02\n  lr_steps: [10]\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "solver.lr_steps" in msg and str(p) in msg
    assert "valid keys of solver" in msg and "base_lr" in msg and "steps" in msg
    p.write_text("optimizer:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="valid keys of top level: model, input, cues"):
        load_config(p)


def test_unknown_override_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"model\.n_refines.*valid keys of model: backbone"):
        load_config(None, ["model.n_refines=2"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["model.n_refine"])
    with pytest.raises(ConfigError, match="is a section"):
        load_config(None, ["model=3"])


def test_override_values_are_typed():
    cfg = load_config(None, ["solver.base_lr=1", "solver.steps=[10, 20]", "model.pretrained=null",
                             "model.acl=false", "input.train_scales=[160]", "train.threads=2",
                             "model.backbone=tiny", "input.crop=1"])
    assert cfg.solver.base_lr == 1.0 and isinstance(cfg.solver.base_lr, float)
    assert cfg.solver.steps == [10, 20] and cfg.model.pretrained is None
    assert cfg.model.acl is False and cfg.input.train_scales == [160]
    assert cfg.train.threads == 2 and cfg.model.backbone == "tiny" and cfg.input.crop == 1.0
    assert isinstance(cfg.input.pixel_mean[0], float)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    for bad, what in (("solver.max_iter=abc", "solver.max_iter must be int"),
                      ("model.n_refine=2.5", "must be int"),
                      ("model.acl=1", "must be bool"),
                      ("input.train_scales=480", "must be list"),
                      ("input.train_scales=[a]", "must be list"),
                      ("cues.source=offline", "cache, online"),
                      ("solver.images_per_gpu=3", "multiple"),
                      ("solver.steps=[20, 10]", "increasing")):
        with pytest.raises(ConfigError, match=re.escape(what)):
            load_config(None, [bad])


def test_precedence_defaults_file_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("solver:\n  base_lr: 0.02\n  max_iter: 50\nmodel:\n  n_refine: 2\n")
    cfg = load_config(p, ["solver.base_lr=0.03"])
    assert (cfg.solver.base_lr, cfg.solver.max_iter, cfg.model.n_refine) == (0.03, 50, 2)
    assert cfg.solver.momentum == 0.9  # from the defaults


def test_save_load_roundtrip_and_pickle(tmp_path):
    cfg = load_config(None, ["solver.base_lr=0.5", "model.pretrained=null"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["solver"]["base_lr"] == 0.5
    p = pickle.loads(pickle.dumps(cfg))
    assert p.solver.base_lr == 0.5 and to_dict(p) == to_dict(cfg)
    with pytest.raises(AttributeError, match="valid"):
        cfg.solver.nope


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_run_configs_load(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.solver.images_per_step % cfg.solver.images_per_gpu == 0
    if name == "coco_r50.yaml":  # the authors' COCO schedule, no box regression
        assert cfg.solver.max_iter == 240000 and cfg.solver.steps == [140000, 200000]
        assert cfg.model.refine_box_loss == "none" and cfg.model.refine_pseudo_box == "raw"
    if name == "voc2012_r50.yaml":  # the authors' VOC 2012 schedule
        assert cfg.solver.max_iter == 60000 and cfg.solver.steps == [35000, 50000]
    if name != "demo.yaml":  # frozen ResNet-WS, FCs 2048/4096, 4,000 proposals (authors)
        m = cfg.model
        assert (m.backbone, m.freeze_at, m.fc6_dim, m.hidden_dim) == ("resnet50_ws", 5, 2048, 4096)
        assert cfg.input.max_proposals == 4000 and cfg.input.test_nms == 0.3
