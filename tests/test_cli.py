"""`cli.py`: the command set users and the workflow rely on, every `--help`, and the released
demo model's classes as `predict --help` names them."""
import json
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from cli import cli

REPO = Path(__file__).resolve().parents[1]
#: the commands as users know them (README, the Snakefile rules, scripts)
COMMANDS = {"prepare-data", "cache-cues", "proposals-shard", "seeds-shard", "merge-cues",
            "cue-report", "pretrain-backbone", "train", "train-supervised", "eval", "predict",
            "pseudo-label", "export-model", "grid", "score"}


def _mentioned(paths) -> set:
    """The command names written as ``cli.py NAME`` in these files."""
    return {m for p in paths for m in re.findall(r"cli\.py ([a-z][a-z0-9-]*)", p.read_text())}


def _help(*args) -> str:
    r = CliRunner().invoke(cli, [*args, "--help"], terminal_width=100)
    assert r.exit_code == 0, r.output
    return r.output


def test_every_command_and_its_help():
    assert set(cli.commands) == COMMANDS
    top = _help()
    for name, command in cli.commands.items():
        assert name in top  # listed in the group's help
        out = _help(name)
        assert out.startswith(f"Usage: cli {name} ")
        for p in command.params:  # every option is documented in the command's help
            assert all(opt in out for opt in p.opts if opt.startswith("--")), (name, p.opts)


def test_the_workflow_and_the_readme_call_existing_commands():
    rules = [REPO / "Snakefile", *sorted((REPO / "pipeline/rules").glob("*.smk"))]
    used = _mentioned(rules)
    # the workflow's stages, from the dataset to a table
    assert {"prepare-data", "proposals-shard", "seeds-shard", "merge-cues", "train",
            "eval"} <= used
    assert used <= set(cli.commands), used - set(cli.commands)
    readme = _mentioned([REPO / "README.md"])
    assert readme <= set(cli.commands), readme - set(cli.commands)


def test_cli_script_runs_without_loading_torch():
    r = subprocess.run([sys.executable, str(REPO / "cli.py"), "--help"], capture_output=True,
                       text=True, cwd=REPO)
    assert r.returncode == 0 and "predict" in r.stdout, r.stderr
    code = "import sys, cli; print(sorted(m for m in ('torch', 'cv2', 'h5py') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def _predict_run_help() -> str:
    return " ".join(_help("predict").split())  # the option's help, unwrapped


def test_predict_help_names_the_released_model_classes():
    from pdsl.datasets.synthetic import CLASS_NAMES

    cats = json.loads((REPO / "pipeline/release/demo/run.json").read_text())["categories"]
    names = [c["name"] for c in sorted(cats, key=lambda c: c["id"])]
    m = re.search(r"the synthetic benchmark's (\d+) shape classes: ([^\]]+)\]", _predict_run_help())
    assert m, _predict_run_help()
    assert int(m.group(1)) == len(names) and m.group(2).split(", ") == names
    assert names == list(CLASS_NAMES)  # the release knows the benchmark's classes


def test_predict_help_without_a_release(tmp_path, monkeypatch):
    import pdsl.rundir

    monkeypatch.setattr(pdsl.rundir, "RELEASED_DEMO", tmp_path / "missing")
    text = _predict_run_help()
    assert "the synthetic benchmark's shape classes]" in text and "car" not in text


def _param(command: str, name: str):
    return next(p for p in cli.commands[command].params if p.name == name)


def test_choices_and_stated_defaults_are_the_library_ones():
    from pdsl.cues.seeds import FALLBACKS, SEED_METHODS, SeedParams
    from pdsl.datasets import FORMATS
    from pdsl.engine.pseudo_label import MASK_SOURCES, PseudoLabelParams

    assert set(_param("prepare-data", "fmt").type.choices) == set(FORMATS)
    for command in ("cache-cues", "seeds-shard"):
        assert set(_param(command, "method").type.choices) == set(SEED_METHODS)
        assert set(_param(command, "fallback").type.choices) == set(FALLBACKS)
    # the seed options default to None (SeedParams decides); their help states SeedParams' value
    defaults = SeedParams()
    seed_params = [p for p in cli.commands["cache-cues"].params if hasattr(defaults, p.name)]
    assert len(seed_params) == 12
    for p in seed_params:
        assert p.default is None
        stated = re.search(r"Default ([A-Za-z_]+|\d+(?:\.\d+)?)", p.help).group(1)
        assert stated == str(getattr(defaults, p.name)), (p.name, stated)
    assert set(_param("pseudo-label", "mask_source").type.choices) == set(MASK_SOURCES)
    pl = PseudoLabelParams()
    for option, field in (("score_thresh", "score_thresh"), ("per_class_cap", "per_class_cap"),
                          ("keep_top", "keep_top"), ("mask_source", "masks")):
        assert _param("pseudo-label", option).default == getattr(pl, field), option
