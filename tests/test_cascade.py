"""``model.learning: cascade`` — the detection-to-segmentation baseline of Fig. 3 (§4.4) — and
the guarantee that ``learning: parallel`` is PDSL as before."""
import pytest
import torch
from torch import nn

from pdsl.config import load_config
from pdsl.errors import ConfigError
from pdsl.losses import oicr_pseudo_labels
from pdsl.model import PDSLNet
from pdsl.model import mask_branch
from pdsl.model.cascade import cascade_mask_inputs, detection_mask_targets, final_detections
from test_model import _batch as _model_batch

torch.set_num_threads(1)
C = 3


def _batch(labels, P=30, **kw):
    """test_model's random batch, 30 proposals per image (the golden values below use them)."""
    return _model_batch(labels, P=P, **kw)


def _tiny(**kw):
    torch.manual_seed(0)
    args = dict(backbone="tiny", hidden_dim=64, mask_dim=16, n_refine=2, n_mask=2, freeze_at=0,
                mask_per_image=4)
    args.update(kw)
    return PDSLNet(C, **args).train()


# ---------------------------------------------------------------- the cascade's functions
def test_final_detections_hand_example():
    props = torch.tensor([[0, 0, 10, 10], [20, 0, 30, 10], [0, 0, 12, 10]], dtype=torch.float32)
    scores = torch.tensor([[0.2, 0.9], [0.7, 0.1], [0.1, 0.0]])
    cls, boxes = final_detections(scores, props, torch.tensor([1.0, 1.0]))
    assert cls.tolist() == [0, 1] and boxes.tolist() == [[20, 0, 30, 10], [0, 0, 10, 10]]
    pb = props[:, None, :].repeat(1, 2, 1)
    pb[1, 0] = torch.tensor([21.0, 1, 31, 11])         # head n_r regressed p1 for class 0
    cls, boxes = final_detections(scores, props, torch.tensor([1.0, 0.0]), pseudo_boxes=pb)
    assert cls.tolist() == [0] and boxes.tolist() == [[21, 1, 31, 11]]
    # the boxes eq. 3 / oicr_pseudo_labels assign proposals to: p1 (IoU .68) yes, p0, p2 no
    cls_t = oicr_pseudo_labels(scores, props, torch.tensor([1.0, 0.0]), pseudo_boxes=pb)[0]
    assert cls_t.tolist() == [0, 1, 0]
    cls, boxes = final_detections(scores, props, torch.zeros(2))
    assert cls.shape == (0,) and boxes.shape == (0, 4)


def test_detection_mask_targets_hand_example():
    props = torch.tensor([[0, 0, 28, 28], [28, 0, 56, 28], [0, 0, 27, 28]], dtype=torch.float32)
    bank_boxes = props.clone()
    bank_masks = torch.stack([torch.rand(28, 28), torch.zeros(28, 28), torch.ones(28, 28)])
    p2b = torch.tensor([0, 1, 2])
    det = torch.tensor([[0, 0, 14, 28], [28, 0, 56, 28]], dtype=torch.float32)
    # D0 is nearest p2 (IoU 392/756 > 392/784 for p0): its mask is bank row 2 (ones) cut to D0
    boxes = torch.cat([det[:1], props, det[1:]])
    det_index = torch.tensor([0, 0, 0, 0, 1])
    for masks in (bank_masks, (bank_masks * 255).to(torch.uint8)):
        t, v = detection_mask_targets(boxes, det_index, det, props, masks, bank_boxes, p2b,
                                      bank_valid=torch.tensor([True, False, True]))
        assert v.tolist() == [True, True, True, True, False]    # D1's row 1 is invalid
        assert torch.all(t[0] == 1)                             # D0 itself: all foreground
        # p0 = [0, 28]: pixel centres x = j + .5 lie in D0 for j <= 13, beyond it 0
        assert torch.all(t[1, :, :14] == 1) and torch.all(t[1, :, 14:] == 0)
        assert torch.all(t[2] == 0) and torch.all(t[4] == 0)    # p1 lies outside D0
        assert torch.all(t[3, :, :15] == 1) and torch.all(t[3, :, 15:] == 0)  # x=(j+.5)27/28
    t, v = detection_mask_targets(boxes[:0], det_index[:0], det, props, bank_masks, bank_boxes,
                                  p2b)
    assert t.shape == (0, 28, 28) and v.shape == (0,)


