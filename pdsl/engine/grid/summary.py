"""A grid's table: the finished cells, mean ± std over seeds, the expected directions, and the
results files (json, markdown, plot)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ...io import write_json_atomic
from .plot import plot
from .spec import COLUMNS, cell_done, cells, load_spec

#: metrics of every expected direction (Table 1 is mask AP50; box AP50 shows where it lives)
COMPARED = ("mask AP50", "mask AP", "box AP50")
#: pseudo-label quality tabulated for second-stage variants: (column, quality.json key, scale)
QUALITY = (("labels / image", "labels_per_image", 1), ("precision", "precision", 100),
           ("recall", "recall", 100), ("matched mask IoU", "matched_mask_iou", 100))


def collect(spec: dict, out: Path, only=None) -> list[dict]:
    """``cell.json`` of every finished cell (unfinished ones are left out), with its run's
    :func:`final_losses`."""
    recs = []
    for c in cells(spec, only):
        if cell_done(c, spec, Path(out)):
            rec = json.loads((c.dir(out) / "cell.json").read_text())
            means = final_losses(c.dir(out) / "metrics.jsonl", prefix=("loss_", "diag_"))
            if means or "restored" not in rec:  # a restored record keeps its own (no run here)
                rec["losses"] = {k: v for k, v in means.items() if k.startswith("loss_")}
                rec["diagnostics"] = {k: v for k, v in means.items() if k.startswith("diag_")}
            recs.append(rec)
    return recs


def final_losses(metrics_jsonl, last: int = 100, prefix: str | tuple = "loss_") -> dict:
    """Mean of every ``loss_*`` (keys starting with ``prefix``, or any of a tuple: ``diag_`` for
    the mask chain's diagnostics) of a run's last ``last`` logged steps (what each settled at:
    the table's explanation of a direction); {} without a log."""
    path = Path(metrics_jsonl)
    if not path.is_file():
        return {}
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "step" in r][-last:]
    keys = sorted({k for r in rows for k in r if k.startswith(prefix)})
    return {k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in keys}


def _mean_std(values):
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, sd


CURVE_KEYS = ("mask_AP50", "mask_AP75", "box_AP50")


def _mean_curve(curves: list) -> dict:
    """``{step: {key: {"mean", "std", "n"}}}`` over the seeds' learning curves."""
    steps = sorted({r["step"] for c in curves for r in c})
    out = {}
    for st in steps:
        out[st] = {}
        for k in CURVE_KEYS:
            vals = [r.get(k) for c in curves for r in c if r["step"] == st]
            m, sd = _mean_std(vals)
            out[st][k] = {"mean": m, "std": sd,
                          "n": sum(v is not None and not math.isnan(v) for v in vals)}
    return out


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
        for field in ("losses", "diagnostics"):
            vals = [r.get(field) or {} for r in mine]
            row[field] = {k: _mean_std([x.get(k) for x in vals])[0]
                          for k in sorted({k for x in vals for k in x})}
        if any(r.get("curve") for r in mine):
            row["curve"] = _mean_curve([r.get("curve") or [] for r in mine])
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
    curves = {n: r["curve"] for n, r in summary["rows"].items() if r.get("curve")}
    steps = sorted({int(st) for c in curves.values() for st in c})
    for key in CURVE_KEYS if curves else ():
        lines += ["", f"| learning curve: {key} at step (mean ± std over seeds) | "
                  + " | ".join(str(st) for st in steps) + " |", "|---" * (len(steps) + 1) + "|"]
        for name, c in curves.items():
            by = {int(st): v[key] for st, v in c.items()}
            lines.append(f"| {name} | " + " | ".join(
                _cell({**by[st], "values": [0] * by[st]["n"]}) if st in by else "—"
                for st in steps) + " |")
    diag = {n: r["diagnostics"] for n, r in summary["rows"].items() if r.get("diagnostics")}
    if diag:
        keys = sorted({k for d in diag.values() for k in d})
        lines += ["", "| mask chain diagnostics, mean of the last 100 steps | "
                  + " | ".join(k[len("diag_"):] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for name, d in diag.items():
            lines.append(f"| {name} | " + " | ".join(
                "—" if d.get(k) is None else f"{d[k]:.3f}" for k in keys) + " |")
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


def write_results(spec_path, out, results, title: str = "") -> dict:
    """``RESULTS.json`` (spec, every cell, the summary), ``RESULTS.md`` and ``RESULTS.png``."""
    from ...io import atomic_path

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
    curves = {n: r["curve"] for n, r in summary["rows"].items() if r.get("curve")}
    if curves:  # RESULTS_curve.png: mask AP50 of every checkpoint, mean over seeds
        from ...evaluation.report import plot_curves

        plot_curves({n: ([int(st) for st in c], [v["mask_AP50"]["mean"] if v["mask_AP50"]["mean"]
                                                 is not None else math.nan for v in c.values()])
                     for n, c in curves.items()},
                    "learning curve: mask AP50 (mean over seeds)", "step",
                    results.with_name(results.name + "_curve.png"))
    return summary
