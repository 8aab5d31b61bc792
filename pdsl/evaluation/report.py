"""``report.md`` and its pictures: metrics table, predictions beside GT, cached seed masks, loss and
AP curves. Drawn with OpenCV only (no plotting dependency)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..boxes import paste_mask
from ..cues.store import STATUS_OK
from ..io import atomic_path, read_image

_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190),
            (0, 128, 128), (230, 190, 255), (170, 110, 40), (128, 0, 0), (170, 255, 195),
            (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128), (255, 255, 255)]


def _colour(k):
    r, g, b = _COLOURS[k % len(_COLOURS)]
    return (b, g, r)


def _imwrite(path, img):
    import cv2

    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", img)
        tmp.write_bytes(buf.tobytes())


def draw_predictions(image, boxes, labels, scores, masks, names, alpha=0.45):
    """Overlay masks, boxes and ``name score`` labels on a copy of a BGR image."""
    import cv2

    vis = image.copy()
    for k in range(len(boxes)):
        col = np.array(_colour(int(labels[k])), np.float32)
        if masks is not None and len(masks):
            m = masks[k].astype(bool)
            vis[m] = (vis[m] * (1 - alpha) + col * alpha).astype(np.uint8)
        x1, y1, x2, y2 = [int(round(v)) for v in boxes[k]]
        cv2.rectangle(vis, (x1, y1), (x2, y2), tuple(int(c) for c in col), 1)
        text = names[int(labels[k])] + (f" {scores[k]:.2f}" if scores is not None else "")
        cv2.putText(vis, text, (x1 + 1, max(y1 - 2, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.3,
                    tuple(int(c) for c in col), 1, cv2.LINE_AA)
    return vis


def _gt_panel(image, manifest, img):
    from ..cues.report import gt_instances

    boxes, masks, cats, _ = gt_instances(manifest, img)
    labels = [manifest.cat_id_to_index[int(c)] for c in cats]
    return draw_predictions(image, boxes, labels, None, masks, manifest.class_names)


def _tile(rows, pad=4):
    """Stack a list of rows (lists of equal-height BGR images) into one picture."""
    h = max(im.shape[0] for r in rows for im in r)
    lines = []
    for r in rows:
        ims = [np.pad(im, ((0, h - im.shape[0]), (0, pad), (0, 0)), constant_values=255) for im in r]
        lines.append(np.concatenate(ims, 1))
    w = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, pad), (0, w - line.shape[1]), (0, 0)), constant_values=255)
             for line in lines]
    return np.concatenate(lines, 0)


def plot_curves(series: dict, title: str, xlabel: str, path, size=(640, 360)):
    """Line plot of ``{name: (xs, ys)}`` with axes, ticks and a legend, written as PNG."""
    import cv2

    W, H = size
    L, R, T, B = 60, 150, 30, 40
    img = np.full((H, W, 3), 255, np.uint8)
    pts = [(np.asarray(x, float), np.asarray(y, float)) for x, y in series.values()]
    pts = [(x[np.isfinite(y)], y[np.isfinite(y)]) for x, y in pts]
    allx = np.concatenate([x for x, _ in pts if len(x)] or [np.zeros(1)])
    ally = np.concatenate([y for _, y in pts if len(y)] or [np.zeros(1)])
    x0, x1 = float(allx.min()), float(allx.max()) or 1.0
    y0, y1 = min(0.0, float(ally.min())), float(ally.max()) or 1.0
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1

    def tx(v):
        return int(L + (v - x0) / (x1 - x0) * (W - L - R))

    def ty(v):
        return int(H - B - (v - y0) / (y1 - y0) * (H - T - B))

    cv2.rectangle(img, (L, T), (W - R, H - B), (0, 0, 0), 1)
    for k in range(5):
        yv = y0 + (y1 - y0) * k / 4
        cv2.putText(img, f"{yv:.3g}", (4, ty(yv) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
        xv = x0 + (x1 - x0) * k / 4
        cv2.putText(img, f"{xv:.0f}", (tx(xv) - 10, H - B + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (0, 0, 0), 1)
    cv2.putText(img, title, (L, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, (W // 2 - 20, H - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    for k, (name, (x, y)) in enumerate(zip(series, pts)):
        col = _colour(k)
        if len(x) > 1:
            cv2.polylines(img, [np.stack([[tx(a), ty(b)] for a, b in zip(x, y)]).astype(np.int32)],
                          False, col, 1, cv2.LINE_AA)
        elif len(x) == 1:
            cv2.circle(img, (tx(x[0]), ty(y[0])), 3, col, -1)
        cv2.putText(img, name, (W - R + 8, T + 14 + 16 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.4, col, 1,
                    cv2.LINE_AA)
    _imwrite(path, img)


def _smooth(y, k=20):
    y = np.asarray(y, float)
    if len(y) < k:
        return y
    c = np.cumsum(np.insert(y, 0, 0))
    out = (c[k:] - c[:-k]) / k
    return np.concatenate([y[:k - 1], out])


def _metrics_rows(run_dir: Path) -> list:
    f = Path(run_dir) / "metrics.jsonl"
    if not f.is_file():
        return []
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


def mask_chain_curves(run_dir: Path, targets_path, bce_path) -> bool:
    """The mask chain's diagnostics over training (the ``diag_*`` keys of metrics.jsonl): for
    M^0 and each M^k the fraction of target RoIs that are empty before the fallback and the
    fraction given the filled box; each head's BCE and the mean ACL target score."""
    rows = _metrics_rows(run_dir)
    keys = sorted({k for r in rows for k in r if k.startswith("diag_")})
    if not keys:
        return False
    steps = [r["step"] for r in rows]

    def series(ks):
        return {k[len("diag_"):]: (steps, _smooth([r.get(k, math.nan) for r in rows])) for k in ks}

    plot_curves(series([k for k in keys if "fallback" in k]),
                "mask chain targets: fraction empty before the fallback / filled box", "step",
                targets_path, size=(760, 400))
    plot_curves(series([k for k in keys if k.endswith("_bce") or k == "diag_acl_target"]),
                "mask chain: each head's BCE, mean ACL target (moving average, 20 steps)", "step",
                bce_path, size=(760, 400))
    return True


