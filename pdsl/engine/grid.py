"""Experiment grids: train and evaluate config variants over seeds, resumably, and tabulate them.

A grid spec (YAML, e.g. ``pipeline/grids/ablation.yaml``)::

    train: {config: CFG, manifest: M, cues: C, overrides: [KEY=VALUE, ...]}
    eval:  {manifest: M, cues: C, max_images: 100}
    seeds: [0, 1, 2]
    variants:                      # name -> overrides on top of train.overrides
      full: []
      acl_off: [model.acl=false]
      ceiling: {kind: supervised}  # kind: pdsl (default) | supervised (Mask R-CNN on GT)
      retrain: {kind: second_stage, from: base, pseudo_label: {score_thresh: 0.3}}
    compare:                       # expected directions: [better, worse, what it reproduces]
      - [full, acl_off, "Table 1: ACL"]

A ``second_stage`` variant is the second stage of :mod:`pdsl.engine.pseudo_label`: the finished
cell of its ``from`` variant (same seed) labels the training split (``pseudo_label``: the
:class:`PseudoLabelParams` fields), and a Mask R-CNN is trained on those labels; its cell records
the labels' quality against GT. It runs after its ``from`` cell (``from`` names an earlier pdsl
variant).

Each (variant, seed) is a *cell*: ``OUT/<variant>/seed<k>/`` holds its run and ``cell.json``
(its overrides and metrics). A cell with ``cell.json`` is never re-run; a cell whose spec
changed since is refused (a finished result is never overwritten: use another ``--out``); an
unfinished run resumes from its last checkpoint. :func:`summarize` writes the table.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from ..errors import ConfigError, PDSLError
from ..io import read_data_file, write_json_atomic

#: metrics tabulated per variant: (column, metrics.json section, key)
COLUMNS = (("mask AP50", "segm", "AP50"), ("mask AP75", "segm", "AP75"), ("mask AP", "segm", "AP"),
           ("box AP50", "bbox", "AP50"), ("box AP75", "bbox", "AP75"), ("CorLoc", "bbox", "CorLoc"))
KINDS = ("pdsl", "supervised", "second_stage")
#: metrics of every expected direction (Table 1 is mask AP50; box AP50 shows where it lives)
COMPARED = ("mask AP50", "mask AP", "box AP50")
#: pseudo-label quality tabulated for second-stage variants: (column, quality.json key, scale)
QUALITY = (("labels / image", "labels_per_image", 1), ("precision", "precision", 100),
           ("recall", "recall", 100), ("matched mask IoU", "matched_mask_iou", 100))


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
    from .pseudo_label import PseudoLabelParams

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
            if only and name not in only:
                continue
            out.append(Cell(name, seed, v.get("kind", "pdsl"),
                            base + tuple(v.get("overrides") or ()) + (f"train.seed={seed}",),
                            v.get("from")))
    return out


def _cell_record(cell: Cell, spec: dict) -> dict:
    rec = {"variant": cell.variant, "seed": cell.seed, "kind": cell.kind,
           "config": spec["train"]["config"], "overrides": list(cell.overrides),
           "eval_max_images": spec["eval"].get("max_images")}
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
    want = _cell_record(cell, spec)
    if any(rec.get(k) != v for k, v in want.items()):
        raise ConfigError(f"{path} finished with another spec ({ {k: rec.get(k) for k in want} }); "
                          f"a finished result is never overwritten: use another --out, or "
                          f"delete that cell to re-run it")
    return True


def run_cell(cell: Cell, spec: dict, out: Path, threads: int | None = None) -> dict:
    """Train (resuming) and evaluate one cell; write ``cell.json`` last, atomically."""
    run_dir = cell.dir(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = list(cell.overrides) + ([f"train.threads={threads}"] if threads else [])
    tr, ev = spec["train"], spec["eval"]
    from .evaluate import evaluate_run  # with the trainer, before training: one code version
    from .supervised import train_supervised
    from .train import train

    log = run_dir / "grid.log"
    with open(log, "a") as fh:
        old = os.dup(2)
        os.dup2(fh.fileno(), 2)  # the trainer's progress lines go to the cell's log
        try:
            if cell.kind == "second_stage":
                labels, quality = _pseudo_labels(cell, spec, out)
                train_supervised(tr["config"], tr["manifest"], run_dir, annotations=labels,
                                 resume=True, overrides=overrides)
            elif cell.kind == "supervised":
                train_supervised(tr["config"], tr["manifest"], run_dir, resume=True,
                                 overrides=overrides)
            else:
                train(tr["config"], tr["manifest"], tr["cues"], run_dir, resume=True,
                      overrides=overrides)
            metrics = evaluate_run(run_dir, ev["manifest"], ev["cues"], max_images=ev.get("max_images"),
                                   device="cpu", report=False)
        finally:
            sys.stderr.flush()
            os.dup2(old, 2)
            os.close(old)
    rec = _cell_record(cell, spec)
    rec["metrics"] = {col: (metrics.get(sec) or {}).get(key) for col, sec, key in COLUMNS}
    rec["images"] = metrics.get("images")
    if cell.kind == "second_stage":
        rec["pseudo_label"] = quality
    write_json_atomic(rec, run_dir / "cell.json", indent=2)
    return rec


def _pseudo_labels(cell: Cell, spec: dict, out: Path):
    """The source cell's run labels the training split once (``<cell>/pseudo/train.json``; an
    interrupted labelling resumes); returns its path and its quality against GT (with
    ``labels_per_image``)."""
    from .pseudo_label import PseudoLabelParams, pseudo_label

    src = Cell(cell.source, cell.seed, "pdsl", ()).dir(out)
    if not (src / "cell.json").is_file():
        raise ConfigError(f"{cell.variant} seed {cell.seed} labels with {src}, which has not "
                          f"finished (no cell.json): run its variant '{cell.source}' first")
    labels = cell.dir(out) / "pseudo" / "train.json"
    qfile = labels.with_name("train.quality.json")
    params = PseudoLabelParams(**spec["variants"][cell.variant]["pseudo_label"])
    if labels.exists():
        # labels of an unfinished cell are reused only if made with this spec's parameters
        made = json.loads(labels.read_text()).get("info", {}).get("params")
        if made != json.loads(json.dumps(dataclasses.asdict(params))):
            raise ConfigError(f"{labels} was labelled with other parameters ({made}); delete it "
                              f"to relabel with the spec's")
    else:
        labels.parent.mkdir(parents=True, exist_ok=True)
        pseudo_label(src, spec["train"]["manifest"], spec["train"]["cues"], labels, params,
                     device="cpu")
    q = json.loads(qfile.read_text()) if qfile.exists() else {}
    quality = dict(q.get("quality") or {})
    if q.get("images"):
        quality["labels_per_image"] = q["annotations"] / q["images"]
    return labels, quality


def _run_cell_job(args):
    import torch

    cell, spec, out, threads = args
    torch.set_num_threads(threads or 1)
    return run_cell(cell, spec, out, threads)


def run_grid(spec_path, out, only=None, jobs: int = 1, threads: int | None = None,
             echo=print) -> list[dict]:
    """Run every unfinished cell (``jobs`` at a time, each with ``threads`` torch threads)."""
    spec = load_spec(spec_path)
    out = Path(out)
    todo = [c for c in cells(spec, only) if not cell_done(c, spec, out)]
    echo(f"grid {spec_path}: {len(cells(spec, only)) - len(todo)} cells done, {len(todo)} to run "
         f"-> {out}")
    failed = []

    def report(k, c, rec=None, err=None):
        if err is not None:
            failed.append(f"{c.variant} seed {c.seed}: {err}")
            echo(f"[{k}/{len(todo)}] FAILED {c.variant} seed {c.seed}: {err} "
                 f"(log: {c.dir(out)}/grid.log)")
        else:
            echo(f"[{k}/{len(todo)}] done {c.variant} seed {c.seed}: mask AP50 "
                 f"{rec['metrics']['mask AP50']}, box AP50 {rec['metrics']['box AP50']}")

    if jobs <= 1:
        for k, c in enumerate(todo, 1):
            echo(f"[{k}/{len(todo)}] {c.variant} seed {c.seed} (log: {c.dir(out)}/grid.log)")
            try:
                report(k, c, run_cell(c, spec, out, threads))
            except Exception as e:  # noqa: BLE001 - one failed cell does not stop the others
                report(k, c, err=e)
    else:
        # a fresh process per cell (max_tasks_per_child): each cell runs the code as it is
        # when the cell starts, even if the files change during a long grid
        fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
        # a second-stage cell is submitted once the cell it labels with has finished
        waiting, running, k = list(todo), {}, 0
        unfinished = {(c.variant, c.seed) for c in todo}
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), **fresh) as pool:
            while waiting or running:
                for c in [c for c in waiting if (c.source, c.seed) not in unfinished]:
                    if len(running) < jobs:
                        waiting.remove(c)
                        running[pool.submit(_run_cell_job, (c, spec, out, threads))] = c
                if not running:  # only cells whose source failed are left
                    for c in waiting:
                        k += 1
                        report(k, c, err=ConfigError(f"not run: its '{c.source}' cell failed"))
                    break
                f = next(as_completed(running))
                c, k = running.pop(f), k + 1
                try:
                    report(k, c, f.result())
                    unfinished.discard((c.variant, c.seed))
                except Exception as e:  # noqa: BLE001
                    report(k, c, err=e)
    if failed:
        raise GridError(f"{len(failed)} of {len(todo)} cells failed (the others are kept; run "
                        f"again to retry only these):\n  " + "\n  ".join(failed))
    return collect(spec, out, only)


def collect(spec: dict, out: Path, only=None) -> list[dict]:
    """``cell.json`` of every finished cell (unfinished ones are left out), with its run's
    :func:`final_losses`."""
    recs = []
    for c in cells(spec, only):
        if cell_done(c, spec, Path(out)):
            rec = json.loads((c.dir(out) / "cell.json").read_text())
            rec["losses"] = final_losses(c.dir(out) / "metrics.jsonl")
            recs.append(rec)
    return recs


def final_losses(metrics_jsonl, last: int = 100) -> dict:
    """Mean of every ``loss_*`` of a run's last ``last`` logged steps (what each loss settled
    at: the table's explanation of a direction); {} without a log."""
    path = Path(metrics_jsonl)
    if not path.is_file():
        return {}
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "step" in r][-last:]
    keys = sorted({k for r in rows for k in r if k.startswith("loss_")})
    return {k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in keys}


