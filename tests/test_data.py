"""Training data: augmentation consistency (image, proposals, bank boxes and masks), determinism,
the sampler, test-time loading. Runs on a tiny synthetic set built in tmp_path."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pdsl.boxes import box_iou
from pdsl.config import load_config
from pdsl.boxes import paste_mask
from pdsl.cues.store import STATUS_EMPTY, STATUS_FULL, STATUS_OK, CueStore, CueWriter
from pdsl.data import Collate, TrainDataset, flip_boxes, scaled_size
from pdsl.sampling import TrainBatchSampler
from pdsl.inference_data import TestDataset, load_test_image
from pdsl.errors import CacheError
from pdsl.io import file_sha1
from pdsl.manifest import load_manifest, save_manifest

M = 28


def make_tiny_set(root, num_images=6, size=(64, 80), class_names=("a", "b", "c"), seed=0,
                  num_props=12, num_bank=5, unlabelled=1, real_coverage=False):
    """A few random PNGs with a coloured rectangle per labelled class, a manifest and a cue file
    with random proposals and a random seed-mask bank. Returns (manifest path, cues path)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    H, W = size
    C = len(class_names)
    colours = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255)]
    images, recs = [], []
    for i in range(num_images):
        img = rng.integers(0, 60, (H, W, 3), dtype=np.uint8)
        labels = [] if i < unlabelled else sorted(
            rng.choice(C, size=int(rng.integers(1, C)), replace=False).tolist())
        for c in labels:
            x0, y0 = int(rng.integers(0, W // 2)), int(rng.integers(0, H // 2))
            img[y0:y0 + H // 3, x0:x0 + W // 3] = colours[c % 4]
        name = f"img{i}.png"
        cv2.imwrite(str(root / name), img)
        images.append({"id": 100 + i, "file_name": name, "height": H, "width": W,
                       "labels": [c + 1 for c in labels]})
        xy = rng.uniform(0, [W - 8, H - 8], (num_props, 2))
        wh = rng.uniform(6, [W, H], (num_props, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, [W, H])], 1).astype(np.float32)
        scores = np.sort(rng.random(num_props).astype(np.float32))[::-1]
        bank_boxes = boxes[:num_bank].copy()
        bank_masks = rng.integers(0, 256, (num_bank, M, M)).astype(np.uint8)
        status = rng.choice([STATUS_OK, STATUS_OK, STATUS_EMPTY, STATUS_FULL], num_bank)
        bank_row = rng.integers(0, num_bank, num_props).astype(np.int32)
        bank_row[:num_bank] = np.arange(num_bank)
        recs.append((100 + i, H, W, root / name, boxes, scores, bank_row, bank_boxes, bank_masks,
                     status.astype(np.uint8)))
    cats = [{"id": c + 1, "name": n} for c, n in enumerate(class_names)]
    manifest = root / "train.json"
    save_manifest({"info": {"dataset": "tiny", "split": "train", "format": "folder",
                            "image_root": str(root)}, "images": images, "categories": cats},
                  manifest)
    cues = root / "cues.h5"
    meta = {"dataset": "tiny", "split": "train", "num_classes": C, "class_names": list(class_names)}
    with CueWriter(cues, meta, kind="cues", mask_size=M) as w:
        for (iid, h, wd, path, boxes, scores, row, bb, bm, st) in recs:
            cov = box_iou(boxes, bb)[np.arange(len(boxes)), row].astype(np.float32) \
                if real_coverage else np.ones(len(boxes), np.float32)
            w.add(iid, h, wd, file_sha1(path), boxes, scores, bank_row=row,
                  coverage=cov, bank_boxes=bb, bank_masks=bm, bank_status=st)
    return manifest, cues


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_set(tmp_path_factory.mktemp("tiny"))


def _cfg(*overrides):
    base = ["input.train_scales=[64]", "input.max_size=200", "input.crop=1.0",
            "input.hsv_jitter=1.0", "input.flip=false"]
    return load_config(None, base + list(overrides))


def _dataset(tiny, *overrides, seed=0):
    manifest, cues = tiny
    return TrainDataset(load_manifest(manifest), CueStore(cues), _cfg(*overrides), seed=seed)


def test_skips_unlabelled_images_and_logs(tiny, capsys):
    ds = _dataset(tiny)
    assert len(ds) == 5 and 100 not in ds.ids
    assert "skipped 1 without image labels" in capsys.readouterr().err


def test_sample_shapes_and_frames(tiny):
    ds = _dataset(tiny, "input.train_scales=[96]")
    s = ds[0]
    assert s["image"].dtype == np.float32 and s["image"].shape == (3, 96, 120)
    P = len(s["proposals"])
    assert s["proposals"].shape == (P, 4) and s["proposal_scores"].shape == (P,)
    B = len(s["bank_boxes"])
    assert s["bank_masks"].shape == (B, M, M) and s["bank_masks"].dtype == np.uint8
    assert s["proposal_to_bank"].dtype == np.int64 and s["proposal_to_bank"].max() < B
    assert np.array_equal(np.unique(s["proposal_to_bank"]), np.arange(B))  # only used rows kept
    assert s["proposals"][:, 2].max() <= 120 + 1e-4 and s["proposals"][:, 3].max() <= 96 + 1e-4
    np.testing.assert_allclose(s["scale"], [1.5, 1.5])


def _find_key(ds, want_flip=True):
    for step in range(50):
        if ds[(0, step, 0)]["flipped"] == want_flip:
            return (0, step, 0)
    raise AssertionError("no flipped sample in 50 draws")


def test_flip_mirrors_image_boxes_and_bank_masks(tiny):
    flipping = _dataset(tiny, "input.flip=true")
    plain = _dataset(tiny, "input.flip=false")
    key = _find_key(flipping)
    f, u = flipping[key], plain[key]
    assert f["flipped"] and not u["flipped"]
    H, W = f["image"].shape[1:]
    np.testing.assert_array_equal(f["image"], u["image"][:, :, ::-1])
    np.testing.assert_allclose(f["proposals"], flip_boxes(u["proposals"], W), atol=1e-4)
    np.testing.assert_array_equal(f["proposal_to_bank"], u["proposal_to_bank"])
    for k in range(len(f["bank_boxes"])):
        # a flipped bank mask pasted at its flipped box = the pasted unflipped mask, mirrored
        pasted_f = paste_mask(f["bank_masks"][k], f["bank_boxes"][k], H, W)
        pasted_u = paste_mask(u["bank_masks"][k], u["bank_boxes"][k], H, W)
        assert pasted_u.any()
        assert (pasted_f != pasted_u[:, ::-1]).mean() < 0.002


@pytest.mark.parametrize("reproject", ["cut", "warp", "auto"])
def test_crop_keeps_proposal_to_bank_mapping(tmp_path, reproject):
    """cut: a proposal's bank row is its representative's box and mask; warp: the representative's
    mask in the proposal's own (unclipped) box; auto: cut where the proposal's coverage is at least
    cues.reproject_iou, else warp. All through crop, rescale and flip."""
    tiny = make_tiny_set(tmp_path / "cov", real_coverage=True)  # coverage = IoU to the rep
    manifest, cues = tiny
    ds = _dataset(tiny, "input.crop=0.5", "input.min_proposal_size=3.0", "input.flip=true",
                  f"cues.reproject={reproject}", "cues.reproject_iou=0.5",
                  "cues.degenerate=keep")  # raw bank masks, to compare with the cache
    store = CueStore(cues)
    dropped = 0
    for step in range(6):
        s = ds[(1, step, 0)]
        c = store.get(s["image_id"])
        x0, y0, x1, y1 = s["crop"]
        assert (x1 - x0, y1 - y0) == (40, 32)
        sx, sy = s["scale"]
        W = s["image"].shape[2]
        off = np.array([x0, y0, x0, y0], np.float32)
        scale = np.array([sx, sy, sx, sy], np.float32)
        expect = c.boxes[s["proposal_index"]] - off
        expect[:, 0::2] = expect[:, 0::2].clip(0, x1 - x0)
        expect[:, 1::2] = expect[:, 1::2].clip(0, y1 - y0)
        expect *= scale
        frame = c.bank_boxes[c.bank_row[s["proposal_index"]]] if reproject == "cut" else \
            c.boxes[s["proposal_index"]].copy()
        if reproject == "auto":
            near = c.coverage[s["proposal_index"]] >= 0.5
            assert near.any() and not near.all()  # both cases occur
            frame[near] = c.bank_boxes[c.bank_row[s["proposal_index"]][near]]
        bank = (frame - off) * scale
        masks = c.bank_masks[c.bank_row[s["proposal_index"]]]
        if s["flipped"]:
            expect, bank, masks = flip_boxes(expect, W), flip_boxes(bank, W), masks[:, :, ::-1]
        np.testing.assert_allclose(s["proposals"], expect, atol=1e-3)
        np.testing.assert_allclose(s["bank_boxes"][s["proposal_to_bank"]], bank, atol=1e-3)
        np.testing.assert_array_equal(s["bank_masks"][s["proposal_to_bank"]], masks)
        wh = s["proposals"][:, 2:] - s["proposals"][:, :2]
        assert (wh >= 3.0 - 1e-4).all()
        dropped += len(c.boxes) - len(s["proposals"])
        if reproject != "cut":  # one bank row per proposal
            assert (s["proposal_to_bank"] == np.arange(len(s["proposals"]))).all()
    assert dropped > 0  # the crop really removed proposals


def test_mcg_seed_source_uses_each_proposals_own_segment(tmp_path):
    """cues.seed_source=mcg: every proposal's target frame is its own box and its mask its own MCG
    segment (flipped with the image); an empty segment is not a valid target; a cache without
    segments is refused."""
    manifest, cues = make_tiny_set(tmp_path / "plain", num_images=3, unlabelled=0)
    with pytest.raises(CacheError, match="no MCG segments"):
        TrainDataset(load_manifest(manifest), CueStore(cues), _cfg("cues.seed_source=mcg"))
    store = CueStore(cues)
    rng = np.random.default_rng(1)
    seg_cues = tmp_path / "seg.h5"
    segs = {}
    meta = {k: store.meta(k) for k in ("dataset", "split", "num_classes", "class_names")}
    with CueWriter(seg_cues, meta, kind="cues", mask_size=M) as w:
        for iid in store.ids:
            c = store.get(int(iid))
            seg = (rng.random((len(c.boxes), M, M)) > 0.5).astype(np.uint8) * 255
            seg[0] = 0  # the top proposal's segment is empty
            segs[int(iid)] = seg
            w.add(c.image_id, c.height, c.width, c.file_sha1, c.boxes, c.scores, segments=seg,
                  bank_row=c.bank_row, coverage=c.coverage, bank_boxes=c.bank_boxes,
                  bank_masks=c.bank_masks, bank_status=c.bank_status)
    ds = TrainDataset(load_manifest(manifest), CueStore(seg_cues),
                      _cfg("cues.seed_source=mcg", "input.flip=true"))
    flipped = 0
    for step in range(4):
        s = ds[(0, step, 0)]
        idx = s["proposal_index"]
        want = segs[s["image_id"]][idx]
        if s["flipped"]:
            want = want[:, :, ::-1]
            flipped += 1
        np.testing.assert_array_equal(s["bank_masks"][s["proposal_to_bank"]], want)
        np.testing.assert_allclose(s["bank_boxes"][s["proposal_to_bank"]],
                                   _expected_own_boxes(s, CueStore(seg_cues)), atol=1e-3)
        assert s["bank_valid"][s["proposal_to_bank"]].tolist() == [bool(i != 0) for i in idx]
    assert 0 < flipped < 4


def _expected_own_boxes(s, store):
    c = store.get(s["image_id"])
    x0, y0 = s["crop"][:2]
    sx, sy = s["scale"]
    b = (c.boxes[s["proposal_index"]] - np.array([x0, y0, x0, y0], np.float32)) * \
        np.array([sx, sy, sx, sy], np.float32)
    return flip_boxes(b, s["image"].shape[2]) if s["flipped"] else b


def test_degenerate_masks_ignored_or_kept(tiny):
    manifest, cues = tiny
    store = CueStore(cues)
    samples = [(mode, i) for mode in ("ignore", "keep", "box") for i in range(5)]
    n_empty = 0
    for mode, i in samples:
        s = _dataset(tiny, f"cues.degenerate={mode}")[i]
        c = store.get(s["image_id"])
        status = c.bank_status[c.bank_row[s["proposal_index"]]]
        valid = s["bank_valid"][s["proposal_to_bank"]]
        masks = s["bank_masks"][s["proposal_to_bank"]]
        raw = c.bank_masks[c.bank_row[s["proposal_index"]]]
        if s["flipped"]:
            raw = raw[:, :, ::-1]
        if mode in ("keep", "box"):
            assert valid.all()
        else:
            np.testing.assert_array_equal(valid, ~np.isin(status, (STATUS_EMPTY, STATUS_FULL)))
        empty = status == STATUS_EMPTY
        n_empty += int(empty.sum())
        if mode == "box":  # the authors' fallback: an empty GrabCut mask is the filled box
            assert (masks[empty] == 255).all()
            np.testing.assert_array_equal(masks[~empty], raw[~empty])
        else:
            np.testing.assert_array_equal(masks, raw)
    assert n_empty > 0  # the fixture has empty GrabCut results, so "box" was exercised


def test_samples_are_a_function_of_seed_step_slot_index(tiny):
    ds = _dataset(tiny, "input.crop=0.9", "input.flip=true", "input.hsv_jitter=1.5",
                  "input.train_scales=[48,64,80]")
    a, b = ds[(3, 7, 1)], ds[(3, 7, 1)]
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k] if k != "cue_time" else 0),
                                      np.asarray(b[k] if k != "cue_time" else 0))
    others = [ds[(3, step, 1)] for step in range(8, 12)]
    assert any(o["image"].shape != a["image"].shape or not np.array_equal(o["image"], a["image"])
               for o in others)
    other_seed = _dataset(tiny, "input.crop=0.9", "input.flip=true", "input.hsv_jitter=1.5",
                          "input.train_scales=[48,64,80]", seed=1)
    c = other_seed[(3, 7, 1)]
    assert c["image"].shape != a["image"].shape or not np.array_equal(c["image"], a["image"])


