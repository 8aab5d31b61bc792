"""The trainer: learning, exact resume, NaN guard, class-set checks, 2-process DDP, online cues.

Everything runs on a tiny synthetic set (tmp_path) with the real PDSLNet and the ``tiny`` backbone
at small widths, on the CPU."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from test_data import make_tiny_set

pdsl_net = pytest.importorskip("pdsl.model.pdsl_net", reason="the model (pdsl/model) is not there")

import pdsl.engine.train as T  # noqa: E402
from pdsl.errors import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

FAST = ["model.backbone=tiny", "model.pretrained=null", "model.freeze_at=0", "model.fc6_dim=null",
        "model.hidden_dim=32", "model.mask_dim=16",
        "model.mask_per_image=8", "input.train_scales=[64]", "input.max_size=128",
        "input.max_proposals=12", "solver.warmup_iters=2", "solver.images_per_step=2",
        "solver.images_per_gpu=2", "train.num_workers=0", "train.threads=1", "train.device=cpu",
        "train.log_period=100"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_set(tmp_path_factory.mktemp("tiny_train"))


def _train(tiny, out, *overrides, **kw):
    manifest, cues = tiny
    return T.train(None, manifest, cues, out, overrides=FAST + list(overrides), **kw)


def _metrics(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_twenty_steps_lower_the_loss(tiny, tmp_path):
    # every step sees all 5 labelled images, unaugmented: the losses are comparable across steps
    _train(tiny, tmp_path, "model.frozen_bn=false", "model.dropout=0.0", "input.crop=1.0",
           "input.flip=false",
           "input.hsv_jitter=1.0", "solver.base_lr=0.01", "solver.max_iter=20",
           "solver.images_per_step=5", "solver.images_per_gpu=5",
           "model.mil_reduction=sum",  # eq. 2 as written: the mean's 1/C gradient needs > 20 SGD steps
           # the mask branch at the values this threshold was set with (with the authors' per-class
           # M0, foreground seeds and batch-mean BCE the total fell to 0.85x, not 0.8x, in 20 steps)
           "model.mask0_channels=single", "model.seed_pool=all", "model.mask_loss_mean=image",
           "model.mask_sampling_ratio=2")
    m = _metrics(tmp_path)
    assert [x["step"] for x in m] == list(range(1, 21))
    for key in ("lr", "loss_mil", "loss_refine", "loss_mask_agnostic", "total", "data_time",
                "cue_time", "step_time"):
        assert key in m[0]
    # The MIL loss has fixed targets (the image labels) and must fall steadily; the other terms
    # learn from pseudo labels that change as the detector improves, so the total only has to
    # reach clearly lower values (eq. 5's image-score weight can raise it again later).
    mil, total = [x["loss_mil"] for x in m], [x["total"] for x in m]
    assert np.mean(mil[-3:]) < 0.5 * np.mean(mil[:3]), np.round(mil, 3)
    assert min(total[10:]) < 0.8 * np.mean(total[:3]), np.round(total, 3)
    assert (tmp_path / "last_checkpoint").read_text().strip() == "checkpoints/model_0000020.pth"
    ck = _state(tmp_path / "checkpoints/model_0000020.pth")
    assert ck["step"] == 20 and ck["class_names"] == ["a", "b", "c"]
    assert ck["config"]["solver"]["max_iter"] == 20
    assert {"model", "optimizer", "scheduler", "scaler", "rng"} <= set(ck)
    assert (tmp_path / "config.yaml").is_file()


def test_stop_and_resume_equals_uninterrupted(tiny, tmp_path):
    aug = ["input.crop=0.9", "input.flip=true", "input.hsv_jitter=1.5",
           "input.train_scales=[48,64,80]", "model.dropout=0.5", "solver.base_lr=0.02",
           "train.checkpoint_period=3", "solver.steps=[4]"]
    full, part = tmp_path / "full", tmp_path / "part"
    _train(tiny, full, *aug, max_iter=6)
    _train(tiny, part, *aug, max_iter=3)
    assert not (part / "checkpoints/model_0000006.pth").exists()
    # the resumed half runs with a DataLoader worker: data must not depend on num_workers
    _train(tiny, part, *aug, "train.num_workers=1", max_iter=6, resume=True)
    a = _state(full / "checkpoints/model_0000006.pth")
    b = _state(part / "checkpoints/model_0000006.pth")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6
    ma, mb = _metrics(full), _metrics(part)
    assert [x["step"] for x in mb] == list(range(1, 7))
    for x, y in zip(ma, mb):
        assert x["total"] == y["total"] and x["lr"] == y["lr"]
    assert ma[4]["lr"] == pytest.approx(0.002)  # decayed at step 4 (0-based)


class _NaNAfter(torch.nn.Module):
    """Wraps a model; its losses become NaN from the ``after``-th forward pass on."""

    def __init__(self, net, after):
        super().__init__()
        self.net, self.after, self.calls = net, after, 0

    def forward(self, *args):
        self.calls += 1
        losses = self.net(*args)
        if self.calls > self.after:
            losses["loss_mil"] = losses["loss_mil"] * float("nan")
        return losses


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    real = T.build_model
    monkeypatch.setattr(T, "build_model", lambda cfg, n: _NaNAfter(real(cfg, n), after=3))
    with pytest.raises(T.TrainingDiverged) as e:
        _train(tiny, tmp_path, "train.checkpoint_period=2", max_iter=6)
    msg = str(e.value)
    assert "step 4" in msg and "loss_mil" in msg and "nan" in msg
    assert "model_0000002.pth" in msg
    assert (tmp_path / "last_checkpoint").read_text().strip() == "checkpoints/model_0000002.pth"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["model_0000002.pth"]
    assert [x["step"] for x in _metrics(tmp_path)] == [1, 2, 3]


def test_weights_load_model_only_and_refuse_other_classes(tiny, tmp_path):
    src = tmp_path / "src"
    _train(tiny, src, max_iter=1)
    ck = src / "checkpoints/model_0000001.pth"
    # lr 0: the model stays what --weights loaded; the step count starts again at 0
    dst = tmp_path / "dst"
    _train(tiny, dst, "solver.base_lr=0.0", "solver.weight_decay=0.0", max_iter=2, weights=ck)
    a, b = _state(ck)["model"], _state(dst / "checkpoints/model_0000002.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    other = make_tiny_set(tmp_path / "other", class_names=("cat", "dog", "cow"))
    with pytest.raises(ConfigError) as e:
        _train(other, tmp_path / "x", max_iter=1, weights=ck)
    assert "['a', 'b', 'c']" in str(e.value) and "['cat', 'dog', 'cow']" in str(e.value)
    with pytest.raises(ConfigError, match="cat"):  # resuming a run of another class set
        _train(other, src, max_iter=2, resume=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_gradient_accumulation(tiny, tmp_path):
    manifest, cues = tiny
    extra = ["solver.images_per_step=2", "solver.images_per_gpu=1", "model.dropout=0.5",
             "input.flip=true", "train.checkpoint_period=100"]
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
               MASTER_ADDR="127.0.0.1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(ROOT / "cli.py"), "train", "--manifest", str(manifest), "--cues", str(cues),
           "--out", str(tmp_path / "ddp"), "--max-iter", "3", *FAST, *extra]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es) x 1 image(s) x 1 accumulation" in r.stderr
    _train(tiny, tmp_path / "single", *extra, max_iter=3)  # 1 process, 2 accumulated passes
    a = _state(tmp_path / "ddp/checkpoints/model_0000003.pth")["model"]
    b = _state(tmp_path / "single/checkpoints/model_0000003.pth")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    assert len(_metrics(tmp_path / "ddp")) == 3


def test_online_cues_path_trains(tiny, tmp_path):
    _train(tiny, tmp_path, "cues.source=online", "cues.online_workers=0",
           "cues.online_long_side=64", "cues.online_iterations=2", max_iter=2)
    m = _metrics(tmp_path)
    assert len(m) == 2 and m[-1]["cue_time"] > 0 and np.isfinite(m[-1]["total"])


def test_online_bank_pool_matches_in_process():
    from pdsl.cues.online import OnlineGrabCut, online_bank

    rng = np.random.default_rng(0)
    img = rng.integers(0, 50, (60, 90, 3), dtype=np.uint8)
    img[15:45, 30:70] = (30, 200, 240)
    boxes = np.array([[25, 10, 75, 50], [20, 5, 80, 55]], np.float32)
    (m0, b0), = online_bank([img], [boxes], OnlineGrabCut(workers=0, long_side=90))
    with OnlineGrabCut(workers=1, long_side=90) as pool:
        (m1, b1), = pool([img], [torch.from_numpy(boxes)])
    assert m0.shape == (2, 28, 28) and m0.dtype == np.float32 and 0 <= m0.min() <= m0.max() <= 1
    np.testing.assert_array_equal(m0, m1)
    np.testing.assert_array_equal(b0, boxes)
    assert m0[0, 10:18, 10:18].mean() > 0.5  # the object is foreground


def test_cli_train_and_bad_override(tiny, tmp_path):
    from cli import cli

    manifest, cues = tiny
    args = ["train", "--manifest", str(manifest), "--cues", str(cues), "--out", str(tmp_path)]
    r = CliRunner().invoke(cli, args + ["--max-iter", "1", *FAST])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "checkpoints/model_0000001.pth").is_file()
    r = CliRunner().invoke(cli, args + ["solver.lr=0.1"])
    assert r.exit_code == 2 and "valid keys of solver" in r.output


def test_acl_warmup_ramps_the_correlation_term(tiny, tmp_path):
    cfg = T.load_config(None, [("solver.acl_warmup_iters", 4)])
    assert [T.loss_weights(cfg, s)["loss_acl"] for s in (0, 1, 2, 4, 9)] == [0, 0.25, 0.5, 1, 1]
    assert T.loss_weights(T.load_config(None, []), 0)["loss_acl"] == 1.0  # default: no ramp
    # step 0 of a ramped run trains exactly as ACL off; without the ramp ACL changes the weights
    common = ["solver.max_iter=1", "train.checkpoint_period=1", "model.dropout=0.0"]
    _train(tiny, tmp_path / "ramp", *common, "model.acl=true", "solver.acl_warmup_iters=5")
    _train(tiny, tmp_path / "off", *common, "model.acl=false")
    _train(tiny, tmp_path / "on", *common, "model.acl=true")
    w = {k: _state(tmp_path / k / "checkpoints" / "model_0000001.pth")["model"]
         for k in ("ramp", "off", "on")}
    assert all(torch.equal(w["ramp"][n], w["off"][n]) for n in w["off"])
    assert not all(torch.equal(w["on"][n], w["off"][n]) for n in w["off"])
