"""Backbones, seed selection / mask re-projection, and PDSLNet end to end on tiny inputs."""
import itertools

import pytest
import torch
import torchvision

from pdsl.errors import ConfigError
from pdsl.model import LOSS_KEYS, PDSLNet, build_backbone
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


def _batch(labels, P=20, size=64, B_bank=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(len(labels), 3, size, size, generator=g)
    proposals, scores, targets = [], [], []
    for lab in labels:
        xy = torch.rand(P, 2, generator=g) * size * 0.6
        wh = 8 + torch.rand(P, 2, generator=g) * size * 0.4
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
    if n_mask == 0 or not acl:
        assert losses["loss_acl"].item() == 0.0
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
