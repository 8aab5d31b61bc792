"""pipeline/scripts/gpu_check.py on the CPU at tiny sizes: the same code path as on CUDA (cache
stage, the trainer's step, inference with TTA), every row present, consistent figures, the table
and the JSON agree; a device that cannot be used is one clear error. No timing is asserted."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pdsl.losses import wsddn_mil_loss

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "pipeline" / "scripts" / "gpu_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cpu_check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "cpu.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--threads", "1",
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text()), r.stdout


def _positive(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_cpu_check_builds_the_cache_it_asks_for(cpu_check):
    res, _ = cpu_check
    assert (res["device"], res["size"], res["backbone"]) == ("cpu", "tiny", "resnet50")
    c = res["cache"]
    assert c["images"] == 4 and c["image_size"] == 80
    assert c["proposals_per_image"] == 40  # the MCG-like list survives sanitising whole
    assert c["bank_masks_per_image"] == 40  # the default: one seed mask per proposal


def test_cpu_check_rows_and_figures(cpu_check):
    res, _ = cpu_check
    rows = {(r["cues"], r["amp"]): r for r in res["train"]}
    assert list(rows) == [("cache", "off"), ("cache", "fp16"), ("cache", "bf16"),
                          ("online", "off")]
    assert "CUDA-only" in rows[("cache", "fp16")]["skipped"]  # a row with the reason, no crash
    for key in (("cache", "off"), ("cache", "bf16"), ("online", "off")):
        r = rows[key]
        assert "skipped" not in r, r
        assert _positive(r["step_s"]) and r["steps"] >= 1
        assert 0 <= r["data_cue_share"] <= 1 and r["data_wait_s"] >= 0 and r["cue_s"] >= 0
        assert r["images_per_s"] == pytest.approx(2 / r["step_s"])  # 2 images per step
        assert r["s_per_image"] == pytest.approx(r["step_s"] / 2)
        assert r["peak_mem_gb"] is None  # GPU memory only on CUDA
    # the online row's cue time is GrabCut in the step, so it is part of the exposed share
    on = rows[("online", "off")]
    assert on["cue_s"] > 0 and on["data_cue_share"] >= on["cue_s"] / on["step_s"] - 1e-9
    inf = {r["amp"]: r for r in res["inference"]}
    assert list(inf) == ["off", "fp16", "bf16"] and "CUDA-only" in inf["fp16"]["skipped"]
    for amp in ("off", "bf16"):
        r = inf[amp]
        assert r["single_passes"] == 1 and r["tta_passes"] == 16  # 8 scales x (image, flip)
        assert r["single_images"] == 2 and r["tta_images"] == 1
        assert _positive(r["single_ms"]) and _positive(r["tta_ms"])
        assert r["images_per_s"] == pytest.approx(1e3 / r["single_ms"])
    s = res["summary"]
    assert s["online_over_cached_step"] == pytest.approx(on["step_s"] / rows[("cache", "off")]
                                                         ["step_s"])
    assert "targets_met" not in s  # targets are judged on CUDA at paper sizes only


def test_cpu_check_table_matches_json(cpu_check):
    res, stdout = cpu_check
    for r in res["train"]:
        if "step_s" in r:
            assert f"| {r['cues']} | {r['amp']} | {r['step_s']:.3f} |" in stdout
    for r in res["inference"]:
        if "single_ms" in r:
            assert f"| | {r['amp']} | {r['single_ms']:.1f} | {r['tta_ms']:.1f} (16) |" in stdout
    assert "skipped: fp16 AMP is CUDA-only" in stdout
    assert "targets: not judged" in stdout


def test_unusable_device_is_one_clear_error(monkeypatch, capsys):
    g = _load_script()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv, msg in ((["--device", "cuda"], "torch sees no CUDA device"),
                      (["--device", "tpu"], "expected cuda, cuda:N or cpu"),
                      (["--device", "cpu", "--steps", "0"], "--steps must be >= 1")):
        with pytest.raises(SystemExit) as e:
            g.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("Error: ") and msg in err[0], err


def test_mil_loss_is_finite_for_low_precision_scores():
    # bf16 rounds 1 - 1e-6 to 1.0: the clamp must happen in float32, or log(1 - y) is -inf
    y = torch.tensor([1.0, 0.5, 1e-9], dtype=torch.bfloat16)
    t = torch.tensor([1.0, 0.0, 0.0])
    loss = wsddn_mil_loss(y, t)
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(wsddn_mil_loss(y.float(), t).item(), rel=1e-6)
