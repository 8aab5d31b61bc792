"""Backbones, seed selection / mask re-projection, and PDSLNet end to end on tiny inputs."""
import itertools

import numpy as np

import pytest
import torch
import torchvision

from pdsl.errors import ConfigError
from pdsl.model import LOSS_KEYS, PDSLNet, build_backbone
from pdsl.model.backbone import freeze_backbone
from pdsl.model.seeds import reproject_masks, seed_mask_targets, select_seeds

torch.set_num_threads(1)


# ---------------------------------------------------------------- backbone
@pytest.mark.parametrize("name,channels", [("tiny", 128), ("resnet18_trunc", 256),
                                           ("resnet18", 512)])
def test_backbone_stride_16(name, channels):
    bb = build_backbone(name).eval()
    with torch.no_grad():
        f = bb(torch.randn(1, 3, 64, 96))
    assert bb.out_channels == channels and f.shape == (1, channels, 4, 6)


def test_backbone_resnet50_dc5_stride_16():
    bb = build_backbone("resnet50").eval()
    with torch.no_grad():
        f = bb(torch.randn(1, 3, 32, 48))
    assert f.shape == (1, 2048, 2, 3)


def test_backbone_loads_torchvision_state_dict(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # make BN statistics non-trivial so that buffers are checked too
        ref.bn1.running_mean.uniform_()
        ref.layer3[1].bn2.running_var.uniform_(0.5, 2)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    sd = ref.state_dict()
    for name in ("resnet18", "resnet18_trunc"):
        bb = build_backbone(name, pretrained=str(path))
        own = bb.state_dict()
        assert not any(k.startswith("fc.") for k in own)
        for k, v in own.items():
            assert torch.equal(v, sd[k]), k
    # wrapped and DDP-prefixed files load too
    torch.save({"model": {"module." + k: v for k, v in sd.items()}}, path)
    bb = build_backbone("resnet18", pretrained=str(path))
    assert torch.equal(bb.conv1.weight, ref.conv1.weight)


def test_backbone_wrong_weights_are_reported(tmp_path):
    path = tmp_path / "partial.pth"
    sd = torchvision.models.resnet18(weights=None).state_dict()
    del sd["layer2.0.conv1.weight"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(ConfigError, match=r"missing layer2\.0\.conv1\.weight.*unexpected extra"):
        build_backbone("resnet18", pretrained=str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        build_backbone("resnet18", pretrained=str(tmp_path / "nope.pth"))


def test_backbone_torchvision_weights_not_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ConfigError, match="resnet18-.*pretrained=/path/to"):
        build_backbone("resnet18_trunc", pretrained="torchvision")


def test_backbone_unknown_name():
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_backbone("vgg16")


# ---------------------------------------------------------------- seeds
def test_select_seeds_hand_example():
    props = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 5], [50, 50, 60, 60],
                          [50, 50, 60, 59], [0, 0, 10, 8]], dtype=torch.float32)
    scores = torch.tensor([[0.9, 0.0], [0.1, 0.0], [0.0, 0.0], [0.0, 0.8], [0.0, 0.1],
                           [0.0, 0.0]])
    # class 0: top p0, then IoU .9 (p1), .8 (p5), .5 (p2)  -> n_seed 3: {0, 1, 5}
    seeds = select_seeds(scores, props, torch.tensor([1.0, 0.0]), n_seed=3)
    assert seeds.tolist() == [0, 1, 5]
    seeds = select_seeds(scores, props, torch.tensor([1.0, 1.0]), n_seed=2)
    assert seeds.tolist() == [0, 1, 3, 4]
    assert select_seeds(scores, props, torch.zeros(2)).numel() == 0


def test_reproject_identity():
    m = torch.rand(2, 28, 28)
    boxes = torch.tensor([[3.0, 4.0, 40.0, 25.0], [0.0, 0.0, 7.0, 100.0]])
    out = reproject_masks(m, boxes, boxes, out_size=28)
    assert torch.allclose(out, m, atol=1e-5)


def test_reproject_right_half():
    m = torch.rand(1, 28, 28)
    src = torch.tensor([[0.0, 0.0, 28.0, 28.0]])
    dst = torch.tensor([[14.0, 0.0, 28.0, 28.0]])
    out = reproject_masks(m, src, dst, out_size=14)
    # x centres fall on source columns 14..27; y centres halfway between rows 2i and 2i+1
    expected = 0.5 * (m[0, 0::2, 14:] + m[0, 1::2, 14:])
    assert torch.allclose(out[0], expected, atol=1e-6)


