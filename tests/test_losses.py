"""Losses of eq. 2–8 on hand-computed tiny tensors (expected values are written out with
``math``, not computed by the code under test)."""
import math

import pytest
import torch

from pdsl.box_coder import decode_box_deltas, encode_box_deltas
from pdsl.losses import (activation_correlation_loss, binarize_mask_targets,
                         class_agnostic_mask_loss, class_specific_mask_loss,
                         detection_activation, instance_activation, mask_self_training_loss,
                         oicr_pseudo_labels, refinement_loss, wsddn_mil_loss)

torch.set_num_threads(1)


def close(a, b, tol=1e-5):
    a = a.detach() if torch.is_tensor(a) else a
    return abs(float(a) - float(b)) < tol


def bce(p, t):
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


# ---------------------------------------------------------------- eq. 2
def test_wsddn_mil_loss_hand_value():
    y = torch.tensor([0.8, 0.3, 1.2], requires_grad=True)  # 1.2: rounding above 1 gets clamped
    t = torch.tensor([1.0, 0.0, 1.0])
    loss = wsddn_mil_loss(y, t)
    assert close(loss, -(math.log(0.8) + math.log(0.7) + math.log(1 - 1e-6)))
    loss.backward()
    assert close(y.grad[0], -1 / 0.8) and close(y.grad[1], 1 / 0.7, 1e-4)


def test_wsddn_mil_loss_no_positive_is_a_negative_image():
    # An image without labels is a negative for every class: the loss is the negatives' BCE.
    loss = wsddn_mil_loss(torch.tensor([0.2, 0.1]), torch.zeros(2))
    assert close(loss, -(math.log(0.8) + math.log(0.9)))


def test_wsddn_mil_loss_bad_shape():
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        wsddn_mil_loss(torch.rand(3), torch.zeros(2))


# ---------------------------------------------------------------- box deltas
def test_box_deltas_hand_value_and_roundtrip():
    p = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    g = torch.tensor([[5.0, 0.0, 15.0, 20.0]])
    d = encode_box_deltas(p, g)
    # centre (5,5)->(10,10): dx = 10*5/10, dy = 10*5/10; w 10->10: 0; h 10->20: 5*log 2
    assert torch.allclose(d, torch.tensor([[5.0, 5.0, 0.0, 5 * math.log(2)]]), atol=1e-5)
    assert torch.allclose(decode_box_deltas(d, p)[:, 0], g, atol=1e-4)


# ---------------------------------------------------------------- OICR pseudo labels (eq. 3)
PROPS = torch.tensor([[0, 0, 10, 10],     # p0: top box of class 0
                      [1, 0, 11, 10],     # p1: IoU 90/110 with p0
                      [20, 20, 30, 30],   # p2: top box of class 2
                      [0, 0, 10, 30],     # p3: IoU 100/300 with p0
                      [21, 20, 31, 30]],  # p4: IoU 90/110 with p2
                     dtype=torch.float32)
SCORES = torch.tensor([[0.6, 0.0, 0.1],
                       [0.2, 0.0, 0.1],
                       [0.1, 0.1, 0.7],
                       [0.1, 0.9, 0.0],   # class 1 is absent: its top box must be ignored
                       [0.0, 0.0, 0.1]])
LABELS = torch.tensor([1.0, 0.0, 1.0])


def test_oicr_pseudo_labels_hand_example():
    cls, w, reg, matched = oicr_pseudo_labels(SCORES, PROPS, LABELS)
    assert cls.tolist() == [1, 1, 3, 0, 3]
    assert torch.allclose(w, torch.tensor([0.6, 0.6, 0.7, 0.6, 0.7]))
    assert matched.tolist() == [0, 0, 2, 0, 2]
    # p1 -> p0: centre 6 -> 5, width 10: dx = 10 * (-1) / 10
    assert torch.allclose(reg[1], torch.tensor([-1.0, 0, 0, 0]), atol=1e-6)
    assert torch.allclose(reg[4], torch.tensor([-1.0, 0, 0, 0]), atol=1e-6)
    assert torch.all(reg[3] == 0) and torch.all(reg[0] == 0)


def test_oicr_pseudo_labels_bg_iou_ignores_far_proposals():
    _, w, _, _ = oicr_pseudo_labels(SCORES, PROPS, LABELS, bg_iou=0.4)
    assert torch.allclose(w, torch.tensor([0.6, 0.6, 0.7, 0.0, 0.7]))