def loss_curves(run_dir: Path, path) -> bool:
    rows = _metrics_rows(run_dir)
    if not rows:
        return False
    keys = [k for k in rows[0] if k.startswith("loss")]
    steps = [r["step"] for r in rows]
    plot_curves({k: (steps, _smooth([r.get(k, math.nan) for r in rows])) for k in keys},
                "training losses (moving average, 20 steps)", "step", path)
    return True


def _fmt(v):
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.1f}"


def metrics_table(metrics: dict) -> str:
    """COCO metrics and CorLoc, then the VOC protocol three ways, labelled (COCO's 101-point
    interpolation as in the PDSL paper; VOC AP, area under the PR curve, as IRN/BESTIE/CIM;
    VOC 2007's 11-point AP, as wetectron/OICR/PCL)."""
    cols = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    lines = ["| | " + " | ".join(cols) + " | CorLoc |", "|---" * (len(cols) + 2) + "|"]
    kinds = [(k, t) for k, t in (("segm", "mask"), ("bbox", "box")) if k in metrics]
    for kind, title in kinds:
        m = metrics[kind]
        lines.append(f"| {title} | " + " | ".join(_fmt(m.get(c)) for c in cols)
                     + f" | {_fmt(m.get('CorLoc')) if kind == 'bbox' else '—'} |")
    thr = ["0.25", "0.5", "0.7", "0.75"]
    lines += ["", "| VOC protocol | " + " | ".join(f"mAP@{t}" for t in thr) + " |",
              "|---" * (len(thr) + 1) + "|"]
    for kind, title in kinds:
        m = metrics[kind]
        for prefix, label in (("", "COCO 101-point interp. (PDSL paper)"),
                              ("voc_", "VOC AP, area under PR (IRN, BESTIE, CIM)"),
                              ("voc07_", "VOC07 11-point (wetectron, OICR, PCL)")):
            if any(f"{prefix}mAP@{t}" in m for t in thr):
                lines.append(f"| {title}, {label} | "
                             + " | ".join(_fmt(m.get(f"{prefix}mAP@{t}")) for t in thr) + " |")
    return "\n".join(lines)


def skipped_line(skipped: dict) -> str:
    """One line saying which GT the mask metrics left out (box-only annotations)."""
    return (f"Mask metrics skipped {skipped['instances']} GT instances on {skipped['images']} "
            f"images: {skipped['reason']} (box-only annotations); box AP, CorLoc and image-level "
            f"mAP use every image.")


