"""The authors' remaining mask-branch choices, each against its paper / earlier switch, on
hand-computed tensors: M^0 with a channel per class, seeds among the foreground proposals, the
mask BCE as one mean over the batch's RoIs, and the mask RoIAlign's sampling ratio."""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from pdsl.model import PDSLNet
from pdsl.model.heads import MaskHead
from pdsl.model.mask_branch import mask_branch_losses
from pdsl.model.seeds import select_seeds


def _softplus(x):
    return math.log1p(math.exp(x))


# ---------------------------------------------------------------- a. M^0: one channel per class
def _m0_model(mask0_channels):
    torch.manual_seed(0)
    model = PDSLNet(3, backbone="tiny", hidden_dim=16, mask_dim=8, n_refine=1, n_mask=0,
                    acl=False, mask0_channels=mask0_channels, mask_targets="binary")
    with torch.no_grad():  # M^0's logit is its bias: -1, 0, 2 per class (one value if single)
        model.mask_head.agnostic.weight.zero_()
        b = model.mask_head.agnostic.bias
        b.copy_(torch.tensor([-1.0, 0.0, 2.0])[:b.numel()] if b.numel() == 3 else torch.tensor([0.5]))
    return model


def _m0_batch():
    g = torch.Generator().manual_seed(0)
    props = torch.tensor([[4, 4, 40, 40], [6, 4, 42, 40], [4, 6, 40, 44], [30, 30, 60, 60]],
                         dtype=torch.float32)
    target = {"labels": torch.tensor([0.0, 0.0, 1.0]), "bank_masks": torch.ones(4, 28, 28),
              "bank_boxes": props.clone(), "proposal_to_bank": torch.arange(4)}
    return torch.randn(1, 3, 64, 64, generator=g), [props], None, [target]


def test_m0_per_class_trains_the_channel_of_the_proposals_class():
    model = _m0_model("per_class").train()
    losses = model(*_m0_batch())
    # every foreground RoI is of class 2 (the only present class), targets all ones:
    # BCE(logit 2, 1) = softplus(-2) at every pixel
    assert abs(losses["loss_mask_agnostic"].item() - _softplus(-2.0)) < 1e-6
    losses["loss_mask_agnostic"].backward()
    g = model.mask_head.agnostic.bias.grad
    assert g[0] == 0 and g[1] == 0 and g[2] < 0         # only class 2's channel learns
    model.eval()
    with torch.no_grad():
        feats = model.backbone(_m0_batch()[0])
        box = torch.tensor([[4.0, 4, 40, 40]]).repeat(3, 1)
        p = model.predict_masks(feats, [box], [torch.tensor([0, 1, 2])], head="agnostic")
    assert torch.allclose(p[:, 0, 0], torch.sigmoid(torch.tensor([-1.0, 0.0, 2.0])))


def test_m0_single_channel_is_the_papers_class_agnostic_head():
    model = _m0_model("single").train()
    assert model.mask_head.agnostic.out_channels == 1
    losses = model(*_m0_batch())
    assert abs(losses["loss_mask_agnostic"].item() - _softplus(-0.5)) < 1e-6