def test_oicr_pseudo_labels_no_positive():
    cls, w, reg, matched = oicr_pseudo_labels(SCORES, PROPS, torch.zeros(3))
    assert cls.tolist() == [0] * 5 and w.tolist() == [0.0] * 5
    assert matched.tolist() == [-1] * 5 and torch.all(reg == 0)


# ---------------------------------------------------------------- eq. 3
def _refine_inputs(deltas_with_bg=False):
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0]], requires_grad=True)
    d = [[0.5, 0.0, 2.0, 0.0], [9.0, 9.0, 9.0, 9.0]]
    if deltas_with_bg:
        d = [[7.0] * 4 + d[0], [7.0] * 4 + d[1]]
    deltas = torch.tensor(d, requires_grad=True)
    return logits, deltas, torch.tensor([1, 0]), torch.tensor([0.5, 0.25]), torch.zeros(2, 4)


@pytest.mark.parametrize("with_bg", [False, True])
def test_refinement_loss_hand_value(with_bg):
    logits, deltas, cls, w, reg = _refine_inputs(with_bg)
    ce0 = math.log(math.exp(0) + math.exp(1)) - 1
    ce1 = math.log(math.exp(2) + math.exp(0)) - 2
    l1 = 0.5 * 0.5 ** 2 + 0 + (2 - 0.5) + 0   # smooth-L1 (beta 1) of p0's class-1 deltas
    expected = (0.5 * ce0 + 0.25 * ce1) / 2 + 0.5 * l1 / 2
    loss = refinement_loss(logits, deltas, cls, w, reg)
    assert close(loss, expected)
    loss.backward()
    assert torch.all(deltas.grad[1] == 0)  # background proposal: no regression gradient


def test_refinement_loss_no_positive_is_exactly_zero():
    logits, deltas, cls, _, reg = _refine_inputs()
    loss = refinement_loss(logits, deltas, torch.zeros(2, dtype=torch.long), torch.zeros(2), reg)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0) and torch.all(deltas.grad == 0)


def test_refinement_loss_bad_deltas_shape():
    logits, _, cls, w, reg = _refine_inputs()
    with pytest.raises(ValueError, match="box_deltas"):
        refinement_loss(logits, torch.zeros(2, 12), cls, w, reg)


# ---------------------------------------------------------------- eq. 5
def test_class_agnostic_mask_loss_hand_value():
    l3 = math.log(3.0)  # sigmoid(ln 3) = 0.75
    logits = torch.tensor([[[0.0, l3], [l3, 0.0]],
                           [[5.0, 5.0], [5.0, 5.0]]], requires_grad=True)
    targets = torch.tensor([[[1.0, 1.0], [0.0, 0.5]],
                            [[0.0, 0.0], [0.0, 0.0]]])
    valid = torch.tensor([True, False])  # proposal 1 has no seed: ignored
    expected = (bce(0.5, 1) + bce(0.75, 1) + bce(0.75, 0) + bce(0.5, 0.5)) / 4
    loss = class_agnostic_mask_loss(logits, targets, valid)
    assert close(loss, expected)
    loss.backward()
    assert torch.all(logits.grad[1] == 0)


def test_class_specific_mask_loss_hand_value():
    l3 = math.log(3.0)
    logits = torch.tensor([[[l3]], [[0.0]]], requires_grad=True)      # p = 0.75, 0.5
    prev = torch.tensor([[[1.0]], [[0.25]]], requires_grad=True)
    w = torch.tensor([0.5, 1.0])
    expected = (0.5 * bce(0.75, 1.0) + 1.0 * bce(0.5, 0.25)) / 2
    loss = class_specific_mask_loss(logits, prev, w)
    assert close(loss, expected)
    loss.backward()
    assert prev.grad is None  # self-training target is detached


def test_mask_self_training_chain():
    # K = 1, 1×1 masks: M^0 logit 0 (p .5), head 1 logit ln 3 (p .75), head 2 logit 0 (p .5).
    ag = torch.zeros(1, 1, 1, requires_grad=True)
    h1 = torch.full((1, 1, 1), math.log(3.0), requires_grad=True)
    h2 = torch.zeros(1, 1, 1, requires_grad=True)
    w = torch.tensor([0.8])
    l_ag, l_sp = mask_self_training_loss(ag, torch.ones(1, 1, 1), torch.tensor([True]),
                                         [h1, h2], w)
    assert close(l_ag, math.log(2))
    assert close(l_sp, 0.8 * bce(0.75, 0.5) + 0.8 * bce(0.5, 0.75))
    (l_ag + l_sp).backward()
    assert close(ag.grad, 0.5 - 1)                  # only the agnostic term reaches M^0
    assert close(h1.grad, 0.8 * (0.75 - 0.5))       # only its own term reaches head 1
    assert close(h2.grad, 0.8 * (0.5 - 0.75))