def _mean_std(values):
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, sd


def summarize(spec: dict, recs: list[dict]) -> dict:
    """Mean ± std (sample std over seeds) per variant and column, and each expected direction
    of ``spec["compare"]``: ``diff`` = mean(better) − mean(worse) of mask AP50 and whether it is
    beyond seed noise, ``|diff| > 2 · sd_pooled`` with ``sd_pooled = sqrt((sd_a² + sd_b²) / 2)``
    (needs ≥ 2 seeds of each)."""
    rows = {}
    for name in spec["variants"]:
        mine = [r for r in recs if r["variant"] == name]
        if not mine:
            continue
        row = {"seeds": [r["seed"] for r in mine]}
        for col, _, _ in COLUMNS:
            m, sd = _mean_std([r["metrics"].get(col) for r in mine])
            row[col] = {"mean": m, "std": sd, "values": [r["metrics"].get(col) for r in mine]}
        losses = [r.get("losses") or {} for r in mine]
        row["losses"] = {k: _mean_std([x.get(k) for x in losses])[0]
                         for k in sorted({k for x in losses for k in x})}
        if spec["variants"][name].get("kind") == "second_stage":
            row["from"] = spec["variants"][name]["from"]
            row["pseudo_label"] = {}
            for col, key, scale in QUALITY:
                vals = [(r.get("pseudo_label") or {}).get(key) for r in mine]
                vals = [v * scale for v in vals if v is not None]
                m, sd = _mean_std(vals)
                row["pseudo_label"][col] = {"mean": m, "std": sd, "values": vals}
        rows[name] = row
    # weak / full: every variant's mask AP50 and AP over the (first) fully supervised one's
    ceiling = next((n for n in rows if spec["variants"][n].get("kind") == "supervised"), None)
    ratios = []
    for name in rows if ceiling else ():
        if name == ceiling:
            continue
        r = {"variant": name, "ceiling": ceiling}
        for col in ("mask AP50", "mask AP"):
            num, den = rows[name][col]["mean"], rows[ceiling][col]["mean"]
            r[col] = num / den if num is not None and den else None
        ratios.append(r)
    comparisons = []
    for pair in spec.get("compare", []):
        a, b = pair[0], pair[1]
        label = pair[2] if len(pair) > 2 else f"{a} > {b}"
        if a not in rows or b not in rows:
            continue
        for col in COMPARED:
            ma, sa = rows[a][col]["mean"], rows[a][col]["std"]
            mb, sb = rows[b][col]["mean"], rows[b][col]["std"]
            if ma is None or mb is None:
                continue
            pooled = math.sqrt((sa ** 2 + sb ** 2) / 2)
            enough = len(rows[a]["seeds"]) > 1 and len(rows[b]["seeds"]) > 1
            va = dict(zip(rows[a]["seeds"], rows[a][col]["values"]))
            vb = dict(zip(rows[b]["seeds"], rows[b][col]["values"]))
            per_seed = {k: va[k] - vb[k] for k in va if vb.get(k) is not None
                        and va[k] is not None}
            comparisons.append({"label": label, "better": a, "worse": b, "metric": col,
                                "diff": ma - mb, "sd_pooled": pooled,
                                "per_seed": per_seed, "enough": enough,
                                "reproduced": bool(enough and ma - mb > 2 * pooled),
                                "reversed": bool(enough and mb - ma > 2 * pooled)})
    return {"rows": rows, "comparisons": comparisons, "ratios": ratios}