def test_loader_same_batches_with_any_num_workers(tiny):
    ds = _dataset(tiny, "input.crop=0.9", "input.flip=true", "input.hsv_jitter=1.5")

    def batches(workers):
        sampler = TrainBatchSampler(len(ds), 0, 4, 2, start_step=1, max_iter=3)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=Collate(32),
                                             num_workers=workers)
        return list(loader)

    a, b = batches(0), batches(2)
    assert len(a) == len(b) == 4  # 2 steps x 2 accumulation passes
    for x, y in zip(a, b):
        assert torch.equal(x["images"], y["images"])
        assert x["images"].shape[-1] % 32 == 0 and x["images"].shape[-2] % 32 == 0
        assert x["image_id"] == y["image_id"]
        for p, q in zip(x["proposals"], y["proposals"]):
            np.testing.assert_array_equal(p, q)


def test_sampler_independent_of_world_size_and_resumable():
    def images_of_step(world, ipg, start=0, stop=6):
        per_step = {}
        for rank in range(world):
            for batch in TrainBatchSampler(7, 3, 4, ipg, start, stop, rank, world):
                for index, step, slot in batch:
                    per_step.setdefault(step, {})[slot] = index
        return per_step

    one = images_of_step(1, 1)
    assert one == images_of_step(2, 1) == images_of_step(4, 1) == images_of_step(2, 2)
    assert {t: one[t] for t in range(2, 6)} == images_of_step(1, 2, start=2)
    stream = [one[t][k] for t in range(6) for k in range(4)]
    assert sorted(stream[:7]) == list(range(7)) and sorted(stream[7:14]) == list(range(7))
    with pytest.raises(Exception, match="multiple"):
        TrainBatchSampler(7, 0, 4, 3, 0, 1)