def test_reproject_outside_is_zero():
    m = torch.ones(1, 28, 28)
    src = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    out = reproject_masks(m, src, torch.tensor([[20.0, 20.0, 30.0, 30.0]]))
    assert torch.all(out == 0)
    # a box twice as large: the source covers exactly its top-left quarter, full value up to
    # the source box edge (no border fade), zero beyond
    out = reproject_masks(m, src, torch.tensor([[0.0, 0.0, 20.0, 20.0]]))
    assert torch.all(out[0, :14, :14] == 1) and out[0].sum() == 14 * 14


def test_reproject_equals_paste_then_roi_align():
    from torchvision.ops import roi_align
    m = torch.rand(1, 28, 28)
    src = torch.tensor([[10.0, 6.0, 38.0, 34.0]])          # one mask pixel = one image pixel
    image = torch.zeros(1, 1, 50, 60)
    image[0, 0, 6:34, 10:38] = m[0]
    dst = torch.tensor([[12.3, 8.0, 35.1, 31.7], [11.0, 7.5, 20.0, 30.0]])  # ≥ ½ px inside src
    ref = roi_align(image, [dst], 28, 1.0, sampling_ratio=1, aligned=True)[:, 0]
    assert torch.allclose(reproject_masks(m, src, dst, src_index=torch.tensor([0, 0])), ref,
                          atol=1e-5)


def test_reproject_flip_consistency():
    W = 50.0
    m = torch.rand(3, 28, 28)
    src = torch.tensor([[2.0, 3.0, 30.0, 20.0], [10.0, 0.0, 45.0, 44.0], [0.0, 5.0, 9.0, 9.0]])
    dst = torch.tensor([[5.0, 1.0, 25.0, 30.0], [12.0, 4.0, 40.0, 40.0]])
    idx = torch.tensor([0, 1])

    def flip(b):
        return torch.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], 1)

    a = reproject_masks(m, src, dst, src_index=idx).flip(-1)
    b = reproject_masks(m.flip(-1), flip(src), flip(dst), src_index=idx)
    assert torch.allclose(a, b, atol=1e-5)


def test_seed_mask_targets():
    props = torch.tensor([[0, 0, 20, 20], [0, 0, 20, 18], [40, 40, 60, 60], [0, 0, 20, 4]],
                         dtype=torch.float32)
    bank_boxes = torch.tensor([[0, 0, 20, 20], [40, 40, 60, 60]], dtype=torch.float32)
    bank_masks = torch.stack([torch.ones(28, 28), torch.zeros(28, 28)])
    p2b = torch.tensor([0, 0, 1, 0])
    t, v = seed_mask_targets(props, torch.tensor([0]), bank_masks, bank_boxes, p2b)
    assert v.tolist() == [True, True, False, False]          # p3 IoU .2 with the seed
    assert torch.all(t[0] == 1) and torch.all(t[1] == 1) and torch.all(t[2:] == 0)
    t, v = seed_mask_targets(props, torch.tensor([0]), (bank_masks * 255).to(torch.uint8),
                             bank_boxes, p2b, bank_valid=torch.tensor([False, True]),
                             query_idx=torch.tensor([1]))
    assert t.shape == (1, 28, 28) and v.tolist() == [False]


# ---------------------------------------------------------------- PDSLNet
C = 3


def _batch(labels, P=20, size=64, B_bank=12, seed=0, xy_frac=0.6, wh_min=8):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(len(labels), 3, size, size, generator=g)
    proposals, scores, targets = [], [], []
    for lab in labels:
        xy = torch.rand(P, 2, generator=g) * size * xy_frac
        wh = wh_min + torch.rand(P, 2, generator=g) * size * 0.4
        props = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
        proposals.append(props)
        scores.append(torch.rand(P, generator=g))
        targets.append({"labels": torch.tensor(lab, dtype=torch.float32),
                        "bank_masks": torch.rand(B_bank, 28, 28, generator=g),
                        "bank_boxes": props[:B_bank].clone(),
                        "proposal_to_bank": torch.randint(0, B_bank, (P,), generator=g),
                        "bank_valid": torch.rand(B_bank, generator=g) > 0.2})
    return images, proposals, scores, targets