# ---------------------------------------------------------------- b. seeds among the foreground
def test_seeds_are_drawn_among_the_foreground_proposals():
    props = torch.tensor([[0, 0, 10, 10],    # top box of the class
                          [0, 0, 10, 9],     # IoU 0.9
                          [0, 0, 10, 6],     # IoU 0.6
                          [0, 0, 10, 4],     # IoU 0.4: background
                          [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([[0.9], [0.1], [0.1], [0.1], [0.2]])
    labels = torch.tensor([1.0])
    assert select_seeds(scores, props, labels, 4).tolist() == [0, 1, 2, 3]          # paper
    fg = torch.tensor([2, 0, 1])                                                       # IoU >= .5
    assert select_seeds(scores, props, labels, 4, candidates=fg).tolist() == [0, 1, 2]  # authors
    assert select_seeds(scores, props, labels, 2, candidates=fg).tolist() == [0, 1]
    assert select_seeds(scores, props, labels, 2, candidates=fg[:0]).tolist() == []


# ---------------------------------------------------------------- c. one BCE mean over the batch
def test_mask_bce_is_the_mean_over_all_rois_of_the_batch():
    # image A: one RoI, logit 0, target 1 -> ln 2 per pixel; image B: three RoIs, logit 2,
    # target 1 -> softplus(-2) per pixel
    ag = [torch.zeros(1, 4, 4), torch.full((3, 4, 4), 2.0)]
    info = [(torch.ones(1, 4, 4), torch.ones(1, dtype=torch.bool), None, None),
            (torch.ones(3, 4, 4), torch.ones(3, dtype=torch.bool), None, None)]
    net = SimpleNamespace(mask_targets="binary", empty_mask_to_box=True, acl=False,
                          acl_agnostic=True, tau=5.0, mask_loss_mean="batch")
    a, b = math.log(2), _softplus(-2.0)
    batch, _ = mask_branch_losses(net, ag, [[], []], info)
    assert abs(float(batch["loss_mask_agnostic"]) - (a + 3 * b) / 4) < 1e-6
    net.mask_loss_mean = "image"
    image, diag = mask_branch_losses(net, ag, [[], []], info)
    assert abs(float(image["loss_mask_agnostic"]) - (a + b) / 2) < 1e-6
    s, n = diag["m0_bce"]
    assert float(n) == 4 and abs(float(s) / 4 - (a + 3 * b) / 4) < 1e-6


# ---------------------------------------------------------------- d. RoIAlign sampling ratio
def test_mask_roialign_sampling_ratio_zero_samples_each_bin_centre():
    # feature map f(x) = x on pixels x = 0, 1 (two columns); box [0, 0, 2, 2], scale 1: 14 bins of
    # 1/7 px, each smaller than a pixel, so ratio 0 takes 1 sample at the bin centre
    # x_j = (j + 1/2) / 7 - 1/2 (aligned), bilinear, clamped to [0, 1] at the border
    feats = torch.tensor([[0.0, 1.0], [0.0, 1.0]])[None, None]
    box = [torch.tensor([[0.0, 0.0, 2.0, 2.0]])]
    want = torch.tensor([min(max((j + 0.5) / 7 - 0.5, 0.0), 1.0) for j in range(14)])
    head = MaskHead(1, 2, 0, mask_dim=8, spatial_scale=1.0, sampling_ratio=0)
    assert torch.allclose(head.pool(feats, box)[0, 0, 0], want, atol=1e-6)
    # ratio 2 averages two samples per bin side: bin 3 straddles x = 0 -> (0 + 1/28) / 2
    head2 = MaskHead(1, 2, 0, mask_dim=8, spatial_scale=1.0, sampling_ratio=2)
    assert abs(float(head2.pool(feats, box)[0, 0, 0, 3]) - 1 / 56) < 1e-6
    assert PDSLNet(3, backbone="tiny", hidden_dim=16, mask_dim=8).mask_head.sampling_ratio == 0


# ---------------------------------------------------------------- diagnostic switches of the chain
def _reaches(loss, params):
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_chain_on_a_detached_tower_trains_only_its_predictors():
    from test_model import _batch

    for detach in (False, True):
        torch.manual_seed(0)
        model = PDSLNet(3, backbone="tiny", hidden_dim=16, mask_dim=8, n_refine=1, n_mask=2,
                        acl=False, chain_detach_tower=detach).train()
        losses = model(*_batch([[1, 0, 1], [0, 1, 0]]))
        chain = losses["loss_mask_specific"]
        assert _reaches(chain, list(model.mask_head.specific.parameters()))
        assert _reaches(chain, list(model.mask_head.tower.parameters())) == (not detach)
        assert _reaches(losses["loss_mask_agnostic"], list(model.mask_head.tower.parameters()))


def test_a_later_chain_start_zeroes_the_chain_term_before_it():
    from pdsl.config import load_config
    from pdsl.engine.train import loss_weights

    cfg = load_config(None, ["solver.chain_start_iter=3"])
    assert [loss_weights(cfg, s)["loss_mask_specific"] for s in (0, 2, 3, 9)] == [0, 0, 1, 1]
    assert loss_weights(load_config(None), 0)["loss_mask_specific"] == 1.0