def test_test_loading_scales_and_flips(tiny):
    manifest, cues = tiny
    m, store = load_manifest(manifest), CueStore(cues)
    cfg = _cfg()
    t = load_test_image(m, store, 101, 96, 1000, cfg.input.pixel_mean, cfg.input.pixel_std)
    tf = load_test_image(m, store, 101, 96, 1000, cfg.input.pixel_mean, cfg.input.pixel_std,
                         flip=True)
    assert t["image"].shape == (3, 96, 120) and scaled_size(64, 80, 96, 100) == (80, 100)
    raw = store.get(101).boxes
    np.testing.assert_allclose(t["proposals"], raw * 1.5, atol=1e-3)
    np.testing.assert_allclose(tf["proposals"], flip_boxes(t["proposals"], 120), atol=1e-3)
    np.testing.assert_array_equal(tf["image"], t["image"][:, :, ::-1])
    ds = TestDataset(m, store, cfg, scale=64)
    assert len(ds) == 6 and ds[0]["image"].shape == (3, 64, 80)  # unlabelled images included


def test_foreign_cache_refused(tiny, tmp_path):
    manifest, _ = tiny
    _, other_cues = make_tiny_set(tmp_path / "other", class_names=("x", "y", "z"))
    with pytest.raises(CacheError, match="classes"):
        TrainDataset(load_manifest(manifest), CueStore(other_cues), _cfg())