def test_cascade_mask_inputs_boxes_classes_and_cap():
    props = torch.tensor([[0, 0, 20, 20], [1, 0, 21, 20], [40, 40, 60, 60], [0, 1, 20, 21],
                          [41, 40, 61, 60], [0, 50, 9, 60]], dtype=torch.float32)
    scores = torch.zeros(6, C)
    scores[3, 0], scores[2, 2] = 0.9, 0.8              # top boxes: class 0 p3, class 2 p2
    labels = torch.tensor([1.0, 0.0, 1.0])
    bank = (torch.rand(6, 28, 28), props.clone(), torch.arange(6))
    boxes, cls, t, v = cascade_mask_inputs(scores, props, labels, None, 0.5, 64, *bank,
                                           image_size=(64, 64))
    # the detections first, then the assigned proposals in ascending order
    assert boxes.tolist() == [props[3].tolist(), props[2].tolist()] + props[:5].tolist()
    assert cls.tolist() == [0, 2, 0, 0, 2, 0, 2] and v.all() and t.shape == (7, 28, 28)
    # every box of class 0 reads p3's mask (p3's row) cut to p3: p3 in its own frame is its mask
    assert torch.allclose(t[0], bank[0][3], atol=1e-5) and torch.allclose(t[0], t[5])
    torch.manual_seed(0)
    boxes, cls, t, v = cascade_mask_inputs(scores, props, labels, None, 0.5, 2, *bank)
    assert boxes.shape == (4, 4) and cls[:2].tolist() == [0, 2]   # 2 detections + 2 sampled
    # a regressed box beyond the image is clipped to it
    pb = props[:, None, :].repeat(1, C, 1)
    pb[3, 0] = torch.tensor([-5.0, 1, 20, 70])
    boxes, *_ = cascade_mask_inputs(scores, props, labels, pb, 0.5, 64, *bank, image_size=(64, 64))
    assert boxes[0].tolist() == [0, 1, 20, 64]


# ---------------------------------------------------------------- the switch
def test_learning_key_and_acl_conflict():
    assert load_config(None).model.learning == "parallel"
    with pytest.raises(ConfigError, match="model.acl=false"):
        load_config(None, ["model.learning=cascade"])
    assert load_config(None, ["model.learning=cascade", "model.acl=false"]).model.acl is False
    with pytest.raises(ConfigError, match="model.learning must be one of parallel, cascade"):
        load_config(None, ["model.learning=serial"])
    with pytest.raises(ConfigError, match="acl=False"):
        _tiny(learning="cascade")
    with pytest.raises(ConfigError, match="learning"):
        _tiny(learning="serial")


# Losses and gradient norm recorded with the code before the switch existed (commit c69bfb5, CPU
# float32); parallel mode must reproduce them (bitwise on the same machine, all gradients
# compared when recorded; 1e-5 here for other CPUs' kernels).
GOLDEN = {
    "authors": (dict(), [0.6376224756240845, 0.6867974400520325, 0.46238699555397034,
                         0.924079418182373, 0.4572281837463379], 1.0315871262920138),
    "paper": (dict(mil_reduction="sum", refine_pseudo_box="raw", refine_weight="top_score",
                   refine_box_loss="smooth_l1", mask_targets="soft",
                   mask_specific_weight="image_score", acl_target="own", acl_agnostic=False,
                   seed_match_iou=0.5),
              [1.9128671884536743, 0.2751699984073639, 0.462383896112442, 0.30532291531562805,
               0.3098609745502472], 0.7817087147392734),
}


# the mask-branch switches added later, at the values these were recorded with
BEFORE_MASK_SWITCHES = dict(mask0_channels="single", seed_pool="all", mask_loss_mean="image",
                            mask_sampling_ratio=2)


@pytest.mark.parametrize("variant", list(GOLDEN))
@pytest.mark.parametrize("learning", [None, "parallel"])
def test_parallel_is_unchanged(variant, learning):
    kw, losses_ref, grad_norm_ref = GOLDEN[variant]
    model = _tiny(mask_per_image=2, **kw, **BEFORE_MASK_SWITCHES,
                  **({} if learning is None else {"learning": learning}))
    torch.manual_seed(1)   # dropout, the mask_per_image sample (3 foreground proposals > 2)
    losses = model(*_batch([[1, 0, 1], [0, 1, 0], [0, 0, 0]]))
    sum(losses.values()).backward()
    got = torch.stack([v.detach().double() for v in losses.values()])
    assert torch.allclose(got, torch.tensor(losses_ref, dtype=torch.float64), rtol=1e-5, atol=0)
    norm = torch.stack([p.grad.double().pow(2).sum() for p in model.parameters()]).sum().sqrt()
    assert abs(float(norm) - grad_norm_ref) <= 1e-5 * grad_norm_ref