def _tiny(**kw):
    torch.manual_seed(0)
    args = dict(backbone="tiny", hidden_dim=64, mask_dim=16, n_refine=2, n_mask=2)
    args.update(kw)
    return PDSLNet(C, **args)


def test_train_forward_backward():
    model = _tiny(n_refine=4, n_mask=4).train()
    losses = model(*_batch([[1, 0, 1], [0, 1, 0]]))
    assert tuple(losses) == LOSS_KEYS
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask_agnostic"] > 0 and losses["loss_refine"] > 0
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.mask_head.specific[3].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("n_refine,n_mask,acl", list(itertools.product([0, 2], [0, 2],
                                                                        [True, False])))
def test_table1_switches(n_refine, n_mask, acl):
    model = _tiny(n_refine=n_refine, n_mask=n_mask, acl=acl).train()
    losses = model(*_batch([[1, 1, 0]], P=12))
    assert all(torch.isfinite(v) for v in losses.values())
    if n_refine == 0:
        assert losses["loss_refine"].item() == 0.0
    if not acl:
        assert losses["loss_acl"].item() == 0.0
    else:  # the authors' ACL includes M^0, so it is on even without class-specific heads
        assert losses["loss_acl"].item() > 0.0
    if n_mask == 0:
        assert losses["loss_mask_specific"].item() == 0.0
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        images, props, scores, _ = _batch([[1, 1, 0]], P=12)
        out = model(images, props, scores)
        masks = model.predict_masks(model.backbone(images), [props[0][:3]],
                                    [torch.tensor([0, 2, 1])])
    assert out[0]["scores"].shape == (12, C) and out[0]["boxes"].shape == (12, C, 4)
    assert masks.shape == (3, 28, 28) and bool(((masks >= 0) & (masks <= 1)).all())


def test_predict_masks_head_choice():
    """The model's masks are the sigmoid of the mean of its class-specific heads' logits; a
    diagnostic ``head`` picks M^0 or one M^k alone."""
    model = _tiny(n_mask=3).eval()
    images, props, _, _ = _batch([[1, 1, 0]], P=12)
    lab = torch.tensor([0, 2, 1])
    with torch.no_grad():
        feats = model.backbone(images)
        agnostic, specific = model.mask_head(feats, [props[0][:3]])          # every channel
        agnostic = agnostic[torch.arange(3), lab]                          # per class (default)
        pick = [model.predict_masks(feats, [props[0][:3]], [lab], head=k) for k in (1, 2, 3)]
        mean = model.predict_masks(feats, [props[0][:3]], [lab])
        ag = model.predict_masks(feats, [props[0][:3]], [lab], head="agnostic")
    for k in range(3):
        assert torch.allclose(pick[k], torch.sigmoid(specific[k][torch.arange(3), lab]))
    assert torch.allclose(mean, torch.sigmoid(torch.logit(torch.stack(pick)).mean(0)), atol=1e-5)
    assert torch.allclose(ag, torch.sigmoid(agnostic))
    with pytest.raises(ValueError, match="head must be"):
        model.predict_masks(feats, [props[0][:3]], [lab], head=4)


def test_no_label_image_parts_are_exactly_zero():
    model = _tiny().train()
    losses = model(*_batch([[0, 0, 0]]))
    for k in ("loss_refine", "loss_mask_agnostic", "loss_mask_specific", "loss_acl"):
        assert losses[k].item() == 0.0, k
    assert losses["loss_mil"] > 0  # a negative image still trains the MIL classifier
    sum(losses.values()).backward()
    # mixed batch: the unlabelled image contributes zeros to the batch mean
    losses = model(*_batch([[0, 0, 0], [1, 0, 0]]))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_eval_outputs():
    model = _tiny().eval()
    images, props, scores, _ = _batch([[1, 0, 0], [0, 1, 0]], P=7)
    with torch.no_grad():
        out = model(images, props, scores)
    assert len(out) == 2
    for o, p in zip(out, props):
        assert o["boxes"].shape == (7, C, 4) and o["scores"].shape == (7, C)
        assert torch.equal(o["proposals"], p)
        assert bool(((o["scores"] >= 0) & (o["scores"] <= 1)).all())
        assert bool((o["boxes"] >= 0).all() and (o["boxes"] <= 64).all())
    model0 = _tiny(n_refine=0).eval()
    with torch.no_grad():
        out = model0(images, props, None)
    assert torch.equal(out[0]["boxes"][:, 1], props[0])
    assert torch.allclose(out[0]["scores"].sum(0), out[0]["scores"].sum(0).clamp(max=1))