#: a 2-step demo-config run at small widths (tests of what consumes a trained run)
TINY_RUN = ["solver.max_iter=2", "train.checkpoint_period=2", "solver.warmup_iters=1",
            "solver.steps=[1]", "train.num_workers=0", "input.max_proposals=40",
            "train.threads=1", "model.hidden_dim=32", "model.mask_dim=16"]


def synthetic_split(d, split: str, num_images: int, seed: int):
    """``d/<split>.json`` (synthetic shapes) and its cue cache ``d/<split>.h5`` (small bank)."""
    from pdsl.cues.cache import cache_cues
    from pdsl.cues.seeds import SeedParams
    from pdsl.datasets import prepare_data

    prepare_data("synthetic", d / f"{split}.json", split, num_images=num_images, seed=seed,
                 progress=False)
    cache_cues(d / f"{split}.json", "builtin", d / f"{split}.h5", workers=1, shard_size=8,
               params=SeedParams(crop_size=24, max_bank=8, iterations=1), log=lambda s: None)


def tiny_demo_run(d, num_images: int, seed: int):
    """A synthetic train split in ``d`` and a :data:`TINY_RUN` trained on it in ``d/run``."""
    from pdsl.engine.train import train

    synthetic_split(d, "train", num_images, seed)
    torch.manual_seed(0)
    train("pipeline/configs/demo.yaml", d / "train.json", d / "train.h5", d / "run",
          overrides=TINY_RUN)
    return d