def test_mask_losses_no_positive_are_exactly_zero():
    ag = torch.randn(0, 28, 28, requires_grad=True)
    sp = torch.randn(0, 28, 28, requires_grad=True)
    l_ag, l_sp = mask_self_training_loss(ag, torch.zeros(0, 28, 28),
                                         torch.zeros(0, dtype=torch.bool), [sp], torch.zeros(0))
    assert l_ag.item() == 0.0 and l_sp.item() == 0.0
    (l_ag + l_sp).backward()
    # K > 0 but nothing valid: also exactly 0
    x = torch.randn(2, 3, 3, requires_grad=True)
    l0 = class_agnostic_mask_loss(x, torch.rand(2, 3, 3), torch.zeros(2, dtype=torch.bool))
    assert l0.item() == 0.0
    l0.backward()
    assert torch.all(x.grad == 0)


# ---------------------------------------------------------------- eq. 7–8
def test_instance_activation_hand_values():
    m = torch.tensor([[[0.0, 1.0]], [[0.3, 0.3]]])
    a = instance_activation(m, tau=5.0)
    assert close(a[0], math.log((math.exp(0) + math.exp(5)) / 2) / 5)
    assert close(a[1], 0.3)  # a constant mask activates at its value
    big = instance_activation(torch.ones(1, 28, 28), tau=50.0)  # no overflow
    assert close(big[0], 1.0)


def test_activation_correlation_loss_hand_value():
    a = torch.tensor([0.2, 0.9], requires_grad=True)
    a_hat = torch.tensor([0.5, 0.5], requires_grad=True)
    loss = activation_correlation_loss(a, a_hat)
    assert close(loss, (0.3 + 0.4) / 2)
    loss.backward()
    assert torch.allclose(a.grad, torch.tensor([-0.5, 0.5]))
    assert a_hat.grad is None  # detection score is a detached target


def test_activation_correlation_loss_no_positive_is_exactly_zero():
    a = torch.zeros(0, requires_grad=True)
    loss = activation_correlation_loss(a, torch.zeros(0))
    assert loss.item() == 0.0
    loss.backward()


# ================================================================ the authors' variants
# ---------------------------------------------------------------- eq. 2, MIL mean
def test_wsddn_mil_loss_mean_over_classes():
    y = torch.tensor([0.8, 0.3, 0.5])
    t = torch.tensor([1.0, 0.0, 1.0])
    summed = -(math.log(0.8) + math.log(0.7) + math.log(0.5))
    assert close(wsddn_mil_loss(y, t, reduction="sum"), summed)
    assert close(wsddn_mil_loss(y, t, reduction="mean"), summed / 3)
    with pytest.raises(ValueError, match="reduction"):
        wsddn_mil_loss(y, t, reduction="max")


# ---------------------------------------------------------------- eq. 3, regressed pseudo boxes
def _regressed():
    """Previous head's class-specific boxes [P=5, C=3, 4]: every proposal's own box, except that
    the top box of class 0 (p0) regressed onto [1, 0, 11, 10] (p1's box)."""
    pb = PROPS[:, None, :].expand(5, 3, 4).clone()
    pb[0, 0] = torch.tensor([1.0, 0.0, 11.0, 10.0])
    return pb


def test_oicr_pseudo_labels_regressed_pseudo_box():
    cls, w, reg, matched = oicr_pseudo_labels(SCORES, PROPS, LABELS, pseudo_boxes=_regressed())
    # p0 vs [1,0,11,10]: IoU 90/110 -> fg; p3 [0,0,10,30] vs it: 90/310 < .5 -> bg
    assert cls.tolist() == [1, 1, 3, 0, 3]
    assert matched.tolist() == [0, 0, 2, 0, 2]
    # the regression target now points at the regressed box: p0 -> [1,0,11,10] is dx = +1,
    # p1 is already there (0), where the raw pseudo box gave p0: 0 and p1: -1.
    assert torch.allclose(reg[0], torch.tensor([1.0, 0, 0, 0]), atol=1e-6)
    assert torch.allclose(reg[1], torch.zeros(4), atol=1e-6)
    assert torch.allclose(reg[4], torch.tensor([-1.0, 0, 0, 0]), atol=1e-6)  # class 2 unchanged
    assert torch.allclose(w, torch.tensor([0.6, 0.6, 0.7, 0.6, 0.7]))          # top scores


