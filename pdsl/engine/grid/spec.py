"""A grid spec (see :mod:`pdsl.engine.grid`), its cells and what a finished cell records."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConfigError, PDSLError
from ...io import read_data_file

#: metrics tabulated per variant: (column, metrics.json section, key)
COLUMNS = (("mask AP50", "segm", "AP50"), ("mask AP75", "segm", "AP75"), ("mask AP", "segm", "AP"),
           ("box AP50", "bbox", "AP50"), ("box AP75", "bbox", "AP75"), ("CorLoc", "bbox", "CorLoc"))
KINDS = ("pdsl", "supervised", "second_stage")


class GridError(PDSLError):
    """Some cells of a grid failed (each with its error); the finished ones are kept."""


@dataclass(frozen=True)
class Cell:
    variant: str
    seed: int
    kind: str
    overrides: tuple[str, ...]
    source: str | None = None  # second_stage: the variant whose run labels the training split

    def dir(self, out: Path) -> Path:
        return Path(out) / self.variant / f"seed{self.seed}"


def load_spec(path) -> dict:
    """Read and check a grid spec; errors name the file and the field."""
    spec = read_data_file(path, "grid spec", error=ConfigError, fmt="yaml")
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a grid spec is a mapping (train, eval, seeds, variants)")
    for key in ("train", "eval", "variants"):
        if not isinstance(spec.get(key), dict):
            raise ConfigError(f"{path}: '{key}' must be a mapping")
    for key in ("config", "manifest", "cues"):
        if not spec["train"].get(key):
            raise ConfigError(f"{path}: train.{key} is required")
    for key in ("manifest", "cues"):
        if not spec["eval"].get(key):
            raise ConfigError(f"{path}: eval.{key} is required")
    curve = spec["eval"].get("curve")
    if curve is not None and not (isinstance(curve, int) and not isinstance(curve, bool)
                                  and curve >= 0):
        raise ConfigError(f"{path}: eval.curve must be an integer >= 0 (the number of images "
                          f"each checkpoint is scored on; 0 or absent: no learning curve), got "
                          f"{curve!r}")
    seeds = spec.setdefault("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)):
        raise ConfigError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    for name, v in spec["variants"].items():
        v = {"overrides": v} if isinstance(v, list) or v is None else v
        if not isinstance(v, dict) or v.get("kind", "pdsl") not in KINDS:
            raise ConfigError(f"{path}: variants.{name}: a list of overrides or a mapping with "
                              f"kind ({' | '.join(KINDS)}) and overrides")
        if not all(isinstance(o, str) and "=" in o for o in v.get("overrides") or []):
            raise ConfigError(f"{path}: variants.{name}: overrides are KEY=VALUE strings")
        own = v.get("seeds")
        if own is not None and not (isinstance(own, list) and own and set(own) <= set(seeds)):
            raise ConfigError(f"{path}: variants.{name}.seeds must be a non-empty list of the "
                              f"grid's seeds {seeds}, got {own!r}")
        if v.get("kind") == "second_stage":
            _check_second_stage(path, name, v, spec["variants"])
        spec["variants"][name] = v
    for pair in spec.setdefault("compare", []):
        if not (isinstance(pair, list) and len(pair) >= 2
                and all(p in spec["variants"] for p in pair[:2])):
            raise ConfigError(f"{path}: compare entries are [better, worse, label] with variant "
                              f"names of this spec, got {pair!r}")
    return spec


def _check_second_stage(path, name: str, v: dict, variants: dict) -> None:
    from ..pseudo_label import PseudoLabelParams

    earlier = list(variants)[:list(variants).index(name)]
    src = v.get("from")
    if src not in earlier or variants[src].get("kind", "pdsl") != "pdsl":  # earlier: mappings now
        raise ConfigError(f"{path}: variants.{name}.from must name a pdsl variant listed before "
                          f"it (its run labels the training split), got {src!r}")
    params = v.setdefault("pseudo_label", {})
    try:
        PseudoLabelParams(**params)
    except TypeError as e:
        fields = ", ".join(f.name for f in dataclasses.fields(PseudoLabelParams))
        raise ConfigError(f"{path}: variants.{name}.pseudo_label: {e} (fields: {fields})") \
            from None
    except ConfigError as e:
        raise ConfigError(f"{path}: variants.{name}.pseudo_label: {e}") from None


def cells(spec: dict, only=None) -> list[Cell]:
    """Every (variant, seed) of the spec, seed by seed (every variant of the first seed before the
    second seed: a grid stopped early still compares every variant); ``only`` keeps those
    variants."""
    only = set(only or ())
    only |= {spec["variants"][n]["from"] for n in only if n in spec["variants"]
             and spec["variants"][n].get("kind") == "second_stage"}  # what it labels with
    unknown = only - set(spec["variants"])
    if unknown:
        raise ConfigError(f"unknown variant(s) {sorted(unknown)}; the spec has "
                          f"{list(spec['variants'])}")
    base = tuple(spec["train"].get("overrides") or ())
    out = []
    for seed in spec["seeds"]:
        for name, v in spec["variants"].items():
            if (only and name not in only) or seed not in v.get("seeds", spec["seeds"]):
                continue
            out.append(Cell(name, seed, v.get("kind", "pdsl"),
                            base + tuple(v.get("overrides") or ()) + (f"train.seed={seed}",),
                            v.get("from")))
    return out


def cell_record(cell: Cell, spec: dict) -> dict:
    rec = {"variant": cell.variant, "seed": cell.seed, "kind": cell.kind,
           "config": spec["train"]["config"], "overrides": list(cell.overrides),
           "eval_max_images": spec["eval"].get("max_images")}
    if spec["eval"].get("curve"):  # every checkpoint scored (absent: the record of older grids)
        rec["eval_curve"] = spec["eval"]["curve"]
    if cell.kind == "second_stage":
        rec["from"] = cell.source
        rec["pseudo_label_params"] = spec["variants"][cell.variant]["pseudo_label"]
    return rec


def cell_done(cell: Cell, spec: dict, out: Path) -> bool:
    """True if the cell finished with this spec; an error if it finished with another one."""
    path = cell.dir(out) / "cell.json"
    if not path.exists():
        return False
    rec = json.loads(path.read_text())
    want = cell_record(cell, spec)
    if any(rec.get(k) != v for k, v in want.items()):
        raise ConfigError(f"{path} finished with another spec ({ {k: rec.get(k) for k in want} }); "
                          f"a finished result is never overwritten: use another --out, or "
                          f"delete that cell to re-run it")
    return True
