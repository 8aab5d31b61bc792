"""The cache stage end to end on a tiny synthetic split: CLI, resume, atomicity, clear errors."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pdsl.cues import cache as cache_mod
from pdsl.cues.cache import cache_cues, parse_shard, shard_images
from pdsl.cues.report import cue_report
from pdsl.cues.seeds import SeedParams
from pdsl.cues.store import CueStore
from pdsl.errors import CacheError, DataError
from pdsl.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]
FAST = SeedParams(method="grabcut_masked", sharing="facility", mask_format="u8", crop_size=32,
                  max_bank=12, iterations=2)  # a shared bank of soft masks


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from pdsl.datasets import prepare_data

    d = tmp_path_factory.mktemp("tiny")
    prepare_data("synthetic", d / "val.json", "val", num_images=6, seed=3, progress=False)
    return d


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True)


def test_parse_shard_and_slices(tiny):
    assert parse_shard("2-of-3") == (1, 3)
    for bad in ("0-of-3", "4-of-3", "x"):
        with pytest.raises(DataError, match="shard"):
            parse_shard(bad)
    m = load_manifest(tiny / "val.json")
    ids = [img["id"] for s in ("1-of-4", "2-of-4", "3-of-4", "4-of-4") for img in shard_images(m, s)]
    assert ids == [img["id"] for img in m.images]  # shards partition the split, in order


def test_cache_resume_and_report(tiny, tmp_path, monkeypatch):
    out = tmp_path / "cues.h5"
    s1 = cache_cues(tiny / "val.json", "builtin", out, workers=1, shard_size=2, params=FAST,
                    keep_parts=True, log=lambda s: None)
    assert s1["images"] == 6 and s1["computed_images"] == 6
    store = CueStore(out)
    m = load_manifest(tiny / "val.json")
    store.check_manifest(m, check_hashes=True)
    for img in m.images:
        c = store.get(img["id"])
        assert len(c.boxes) > 0 and len(c.bank_boxes) <= FAST.max_bank
        assert c.bank_row.max() < len(c.bank_boxes)
        assert c.bank_masks.shape[1:] == (28, 28)
    # resume: drop one finished shard; only its images are recomputed, result identical
    parts = tmp_path / "cues.h5.parts"
    (parts / "seeds-2-of-3.h5").unlink()
    calls = []
    real = cache_mod.compute_proposals_shard
    monkeypatch.setattr(cache_mod, "compute_proposals_shard",
                        lambda *a, **k: (calls.append(a[2]), real(*a, **k))[1])
    before = {i: store.get(int(i)).bank_masks.copy() for i in store.ids}
    s2 = cache_cues(tiny / "val.json", "builtin", out, workers=1, shard_size=2, params=FAST,
                    log=lambda s: None)
    assert calls == ["2-of-3"] and s2["computed_images"] == 2
    after = CueStore(out)
    for i, masks in before.items():
        np.testing.assert_array_equal(after.get(int(i)).bank_masks, masks)
    assert not parts.exists()  # cleaned up after a successful merge
    rep = cue_report(tiny / "val.json", out, online=False)
    assert 0.0 <= rep["recall"]["iou_0.5"] <= 1.0 and rep["gt"]["instances"] > 0
    assert rep["seed_masks"]["cached_mask_iou"] > rep["seed_masks"]["box_fill_iou"] - 0.2


def test_killed_run_leaves_no_complete_looking_file(tiny, tmp_path, monkeypatch):
    out = tmp_path / "cues.h5"

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod, "build_bank", boom)
    with pytest.raises(KeyboardInterrupt):
        cache_cues(tiny / "val.json", "builtin", out, workers=1, shard_size=3, params=FAST,
                   log=lambda s: None)
    assert not out.exists()
    leftovers = [p.name for p in (tmp_path / "cues.h5.parts").iterdir()]
    assert not any(n.startswith("seeds-") for n in leftovers), leftovers  # no seeds shard
    assert all(n.startswith("proposals-") for n in leftovers)  # only finished proposal shards


def test_stale_and_missing_images_are_named(tiny, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(tiny, d)
    man = json.loads((d / "val.json").read_text())
    man["info"]["image_root"] = str(d / "images" / "val")
    (d / "val.json").write_text(json.dumps(man))
    out = tmp_path / "cues.h5"
    cache_cues(d / "val.json", "builtin", out, workers=1, shard_size=6, params=FAST,
               log=lambda s: None)
    victim = man["images"][1]
    path = d / "images" / "val" / victim["file_name"]
    import cv2

    img = cv2.imread(str(path))
    img[0, 0] = 255 - img[0, 0]
    cv2.imwrite(str(path), img)
    with pytest.raises(CacheError, match=f"image {victim['id']} .*changed since"):
        CueStore(out).check_manifest(load_manifest(d / "val.json"), check_hashes=True)
    path.unlink()
    r = _cli("cache-cues", "--manifest", d / "val.json", "--out", tmp_path / "c2.h5",
             "--crop-size", 32, "--max-bank", 5)
    assert r.returncode == 2
    assert f"image {victim['id']}" in r.stderr and "file not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_cue_report_json(tiny, tmp_path):
    out = tmp_path / "cues.h5"
    cache_cues(tiny / "val.json", "builtin", out, workers=1, shard_size=6, params=FAST,
               log=lambda s: None)
    r = _cli("cue-report", "--manifest", tiny / "val.json", "--cues", out, "--json",
             "--max-images", 2)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert set(rep["recall"]) == {"iou_0.5", "iou_0.7", "mean_best_iou", "iou_0.5_ge_32px"}
    s = rep["seed_masks"]
    assert s["online_s_per_box"] > 0 and s["cached_s_per_box"] > 0  # speed: bench_cues.py
    # every method on both boxes, each row complete; the filled box is never empty
    t = s["methods"]
    assert {"box", "ellipse", "grabcut", "grabcut_rect_v1", "online"} <= set(t)
    assert set(t["cached"]) == {"matched"} and set(t["grabcut"]) == {"matched", "gt"}
    for v in t.values():
        for e in v.values():
            assert e["n"] == rep["gt"]["instances"] and 0 <= e["mean_iou"] <= 1
            assert set(e) >= {"median_iou", "empty", "full", "ms_per_box", "by_size", "label"}
    assert t["box"]["gt"]["empty"] == 0 and t["box"]["gt"]["full"] == 1
    assert t["grabcut"]["gt"]["empty"] == 0  # falls back to a shape, never to nothing
    r = _cli("cue-report", "--manifest", tiny / "val.json", "--cues", tmp_path / "nope.h5")
    assert r.returncode == 2 and "nope.h5: file not found" in r.stderr

    # box-only GT (VOC XML, Roboflow boxes): recall as before, no seed-mask IoU, no traceback
    man = json.loads((tiny / "val.json").read_text())
    for a in man["annotations"]:
        a.pop("segmentation")
    (tmp_path / "boxes.json").write_text(json.dumps(man))
    r = _cli("cue-report", "--manifest", tmp_path / "boxes.json", "--cues", out, "--no-online")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"seed-mask IoU needs GT masks: none of the {len(man['annotations'])} GT" in r.stdout
    assert "recall vs" in r.stdout
    full = cue_report(tiny / "val.json", out, online=False)
    boxed = cue_report(tmp_path / "boxes.json", out, online=False)
    assert boxed["recall"] == full["recall"] and boxed["seed_masks"] is None
    # a mix: the seed-mask rows count only the instances with masks
    man = json.loads((tiny / "val.json").read_text())
    first = man["annotations"][0]["image_id"]
    n_box = sum(1 for a in man["annotations"] if a["image_id"] == first)
    for a in man["annotations"]:
        if a["image_id"] == first:
            a["segmentation"] = []
    (tmp_path / "mixed.json").write_text(json.dumps(man))
    mixed = cue_report(tmp_path / "mixed.json", out, online=False)
    n = full["gt"]["instances"]
    assert mixed["gt"]["instances_without_mask"] == n_box
    assert mixed["seed_masks"]["methods"]["box"]["matched"]["n"] == n - n_box
    assert f"over the {n - n_box} of {n} GT instances" in mixed["seed_masks_note"]


def test_snakemake_end_to_end_resumes_one_shard(tmp_path):
    """The workflow on the tiny test config: build, then nothing to do, then one shard only."""
    snakemake = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile",
                 "pipeline/configs/workflow-test.yaml", "--config", f"data_dir={tmp_path}", f"runs_dir={tmp_path}/runs"]
    r = subprocess.run(snakemake + ["--quiet", "all"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for split in ("train", "val"):
        s = CueStore(tmp_path / "cues" / "synthetic" / split / "cues.h5")
        assert len(s) == {"train": 6, "val": 4}[split] and s.kind == "cues"
    r = subprocess.run(snakemake + ["-n"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr, r.stdout
    (tmp_path / "cues" / "synthetic" / "val" / "seeds-2-of-2.h5").unlink()
    r = subprocess.run(snakemake + ["-n", "--quiet", "rules"], cwd=REPO, capture_output=True,
                       text=True)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text
    counts = dict(line.split()[:2] for line in text.splitlines()
                  if len(line.split()) == 2 and line.split()[1].isdigit())
    assert counts.get("seeds") == "1" and counts.get("merge") == "1", text
    assert "proposals" not in counts and "prepare" not in counts, text


def _mcg_fixture(manifest_path, out_dir):
    """MCG '-proposals' files for a manifest: superpixels = one per GT instance plus the
    background; proposals = each instance's segment, then the whole image (boxes from segments)."""
    import scipy.io

    from pdsl.cues.report import gt_instances

    m = load_manifest(manifest_path)
    out_dir.mkdir()
    for img in m.images:
        _, masks, _, _ = gt_instances(m, img)
        H, W = int(img["height"]), int(img["width"])
        sp = np.full((H, W), len(masks) + 1, np.float64)
        for k, g in enumerate(masks):
            sp[g] = k + 1
        labels = np.empty((len(masks) + 1, 1), dtype=object)
        for k in range(len(masks)):
            labels[k, 0] = np.array([[k + 1]], float)
        labels[len(masks), 0] = np.arange(1, len(masks) + 2, dtype=float).reshape(1, -1)
        scores = np.linspace(1, 0.5, len(masks) + 1).reshape(-1, 1)
        scipy.io.savemat(out_dir / (Path(img["file_name"]).stem + ".mat"),
                         {"scores": scores, "superpixels": sp, "labels": labels})
    return m