def test_bad_inputs_name_the_shape():
    model = _tiny().train()
    images, props, scores, targets = _batch([[1, 0, 0]])
    with pytest.raises(ValueError, match=r"proposals\[0\].*\(20, 5\)"):
        model(images, [torch.zeros(20, 5)], scores, targets)
    targets[0]["labels"] = torch.zeros(4)
    with pytest.raises(ValueError, match=r"labels \(4,\)"):
        model(images, props, scores, targets)
    with pytest.raises(ConfigError, match="n_refine"):
        PDSLNet(3, backbone="tiny", n_refine=-1)


# ================================================================ the authors' switches
# ---------------------------------------------------------------- ResNet-WS
@pytest.mark.parametrize("name,channels", [("resnet18_ws", 512), ("resnet50_ws", 2048),
                                           ("tiny_ws", 128)])
def test_backbone_ws_output_stride_8(name, channels):
    bb = build_backbone(name).eval()
    with torch.no_grad():
        f = bb(torch.randn(1, 3, 64, 96))
    assert bb.stride == 8 and bb.out_channels == channels and f.shape == (1, channels, 8, 12)


@pytest.mark.parametrize("depth", [18, 50, 101])
def test_backbone_ws_has_torchvision_parameters(depth):
    # max-pooling adds no parameters: names and shapes are torchvision's (minus fc)
    ref = getattr(torchvision.models, f"resnet{depth}")(weights=None).state_dict()
    own = build_backbone(f"resnet{depth}_ws").state_dict()
    strip = lambda d: {k: tuple(v.shape) for k, v in d.items()  # noqa: E731
                       if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert strip(own) == strip(ref)


def test_backbone_ws_loads_torchvision_state_dict_and_is_unstrided(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        ref.layer4[1].bn2.running_var.uniform_(0.5, 2)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    bb = build_backbone("resnet18_ws", pretrained=str(path))
    for k, v in bb.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k
    # the strided convs became stride 1; res4/res5 3x3 convs dilated by 2
    assert bb.layer2[0].conv1.stride == (1, 1) and bb.layer2[0].downsample[0].stride == (1, 1)
    assert bb.layer3[0].conv1.dilation == (2, 2) and bb.layer4[1].conv2.dilation == (2, 2)
    assert bb.layer2[0].conv1.dilation == (1, 1)


def test_backbone_tiny_ws_loads_a_tiny_pretrain_file(tmp_path):
    tiny = build_backbone("tiny", frozen_bn=False)
    path = tmp_path / "tiny.pth"
    torch.save({"model": tiny.state_dict()}, path)
    ws = build_backbone("tiny_ws", pretrained=str(path))
    assert torch.equal(ws.body[0].weight, tiny.body[0].weight)


def test_freeze_at_5_freezes_the_whole_backbone():
    bb = build_backbone("resnet18_ws", freeze_at=5)
    assert not any(p.requires_grad for p in bb.parameters())
    bb = build_backbone("resnet18_ws", frozen_bn=False, freeze_at=3)  # stem, res2, res3
    assert not bb.conv1.weight.requires_grad and not bb.layer2[1].conv2.weight.requires_grad
    assert bb.layer3[0].conv1.weight.requires_grad and bb.layer4[0].conv1.weight.requires_grad
    tiny = build_backbone("tiny", freeze_at=5)
    assert not any(p.requires_grad for p in tiny.parameters())
    with pytest.raises(ConfigError, match="freeze_at"):
        build_backbone("tiny", freeze_at=2)
    with pytest.raises(ConfigError, match="0..5"):
        freeze_backbone(bb, 6)


def test_model_frozen_backbone_gets_no_gradient_and_uses_stride_8():
    model = _tiny(backbone="tiny_ws", freeze_at=5).train()
    assert model.box_head.spatial_scale == 1 / 8 and model.mask_head.spatial_scale == 1 / 8
    losses = model(*_batch([[1, 0, 1]]))
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.box_head.fc6.weight.grad is not None


def test_box_head_fc_widths_and_pooler():
    model = _tiny(hidden_dim=48, fc6_dim=32, box_pooler="roialign")
    assert model.box_head.fc6.out_features == 32 and model.box_head.fc7.in_features == 32
    assert model.box_head.fc7.out_features == 48
    losses = model.train()(*_batch([[1, 0, 0]]))
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("key,value", [("mask_targets", "hard"), ("acl_target", "mine"),
                                       ("refine_box_loss", "giou"), ("mil_reduction", "max")])
def test_model_switches_reject_bad_values(key, value):
    with pytest.raises(ConfigError, match=key):
        _tiny(**{key: value})


# ---------------------------------------------------------------- M^0 in ACL, switches
def test_acl_includes_agnostic_head():
    torch.manual_seed(0)
    batch = _batch([[1, 1, 0]], P=12)
    on = _tiny(n_mask=0, acl_agnostic=True).train()
    loss = on(*batch)["loss_acl"]
    assert loss.item() > 0
    loss.backward()
    assert on.mask_head.agnostic.weight.grad.abs().sum() > 0   # ACL reaches M^0
    off = _tiny(n_mask=0, acl_agnostic=False).train()
    assert off(*batch)["loss_acl"].item() == 0.0                # paper: m = 1..n_m only


@pytest.mark.parametrize("variant", [
    dict(),  # the authors' defaults
    dict(mil_reduction="sum", refine_pseudo_box="raw", refine_weight="top_score",
         refine_box_loss="smooth_l1", mask_targets="soft", mask_specific_weight="image_score",
         acl_target="own", acl_agnostic=False, seed_match_iou=0.5),   # the paper's text
    dict(refine_box_loss="none"),
])
def test_model_variants_train(variant):
    model = _tiny(n_refine=2, n_mask=2, **variant).train()
    losses = model(*_batch([[1, 0, 1], [0, 1, 0]]))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_mil_mean_is_sum_over_classes():
    batch = _batch([[1, 0, 1]])
    mean = _tiny(mil_reduction="mean").train()(*batch)["loss_mil"]
    summed = _tiny(mil_reduction="sum").train()(*batch)["loss_mil"]
    assert torch.allclose(summed, mean * C, rtol=1e-5)


# ---------------------------------------------------------------- seeds around regressed boxes
def test_select_seeds_around_regressed_box():
    props = torch.tensor([[0, 0, 10, 10], [20, 0, 30, 10], [21, 0, 31, 10], [0, 0, 11, 10]],
                         dtype=torch.float32)
    scores = torch.tensor([[0.9], [0.1], [0.0], [0.0]])
    labels = torch.tensor([1.0])
    assert select_seeds(scores, props, labels, n_seed=2).tolist() == [0, 3]
    pb = props[:, None, :].clone()
    pb[0, 0] = torch.tensor([20.0, 0, 30, 10])       # p0's regressed box moved onto p1
    assert select_seeds(scores, props, labels, n_seed=2, pseudo_boxes=pb).tolist() == [1, 2]


# ---------------------------------------------------------------- filled-box fallback
def test_degenerate_bank_masks_become_the_filled_box():
    from pdsl.cues.store import STATUS_EMPTY, STATUS_FULL, STATUS_OK
    from pdsl.data import bank_valid_mask, degenerate_to_box

    masks = np.zeros((3, 4, 4), np.uint8)
    masks[0, :2] = 255
    masks[2] = 255
    status = np.array([STATUS_OK, STATUS_EMPTY, STATUS_FULL], np.uint8)
    out = degenerate_to_box(masks, status, "box")
    assert (out[0] == masks[0]).all() and (out[1] == 255).all() and (out[2] == 255).all()
    assert (masks[1] == 0).all()                               # input untouched
    assert bank_valid_mask(status, "box").tolist() == [True, True, True]
    assert bank_valid_mask(status, "ignore").tolist() == [True, False, False]
    assert degenerate_to_box(masks, status, "ignore") is masks
    f = degenerate_to_box(np.zeros((1, 2, 2), np.float32), np.array([STATUS_EMPTY]), "box")
    assert (f == 1).all()
    # the model then trains the proposal on the filled box: target all ones in its frame
    props = torch.tensor([[0, 0, 20, 20], [1, 1, 19, 19]], dtype=torch.float32)
    t, v = seed_mask_targets(props, torch.tensor([0]), torch.from_numpy(out[1:2]),
                             props[:1], torch.zeros(2, dtype=torch.long))
    assert v.all() and torch.allclose(t, torch.ones_like(t))
