"""`cli.py grid`: variants x seeds trained and evaluated, resumable, never overwritten, tabulated."""
import json

import pytest
import yaml

import pdsl.engine.grid as G
import pdsl.engine.grid.run as GR
from test_data import TINY_RUN, synthetic_split
from pdsl.errors import ConfigError



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("grid")
    synthetic_split(d, "train", 4, seed=3)
    synthetic_split(d, "val", 2, seed=3)
    return d


def _spec(d, path, variants, seeds=(0, 1), compare=()):
    spec = {"train": {"config": "pipeline/configs/demo.yaml", "manifest": str(d / "train.json"),
                      "cues": str(d / "train.h5"), "overrides": TINY_RUN},
            "eval": {"manifest": str(d / "val.json"), "cues": str(d / "val.h5"), "max_images": 2},
            "seeds": list(seeds), "variants": variants, "compare": [list(c) for c in compare]}
    path.write_text(yaml.safe_dump(spec))
    return path


def test_grid_runs_each_cell_once_and_writes_the_table(data, tmp_path, monkeypatch):
    spec = _spec(data, tmp_path / "g.yaml", {"base": [], "no_refine": ["model.n_refine=0"],
                                             "ceiling": {"kind": "supervised"}},
                 compare=[("base", "no_refine", "Table 1: n_r")])
    out = tmp_path / "cells"
    recs = G.run_grid(spec, out, echo=lambda m: None)
    assert sorted((r["variant"], r["seed"]) for r in recs) == [
        ("base", 0), ("base", 1), ("ceiling", 0), ("ceiling", 1), ("no_refine", 0),
        ("no_refine", 1)]
    # the ceiling cell is a Mask R-CNN run, scored by the same evaluator
    assert json.loads((out / "ceiling" / "seed0" / "run.json").read_text())["kind"] == "maskrcnn"
    assert json.loads((out / "ceiling" / "seed0" / "cell.json").read_text())["metrics"]["box AP50"] \
        is not None
    rec = json.loads((out / "no_refine" / "seed1" / "cell.json").read_text())
    assert "model.n_refine=0" in rec["overrides"] and "train.seed=1" in rec["overrides"]
    assert rec["metrics"]["mask AP50"] is not None and rec["images"] == 2
    # the variant's override reached the trained run
    cfg = yaml.safe_load((out / "no_refine" / "seed1" / "config.yaml").read_text())
    assert cfg["model"]["n_refine"] == 0 and cfg["train"]["seed"] == 1
    summary = G.write_results(spec, out, tmp_path / "res" / "table", title="t")
    for ext in (".json", ".md", ".png"):
        assert (tmp_path / "res" / f"table{ext}").stat().st_size > 0
    md = (tmp_path / "res" / "table.md").read_text()
    assert "| base | 2 |" in md and "Table 1: n_r" in md
    assert [c["metric"] for c in summary["comparisons"]] == ["mask AP50", "mask AP", "box AP50"]

    # a second call re-runs nothing: training would fail loudly if it were called
    def boom(*a, **k):
        raise AssertionError("a finished cell was re-run")

    monkeypatch.setattr("pdsl.engine.train.train", boom)
    assert len(G.run_grid(spec, out, echo=lambda m: None)) == 6

    # the same cells under a changed spec are refused, not overwritten
    _spec(data, spec, {"base": ["model.n_mask=1"], "no_refine": ["model.n_refine=0"],
                       "ceiling": {"kind": "supervised"}})
    with pytest.raises(ConfigError, match="cell.json finished with another spec"):
        G.run_grid(spec, out, echo=lambda m: None)


