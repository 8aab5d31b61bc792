"""Golden step: the losses and the gradient of every parameter of PDSLNet on one fixed batch are
pinned (per-tensor relative error <= 1e-5), so that a speed-up cannot change the computation.

The model's switches are all set explicitly below (not read from ``pdsl/defaults.yaml``), so a
later change of a default does not move the pinned values. The mask predictors are re-drawn with
a larger spread than their initialisation so that the binarised chain targets (>= 0.5) are far
from the threshold and both the filled-box fallback and real masks occur.

Regenerate the fixture (only when the computation is meant to change, and say why in the commit):

    PDSL_REGEN_GOLDEN=1 PYTHONPATH=$PWD python -m pytest tests/test_golden_step.py -q
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pdsl.model import PDSLNet
from test_model import _batch as model_batch

FIXTURES = Path(__file__).with_name("fixtures")
NUM_CLASSES = 3
PREDICTOR_SEED = 14  # chosen so that no chain logit lies within 3e-4 of the 0.5 threshold
# Every switch of PDSLNet, set explicitly (the values the model was pinned with).
SWITCHES = dict(
    backbone="tiny", pretrained=None, frozen_bn=True, freeze_at=0, n_refine=3, n_mask=3,
    n_seed=3, acl=True, tau=5.0, hidden_dim=16, fc6_dim=None, mask_dim=8, dropout=0.5,
    score_scaling=True, mask_per_image=6, fg_iou=0.5, seed_match_iou=0.0,
    mil_reduction="mean", refine_pseudo_box="regressed", refine_weight="image_score",
    refine_box_loss="weighted_l1", mask_targets="binary", empty_mask_to_box=True,
    mask_specific_weight="none", acl_target="matched_top", acl_agnostic=True,
    box_pooler="roipool", learning="parallel", mask0_channels="single", seed_pool="all",
    mask_loss_mean="image", mask_sampling_ratio=2,
)
# The authors' recipe of the grids: their stride-8 backbone, frozen (the CPU RoIPool's table form
# and channels-last convolutions run), and the mask branch's authors' choices.
AUTHORS = dict(SWITCHES, backbone="tiny_ws", freeze_at=5, mask0_channels="per_class",
               seed_pool="foreground", mask_loss_mean="batch", mask_sampling_ratio=0)
# WSDDN's detection stream is softmaxed over proposals, so its weight's gradient is a sum of terms
# whose mean part cancels (its bias's gradient is exactly zero): float32 rounding that differs
# between CPUs (BLAS kernels) moves it by ~1.1e-5 relative while every other tensor agrees to
# ~4e-7 (measured on two machines). A real change of the computation moves it by orders more.
TOLERANCE = {"grad/wsddn.fc_d.weight": 1e-4}
CASES = {"golden_step.npz": SWITCHES, "golden_step_authors.npz": AUTHORS}


def _batch():
    return model_batch([[1, 0, 1], [0, 1, 0]], P=24, size=64, B_bank=8, seed=7, xy_frac=0.3,
                       wh_min=16)


def golden_step(switches=SWITCHES) -> dict[str, np.ndarray]:
    """Losses (``loss/NAME``) and gradients (``grad/PARAM``) of one training forward/backward."""
    torch.manual_seed(0)
    model = PDSLNet(NUM_CLASSES, **switches).train()
    g = torch.Generator().manual_seed(PREDICTOR_SEED)
    with torch.no_grad():
        for name, p in model.mask_head.named_parameters():
            if name.startswith(("agnostic", "specific")):  # the 1x1 predictors: spread logits
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.3))
        model.mask_head.agnostic.bias.fill_(-0.6)  # some M0 masks empty: the fallback runs
    torch.manual_seed(3)  # dropout
    losses = model(*_batch())
    sum(losses.values()).backward()
    out = {f"loss/{k}": v.detach().numpy().astype(np.float64) for k, v in losses.items()}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"golden step: {name} got no gradient"
            out[f"grad/{name}"] = p.grad.numpy().astype(np.float32)
    return out


@pytest.mark.parametrize("fixture", sorted(CASES))
def test_golden_step_losses_and_gradients(fixture):
    torch.set_num_threads(1)
    got = golden_step(CASES[fixture])
    path = FIXTURES / fixture
    if os.environ.get("PDSL_REGEN_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        np.savez_compressed(path, **got)
        pytest.skip(f"regenerated {path}")
    ref = dict(np.load(path))
    assert sorted(got) == sorted(ref), "the set of losses / trainable parameters changed"
    bad = []
    for k, r in ref.items():
        v = got[k].astype(np.float64)
        r = r.astype(np.float64)
        assert v.shape == r.shape, k
        den = np.linalg.norm(r)
        if den < 1e-6:  # zero up to rounding (WSDDN's fc_d bias: the softmax over proposals
            err = np.linalg.norm(v)  # cancels it), so no relative error: stays zero
        else:
            err = np.linalg.norm(v - r) / den
        if not err <= TOLERANCE.get(k, 1e-5):
            bad.append(f"{k}: relative error {err:.2e}")
    assert not bad, "the step's computation changed:\n" + "\n".join(bad)


@pytest.mark.parametrize("fixture", sorted(CASES))
def test_golden_fixture_is_informative(fixture):
    """The pinned batch exercises what it should: every loss term non-zero, every parameter with
    a non-zero gradient (so a dropped term or a detached path shows up as an error above)."""
    ref = dict(np.load(FIXTURES / fixture))
    for k, v in ref.items():
        if k != "grad/wsddn.fc_d.bias":  # mathematically zero (see above)
            assert np.linalg.norm(v) > 1e-6, f"{k} is zero in the golden step"
