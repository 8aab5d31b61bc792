"""Fault injection: the mistakes and accidents of real use, one test each.

Each fault ends with exit status 2 and one ``Error:`` line naming the file, image or field (no
traceback), or, for kills, resumes to the same result as an uninterrupted run.

 1. corrupt image file              9. stale cache (image size changed)
 2. truncated image file           10. image changed after caching
 3. non-image file                 11. foreign cache (other dataset / classes)
 4. missing image                  12. broken manifest (not JSON; a missing field)
 5. empty / NaN / inverted /       13. unknown config key; bad config value
    out-of-bounds proposals        14. NaN loss
 6. unknown class                  15. kill -9 during caching -> resumed cache equal
 7. image without labels           16. kill -9 during training -> resumed weights equal
 8. truncated HDF5 cue cache
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from test_data import make_tiny_set

from cli import cli

ROOT = Path(__file__).resolve().parents[1]
FAST = ["model.backbone=tiny", "model.pretrained=null", "model.hidden_dim=32", "model.mask_dim=16",
        "model.mask_per_image=8", "input.train_scales=[64]", "input.max_size=128",
        "input.max_proposals=12", "solver.warmup_iters=2", "solver.images_per_step=2",
        "solver.images_per_gpu=2", "train.num_workers=0", "train.threads=1", "train.device=cpu",
        "train.log_period=100"]
SEEDS = ["--crop-size", "24", "--max-bank", "6", "--iterations", "1"]


def run_cli(*args):
    """``cli.py ARGS`` in-process: (exit code, output)."""
    r = CliRunner().invoke(cli, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception                       # a traceback: the fault was not handled
    return r.exit_code, r.output


def assert_one_error(code, out, *names):
    """Exit status 2, exactly one ``Error:`` line, no traceback, naming every given thing."""
    assert code == 2, out
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, out
    assert "Traceback" not in out, out
    for n in names:
        assert str(n) in errors[0], (n, errors[0])


# -- data -----------------------------------------------------------------------------------------
def folder(tmp_path, n=3):
    root = tmp_path / "imgs"
    root.mkdir(parents=True)
    rows = []
    for i in range(n):
        cv2.imwrite(str(root / f"{i}.png"), np.full((20, 24, 3), 30 * i, np.uint8))
        rows.append(f"{i}.png,cat")
    (root / "labels.csv").write_text("file_name,labels\n" + "\n".join(rows) + "\n")
    return root


def prepare_folder(root, out):
    return run_cli("prepare-data", "--format", "folder", "--root", root, "--split", "s", "--out",
                   out)


def proposals_pickle(manifest, path, edit=None):
    """A Detectron-style proposal pickle of valid boxes; ``edit(image_index, boxes)`` spoils
    some. Continuous coordinates are written as inclusive ones (x2 - 1)."""
    m = json.loads(Path(manifest).read_text())
    boxes, ids = [], []
    rng = np.random.default_rng(0)
    for k, img in enumerate(m["images"]):
        w, h = img["width"], img["height"]
        xy = rng.uniform(0, [w / 2, h / 2], (8, 2))
        b = np.concatenate([xy, xy + rng.uniform(6, [w / 2, h / 2], (8, 2))], 1)
        b[:, 2:] -= 1
        if edit is not None:
            b = edit(k, b, w, h)
        boxes.append(b.astype(np.float32))
        ids.append(img["id"])
    with open(path, "wb") as f:
        pickle.dump({"boxes": boxes, "indexes": ids}, f)
    return f"pickle:{path}"


@pytest.fixture
def labelled(tmp_path):
    """A folder manifest and its cue cache built with the CLI (pickle proposals)."""
    root = folder(tmp_path)
    man = tmp_path / "m.json"
    assert prepare_folder(root, man)[0] == 0
    spec = proposals_pickle(man, tmp_path / "p.pkl")
    code, out = run_cli("cache-cues", "--manifest", man, "--proposals", spec, "--out",
                        tmp_path / "c.h5", *SEEDS)
    assert code == 0, out
    return root, man, tmp_path / "c.h5"


# -- 1-4: image files --------------------------------------------------------------------------------
def test_01_corrupt_image_file(tmp_path):
    root = folder(tmp_path)
    data = bytearray((root / "1.png").read_bytes())
    data[40:200] = os.urandom(160)                         # garbage inside the PNG
    (root / "1.png").write_bytes(bytes(data))
    assert_one_error(*prepare_folder(root, tmp_path / "m.json"), "1.png", "line 3")


def test_02_truncated_image_file(tmp_path):
    root = folder(tmp_path)
    data = (root / "2.png").read_bytes()
    (root / "2.png").write_bytes(data[:len(data) // 2])
    assert_one_error(*prepare_folder(root, tmp_path / "m.json"), "2.png")


def test_03_non_image_file(tmp_path):
    root = folder(tmp_path)
    (root / "0.png").write_text("this is a text file, not a picture\n")
    assert_one_error(*prepare_folder(root, tmp_path / "m.json"), "0.png", "not a readable image")


def test_04_missing_image(labelled, tmp_path):
    root, man, cues = labelled
    (root / "1.png").unlink()
    assert_one_error(*prepare_folder(root, tmp_path / "m2.json"), "1.png", "file not found")
    # also after the manifest was made: training names the image
    assert_one_error(*run_cli("train", "--manifest", man, "--cues", cues, "--out",
                              tmp_path / "run", "--max-iter", "2", *FAST), "1.png", "not found")


# -- 5: proposals --------------------------------------------------------------------------------
@pytest.mark.parametrize("fault, expect", [
    ("empty", "no proposals"),
    ("nan", "NaN"),
    ("inverted", "inverted"),
    ("out_of_bounds", "outside"),
])
def test_05_bad_proposals(tmp_path, fault, expect):
    root = folder(tmp_path)
    man = tmp_path / "m.json"
    assert prepare_folder(root, man)[0] == 0

    def spoil(k, b, w, h):
        if k != 1:
            return b
        if fault == "empty":
            return np.zeros((0, 4))
        if fault == "nan":
            b[0, 0] = np.nan
        elif fault == "inverted":
            b[0] = [10, 10, 2, 2]
        else:
            b[0] = [0, 0, 5 * w, 5 * h]
        return b

    spec = proposals_pickle(man, tmp_path / "p.pkl", spoil)
    code, out = run_cli("cache-cues", "--manifest", man, "--proposals", spec, "--out",
                        tmp_path / "c.h5", *SEEDS)
    assert_one_error(code, out, "image 2", expect)
    assert not (tmp_path / "c.h5").exists()


# -- 6-7: labels ----------------------------------------------------------------------------------
def test_06_unknown_class(tmp_path):
    root = folder(tmp_path)
    (root / "classes.txt").write_text("dog\n")
    code, out = run_cli("prepare-data", "--format", "folder", "--root", root, "--classes",
                        root / "classes.txt", "--split", "s", "--out", tmp_path / "m.json")
    assert_one_error(code, out, "labels.csv line 2", "0.png", "'cat'")


def test_07_image_without_labels(tmp_path):
    root = folder(tmp_path)
    (root / "labels.csv").write_text("file_name,labels\n0.png,cat\n1.png,\n2.png,cat\n")
    code, out = prepare_folder(root, tmp_path / "m.json")
    assert code == 0 and "1 images without labels (kept with empty labels)" in out
    # a split where no image has a label cannot be trained on: one error naming the manifest
    (root / "labels.csv").write_text("file_name,labels\n0.png,\n")
    (root / "classes.txt").write_text("cat\n")
    code, out = run_cli("prepare-data", "--format", "folder", "--root", root, "--classes",
                        root / "classes.txt", "--split", "s", "--out", tmp_path / "e.json")
    assert code == 0, out
    spec = proposals_pickle(tmp_path / "e.json", tmp_path / "p.pkl")
    assert run_cli("cache-cues", "--manifest", tmp_path / "e.json", "--proposals", spec,
                   "--out", tmp_path / "e.h5", *SEEDS)[0] == 0
    assert_one_error(*run_cli("train", "--manifest", tmp_path / "e.json", "--cues",
                              tmp_path / "e.h5", "--out", tmp_path / "run", *FAST),
                     "e.json", "no image with labels")


# -- 8-11: the cue cache ---------------------------------------------------------------------------
def test_08_truncated_hdf5_cache(labelled, tmp_path):
    _, man, cues = labelled
    data = cues.read_bytes()
    bad = tmp_path / "bad.h5"
    bad.write_bytes(data[:len(data) // 2])
    for cmd in (["train", "--out", tmp_path / "run", *FAST], ["cue-report", "--no-online"]):
        assert_one_error(*run_cli(cmd[0], "--manifest", man, "--cues", bad, *cmd[1:]), bad)


def test_09_stale_cache_image_size_changed(labelled, tmp_path):
    root, man, cues = labelled
    cv2.imwrite(str(root / "1.png"), np.zeros((30, 40, 3), np.uint8))   # re-exported bigger
    assert prepare_folder(root, man)[0] == 0
    assert_one_error(*run_cli("train", "--manifest", man, "--cues", cues, "--out",
                              tmp_path / "run", *FAST), "image 2", "1.png", "stale")


def test_10_image_changed_after_caching(labelled, tmp_path):
    root, man, cues = labelled
    img = cv2.imread(str(root / "0.png"))
    img[5, 5] = (255, 0, 0)                                   # same size, other pixels
    cv2.imwrite(str(root / "0.png"), img)
    # with a DataLoader worker: the worker's traceback must not reach the user either
    assert_one_error(*run_cli("train", "--manifest", man, "--cues", cues, "--out",
                              tmp_path / "run", "--max-iter", "3", *FAST,
                              "train.num_workers=1"), "image 1", "0.png", "changed since")


def test_11_foreign_cache(labelled, tmp_path):
    _, man, _ = labelled
    other_manifest, other_cues = make_tiny_set(tmp_path / "other")
    assert_one_error(*run_cli("train", "--manifest", man, "--cues", other_cues, "--out",
                              tmp_path / "run", *FAST), other_cues, "built for")


# -- 12-13: manifest and config ---------------------------------------------------------------------
def test_12_broken_manifest(labelled, tmp_path):
    _, man, cues = labelled
    bad = tmp_path / "bad.json"
    bad.write_text(man.read_text()[:-20])
    assert_one_error(*run_cli("train", "--manifest", bad, "--cues", cues, "--out",
                              tmp_path / "run", *FAST), bad)
    d = json.loads(man.read_text())
    del d["images"][1]["height"]
    bad.write_text(json.dumps(d))
    assert_one_error(*run_cli("train", "--manifest", bad, "--cues", cues, "--out",
                              tmp_path / "run", *FAST), bad, "height")


def test_13_unknown_config_key_and_bad_value(labelled, tmp_path):
    _, man, cues = labelled
    args = ["train", "--manifest", man, "--cues", cues, "--out", tmp_path / "run", *FAST]
    assert_one_error(*run_cli(*args, "solver.base_lrr=0.1"), "solver.base_lrr", "base_lr")
    assert_one_error(*run_cli(*args, "solver.base_lr=fast"), "solver.base_lr", "fast")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  n_refin: 3\n")
    assert_one_error(*run_cli(*args, "--config", cfg), "n_refin", cfg)
    assert not (tmp_path / "run").exists()


# -- 14: NaN loss --------------------------------------------------------------------------------------
def test_14_nan_loss(labelled, tmp_path, monkeypatch):
    import pdsl.engine.train as T

    _, man, cues = labelled
    real = T.build_model

    def nan_model(cfg, n):
        net = real(cfg, n)
        forward = net.forward

        def poisoned(*a):
            losses = forward(*a)
            if net.training:
                losses["loss_mil"] = losses["loss_mil"] * float("nan")
            return losses
        net.forward = poisoned
        return net

    monkeypatch.setattr(T, "build_model", nan_model)
    assert_one_error(*run_cli("train", "--manifest", man, "--cues", cues, "--out",
                              tmp_path / "run", "--max-iter", "3", *FAST), "step 1", "loss_mil",
                     "nan")


# -- 15-16: kill -9 -------------------------------------------------------------------------------------
def _popen(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "cli.py", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(proc, ready, timeout=120):
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() - t0 < timeout
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def _cache_arrays(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda k, v: out.__setitem__(k, v[()]) if isinstance(v, h5py.Dataset)
                     else None)
        return out


def test_15_kill_during_caching_resumes_to_the_same_cache(tmp_path):
    root = folder(tmp_path, n=8)
    man = tmp_path / "m.json"
    assert prepare_folder(root, man)[0] == 0
    spec = proposals_pickle(man, tmp_path / "p.pkl")
    args = ["cache-cues", "--manifest", man, "--proposals", spec, "--shard-size", "1", *SEEDS]
    assert run_cli(*args, "--out", tmp_path / "full.h5")[0] == 0
    parts = tmp_path / "part.h5.parts"
    proc = _popen(*args, "--out", tmp_path / "part.h5")
    _kill_when(proc, lambda: len(list(parts.glob("seeds-*.h5"))) >= 2)
    assert not (tmp_path / "part.h5").exists()
    code, out = run_cli(*args, "--out", tmp_path / "part.h5")
    assert code == 0 and "already done" in out, out
    a, b = _cache_arrays(tmp_path / "full.h5"), _cache_arrays(tmp_path / "part.h5")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_16_kill_during_training_resumes_to_the_same_weights(labelled, tmp_path):
    import pdsl.engine.train as T

    _, man, cues = labelled
    over = FAST + ["train.checkpoint_period=2", "model.dropout=0.5", "input.flip=true"]
    T.train(None, man, cues, tmp_path / "full", max_iter=30, overrides=over)
    run = tmp_path / "killed"
    proc = _popen("train", "--manifest", man, "--cues", cues, "--out", run, "--max-iter", "30",
                  *over)
    _kill_when(proc, lambda: (run / "checkpoints" / "model_0000002.pth").is_file())
    code, out = run_cli("train", "--manifest", man, "--cues", cues, "--out", run,
                        "--max-iter", "30", "--resume", *over)
    assert code == 0, out
    a = torch.load(tmp_path / "full/checkpoints/model_0000030.pth", weights_only=True)["model"]
    b = torch.load(run / "checkpoints/model_0000030.pth", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))