def test_unfinished_cell_resumes_its_run(data, tmp_path, monkeypatch):
    spec = _spec(data, tmp_path / "g.yaml", {"base": []}, seeds=[0])
    out = tmp_path / "cells"
    seen = []
    real = GR.run_cell

    def killed_after_training(cell, spec_, out_, threads=None):
        from pdsl.engine.train import train

        train(spec_["train"]["config"], spec_["train"]["manifest"], spec_["train"]["cues"],
              cell.dir(out_), overrides=list(cell.overrides))
        raise KeyboardInterrupt  # killed before its evaluation

    monkeypatch.setattr(GR, "run_cell", killed_after_training)
    with pytest.raises(KeyboardInterrupt):
        G.run_grid(spec, out, echo=lambda m: None)
    assert not (out / "base" / "seed0" / "cell.json").exists()
    monkeypatch.setattr(GR, "run_cell", real)
    import pdsl.engine.train as T

    real_train = T.train

    def spy(*a, **k):
        seen.append(k.get("resume"))
        return real_train(*a, **k)

    monkeypatch.setattr(T, "train", spy)
    G.run_grid(spec, out, echo=lambda m: None)
    assert seen == [True] and (out / "base" / "seed0" / "cell.json").exists()
    steps = [json.loads(x)["step"] for x in
             (out / "base" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and max(steps) == 2  # nothing trained twice


def test_summary_verdicts_on_hand_made_cells():
    spec = {"variants": {"a": {}, "b": {}, "c": {}},
            "compare": [["a", "b", "clear"], ["a", "c", "noisy"], ["b", "a", "backwards"]]}

    def rec(v, s, ap50):
        return {"variant": v, "seed": s, "metrics": {"mask AP50": ap50, "mask AP": ap50 / 2}}

    recs = ([rec("a", s, x) for s, x in enumerate((30.0, 31.0, 32.0))]
            + [rec("b", s, x) for s, x in enumerate((20.0, 21.0, 22.0))]
            + [rec("c", s, x) for s, x in enumerate((27.0, 31.0, 35.0))])
    summ = G.summarize(spec, recs)
    a = summ["rows"]["a"]["mask AP50"]
    assert a["mean"] == pytest.approx(31.0) and a["std"] == pytest.approx(1.0)
    by = {(c["label"], c["metric"]): c for c in summ["comparisons"]}
    clear = by[("clear", "mask AP50")]
    assert clear["diff"] == pytest.approx(10.0) and clear["sd_pooled"] == pytest.approx(1.0)
    assert clear["reproduced"] and not clear["reversed"]
    assert by[("noisy", "mask AP50")]["per_seed"] == {0: 3.0, 1: 0.0, 2: -3.0}  # a − c per seed
    assert "| +3.0, +0.0, -3.0 |" in G.markdown(summ)
    noisy = by[("noisy", "mask AP50")]  # diff 0, pooled sqrt((1 + 16) / 2) ≈ 2.9
    assert not noisy["reproduced"] and not noisy["reversed"]
    assert by[("backwards", "mask AP50")]["reversed"]
    assert "reproduced" in G.markdown(summ) and "within noise" in G.markdown(summ)


def test_bad_specs_name_the_field(tmp_path, data):
    with pytest.raises(ConfigError, match="grid spec .*file not found"):
        G.load_spec(tmp_path / "missing.yaml")
    bad = _spec(data, tmp_path / "b.yaml", {"a": []}, compare=[("a", "zz")])
    with pytest.raises(ConfigError, match="compare entries"):
        G.load_spec(bad)
    bad = _spec(data, tmp_path / "c.yaml", {"a": ["model.n_refine"]})
    with pytest.raises(ConfigError, match="variants.a: overrides are KEY=VALUE"):
        G.load_spec(bad)
    spec = G.load_spec(_spec(data, tmp_path / "d.yaml", {"a": []}))
    with pytest.raises(ConfigError, match="unknown variant"):
        G.cells(spec, only=["nope"])


def test_a_failed_cell_does_not_stop_the_others(data, tmp_path):
    spec = _spec(data, tmp_path / "g.yaml", {"bad": ["model.no_such_key=1"], "ok": []}, seeds=[0])
    with pytest.raises(G.GridError, match=r"1 of 2 cells failed[\s\S]*bad seed 0: .*no_such_key"):
        G.run_grid(spec, tmp_path / "cells", echo=lambda m: None)
    assert (tmp_path / "cells" / "ok" / "seed0" / "cell.json").is_file()
    assert not (tmp_path / "cells" / "bad" / "seed0" / "cell.json").exists()


def test_two_jobs_run_cells_in_fresh_processes(data, tmp_path):
    spec = _spec(data, tmp_path / "g.yaml", {"a": [], "b": ["model.n_mask=1"]}, seeds=[0])
    lines = []
    recs = G.run_grid(spec, tmp_path / "cells", jobs=2, threads=1, echo=lines.append)
    assert sorted(r["variant"] for r in recs) == ["a", "b"]
    assert sum(m.startswith("[") and " done " in m for m in lines) == 2


def test_second_stage_cell_labels_with_its_source_cell_then_retrains(data, tmp_path):
    spec = _spec(data, tmp_path / "g.yaml",
                 {"base": [], "retrain": {"kind": "second_stage", "from": "base",
                                          "pseudo_label": {"score_thresh": 0.0,
                                                           "per_class_cap": 2}}},
                 seeds=[0])
    out, lines = tmp_path / "cells", []
    # two jobs: the retrain cell is held back until the base cell it labels with has finished
    recs = G.run_grid(spec, out, jobs=2, threads=1, echo=lines.append)
    assert sorted(r["variant"] for r in recs) == ["base", "retrain"]
    done = [m for m in lines if " done " in m]
    assert "base" in done[0] and "retrain" in done[1]
    cell = out / "retrain" / "seed0"
    labels = json.loads((cell / "pseudo" / "train.json").read_text())
    assert labels["info"]["run"] == str(out / "base" / "seed0")
    # labelled classes only, at most per_class_cap of each per image
    present = {i["id"]: set(i["labels"]) for i in json.loads(
        (data / "train.json").read_text())["images"]}
    per = {}
    for a in labels["annotations"]:
        assert a["category_id"] in present[a["image_id"]]
        per[(a["image_id"], a["category_id"])] = per.get((a["image_id"], a["category_id"]), 0) + 1
    assert per and max(per.values()) <= 2
    assert json.loads((cell / "run.json").read_text())["kind"] == "maskrcnn"
    rec = json.loads((cell / "cell.json").read_text())
    assert rec["from"] == "base" and rec["metrics"]["mask AP50"] is not None
    q = rec["pseudo_label"]
    assert q["labels_per_image"] == pytest.approx(len(labels["annotations"]) / 4)
    assert 0 <= q["precision"] <= 1 and 0 <= q["recall"] <= 1
    md = G.markdown(G.summarize(G.load_spec(spec), recs))
    assert "| retrain | base |" in md  # the pseudo labels' quality next to the retrained model


def test_second_stage_without_its_source_is_reported_not_run(data, tmp_path):
    variants = {"bad": ["model.no_such_key=1"],
                "retrain": {"kind": "second_stage", "from": "bad"}}
    spec = _spec(data, tmp_path / "g.yaml", variants, seeds=[0])
    with pytest.raises(G.GridError, match=r"2 of 2 cells failed[\s\S]*retrain seed 0: "
                                          r".*bad.* has not finished"):
        G.run_grid(spec, tmp_path / "cells", echo=lambda m: None)
    with pytest.raises(G.GridError, match=r"retrain seed 0: not run: its 'bad' cell failed"):
        G.run_grid(spec, tmp_path / "cells2", jobs=2, threads=1, echo=lambda m: None)


@pytest.mark.parametrize("variants, match", [
    # (_spec writes the variants sorted by name: "a" comes before "z")
    ({"a": {"kind": "second_stage", "from": "z"}, "z": []}, "from must name a pdsl variant listed"),
    ({"c": {"kind": "supervised"}, "r": {"kind": "second_stage", "from": "c"}}, "from must name"),
    ({"a": [], "r": {"kind": "second_stage", "from": "a", "pseudo_label": {"thresh": 1}}},
     r"variants.r.pseudo_label: .*thresh"),
    ({"a": [], "r": {"kind": "second_stage", "from": "a",
                     "pseudo_label": {"score_thresh": 2}}}, "score_thresh must be in"),
])
def test_bad_second_stage_specs_name_the_field(data, tmp_path, variants, match):
    with pytest.raises(ConfigError, match=match):
        G.load_spec(_spec(data, tmp_path / "s.yaml", variants))


def test_weak_over_full_ratios_and_pseudo_label_quality_in_the_summary():
    spec = {"variants": {"w": {}, "ceil": {"kind": "supervised"},
                         "r": {"kind": "second_stage", "from": "w"}}}
    m = {"w": 10.0, "ceil": 40.0, "r": 20.0}
    recs = [{"variant": v, "seed": s, "metrics": {"mask AP50": x, "mask AP": x / 4},
             **({"pseudo_label": {"precision": 0.5 + s / 10, "labels_per_image": 2.0}}
                if v == "r" else {})}
            for v, x in m.items() for s in (0, 1)]
    summ = G.summarize(spec, recs)
    ratios = {r["variant"]: r for r in summ["ratios"]}
    assert set(ratios) == {"w", "r"} and ratios["w"]["mask AP50"] == pytest.approx(0.25)
    assert ratios["r"]["mask AP"] == pytest.approx(0.5)
    q = summ["rows"]["r"]["pseudo_label"]
    assert q["precision"]["mean"] == pytest.approx(55.0) and q["recall"]["mean"] is None
    md = G.markdown(summ)
    assert "| w | 0.25 | 0.25 |" in md and "| r | w | 2.0 ± 0.0 | 55.0 ± 7.1 | — |" in md


def test_final_losses_average_the_last_logged_steps(tmp_path):
    log = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss_mil": 9.0, "loss_acl": 9.0, "lr": 1.0},
            {"step": 2, "loss_mil": 1.0, "loss_acl": 2.0, "lr": 1.0},
            {"eval": "val"},  # not a training step
            {"step": 3, "loss_mil": 3.0, "lr": 1.0}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert G.final_losses(log, last=2) == {"loss_acl": 2.0, "loss_mil": 2.0}
    assert G.final_losses(tmp_path / "none.jsonl") == {}
    spec = {"variants": {"a": {}, "b": {}}, "compare": [["a", "b", "one seed"]]}
    recs = [{"variant": v, "seed": 0, "metrics": {"mask AP50": x, "mask AP": x},
             "losses": {"loss_mil": x / 10}} for v, x in (("a", 20.0), ("b", 10.0))]
    md = G.markdown(G.summarize(spec, recs))
    assert "| a | 2.000 |" in md and "| b | 1.000 |" in md and "one seed: not judged" in md


def test_labels_of_an_unfinished_cell_made_with_other_parameters_are_refused(tmp_path):
    """A second-stage cell whose labelling finished but whose training did not reuses its labels
    only if the spec still asks for the same labelling (here the masks' source changed)."""
    spec = {"train": {"manifest": "m.json", "cues": "c.h5"},
            "variants": {"base": [], "r": {"kind": "second_stage", "from": "base",
                                           "pseudo_label": {"masks": "grabcut"}}}}
    src = G.Cell("base", 0, "pdsl", ()).dir(tmp_path)
    src.mkdir(parents=True)
    (src / "cell.json").write_text("{}")
    cell = G.Cell("r", 0, "second_stage", (), "base")
    labels = cell.dir(tmp_path) / "pseudo" / "train.json"
    labels.parent.mkdir(parents=True)
    from dataclasses import asdict

    from pdsl.engine.pseudo_label import PseudoLabelParams

    made = asdict(PseudoLabelParams(masks="model"))
    labels.write_text(json.dumps({"info": {"params": made}, "annotations": []}))
    with pytest.raises(ConfigError, match="labelled with other parameters"):
        GR._pseudo_labels(cell, spec, tmp_path)
    labels.write_text(json.dumps({"info": {"params": asdict(PseudoLabelParams(masks="grabcut"))},
                                  "annotations": []}))
    assert GR._pseudo_labels(cell, spec, tmp_path)[0] == labels  # the same labelling: reused


def test_learning_curve_per_cell_and_per_variant(data, tmp_path):
    """eval.curve N: every checkpoint of every cell is scored on N images; the summary holds the
    mean ± std over seeds at each step, the table one row per variant, and a curve plot."""
    spec = _spec(data, tmp_path / "g.yaml", {"base": ["train.checkpoint_period=1"]}, seeds=(0, 1))
    d = yaml.safe_load(spec.read_text())
    d["eval"]["curve"] = 2
    spec.write_text(yaml.safe_dump(d))
    out = tmp_path / "cells"
    G.run_grid(spec, out, echo=lambda m: None)
    rec = json.loads((out / "base" / "seed0" / "cell.json").read_text())
    assert rec["eval_curve"] == 2
    assert [r["step"] for r in rec["curve"]] == [1, 2]
    assert all("mask_AP75" in r and r["images"] == 2 for r in rec["curve"])
    summary = G.write_results(spec, out, tmp_path / "res" / "t")
    c = summary["rows"]["base"]["curve"]
    seeds = [json.loads((out / "base" / f"seed{s}" / "cell.json").read_text())["curve"]
             for s in (0, 1)]
    want = (seeds[0][0]["mask_AP50"] + seeds[1][0]["mask_AP50"]) / 2
    assert c[1]["mask_AP50"]["mean"] == pytest.approx(want) and c[1]["mask_AP50"]["n"] == 2
    md = (tmp_path / "res" / "t.md").read_text()
    assert "| learning curve: mask_AP50 at step (mean ± std over seeds) | 1 | 2 |" in md
    assert (tmp_path / "res" / "t_curve.png").stat().st_size > 0
    # a grid without the key keeps the record of older grids (no eval_curve, no curve)
    from pdsl.engine.grid.spec import cell_record

    old = G.load_spec(_spec(data, tmp_path / "h.yaml", {"base": []}))
    assert "eval_curve" not in cell_record(G.cells(old)[0], old)


def test_bad_curve_value_names_the_field(data, tmp_path):
    spec = _spec(data, tmp_path / "g.yaml", {"base": []})
    d = yaml.safe_load(spec.read_text())
    d["eval"]["curve"] = "all"
    spec.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError, match="eval.curve must be an integer"):
        G.load_spec(spec)


def test_a_variant_runs_on_its_own_subset_of_the_seeds(data, tmp_path):
    spec = _spec(data, tmp_path / "g.yaml", {"base": [], "probe": {"overrides": [], "seeds": [1]}},
                 seeds=(0, 1))
    got = [(c.variant, c.seed) for c in G.cells(G.load_spec(spec))]
    assert got == [("base", 0), ("base", 1), ("probe", 1)]
    bad = _spec(data, tmp_path / "b.yaml", {"probe": {"overrides": [], "seeds": [5]}})
    with pytest.raises(ConfigError, match="variants.probe.seeds must be"):
        G.load_spec(bad)


def test_a_grid_resumes_from_its_results_file_alone(data, tmp_path, monkeypatch):
    """The results file is rewritten after every cell; in a fresh out dir (another checkout, whose
    runs/ is not committed) the cells it records are done, and only what it lacks is trained."""
    spec = _spec(data, tmp_path / "g.yaml", {"base": []}, seeds=(0,))
    res = tmp_path / "res" / "table"
    G.run_grid(spec, tmp_path / "a", echo=lambda m: None, results=res)
    first = json.loads(res.with_suffix(".json").read_text())
    assert [(c["variant"], c["seed"]) for c in first["cells"]] == [("base", 0)]
    assert first["cells"][0]["losses"] and res.with_suffix(".md").exists()

    # the spec gains a seed: the recorded cell is restored, only the new one trains
    spec = _spec(data, tmp_path / "g.yaml", {"base": []}, seeds=(0, 1))
    import pdsl.engine.train as T
    trained, real = [], T.train

    def spy(*a, **k):
        trained.append(k.get("overrides"))
        return real(*a, **k)

    monkeypatch.setattr(T, "train", spy)
    msgs = []
    recs = G.run_grid(spec, tmp_path / "b", echo=msgs.append, results=res)
    assert len(trained) == 1 and "train.seed=1" in trained[0]
    assert any("1 cell(s) restored" in m for m in msgs)
    back = next(r for r in recs if r["seed"] == 0)
    assert back["metrics"] == first["cells"][0]["metrics"]
    assert back["losses"] == first["cells"][0]["losses"]  # kept: its metrics.jsonl is not here
    assert back["restored"].endswith("table.json")
    assert [c["seed"] for c in json.loads(res.with_suffix(".json").read_text())["cells"]] == [0, 1]

    # a record made with other overrides is not taken for this spec's cell
    spec = _spec(data, tmp_path / "g.yaml", {"base": ["model.n_refine=0"]}, seeds=(0,))
    assert G.restore_cells(G.load_spec(spec), tmp_path / "c", res) == []


def test_a_broken_results_file_names_itself(data, tmp_path):
    spec = _spec(data, tmp_path / "g.yaml", {"base": []}, seeds=(0,))
    (tmp_path / "table.json").write_text('{"cells": 3}')
    with pytest.raises(ConfigError, match="table.json: not a grid results file"):
        G.run_grid(spec, tmp_path / "a", echo=lambda m: None, results=tmp_path / "table")


def test_the_main_job_config_is_the_long_grids_m0_cell():
    """pipeline/config.yaml trains pipeline/configs/demo-authors-m0.yaml; the long grid's n_m0
    cells (demo.yaml + the authors' recipe + n_m = 0) are its three seeds, so the two must
    resolve to the same config (up to the pretrained backbone the workflow passes, and the seed)."""
    from pdsl.config import load_config, to_dict

    workflow = yaml.safe_load(open("pipeline/config.yaml"))
    assert workflow["train"]["config"] == "pipeline/configs/demo-authors-m0.yaml"
    spec = G.load_spec("pipeline/grids/ablation-long.yaml")
    for c in (c for c in G.cells(spec) if c.variant == "n_m0"):
        cell = to_dict(load_config(spec["train"]["config"], [
            o for o in c.overrides if not o.startswith("model.pretrained=")]))
        main = to_dict(load_config(workflow["train"]["config"], [f"train.seed={c.seed}"]))
        assert cell == main