def test_oicr_pseudo_labels_regressed_box_changes_foreground():
    # A regressed box far from its own proposal: proposals are matched to where it moved.
    pb = PROPS[:, None, :].expand(5, 3, 4).clone()
    pb[0, 0] = torch.tensor([0.0, 0.0, 10.0, 30.0])   # p0's class-0 box grew onto p3
    cls, _, reg, _ = oicr_pseudo_labels(SCORES, PROPS, LABELS, pseudo_boxes=pb)
    assert cls.tolist() == [0, 0, 3, 1, 3]             # p0, p1 now IoU 1/3 and 90/310
    assert torch.all(reg[3] == 0) and torch.all(reg[0] == 0)


def test_oicr_pseudo_labels_image_score_weights():
    y = torch.tensor([0.9, 0.3, 0.4])
    cls, w, _, _ = oicr_pseudo_labels(SCORES, PROPS, LABELS, image_scores=y)
    # weight = y of the matched pseudo box's class (p3: bg, matched to class 0's box)
    assert torch.allclose(w, torch.tensor([0.9, 0.9, 0.4, 0.9, 0.4]))
    with pytest.raises(ValueError, match="image_scores"):
        oicr_pseudo_labels(SCORES, PROPS, LABELS, image_scores=torch.ones(2))
    with pytest.raises(ValueError, match="pseudo_boxes"):
        oicr_pseudo_labels(SCORES, PROPS, LABELS, pseudo_boxes=torch.zeros(5, 4))


def test_refinement_loss_weighted_l1_and_none():
    logits, deltas, cls, w, reg = _refine_inputs()
    ce0 = math.log(math.exp(0) + math.exp(1)) - 1
    ce1 = math.log(math.exp(2) + math.exp(0)) - 2
    ce = (0.5 * ce0 + 0.25 * ce1) / 2
    l1 = 0.5 + 0 + 2 + 0                       # plain L1 of p0's class-1 deltas (beta 0)
    loss = refinement_loss(logits, deltas, cls, w, reg, box_loss="weighted_l1")
    assert close(loss, ce + 0.5 * l1 / 2)
    loss.backward()
    # d/dx |x| = sign(x), weight .5, / P=2: grads .25 on the two non-zero deltas, 0 elsewhere
    assert torch.allclose(deltas.grad[0], torch.tensor([0.25, 0.0, 0.25, 0.0]))
    logits, deltas, cls, w, reg = _refine_inputs()
    loss = refinement_loss(logits, deltas, cls, w, reg, box_loss="none")
    assert close(loss, ce)
    loss.backward()
    assert torch.all(deltas.grad == 0)
    with pytest.raises(ValueError, match="box_loss"):
        refinement_loss(logits, deltas, cls, w, reg, box_loss="giou")


# ---------------------------------------------------------------- eq. 5, binarised targets
def test_binarize_mask_targets_threshold_and_filled_box():
    probs = torch.tensor([[[0.5, 0.49], [0.7, 0.2]],
                          [[0.1, 0.3], [0.49, 0.0]]])   # the second has no pixel >= .5
    hard = binarize_mask_targets(probs)
    assert hard[0].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    assert hard[1].tolist() == [[1.0, 1.0], [1.0, 1.0]]  # empty -> the filled box
    assert binarize_mask_targets(probs, empty_to_box=False)[1].sum() == 0
    assert binarize_mask_targets(torch.zeros(0, 2, 2)).shape == (0, 2, 2)


def test_class_specific_mask_loss_unweighted():
    l3 = math.log(3.0)
    logits = torch.tensor([[[l3]], [[0.0]]])
    target = torch.tensor([[[1.0]], [[0.0]]])
    expected = (bce(0.75, 1.0) + bce(0.5, 0.0)) / 2
    assert close(class_specific_mask_loss(logits, target, None), expected)


