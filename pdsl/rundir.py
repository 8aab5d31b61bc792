"""A run directory belongs to one run: ``RUN_DIR/run.json`` records the hash of its resolved
config, and ``train`` refuses to write into a directory that holds another run.

* a new (or empty) directory: the run starts and ``run.json`` is written;
* a directory holding a run (``config.yaml``, ``metrics.jsonl``, ``checkpoints/``,
  ``last_checkpoint`` or ``run.json``) without ``--resume``: refused, nothing is touched;
* with ``--resume``: allowed only if the resolved config has the same hash, or differs only in
  keys that did not exist when the run was made and are at their defaults (a run made by an
  earlier version resumes); else refused with the keys that differ.

Keys that do not change what is learned, or that a resumed run may legitimately change, are left
out of the hash: :data:`HASH_EXCLUDES` (e.g. a longer ``solver.max_iter`` extends a run).
``run.json`` also records the manifest's categories (id and name), which ``predict`` writes, and
the run's ``kind``: ``pdsl`` (``cli.py train``; also a run.json without the key) or ``maskrcnn``
(``cli.py train-supervised``); neither trainer resumes the other's run.
A directory made before ``run.json`` existed is judged by its ``config.yaml``.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from .errors import ConfigError

RECORD = "run.json"
#: the demo model committed with the repository (trained by the demo workflow; a release of
#: :mod:`pdsl.engine.release`, read like a run directory)
RELEASED_DEMO = Path(__file__).resolve().parents[1] / "pipeline" / "release" / "demo"
#: run artefacts: a directory holding any of them holds a run
ARTEFACTS = ("config.yaml", "metrics.jsonl", "checkpoints", "last_checkpoint", RECORD)
#: dotted config keys outside the hash
HASH_EXCLUDES = ("solver.max_iter", "train.checkpoint_period", "train.log_period",
                 "train.num_workers", "train.device", "train.threads", "cues.online_workers")


def _hashed_part(d: dict) -> dict:
    d = json.loads(json.dumps(d))                      # plain, list-not-tuple copy
    for key in HASH_EXCLUDES:
        section, name = key.split(".")
        if isinstance(d.get(section), dict):
            d[section].pop(name, None)
    return d


def config_hash(cfg_dict: dict) -> str:
    """SHA-1 of the resolved config (a nested dict) without :data:`HASH_EXCLUDES`."""
    text = json.dumps(_hashed_part(cfg_dict), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _recorded(run_dir: Path) -> tuple[str | None, dict | None]:
    """(hash, config dict or None) of the run in ``run_dir``; (None, None) if not known."""
    import yaml

    cfg = None
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        try:
            cfg = yaml.safe_load(cfg_path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"run directory {run_dir}: {cfg_path} is unreadable ({e}); "
                              f"train into a new --out") from None
    rec = run_dir / RECORD
    if rec.is_file():
        try:
            return str(json.loads(rec.read_text())["config_sha1"]), cfg
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"run directory {run_dir}: {rec} is unreadable ({e}); "
                              f"train into a new --out") from None
    if isinstance(cfg, dict):
        return config_hash(cfg), cfg
    return None, None


def check_run_dir(run_dir, cfg_dict: dict, resume: bool, kind: str = "pdsl") -> bool:
    """Refuse (ConfigError) to train into ``run_dir`` unless it is new/empty, or ``resume`` and
    it holds a run of the same ``kind`` and config hash. Returns whether it already holds that
    run."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir}: exists and is not a directory")
    present = [n for n in ARTEFACTS if (run_dir / n).exists()]
    if not present:
        return False
    old, old_cfg = _recorded(run_dir)
    new = config_hash(cfg_dict)
    if not resume:
        raise ConfigError(
            f"run directory {run_dir} already holds a run ({', '.join(present)}); refusing to "
            f"overwrite it: pass --resume to continue it with the same config, or choose a new "
            f"--out (nothing was changed)")
    theirs = run_kind(run_dir)
    if theirs != kind:
        raise ConfigError(f"run directory {run_dir} holds a {theirs} run, not a {kind} run; "
                          f"resume it with {_TRAINER.get(theirs, 'its own trainer')}, or train "
                          f"into a new --out (nothing was changed)")
    if old is None:
        raise ConfigError(f"run directory {run_dir} holds {', '.join(present)} but no "
                          f"config.yaml or {RECORD} saying which config made it; refusing to "
                          f"resume it: choose a new --out (nothing was changed)")
    if old != new:
        diff = ""
        if old_cfg is not None:
            a, b = _flat(_hashed_part(old_cfg)), _flat(_hashed_part(cfg_dict))
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if keys and all(k not in a and b.get(k) in _unchanged(k) for k in keys):
                # keys a later version added, at their defaults (or, for a key whose default
                # changed behaviour, at the value the run was trained with): the same run
                import sys

                print(f"resume {run_dir}: made before the config keys {', '.join(keys)} "
                      f"existed; they keep the values it was trained with", file=sys.stderr)
                return True
            diff = "; differs in " + ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
                                               for k in keys[:6]) + (" ..." if len(keys) > 6 else "")
        raise ConfigError(
            f"run directory {run_dir} was trained with another config (hash {old[:12]}, this "
            f"one {new[:12]}{diff}); --resume needs the same config (its resolved copy is "
            f"{run_dir / 'config.yaml'}): resume with it, or train into a new --out (nothing "
            f"was changed)")
    return True


def recorded_config(run_dir) -> dict | None:
    """The config dict a run directory holds (its ``config.yaml``), or None."""
    cfg = _recorded(Path(run_dir))[1] if Path(run_dir).is_dir() else None
    return cfg if isinstance(cfg, dict) else None


def _unchanged(key: str) -> tuple:
    """Values of a key that a run made before the key existed may resume with: its default, and
    for a key whose new default changed behaviour the old value (``pdsl.config.LEGACY``)."""
    from .config import LEGACY

    d = _defaults().get(key)
    return (d, LEGACY[key]) if key in LEGACY else (d,)


def _defaults() -> dict:
    from .config import default_config, to_dict

    return _flat(to_dict(default_config()))


_TRAINER = {"pdsl": "`cli.py train`", "maskrcnn": "`cli.py train-supervised`"}


def record_run(run_dir, cfg_dict: dict, manifest, extra: dict | None = None) -> None:
    """Write ``RUN_DIR/run.json`` (config hash, categories, manifest, and ``extra`` keys such as
    ``kind``) if it is not there yet."""
    from .io import write_json_atomic

    path = Path(run_dir) / RECORD
    if path.is_file():
        return
    write_json_atomic({"config_sha1": config_hash(cfg_dict),
                       "hash_excludes": list(HASH_EXCLUDES),
                       "categories": [{"id": int(c["id"]), "name": c["name"]}
                                      for c in manifest.categories],
                       "manifest": str(manifest.path),
                       "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {})},
                      path, indent=2)


def run_record(run_dir) -> dict:
    """The contents of ``RUN_DIR/run.json`` ({} if there is none)."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return {}
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({e})") from None
    return rec if isinstance(rec, dict) else {}


def run_kind(run_dir) -> str:
    """``pdsl`` or ``maskrcnn``: which trainer made the run (``pdsl`` if not recorded)."""
    return str(run_record(run_dir).get("kind", "pdsl"))


def run_categories(run_dir) -> list[dict] | None:
    """The categories (``[{"id", "name"}]``) the run was trained on, or None if not recorded."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return None
    try:
        cats = json.loads(path.read_text()).get("categories")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({e})") from None
    return cats if isinstance(cats, list) else None
