"""A run directory belongs to one run: ``train --out RUN`` never overwrites a run.

RUN/run.json records the hash of the resolved config; training into a directory that holds a
run is refused without --resume, and with --resume unless the config is the same."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pdsl.model.pdsl_net")

from test_train import _train, tiny  # noqa: E402,F401  (the same tiny run as test_train)

from pdsl.errors import ConfigError  # noqa: E402
from pdsl.rundir import config_hash  # noqa: E402


def _snapshot(run: Path) -> dict:
    """Every file of a run directory and its bytes."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "done"
    _train(tiny, run, "train.checkpoint_period=1", max_iter=2)
    return run


def test_run_json_records_config_hash_and_categories(finished, tiny):
    rec = json.loads((finished / "run.json").read_text())
    import yaml

    assert rec["config_sha1"] == config_hash(yaml.safe_load((finished / "config.yaml").read_text()))
    manifest = json.loads(Path(tiny[0]).read_text())
    assert rec["categories"] == [{"id": c["id"], "name": c["name"]} for c in manifest["categories"]]


def test_train_into_a_finished_run_without_resume_is_refused(tiny, finished):
    before = _snapshot(finished)
    with pytest.raises(ConfigError, match="already holds a run.*--resume.*new --out"):
        _train(tiny, finished, "train.checkpoint_period=1", max_iter=2)   # the very same command
    with pytest.raises(ConfigError, match="already holds a run"):
        _train(tiny, finished, "solver.base_lr=0.5", max_iter=3)          # a typo'd --out
    assert _snapshot(finished) == before                                   # nothing touched


def test_resume_with_another_config_is_refused_naming_the_keys(tiny, finished):
    before = _snapshot(finished)
    with pytest.raises(ConfigError) as e:
        _train(tiny, finished, "train.checkpoint_period=1", "solver.base_lr=0.5", max_iter=3,
               resume=True)
    msg = str(e.value)
    assert "another config" in msg and "solver.base_lr" in msg and "0.5" in msg
    assert _snapshot(finished) == before


def test_run_made_before_run_json_is_judged_by_its_config_yaml(tiny, tmp_path):
    run = tmp_path / "legacy"
    _train(tiny, run, max_iter=1)
    (run / "run.json").unlink()
    with pytest.raises(ConfigError, match="solver.base_lr"):
        _train(tiny, run, "solver.base_lr=0.5", max_iter=2, resume=True)


def test_resume_with_same_config_extends_the_run(tiny, tmp_path):
    run = tmp_path / "ext"
    _train(tiny, run, max_iter=1)
    rec = (run / "run.json").read_bytes()
    # a longer max_iter and another worker count are outside the hash: the same run goes on
    _train(tiny, run, "train.num_workers=1", max_iter=2, resume=True)
    assert (run / "checkpoints/model_0000002.pth").is_file()
    assert (run / "run.json").read_bytes() == rec
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]


def test_an_empty_or_new_directory_is_a_new_run(tiny, tmp_path):
    (tmp_path / "empty" / "logs").mkdir(parents=True)     # Snakemake makes logs/ first
    _train(tiny, tmp_path / "empty", max_iter=1)
    assert (tmp_path / "empty" / "run.json").is_file()


def _as_if_made_before(run: Path, key: str) -> None:
    """Rewrite a run's config.yaml and run.json as a version without config key ``key`` made it."""
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    section, name = key.split(".")
    del cfg[section][name]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rec = json.loads((run / "run.json").read_text())
    rec["config_sha1"] = config_hash(cfg)
    (run / "run.json").write_text(json.dumps(rec))


def test_run_of_an_earlier_version_resumes_when_new_keys_keep_their_defaults(tiny, tmp_path):
    import shutil

    run = tmp_path / "old"
    _train(tiny, run, "train.checkpoint_period=1", max_iter=2)
    _as_if_made_before(run, "solver.acl_warmup_iters")
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    _train(tiny, run, "train.checkpoint_period=1", max_iter=3, resume=True)  # the default: same run
    assert (run / "checkpoints" / "model_0000003.pth").is_file()
    before = _snapshot(copy)
    with pytest.raises(ConfigError, match="solver.acl_warmup_iters: None -> 5"):
        _train(tiny, copy, "train.checkpoint_period=1", "solver.acl_warmup_iters=5", max_iter=3,
               resume=True)  # a new key set away from its default is another run
    assert _snapshot(copy) == before
