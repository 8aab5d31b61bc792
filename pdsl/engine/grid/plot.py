"""The grid's bar chart (OpenCV only)."""
from __future__ import annotations


def plot(summary: dict, path, column: str = "mask AP50") -> None:
    """Bar chart of ``column`` per variant with ±1 std whiskers (OpenCV only)."""
    import cv2
    import numpy as np

    from ...evaluation.report import _colour, _imwrite

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