@pytest.mark.parametrize("method", ["mcg", "mcg_grabcut"])
def test_mcg_segments_as_seed_masks(tiny, tmp_path, method):
    """seeds.method mcg / mcg_grabcut read the MCG segments the import stores: with segments that
    are the GT masks, the cached mask of every GT instance's proposal is its GT mask (mcg), or
    inside it (mcg_grabcut); cue-report adds both MCG rows; without segments: one clear error."""
    m = _mcg_fixture(tiny / "val.json", tmp_path / "mcg")
    out = tmp_path / "cues.h5"
    params = SeedParams(method=method, max_bank=50, crop_size=32)
    cache_cues(tiny / "val.json", f"mcg:{tmp_path / 'mcg'}", out, workers=1, shard_size=3,
               params=params, log=lambda s: None)
    assert CueStore(out).has_segments
    rep = cue_report(tiny / "val.json", out, online=False)
    t = rep["seed_masks"]["methods"]
    assert rep["recall"]["iou_0.5"] == 1.0
    # 0.9, not 1: a 28 x 28 box-frame mask of a small object loses its edges
    assert t["mcg"]["matched"]["mean_iou"] > 0.9 and "gt" not in t["mcg"]  # proposals only
    if method == "mcg":
        assert t["cached"]["matched"]["mean_iou"] > 0.9
    else:
        assert 0.5 < t["cached"]["matched"]["mean_iou"] <= t["mcg"]["matched"]["mean_iou"] + 1e-6
    assert t["mcg_grabcut"]["matched"]["empty"] == 0.0
    with pytest.raises(CacheError, match="needs MCG segments"):
        cache_cues(tiny / "val.json", "builtin", tmp_path / "b.h5", workers=1, shard_size=6,
                   params=params, log=lambda s: None)
    assert not (tmp_path / "b.h5").exists()
    r = _cli("cache-cues", "--manifest", tiny / "val.json", "--proposals", "builtin",
             "--seed-method", method, "--out", tmp_path / "c.h5")
    assert r.returncode == 2 and "needs MCG segments" in r.stderr and "Traceback" not in r.stderr
    assert m.images  # the fixture covered every image
