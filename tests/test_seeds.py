"""GrabCut seed bank: clustering, box-frame geometry, GrabCut on a clear object, degenerate cases."""
import cv2
import numpy as np
import pytest

from pdsl.boxes import box_iou, paste_mask
from pdsl.cues.batched import batched_grabcut
from pdsl.cues.grabcut import grabcut_online, inscribed_ellipse, resample_box
from pdsl.cues.seeds import (SeedParams, build_bank, cluster_proposals,
                             grabcut_box, seed_mask)
from pdsl.cues.store import STATUS_EMPTY, STATUS_FALLBACK, STATUS_FULL, STATUS_OK, STATUS_TINY
from pdsl.errors import CacheError, DataError


def _scene(seed=0, H=120, W=160):
    """A textured blue ellipse on a smooth noisy grey background; returns image, GT mask, box."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.normal(120, 25, (H, W, 3)).clip(0, 255).astype(np.uint8), (7, 7), 0)
    gt = np.zeros((H, W), np.uint8)
    cv2.ellipse(gt, (80, 60), (40, 25), 15, 0, 360, 1, -1)
    img[gt > 0] = rng.normal([200, 60, 40], 15, (int(gt.sum()), 3)).clip(0, 255)
    ys, xs = np.nonzero(gt)
    return img, gt.astype(bool), np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_cluster_proposals_by_hand():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60], [0, 0, 9, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    reps, row, cov = cluster_proposals(boxes, scores, iou=0.7, max_bank=10)
    assert reps.tolist() == [0, 2]
    assert row.tolist() == [0, 0, 1, 0]
    np.testing.assert_allclose(cov, [1.0, 100 / 110, 1.0, 0.9], rtol=1e-6)
    # with a cap of one representative the far box maps to it with IoU 0 (coverage says so)
    reps, row, cov = cluster_proposals(boxes, scores, iou=0.7, max_bank=1)
    assert reps.tolist() == [0] and row.tolist() == [0, 0, 0, 0] and cov[2] == 0.0


def test_cluster_lowers_threshold_to_fit_the_cap():
    # four boxes in a chain: IoU(a,b) = IoU(b,c) = IoU(c,d) = 0.6, the others lower
    boxes = np.array([[0, 0, 10, 10], [2.5, 0, 12.5, 10], [5, 0, 15, 10], [7.5, 0, 17.5, 10]],
                     np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    reps, row, cov = cluster_proposals(boxes, scores, iou=0.7, max_bank=4)
    assert len(reps) == 4 and (cov == 1).all()  # no pressure: every box is its own rep
    reps, row, cov = cluster_proposals(boxes, scores, iou=0.7, max_bank=2)
    # at IoU 0.6, box 0 claims box 1 and box 2 claims box 3: two reps, coverage 0.6 everywhere
    assert reps.tolist() == [0, 2] and row.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(cov, [1, 0.6, 1, 0.6], rtol=1e-6)


def test_resample_then_paste_is_identity_on_box_masks():
    fg = np.zeros((100, 100), np.float32)
    fg[20:80, 10:50] = 1.0
    box = np.array([10, 20, 50, 80], np.float32)
    m = resample_box(fg, box, 28)
    assert m.min() == 1.0  # the box frame sees only the inside of the box
    pasted = paste_mask((m * 255).astype(np.uint8), box, 100, 100)
    assert (pasted == (fg > 0)).all()
    # the left half of a box frame pastes onto the left half of the box
    half = np.zeros((28, 28), np.uint8)
    half[:, :14] = 255
    p = paste_mask(half, box, 100, 100)
    assert p[20:80, 10:30].all() and not p[:, 30:].any()


def test_grabcut_box_beats_filled_box_and_matches_online():
    img, gt, box = _scene()
    p = SeedParams(crop_size=64)
    m, status = grabcut_box(img, box, p)
    assert status == STATUS_OK and m.shape == (28, 28) and m.dtype == np.uint8
    cached = paste_mask(m, box, *gt.shape)
    filled = paste_mask(np.full((28, 28), 255, np.uint8), box, *gt.shape)
    assert _iou(cached, gt) > 0.9 > _iou(filled, gt)
    online = paste_mask(grabcut_online(img, box), box, *gt.shape)
    assert _iou(online, gt) > 0.9


def test_degenerate_results_fall_back_to_a_shape_never_to_nothing():
    img, gt, box = _scene()
    flat = np.full_like(img, 128)  # nothing to separate: rectangle GrabCut keeps nothing or fails
    m, status = grabcut_box(flat, box, SeedParams(method="grabcut_rect", fallback="none"))
    assert status == STATUS_EMPTY and (m < 128).mean() > 0.98
    m, status = grabcut_box(flat, box, SeedParams(method="grabcut_rect", fallback="ellipse"))
    assert status == STATUS_FALLBACK and (m == (inscribed_ellipse(28) * 255)).all()
    m, status = grabcut_box(flat, box, SeedParams(method="grabcut_rect", fallback="box"))
    assert status == STATUS_FALLBACK and (m == 255).all()
    # the default (mask-initialised) GrabCut keeps at least its sure-foreground core
    m, status = grabcut_box(flat, box, SeedParams())
    core = inscribed_ellipse(28, 0.7) > 0
    assert status == STATUS_OK and (m[core] >= 128).all()
    m, status = grabcut_box(img, np.array([5, 5, 6.5, 6.5], np.float32), SeedParams())
    assert status == STATUS_TINY and (m == 255).all()
    bg_box = np.array([2, 2, 30, 30], np.float32)  # pure background texture
    _, status = grabcut_box(img, bg_box, SeedParams())
    assert status in (STATUS_OK, STATUS_FULL)  # never empty


def test_masked_grabcut_survives_where_rectangle_grabcut_collapses():
    """A low-contrast object on a busy background (the common real-photo case): rectangle-initialised
    GrabCut gives everything to the background colour model and returns an empty mask; the sure
    foreground core keeps the object's colours in the foreground model."""
    rng = np.random.default_rng(0)
    H, W = 120, 160
    img = rng.normal(110, 35, (H, W, 3)).clip(0, 255).astype(np.uint8)
    gt = np.zeros((H, W), np.uint8)
    cv2.ellipse(gt, (80, 60), (30, 22), 0, 0, 360, 1, -1)
    img[gt > 0] = rng.normal([125, 110, 95], 12, (int(gt.sum()), 3)).clip(0, 255)
    ys, xs = np.nonzero(gt)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    gt = gt.astype(bool)
    m_rect, s_rect = grabcut_box(img, box, SeedParams(method="grabcut_rect", fallback="none"))
    assert s_rect == STATUS_EMPTY
    filled = paste_mask(np.full((28, 28), 255, np.uint8), box, H, W)
    for method in ("grabcut_masked", "grabcut_batched"):  # cv2, and batched in torch
        m, status = grabcut_box(img, box, SeedParams(method=method))
        got = paste_mask(m, box, H, W)
        assert status == STATUS_OK and _iou(got, gt) > 0.9 and _iou(got, gt) > _iou(filled, gt)


