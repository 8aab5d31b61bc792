"""The mask chain's diagnostics: computed on hand-made masks, summed over a step's passes, written
to every metrics.jsonl line as ``diag_*`` keys (never ``loss_*``: not in the total, not in the
grid's loss table), drawn in the run report and tabulated by the grid."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from pdsl.engine.grid import final_losses
from pdsl.engine.loop import add_diagnostics, diagnostics_line
from pdsl.evaluation.report import mask_chain_curves
from pdsl.losses import mask_self_training_loss
from pdsl.model.mask_branch import mask_branch_losses


def _sp(x):
    return math.log1p(math.exp(x))


def _hand():
    # RoI 0: M^0 logit -3 everywhere (prob < .5: an empty mask for M^1), target all ones (the
    # filled box); RoI 1: M^0 logit +3, target all zeros (empty). M^1 logit 0 everywhere.
    ag = torch.stack([torch.full((4, 4), -3.0), torch.full((4, 4), 3.0)])
    t0 = torch.stack([torch.ones(4, 4), torch.zeros(4, 4)])
    return ag, t0, torch.ones(2, dtype=torch.bool), [torch.zeros(2, 4, 4)]


@pytest.mark.parametrize("targets", ["binary", "soft"])
def test_chain_statistics_on_hand_made_masks(targets):
    ag, t0, valid, spec = _hand()
    stats = {}
    l_ag, l_sp = mask_self_training_loss(ag, t0, valid, spec, None, targets=targets, stats=stats)
    ratio = {k: float(s) / float(c) for k, (s, c) in stats.items()}
    assert ratio["m0_bce"] == pytest.approx(_sp(3.0), abs=1e-5)        # both RoIs: softplus(3)
    assert ratio["m0_empty_before_fallback"] == 0.5 and ratio["m0_fallback_box"] == 0.5
    assert ratio["m1_empty_before_fallback"] == 0.5                    # RoI 0's M^0 is empty
    assert ratio["m1_fallback_box"] == (0.5 if targets == "binary" else 0.0)
    # binary: M^1's targets are the filled box (RoI 0) and all ones (RoI 1): BCE(0, 1) = ln 2
    if targets == "binary":
        assert ratio["m1_bce"] == pytest.approx(math.log(2), abs=1e-6)
    assert ratio["m1_bce"] == pytest.approx(float(l_sp), abs=1e-6)
    assert float(stats["m0_bce"][1]) == 2


def test_acl_target_mean_and_the_step_aggregate():
    ag, t0, valid, spec = _hand()
    net = SimpleNamespace(mask_targets="binary", empty_mask_to_box=True, acl=True,
                          acl_agnostic=True, tau=5.0, mask_loss_mean="batch")
    info = [(t0[:1], valid[:1], None, torch.tensor([0.2])),
            (t0[1:], valid[1:], None, torch.tensor([0.4]))]
    _, diag = mask_branch_losses(net, [ag[:1], ag[1:]], [[spec[0][:1]], [spec[0][1:]]], info)
    totals = {}
    add_diagnostics(totals, diag)
    add_diagnostics(totals, {"acl_target": (torch.tensor(0.9), torch.tensor(1.0)),
                             "m9_bce": (torch.tensor(0.0), torch.tensor(0.0))})
    line = diagnostics_line(totals)
    assert line["diag_acl_target"] == pytest.approx((0.2 + 0.4 + 0.9) / 3)
    assert line["diag_m0_fallback_box"] == 0.5
    assert "diag_m9_bce" not in line                                   # no RoI: left out
    assert not any(k.startswith("loss") for k in line)


def test_every_metrics_line_has_the_diagnostics(tmp_path):
    from test_data import make_tiny_set
    from test_train import FAST
    import pdsl.engine.train as T

    manifest, cues = make_tiny_set(tmp_path / "data")
    out = tmp_path / "run"
    T.train(None, manifest, cues, out, max_iter=2,
            overrides=FAST + ["model.n_mask=2", "model.acl=true"])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        for m in range(3):
            for k in ("bce", "empty_before_fallback", "fallback_box"):
                assert f"diag_m{m}_{k}" in r, (m, k, sorted(r))
        assert 0 <= r["diag_m1_fallback_box"] <= r["diag_m1_empty_before_fallback"] <= 1
        assert 0 < r["diag_acl_target"] <= 1
        loss = sum(v for k, v in r.items() if k.startswith("loss_"))
        assert r["total"] == pytest.approx(loss)
    assert not any(k.startswith("diag") for k in final_losses(out / "metrics.jsonl"))
    assert "diag_m2_bce" in final_losses(out / "metrics.jsonl", prefix="diag_")
    assert mask_chain_curves(out, tmp_path / "t.png", tmp_path / "b.png")
    assert (tmp_path / "t.png").stat().st_size > 0 and (tmp_path / "b.png").stat().st_size > 0
    assert not mask_chain_curves(tmp_path / "nowhere", tmp_path / "x.png", tmp_path / "y.png")