def _cell(v: dict) -> str:
    if v["mean"] is None:
        return "—"
    return f"{v['mean']:.1f}" + (f" ± {v['std']:.1f}" if len(v["values"]) > 1 else "")


def markdown(summary: dict, title: str = "") -> str:
    cols = [c for c, _, _ in COLUMNS]
    lines = ([f"### {title}", ""] if title else [])
    lines += ["| variant | seeds | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for name, row in summary["rows"].items():
        lines.append(f"| {name} | {len(row['seeds'])} | "
                     + " | ".join(_cell(row[c]) for c in cols) + " |")
    if summary.get("ratios"):
        lines += ["", f"| weak / full (over {summary['ratios'][0]['ceiling']}) | mask AP50 | "
                  f"mask AP |", "|---|---|---|"]
        for r in summary["ratios"]:
            lines.append(f"| {r['variant']} | " + " | ".join(
                "—" if r[c] is None else f"{r[c]:.2f}" for c in ("mask AP50", "mask AP")) + " |")
    stage2 = {n: row for n, row in summary["rows"].items() if "pseudo_label" in row}
    if stage2:
        cols = [c for c, _, _ in QUALITY]
        lines += ["", "| second stage: pseudo labels vs train GT (mask IoU 0.5) | labelled by | "
                  + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
        for name, row in stage2.items():
            lines.append(f"| {name} | {row['from']} | "
                         + " | ".join(_cell(row["pseudo_label"][c]) for c in cols) + " |")
    by_keys = {}  # PDSL and Mask R-CNN runs log different losses: one table each
    for name, row in summary["rows"].items():
        if row.get("losses"):
            by_keys.setdefault(tuple(row["losses"]), []).append(name)
    for keys, names in by_keys.items():
        lines += ["", "| training losses, mean of the last 100 steps | "
                  + " | ".join(k[len("loss_"):] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for name in names:
            lines.append(f"| {name} | " + " | ".join(
                f"{summary['rows'][name]['losses'][k]:.3f}" for k in keys) + " |")
    if summary["comparisons"]:
        lines += ["", "| expected direction | metric | difference | 2 × pooled std | verdict | "
                  "per seed (same seed: same detector when only the mask side differs) |",
                  "|---|---|---|---|---|---|"]
        for c in summary["comparisons"]:
            verdict = ("reproduced" if c["reproduced"] else "reversed" if c["reversed"]
                       else "within noise" if c.get("enough", True) else "one seed: not judged")
            lines.append(f"| {c['label']}: {c['better']} > {c['worse']} | {c['metric']} | "
                         f"{c['diff']:+.1f} | {2 * c['sd_pooled']:.1f} | {verdict} | "
                         + ", ".join(f"{d:+.1f}" for d in c.get("per_seed", {}).values()) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path, column: str = "mask AP50") -> None:
    """Bar chart of ``column`` per variant with ±1 std whiskers (OpenCV only)."""
    import cv2
    import numpy as np

    from ..evaluation.report import _colour, _imwrite

    names = list(summary["rows"])
    W, H, L, B, T = max(360, 70 * len(names) + 120), 320, 50, 60, 30  # room for a 16-char last label
    img = np.full((H, W, 3), 255, np.uint8)
    means = [summary["rows"][n][column]["mean"] or 0.0 for n in names]
    stds = [summary["rows"][n][column]["std"] or 0.0 for n in names]
    top = max([m + s for m, s in zip(means, stds)] + [1.0]) * 1.1

    def ty(v):
        return int(H - B - v / top * (H - T - B))

    cv2.line(img, (L, H - B), (W - 10, H - B), (0, 0, 0), 1)
    cv2.line(img, (L, T), (L, H - B), (0, 0, 0), 1)
    for k in range(5):
        v = top * k / 4
        cv2.putText(img, f"{v:.0f}", (8, ty(v) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
    step = (W - L - 60) / max(len(names), 1)
    for k, (n, m, s) in enumerate(zip(names, means, stds)):
        x0, x1 = int(L + 10 + k * step), int(L + (k + 1) * step - 6)
        cv2.rectangle(img, (x0, ty(m)), (x1, H - B), _colour(k), -1)
        xc = (x0 + x1) // 2
        if s:
            cv2.line(img, (xc, ty(m + s)), (xc, ty(max(m - s, 0))), (0, 0, 0), 1)
        cv2.putText(img, f"{m:.1f}", (x0, ty(m) - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
        cv2.putText(img, n[:16], (x0, H - B + 14 + 12 * (k % 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (0, 0, 0), 1)
    cv2.putText(img, f"{column} (mean, whiskers: 1 std over seeds)", (L, 18),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    _imwrite(path, img)


def write_results(spec_path, out, results, title: str = "") -> dict:
    """``RESULTS.json`` (spec, every cell, the summary), ``RESULTS.md`` and ``RESULTS.png``."""
    from ..io import atomic_path

    spec = load_spec(spec_path)
    recs = collect(spec, Path(out))
    summary = summarize(spec, recs)
    results = Path(results)
    results.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"spec": str(spec_path), "cells": recs, **summary},
                      results.with_suffix(".json"), indent=2)
    with atomic_path(results.with_suffix(".md")) as tmp:
        Path(tmp).write_text(markdown(summary, title))
    if summary["rows"]:
        plot(summary, results.with_suffix(".png"))
    return summary