def test_grabcut_method_keeps_a_good_rectangle_result():
    """``method: grabcut`` runs the rectangle first and keeps it where it is not degenerate (the
    clear synthetic object); only a collapsed rectangle pass is redone from the sure core."""
    img, gt, box = _scene()
    rect, s_rect = grabcut_box(img, box, SeedParams(method="grabcut_rect"))
    m, s = grabcut_box(img, box, SeedParams(method="grabcut"))
    assert s == s_rect == STATUS_OK and (m == rect).all()
    masked, _ = grabcut_box(img, box, SeedParams(method="grabcut_masked"))
    assert not (masked == rect).all()  # a different mask: grabcut did not run the masked pass
    # rect_accept = 1.0 never accepts the rectangle: grabcut becomes the masked method
    m, _ = grabcut_box(img, box, SeedParams(method="grabcut", rect_accept=1.0))
    assert (m == masked).all()


def test_shape_methods_and_mcg_segments():
    img, gt, box = _scene()
    m, s = grabcut_box(img, box, SeedParams(method="ellipse"))
    assert s == STATUS_OK and (m == (inscribed_ellipse(28) * 255)).all()
    m, s = grabcut_box(img, box, SeedParams(method="box"))
    assert (m == 255).all()
    left = np.zeros((28, 28), np.uint8)
    left[:, :14] = 255  # an MCG segment covering the left half of the box
    m, s = seed_mask(img, box, SeedParams(method="mcg"), left)
    assert s == STATUS_OK and (m == left).all()
    # mcg_grabcut = MCG segment AND GrabCut: inside the left half only, and not empty
    m, s = seed_mask(img, box, SeedParams(method="mcg_grabcut"), left)
    assert s == STATUS_OK and not (m[:, 14:] > 0).any() and (m[:, :14] >= 128).mean() > 0.5
    # an empty segment falls back to the shape
    m, s = seed_mask(img, box, SeedParams(method="mcg", fallback="box"), np.zeros((28, 28), np.uint8))
    assert s == STATUS_FALLBACK and (m == 255).all()
    with pytest.raises(CacheError, match="needs MCG segments"):
        seed_mask(img, box, SeedParams(method="mcg"))
    with pytest.raises(DataError, match="seed method 'crf'"):
        SeedParams(method="crf")