# ---------------------------------------------------------------- the two graphs differ (Fig. 3)
def _reaches(loss, params):
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return any(g is not None and bool(g.abs().sum() > 0) for g in grads)


@pytest.mark.parametrize("learning,acl", [("parallel", True), ("parallel", False),
                                          ("cascade", False)])
def test_mask_losses_reach_the_backbone_only_in_parallel(learning, acl):
    model = _tiny(learning=learning, acl=acl)
    losses = model(*_batch([[1, 0, 1], [0, 1, 0]], P=20))
    seg = losses["loss_mask_agnostic"] + losses["loss_mask_specific"] + losses["loss_acl"]
    det = losses["loss_mil"] + losses["loss_refine"]
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    assert _reaches(seg, backbone) == (learning == "parallel")
    assert _reaches(det, backbone)                                 # detection trains it
    assert _reaches(seg, list(model.mask_head.parameters()))
    assert (losses["loss_acl"].item() > 0) == acl
    sum(losses.values()).backward()                                # every parameter in the graph
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


class _FixedLastHead(nn.Module):
    """A refinement head whose foreground scores are chosen by the test (zero deltas)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, x):
        return self.logits + 0 * x.sum(), x.new_zeros(x.shape[0], C * 4) + 0 * x[:, :1]


def _mask_targets_by_box(learning, top, monkeypatch):
    """{proposal box: M^0 target} of one training step whose last head scores ``top`` highest."""
    props = torch.tensor([[8, 8, 40, 40], [10, 8, 42, 40], [8, 10, 40, 44], [12, 12, 40, 40],
                          [44, 44, 60, 60]], dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    target = {"labels": torch.tensor([1.0, 0.0, 0.0]), "bank_boxes": props.clone(),
              "bank_masks": torch.rand(5, 28, 28, generator=g), "proposal_to_bank": torch.arange(5)}
    model = _tiny(n_refine=1, n_mask=1, acl=False, learning=learning, mask_targets="soft")
    logits = torch.zeros(5, C + 1)
    logits[top, 1] = 5.0
    model.refine[0] = _FixedLastHead(logits)
    seen = {}
    model.mask_head.register_forward_hook(lambda m, inp, out: seen.update(boxes=inp[1][0]))
    real = mask_branch.mask_self_training_loss

    def spy(logits_0, m_t, valid, *a, **k):
        seen.update(targets=m_t.clone(), valid=valid.clone())
        return real(logits_0, m_t, valid, *a, **k)

    monkeypatch.setattr(mask_branch, "mask_self_training_loss", spy)
    model(torch.randn(1, 3, 64, 64, generator=g), [props], None, [target])
    assert seen["valid"].all()
    return {tuple(b.tolist()): t for b, t in zip(seen["boxes"], seen["targets"])}


def test_pseudo_masks_follow_detection_only_in_cascade(monkeypatch):
    # proposals 0-3 overlap both candidate top boxes (p0, p2) with IoU >= .5: the same four
    # train either way; only the last head's scores change between the two steps
    for learning in ("parallel", "cascade"):
        a = _mask_targets_by_box(learning, 0, monkeypatch)
        b = _mask_targets_by_box(learning, 2, monkeypatch)
        common = set(a) & set(b)
        assert len(common) == 4
        same = [torch.equal(a[k], b[k]) for k in common]
        if learning == "parallel":   # each proposal learns its own bottom-up seed mask
            assert all(same)
        else:                        # every pseudo mask is the detection's mask
            assert not any(same)


@pytest.mark.parametrize("kw", [dict(), dict(n_refine=0, n_mask=0, refine_pseudo_box="raw",
                                             mask_targets="soft",
                                             mask_specific_weight="image_score")])
def test_cascade_trains_and_negative_images_are_zero(kw):
    model = _tiny(learning="cascade", acl=False, **kw)
    losses = model(*_batch([[1, 0, 1], [0, 0, 0]], P=20))
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_acl"].item() == 0
    assert losses["loss_mask_agnostic"] > 0
    sum(losses.values()).backward()
    losses = model(*_batch([[0, 0, 0]], P=20))
    for k in ("loss_refine", "loss_mask_agnostic", "loss_mask_specific", "loss_acl"):
        assert losses[k].item() == 0.0, k
    sum(losses.values()).backward()
