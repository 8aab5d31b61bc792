"""Loaders that take what users have, and the stages around them: VOC layouts with any
file names, one folder class list for every split, JSON image-level labels, `predict` writing the
manifest's category ids, and a workflow whose train/eval sections may be left out."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from test_data import make_tiny_set
from test_datasets import CAT, _lists, _rect, make_voc_image, write_png

from pdsl.datasets import prepare_data
from pdsl.datasets.folder import convert_folder
from pdsl.datasets.voc import convert_voc
from pdsl.errors import ConfigError, DataError
from pdsl.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1]


# -- VOC layout, arbitrary names ---------------------------------------------------------------
def test_voc_layout_with_arbitrary_file_names(tmp_path):
    voc = tmp_path / "export"                      # a labelImg/CVAT-style export in VOC layout
    names = ["IMG_0042", "frame 7", "2008_000003", "cat-photo.v2"]
    for k, n in enumerate(names):
        make_voc_image(voc, n, [(_rect(2, 10, 2 + k, 12 + k), CAT["cat"])])
    # one export wrote PNG images instead of JPEGs
    png = cv2.imread(str(voc / "JPEGImages" / "cat-photo.v2.jpg"))
    (voc / "JPEGImages" / "cat-photo.v2.jpg").unlink()
    cv2.imwrite(str(voc / "JPEGImages" / "cat-photo.v2.png"), png)
    _lists(voc / "ImageSets" / "Segmentation", train=names, val=names[:1])
    d = convert_voc(voc, "train", progress=False)
    by_name = {img["file_name"]: img for img in d["images"]}
    # ids 1..N over the sorted names, stable whatever subset is converted
    assert {n: by_name[f].get("id") for n, f in
            [("2008_000003", "2008_000003.jpg"), ("IMG_0042", "IMG_0042.jpg"),
             ("cat-photo.v2", "cat-photo.v2.png"), ("frame 7", "frame 7.jpg")]} == \
        {"2008_000003": 1, "IMG_0042": 2, "cat-photo.v2": 3, "frame 7": 4}
    assert all(img["labels"] == [CAT["cat"]] for img in d["images"])
    assert len(d["annotations"]) == 4
    sub = convert_voc(voc, "train", progress=False, num_images=2, seed=1)
    for img in sub["images"]:
        assert by_name[img["file_name"]]["id"] == img["id"]
    # VOC's own names keep the authors' ids
    val = convert_voc(voc, "val", progress=False)
    assert [img["id"] for img in val["images"]] == [1]          # "IMG_0042" alone: position
    _lists(voc / "ImageSets" / "Segmentation", val=["2008_000003"])
    assert [img["id"] for img in convert_voc(voc, "val", progress=False)["images"]] == \
        [2008000003]


def test_voc_missing_image_names_the_image(tmp_path):
    voc = tmp_path / "export"
    make_voc_image(voc, "IMG_1", [(_rect(2, 10, 2, 12), CAT["dog"])])
    write_png(voc / "SegmentationObject" / "IMG_2.png", np.zeros((24, 32), np.uint8))
    _lists(voc / "ImageSets" / "Segmentation", train=["IMG_1", "IMG_2"])
    with pytest.raises(DataError, match="image IMG_2: .*IMG_2.jpg not found"):
        convert_voc(voc, "train", progress=False)


# -- folder format: one class list, JSON labels ------------------------------------------------
def _folder(tmp_path, n=4):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(n):
        cv2.imwrite(str(root / f"{i}.png"), np.full((8, 10, 3), 40 * i, np.uint8))
    return root


def test_folder_splits_share_one_class_list(tmp_path):
    root = _folder(tmp_path)
    (root / "train.csv").write_text("file_name,labels\n0.png,cat;dog\n1.png,dog\n")
    (root / "val.csv").write_text("file_name,labels\n2.png,dog\n3.png,\n")
    # without --classes each split has its own list (the note says so)
    tr = convert_folder(root, "train", root / "train.csv", progress=False)
    va = convert_folder(root, "val", root / "val.csv", progress=False)
    assert [c["name"] for c in va["categories"]] == ["dog"]
    assert any("--classes" in n for n in va["info"]["notes"])
    # the union of every split's labels file: identical categories, ids and labels agree
    both = [root / "train.csv", root / "val.csv"]
    tr = convert_folder(root, "train", root / "train.csv", progress=False, classes=both)
    va = convert_folder(root, "val", root / "val.csv", progress=False, classes=both)
    assert tr["categories"] == va["categories"] == [{"id": 1, "name": "cat"},
                                                    {"id": 2, "name": "dog"}]
    assert [img["labels"] for img in va["images"]] == [[2], []]
    # a class-list file keeps its order
    (root / "classes.txt").write_text("# my classes\ndog\ncat\nbird\n")
    va = convert_folder(root, "val", root / "val.csv", progress=False,
                        classes=[root / "classes.txt"])
    assert [c["name"] for c in va["categories"]] == ["dog", "cat", "bird"]
    assert [img["labels"] for img in va["images"]] == [[1], []]
    # a label outside the list names the file, the line and the image
    (root / "classes.txt").write_text("cat\n")
    with pytest.raises(DataError, match=r"val\.csv line 2: image 2\.png has class 'dog'"):
        convert_folder(root, "val", root / "val.csv", progress=False,
                       classes=[root / "classes.txt"])


def test_folder_cli_classes_option_and_json_labels(tmp_path):
    from cli import cli

    root = _folder(tmp_path)
    (root / "train.json").write_text(json.dumps({"0.png": ["cat", "dog"], "1.png": "dog"}))
    (root / "val.json").write_text(json.dumps([{"file_name": "2.png", "labels": ["dog"]},
                                               {"file_name": "3.png", "labels": []}]))
    out = {}
    for split in ("train", "val"):
        r = CliRunner().invoke(cli, ["prepare-data", "--format", "folder", "--root", str(root),
                                     "--labels", str(root / f"{split}.json"), "--classes",
                                     str(root / "train.json"), "--classes",
                                     str(root / "val.json"), "--split", split, "--out",
                                     str(tmp_path / f"{split}.json")])
        assert r.exit_code == 0, r.output
        out[split] = load_manifest(tmp_path / f"{split}.json")
    assert out["train"].class_names == out["val"].class_names == ["cat", "dog"]
    assert [img["labels"] for img in out["train"].images] == [[1, 2], [2]]
    assert [img["labels"] for img in out["val"].images] == [[2], []]
    # labels.json is found by default when there is no labels.csv
    shutil.copy(root / "train.json", root / "labels.json")
    d = prepare_data("folder", tmp_path / "d.json", "all", root=root, progress=False)
    assert d.class_names == ["cat", "dog"] and len(d.images) == 2
    (root / "bad.json").write_text(json.dumps([{"file_name": "0.png", "labels": [3]}]))
    r = CliRunner().invoke(cli, ["prepare-data", "--format", "folder", "--root", str(root),
                                 "--labels", str(root / "bad.json"), "--split", "x", "--out",
                                 str(tmp_path / "x.json")])
    assert r.exit_code == 2 and "bad.json entry 0: 'labels' must be a list" in r.output


# -- predict: the manifest's category ids -------------------------------------------------------
FAST = ["model.backbone=tiny", "model.pretrained=null", "model.hidden_dim=32", "model.mask_dim=16",
        "model.mask_per_image=8", "input.train_scales=[64]", "input.test_scales=[64]",
        "input.max_size=128", "input.max_proposals=12", "solver.warmup_iters=2",
        "solver.images_per_step=2", "solver.images_per_gpu=2", "train.num_workers=0",
        "train.threads=1", "train.device=cpu", "train.log_period=100"]


def test_predict_writes_the_manifests_category_ids(tmp_path):
    from pdsl.engine.evaluate import predict_paths
    from pdsl.engine.train import train

    manifest, cues = make_tiny_set(tmp_path / "set")
    d = json.loads(Path(manifest).read_text())          # category ids 11, 22, 33, not 1..3
    new = {1: 11, 2: 22, 3: 33}
    d["categories"] = [dict(c, id=new[c["id"]]) for c in d["categories"]]
    for img in d["images"]:
        img["labels"] = [new[c] for c in img["labels"]]
    Path(manifest).write_text(json.dumps(d))
    train(None, manifest, cues, tmp_path / "run", max_iter=1, overrides=FAST)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for f in sorted((tmp_path / "set").glob("img*.png"))[1:3]:
        shutil.copy(f, imgs / f.name)
    r = predict_paths([imgs], tmp_path / "run", tmp_path / "out", device="cpu", score_thresh=0.0)
    doc = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert r["detections"] > 0
    assert doc["categories"] == [{"id": 11, "name": "a"}, {"id": 22, "name": "b"},
                                 {"id": 33, "name": "c"}]
    assert {a["category_id"] for a in doc["annotations"]} <= {11, 22, 33}
    for a in doc["annotations"]:
        assert a["category"] == {11: "a", 22: "b", 33: "c"}[a["category_id"]]
    # a run made before run.json existed: --manifest gives the ids, else one clear error
    (tmp_path / "run" / "run.json").unlink()
    with pytest.raises(ConfigError, match="pass --manifest"):
        predict_paths([imgs], tmp_path / "run", tmp_path / "out2", device="cpu")
    predict_paths([imgs], tmp_path / "run", tmp_path / "out3", device="cpu", score_thresh=0.0,
                  manifest=manifest)
    doc = json.loads((tmp_path / "out3" / "predictions.json").read_text())
    assert {a["category_id"] for a in doc["annotations"]} <= {11, 22, 33}


# -- the workflow without train / eval sections -------------------------------------------------
def _workflow_copy(tmp_path, config_text):
    wf = tmp_path / "wf"
    (wf / "pipeline").mkdir(parents=True)
    shutil.copy(ROOT / "Snakefile", wf / "Snakefile")
    for sub in ("rules", "configs"):
        shutil.copytree(ROOT / "pipeline" / sub, wf / "pipeline" / sub)
    shutil.copy(ROOT / "pipeline" / "schema.yaml", wf / "pipeline" / "schema.yaml")
    (wf / "pipeline" / "config.yaml").write_text(config_text)
    return wf


def _dry_run(wf, *extra):
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", *extra],
                       cwd=wf, capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def _jobs(out):
    """Rule names of the first "Job stats" table of a dry run."""
    jobs = set()
    for line in out.split("Job stats:")[1].splitlines()[3:]:
        if not line.strip():
            break
        if not line.startswith("total"):
            jobs.add(line.split()[0])
    return jobs


CACHES_ONLY = """dataset: synthetic
splits: [train, val]
prepare: {format: synthetic, num_images: {train: 4, val: 2}}
proposals: builtin
shards: 1
"""


def test_workflow_without_train_eval_sections_parses(tmp_path):
    wf = _workflow_copy(tmp_path, CACHES_ONLY)
    rc, out = _dry_run(wf)
    assert rc == 0, out
    assert _jobs(out) == {"prepare", "proposals", "seeds", "merge", "all"}
    # train without eval: the run is the target; `eval: null` in a --configfile removes it
    (wf / "pipeline" / "config.yaml").write_text(
        CACHES_ONLY + "pretrain: {epochs: 1}\ntrain: {run: r, config: pipeline/configs/demo.yaml, "
        "split: train}\neval: {split: val}\n")
    (wf / "off.yaml").write_text("eval: null\n")
    rc, out = _dry_run(wf, "--configfile", "off.yaml")
    assert rc == 0, out
    assert {"train", "pretrain"} <= _jobs(out) and "eval" not in _jobs(out)
    (wf / "off.yaml").write_text("train: null\n")
    rc, out = _dry_run(wf, "--configfile", "off.yaml")
    assert rc == 0, out
    assert "train" not in _jobs(out)