def test_mask_self_training_chain_binary_unweighted():
    # K = 1, 1×2 masks. M^0 probs [.25, .75] -> head 1's target [0, 1];
    # head 1 probs [.25, .25] (no pixel >= .5) -> head 2's target is the filled box [1, 1].
    l3 = math.log(3.0)
    ag = torch.tensor([[[-l3, l3]]], requires_grad=True)
    h1 = torch.tensor([[[-l3, -l3]]], requires_grad=True)
    h2 = torch.tensor([[[0.0, l3]]], requires_grad=True)
    l_ag, l_sp = mask_self_training_loss(ag, torch.tensor([[[0.0, 1.0]]]), torch.tensor([True]),
                                         [h1, h2], None, targets="binary")
    assert close(l_ag, (bce(0.25, 0) + bce(0.75, 1)) / 2)
    term1 = (bce(0.25, 0) + bce(0.25, 1)) / 2
    term2 = (bce(0.5, 1) + bce(0.75, 1)) / 2
    assert close(l_sp, term1 + term2)
    # soft targets (the paper's) give a different value on the same logits
    _, l_soft = mask_self_training_loss(ag, torch.tensor([[[0.0, 1.0]]]), torch.tensor([True]),
                                        [h1, h2], None, targets="soft")
    assert close(l_soft, (bce(0.25, 0.25) + bce(0.25, 0.75)) / 2
                 + (bce(0.5, 0.25) + bce(0.75, 0.25)) / 2)
    # without the fallback, head 2's target is empty
    _, l_nobox = mask_self_training_loss(ag, torch.tensor([[[0.0, 1.0]]]), torch.tensor([True]),
                                         [h1, h2], None, targets="binary", empty_to_box=False)
    assert close(l_nobox, term1 + (bce(0.5, 0) + bce(0.75, 0)) / 2)
    with pytest.raises(ValueError, match="targets"):
        mask_self_training_loss(ag, ag.detach(), torch.tensor([True]), [h1], None, targets="hard")


# ---------------------------------------------------------------- eq. 8, matched top-box target
def test_detection_activation_matched_top_vs_own():
    cls, _, _, matched = oicr_pseudo_labels(SCORES, PROPS, LABELS)
    fg = torch.nonzero(cls > 0).flatten()                    # p0, p1, p2, p4
    assert fg.tolist() == [0, 1, 2, 4]
    top = detection_activation(SCORES, cls, matched, fg, "matched_top")
    own = detection_activation(SCORES, cls, matched, fg, "own")
    assert torch.allclose(top, torch.tensor([0.6, 0.6, 0.7, 0.7]))   # the top box's score
    assert torch.allclose(own, torch.tensor([0.6, 0.2, 0.7, 0.1]))   # each proposal's own
    with pytest.raises(ValueError, match="foreground"):
        detection_activation(SCORES, cls, matched, torch.tensor([3]), "own")
    with pytest.raises(ValueError, match="mode"):
        detection_activation(SCORES, cls, matched, fg, "max")


def test_acl_with_matched_target_hand_value():
    # two proposals of one class, masks constant .3 and .5 (a = the constant); the top box's
    # score is .6: loss = (|.3 - .6| + |.5 - .6|) / 2 = .2 (own scores .6/.2 would give .3/2+...)
    cls, _, _, matched = oicr_pseudo_labels(SCORES, PROPS, LABELS)
    fg = torch.tensor([0, 1])
    a = instance_activation(torch.stack([torch.full((2, 2), 0.3), torch.full((2, 2), 0.5)]))
    loss_top = activation_correlation_loss(a, detection_activation(SCORES, cls, matched, fg,
                                                                   "matched_top"))
    loss_own = activation_correlation_loss(a, detection_activation(SCORES, cls, matched, fg, "own"))
    assert close(loss_top, 0.2) and close(loss_own, (0.3 + 0.3) / 2)


def test_acl_target_fixes_the_foreground_fraction_of_a_binary_mask():
    # Why ACL dims the demo's masks: for a 0/1 mask with foreground fraction f, eq. 7 gives
    # a = (1/τ) ln(f e^τ + 1 - f), so ACL (eq. 8) pulls the mask toward f = (e^{τ â} - 1)/(e^τ - 1):
    # a top-box score â = 0.3 asks for 2.4 % of the box, 0.9 for 60 %.
    for f, a_hand in ((0.6, math.log(0.6 * math.exp(5) + 0.4) / 5),
                      (0.024, math.log(0.024 * math.exp(5) + 0.976) / 5)):
        m = torch.zeros(1, 1, 1000)
        m[..., :round(f * 1000)] = 1
        assert close(instance_activation(m, tau=5.0)[0], a_hand, 1e-4)
    assert close(math.log(0.6 * math.exp(5) + 0.4) / 5, 0.9, 2e-3)
    assert close(math.log(0.024 * math.exp(5) + 0.976) / 5, 0.3, 5e-3)