def write_report(out_dir: Path, run_dir: Path, manifest, store, preds: dict, metrics: dict,
                 n_samples: int = 6, score_thresh: float = 0.3) -> Path:
    """``report.md`` with the metrics table and pictures, in ``out_dir``."""
    out_dir = Path(out_dir)
    names = manifest.class_names
    ids = list(preds)[:n_samples]
    rows = []
    for iid in ids:
        img = manifest.image_by_id[iid]
        image = read_image(manifest.image_path(img), iid)
        p = preds[iid]
        keep = p["scores"] >= score_thresh
        pred = draw_predictions(image, p["boxes"][keep], p["labels"][keep], p["scores"][keep],
                                p["masks"][keep], names)
        row = [_gt_panel(image, manifest, img) if manifest.has_gt else image, pred]
        rows.append(row)
    if rows:
        _imwrite(out_dir / "predictions.png", _tile(rows))
    seed_rows = []
    if store.kind == "cues":
        for iid in ids[:3]:
            c = store.get(iid)
            img = manifest.image_by_id[iid]
            image = read_image(manifest.image_path(img), iid)
            # the representatives of the 5 best-scored proposals whose GrabCut succeeded
            order = [int(c.bank_row[p]) for p in range(len(c.boxes))]
            reps = [b for b in dict.fromkeys(order) if c.bank_status[b] == STATUS_OK][:5]
            masks = np.stack([paste_mask(c.bank_masks[b], c.bank_boxes[b], c.height, c.width)
                              for b in reps]) if reps else np.zeros((0, c.height, c.width), bool)
            seed_rows.append([draw_predictions(image, c.bank_boxes[reps], np.arange(len(reps)),
                                               None, masks, [f"seed {k}" for k in range(5)])])
    if seed_rows:
        _imwrite(out_dir / "seed_masks.png", _tile(seed_rows))
    has_loss = loss_curves(run_dir, out_dir / "loss_curves.png")
    has_chain = mask_chain_curves(run_dir, out_dir / "mask_chain_targets.png",
                                  out_dir / "mask_chain_bce.png")
    has_ap = ap_curve_plot(run_dir, out_dir / "ap_curve.png")
    L = [f"# PDSL evaluation: {manifest.dataset} {manifest.split}", "",
         f"Run `{run_dir}`, checkpoint `{metrics.get('checkpoint')}`; {metrics.get('images')} images; "
         f"test scales {metrics.get('scales')}, flip {metrics.get('flip')}; "
         f"{metrics.get('seconds_per_image', 0):.2f} s/image.", ""]
    if "bbox" in metrics:
        L += ["## Metrics (%, pycocotools COCOeval)", "", metrics_table(metrics), ""]
        if metrics.get("mask_metrics_skipped"):
            L += [skipped_line(metrics["mask_metrics_skipped"]), ""]
        if "classification" in metrics:
            L += [f"Image-level classification mAP: {_fmt(metrics['classification']['mAP'])}", ""]
        per = metrics.get("per_class", {})
        if per.get("segm_AP50"):
            L += ["Per class mask AP50: " + ", ".join(f"{k} {_fmt(v)}"
                                                    for k, v in per["segm_AP50"].items()), ""]
    if rows:
        L += ["## Predictions (right) beside GT (left)", "", "![](predictions.png)", ""]
    if seed_rows:
        L += ["## Cached GrabCut seed masks (representatives of the top proposals)", "",
              "![](seed_masks.png)", ""]
    if has_loss:
        L += ["## Training", "", "![](loss_curves.png)", ""]
    if has_ap:
        L += ["![](ap_curve.png)", ""]
    if has_chain:
        L += ["### The mask chain (M^0 -> M^1 -> ... targets)", "", "![](mask_chain_targets.png)",
              "", "![](mask_chain_bce.png)", ""]
    path = out_dir / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(L))
    return path


def ap_curve_plot(run_dir: Path, path) -> bool:
    """AP50 over training from ``RUN_DIR/ap_curve.jsonl`` (written by ``cli.py eval --curve``)."""
    f = Path(run_dir) / "ap_curve.jsonl"
    if not f.is_file():
        return False
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    if not rows:
        return False
    steps = [r["step"] for r in rows]
    series = {k: (steps, [r.get(k) if r.get(k) is not None else math.nan for r in rows])
              for k in ("mask_AP50", "box_AP50", "cls_mAP") if any(k in r for r in rows)}
    plot_curves(series, "AP over training (subset of the split, single scale)", "step", path)
    return True