def test_build_bank_maps_every_proposal():
    img, gt, box = _scene(1)
    boxes = np.stack([box, box + [1, 0, 1, 0], box + [0, 1, 0, 1], [0, 0, 40, 40]]).astype(np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    bank = build_bank(img, boxes, scores, SeedParams(method="grabcut_masked", sharing="facility"))
    assert len(bank["bank_boxes"]) == 2 and bank["bank_masks"].shape == (2, 28, 28)
    assert bank["bank_row"].tolist() == [0, 0, 0, 1]
    assert (bank["coverage"] > 0.9).all()
    # sharing none: every proposal its own mask, in its own box
    bank = build_bank(img, boxes, scores, SeedParams(sharing="none"))
    assert bank["bank_row"].tolist() == [0, 1, 2, 3] and (bank["coverage"] == 1).all()
    np.testing.assert_array_equal(bank["bank_boxes"], boxes)
    assert bank["bank_masks"].shape == (4, 28, 28)


def test_facility_sharing_covers_proposals_better_than_the_threshold_clustering():
    from pdsl.cues.seeds import cluster_proposals, facility_representatives

    # a hand case: two tight groups and one stray box; with k = 2 the greedy facility choice
    # takes the middle box of each group (summed IoU), where NMS-like clustering in score order
    # takes the stray high-scoring box first
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [2, 0, 12, 10],
                      [50, 50, 60, 60], [51, 50, 61, 60], [52, 50, 62, 60],
                      [100, 0, 110, 10]], np.float32)
    scores = np.array([0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.9], np.float32)
    reps, row, cov = facility_representatives(boxes, 2)
    assert sorted(reps.tolist()) == [1, 4]
    # it stops once every proposal is covered enough: the two groups alone need no third mask
    assert len(facility_representatives(boxes[:6], 5, enough=0.6)[0]) == 2
    assert [int(reps[r]) for r in row[:6]] == [1, 1, 1, 4, 4, 4]  # each to its group's middle
    t_reps, _, t_cov = cluster_proposals(boxes, scores, iou=0.8, max_bank=2)
    assert 6 in t_reps.tolist() and cov.mean() > t_cov.mean()
    # random proposals: every proposal mapped to its best representative, never worse on average
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (300, 2))
    b = np.concatenate([xy, xy + rng.uniform(10, 120, (300, 2))], 1).astype(np.float32)
    reps, row, cov = facility_representatives(b, 20)
    assert len(set(reps.tolist())) == 20
    assert cov.mean() > cluster_proposals(b, rng.random(300).astype(np.float32), 0.8, 20)[2].mean()


def test_bank_with_facility_sharing_masks_its_representatives():
    import cv2

    from pdsl.cues.seeds import SeedParams, build_bank

    img = np.full((80, 100, 3), 40, np.uint8)
    cv2.circle(img, (50, 40), 20, (0, 0, 230), -1)
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 50, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(15, 45, (60, 2))], 1).astype(np.float32)
    p = SeedParams(sharing="facility", max_bank=6)
    bank = build_bank(img, boxes, np.ones(60, np.float32), p)
    assert len(bank["bank_boxes"]) == 6 and bank["bank_row"].max() < 6
    assert np.allclose(bank["coverage"], [box_iou(boxes[i:i + 1], bank["bank_boxes"][r:r + 1])[0, 0]
                                          for i, r in enumerate(bank["bank_row"])], atol=1e-5)
    with pytest.raises(Exception, match="sharing"):
        SeedParams(sharing="kmeans")


def test_batched_grabcut_beats_the_box_and_each_box_is_independent():
    img, gt, box = _scene(2)
    box = box.astype(np.float64)
    H, W = gt.shape
    boxes = np.stack([box, box + [-6, -4, 6, 4], box + [5, 3, 5, 3], [0, 0, 40, 30],
                      [box[0] - 30, box[1], box[2] + 4, H]])  # exact, loose, shifted, off, edge
    masks = batched_grabcut(img, boxes)
    assert masks.shape == (5, 28, 28) and set(np.unique(masks)) <= {0.0, 1.0}
    for k in range(3):  # on the object: better than its filled box
        got = paste_mask((masks[k] * 255).astype(np.uint8), boxes[k], H, W)
        filled = paste_mask(np.full((28, 28), 255, np.uint8), boxes[k], H, W)
        assert _iou(got, gt) > _iou(filled, gt) + 0.05
    assert _iou(paste_mask((masks[0] * 255).astype(np.uint8), box, H, W), gt) > 0.85
    # a box's mask depends on that box only: alone, or in other chunks, the same mask
    np.testing.assert_array_equal(batched_grabcut(img, boxes[4:5]), masks[4:5])
    np.testing.assert_array_equal(batched_grabcut(img, boxes, chunk=2), masks)
