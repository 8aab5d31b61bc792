"""One seed mask per proposal: the per-proposal bit-packed cache layout, the trainer reading it,
and caches of the earlier format still read."""
import h5py
import numpy as np
import pytest

from pdsl.cues.store import STATUS_OK, CueStore, CueWriter
from pdsl.errors import CacheError

M = 28


def _add(w, image_id, boxes, masks, status=None):
    P = len(boxes)
    w.add(image_id, 60, 80, f"{image_id:040d}", boxes, np.linspace(1, 0, P), bank_boxes=boxes,
          bank_masks=masks, bank_status=np.zeros(P, np.uint8) if status is None else status)


def test_per_proposal_bit_packed_round_trip_and_size(tmp_path):
    rng = np.random.default_rng(0)
    boxes = np.sort(rng.uniform(0, 60, (7, 4)), 1).astype(np.float32)[:, [0, 1, 2, 3]]
    masks = rng.integers(0, 256, (7, M, M)).astype(np.uint8)
    meta = {"dataset": "toy", "split": "train"}
    with CueWriter(tmp_path / "c.h5", meta, bank_layout="per_proposal", mask_encoding="bits") as w:
        _add(w, 5, boxes, masks)
        _add(w, 9, boxes[:3], masks[:3])
    s = CueStore(tmp_path / "c.h5")
    assert (s.bank_layout, s.mask_encoding) == ("per_proposal", "bits")
    c = s.get(9)
    np.testing.assert_array_equal(c.bank_masks, np.where(masks[:3] >= 128, 255, 0))
    assert c.bank_row.tolist() == [0, 1, 2] and (c.coverage == 1).all()
    np.testing.assert_array_equal(c.bank_boxes, c.boxes)
    with h5py.File(tmp_path / "c.h5") as f:  # 98 bytes per mask, no per-proposal bank fields
        assert f["bank/masks"].shape == (10, 98) and "proposals/bank_row" not in f
    with pytest.raises(CacheError, match="one mask per proposal"):
        with CueWriter(tmp_path / "d.h5", meta, bank_layout="per_proposal") as w:
            _add(w, 1, boxes, masks[:3], np.zeros(3, np.uint8))


def test_cache_of_the_previous_format_is_read(tmp_path):
    """Format 1 (a shared uint8 bank, no layout attributes) is read as it was written."""
    rng = np.random.default_rng(1)
    boxes = np.array([[0, 0, 20, 20], [2, 2, 22, 22], [30, 30, 50, 50]], np.float32)
    bank = rng.integers(0, 256, (2, M, M)).astype(np.uint8)
    with CueWriter(tmp_path / "v1.h5", {"dataset": "toy"}) as w:
        w.add(1, 60, 80, "0" * 40, boxes, np.ones(3), bank_row=np.array([0, 0, 1]),
              coverage=np.array([1, .8, 1]), bank_boxes=boxes[[0, 2]], bank_masks=bank,
              bank_status=np.zeros(2, np.uint8))
    with h5py.File(tmp_path / "v1.h5", "a") as f:
        f.attrs["pdsl_cues_format"] = 1
        del f.attrs["bank_layout"], f.attrs["mask_encoding"]
    s = CueStore(tmp_path / "v1.h5")
    c = s.get(1)
    assert (s.version, s.bank_layout, s.mask_encoding) == (1, "shared", "u8")
    np.testing.assert_array_equal(c.bank_masks, bank)
    assert c.bank_row.tolist() == [0, 0, 1]


def test_default_cache_has_one_mask_per_proposal_and_the_trainer_reads_it(tmp_path):
    from pdsl.config import load_config
    from pdsl.cues.cache import cache_cues
    from pdsl.data import TrainDataset
    from pdsl.datasets import prepare_data
    from pdsl.manifest import load_manifest

    man = prepare_data("synthetic", tmp_path / "val.json", "val", num_images=2, seed=3,
                       progress=False)
    summary = cache_cues(man.path, "builtin", tmp_path / "c.h5", shard_size=1, log=lambda s: None,
                         proposal_options={"max_proposals": 150})
    s = CueStore(tmp_path / "c.h5")
    assert (s.bank_layout, s.mask_encoding) == ("per_proposal", "bits")
    assert summary["bank_masks"] == summary["proposals"] <= 2 * 150
    assert summary["bytes_per_image"] > 0
    c = s.get(int(s.ids[0]))
    assert (c.bank_status == STATUS_OK).mean() > 0.9 and set(np.unique(c.bank_masks)) <= {0, 255}
    cfg = load_config(None, ["input.train_scales=[128]", "input.max_size=200", "input.crop=1.0",
                             "input.flip=false"])
    ds = TrainDataset(load_manifest(man.path), s, cfg, verbose=False)
    x = ds[0]
    own = c.bank_masks[x["proposal_index"]] if int(ds.ids[0]) == c.image_id else None
    np.testing.assert_allclose(x["bank_boxes"][x["proposal_to_bank"]], x["proposals"], atol=1e-3)
    if own is not None:  # each proposal's target is its own mask
        np.testing.assert_array_equal(x["bank_masks"][x["proposal_to_bank"]], own)
