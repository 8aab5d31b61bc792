"""The path that will be run on a real VOC devkit: prepare-data --format voc -> cache-cues
--proposals builtin -> cue-report --json, through the CLI, on a devkit built from synthetic images
(JPEGs, palette PNG instance/class masks with 255 borders, ImageSets lists)."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from test_datasets import write_png  # palette PNG writer (no PIL needed)

REPO = Path(__file__).resolve().parents[1]


def _cli(*args):
    r = subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    return r


def _devkit_from_synthetic(tmp_path, n=4):
    from pdsl.datasets.synthetic import generate

    m = generate(tmp_path / "syn" / "val.json", "val", n, seed=11)
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    names = []
    for k, img in enumerate(m.images):
        name = f"2010_{k:06d}"
        names.append(name)
        bgr = cv2.imread(str(m.image_path(img)))
        (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(voc / "JPEGImages" / f"{name}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        obj = np.zeros(bgr.shape[:2], np.uint8)
        cls = np.zeros(bgr.shape[:2], np.uint8)
        for i, a in enumerate(m.annotations_of(img["id"]), 1):
            rle = dict(a["segmentation"], counts=a["segmentation"]["counts"].encode())
            mk = mask_utils.decode(rle).astype(bool)
            ring = cv2.dilate(mk.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~mk
            obj[mk], cls[mk] = i, a["category_id"]
            obj[ring & (obj == 0)] = 255
            cls[ring & (cls == 0)] = 255
        write_png(voc / "SegmentationObject" / f"{name}.png", obj)
        write_png(voc / "SegmentationClass" / f"{name}.png", cls)
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "val.txt").write_text("\n".join(names) + "\n")
    (sets / "train.txt").write_text("")
    return tmp_path / "VOCdevkit", len(m.annotations)


def test_voc_prepare_cache_report(tmp_path):
    devkit, n_inst = _devkit_from_synthetic(tmp_path)
    man = tmp_path / "voc_val.json"
    _cli("prepare-data", "--format", "voc", "--root", devkit, "--split", "val", "--out", man)
    m = json.loads(man.read_text())
    assert len(m["images"]) == 4 and len(m["categories"]) == 20
    assert len(m["annotations"]) == n_inst  # every instance survives the border/void handling
    cues = tmp_path / "cues.h5"
    _cli("cache-cues", "--manifest", man, "--proposals", "builtin", "--workers", "2",
         "--crop-size", 48, "--max-bank", 60, "--out", cues)
    rep = json.loads(_cli("cue-report", "--manifest", man, "--cues", cues, "--json").stdout)
    assert rep["images"] == 4 and rep["gt"]["instances"] == n_inst
    assert rep["recall"]["iou_0.5"] >= 0.7  # selective search finds the synthetic objects
    s = rep["seed_masks"]
    assert s["cached_mask_iou"] > 0.25 and s["online_mask_iou"] > 0.25  # masks, not noise
    assert 0.5 <= rep["coverage"]["mean_iou"] <= 1.0
    # both timed (speed itself is the benchmark's: bench_cues.py, not a test)
    assert s["online_s_per_box"] > 0 and s["cached_s_per_box"] > 0
