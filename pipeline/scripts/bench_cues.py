#!/usr/bin/env python
"""Benchmark of the cue-cache stage (a script, not a test). Prints, in one run:

1. core-seconds per image for proposals (built-in selective search) and for the seed bank at
   2,000 proposals, on VOC-sized (500 px) synthetic images;
2. scaling of the cache stage from 1 to 2 worker processes (same images, wall time);
3. cached vs online (authors') GrabCut on the embedded benchmark: seconds per box and mask IoU
   vs GT for the best proposal of every GT instance;
4. with ``--coco-real DIR`` (a COCO tree of real photos, e.g. ../shared/data/coco-real): on its
   ``--real-split`` (val2017), at each of ``--max-proposals`` (2,000 and 4,000 built-in proposals
   per image): the whole cache stage's core-seconds per image (proposals + seed masks), bytes per
   image on disk, warm random access per image, and the ratio of the authors' online GrabCut over
   their VOC schedule (24 epochs x the image's present classes x 10 seeds x the ms per online
   GrabCut measured in the same run) to that cost; at the first size also proposal recall overall
   and by size, and the seed-mask table of ``cue-report`` (every method on the matched proposal
   and on the GT box, by size);
   ``--readme pipeline/results/README.md`` writes that table between the ``<!-- bench_cues:real -->`` markers.

    python pipeline/scripts/bench_cues.py [--images 16] [--quality-images 60] [--out bench.json]
    python pipeline/scripts/bench_cues.py --coco-real ../shared/data/coco-real --readme pipeline/results/README.md

Selective search finds fewer than 2,000 boxes on synthetic images; the proposal list is padded to
exactly 2,000 with jittered copies of its own boxes (MCG-like redundancy) so the seed stage is
measured at the size the paper uses. Run it on an otherwise idle machine: scaling is wall-clock.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pdsl.cues.cache import cache_cues  # noqa: E402
from pdsl.cues.report import cue_report  # noqa: E402
from pdsl.cues.seeds import SeedParams, build_bank  # noqa: E402
from pdsl.io import read_image  # noqa: E402
from pdsl.proposals import make_source  # noqa: E402


def pad_to(boxes, scores, n, H, W, rng):
    """Pad a proposal list to ``n`` boxes with jittered copies (scale/shift up to 15 %)."""
    if len(boxes) >= n:
        return boxes[:n], scores[:n]
    k = n - len(boxes)
    src = boxes[rng.integers(0, len(boxes), k)]
    wh = np.stack([src[:, 2] - src[:, 0], src[:, 3] - src[:, 1]], 1)
    jit = rng.uniform(-0.15, 0.15, (k, 4)) * np.concatenate([wh, wh], 1)
    new = src + jit
    new[:, [0, 2]] = new[:, [0, 2]].clip(0, W)
    new[:, [1, 3]] = new[:, [1, 3]].clip(0, H)
    new[:, 2] = np.maximum(new[:, 2], new[:, 0] + 2)
    new[:, 3] = np.maximum(new[:, 3], new[:, 1] + 2)
    return (np.concatenate([boxes, new]).astype(np.float32),
            np.concatenate([scores, np.full(k, scores.min() * 0.5)]).astype(np.float32))


def bench_per_image(manifest, params, n_props=2000):
    src = make_source("builtin")
    rng = np.random.default_rng(0)
    t_prop = t_seed = 0.0
    n_bank = []
    for img in manifest.images:
        image = read_image(manifest.image_path(img))
        t = time.process_time()
        p = src.get(img, manifest.image_path(img), image=image)
        t_prop += time.process_time() - t
        boxes, scores = pad_to(p["boxes"], p["scores"], n_props, image.shape[0], image.shape[1], rng)
        t = time.process_time()
        bank = build_bank(image, boxes, scores, params)
        t_seed += time.process_time() - t
        n_bank.append(len(bank["bank_boxes"]))
    n = len(manifest.images)
    return {"images": n, "proposal_core_s_per_image": t_prop / n,
            "seed_core_s_per_image_at_2000": t_seed / n, "grabcut_masks_per_image": float(np.mean(n_bank))}


VOC_EPOCHS = 24  # the authors' VOC schedule, in epochs
ONLINE_SEEDS = 10  # seeds per present class per step (paper: n_seed)


def time_random_access(path, repeats: int = 3) -> float:
    """Warm random access: ms per image for ``CueStore.get`` (bank included) in shuffled order,
    after one pass that warms the OS cache; the best of ``repeats`` passes."""
    from pdsl.cues.store import CueStore

    s = CueStore(path)
    ids = list(s.ids)
    np.random.default_rng(0).shuffle(ids)
    for i in ids:
        s.get(int(i))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for i in ids:
            s.get(int(i))
        best = min(best, (time.perf_counter() - t) / len(ids))
    s.close()
    return 1e3 * best


def online_ms_per_box(manifest, images: int = 10) -> float:
    """ms per authors' online GrabCut (whole image at 400 px, 5 iterations) on the GT boxes of
    the first ``images`` images (the run's own measure when --no-online leaves it out)."""
    from pdsl.cues.grabcut import grabcut_online
    from pdsl.cues.report import gt_instances

    t, n = 0.0, 0
    for img in manifest.images[:images]:
        image = read_image(manifest.image_path(img), img["id"])
        for box in gt_instances(manifest, img)[0]:
            t0 = time.process_time()
            grabcut_online(image, box)
            t += time.process_time() - t0
            n += 1
    return 1e3 * t / max(n, 1)


def bench_real(root, split, params, tmp, online=True, max_proposals=2000, report=True):
    """Part 4: cost, storage, reading, recall and seed-mask quality on real photos (a COCO tree)."""
    from pdsl.datasets import prepare_data
    from pdsl.io import file_sha1
    from pdsl.cues.store import CueWriter

    man_path = Path(tmp) / f"{split}.json"
    manifest = prepare_data("coco", man_path, split, root=root, progress=False)
    src = make_source("builtin", max_proposals=max_proposals)
    t_prop = t_seed = 0.0
    n_prop, n_bank = [], []
    out = Path(tmp) / f"real-{split}-{max_proposals}.h5"
    meta = {"dataset": manifest.dataset, "split": manifest.split, "num_classes": manifest.num_classes,
            "class_names": manifest.class_names, "manifest": str(manifest.path), "shard": "1-of-1",
            "proposal_source": src.describe(), "seeds": params.to_dict()}
    with CueWriter(out, meta, kind="cues", mask_size=params.mask_size,
                   bank_layout=params.bank_layout, mask_encoding=params.mask_format) as w:
        for img in manifest.images:
            path = manifest.image_path(img)
            image = read_image(path, img["id"])
            t = time.process_time()
            p = src.get(img, path, image=image)
            t_prop += time.process_time() - t
            t = time.process_time()
            bank = build_bank(image, p["boxes"], p["scores"], params)
            t_seed += time.process_time() - t
            n_prop.append(len(p["boxes"]))
            n_bank.append(len(bank["bank_boxes"]))
            w.add(img["id"], img["height"], img["width"], file_sha1(path), p["boxes"], p["scores"],
                  **bank)
    n = len(manifest.images)
    from pdsl.cues.store import CueStore

    r = {"images": n, "max_proposals": max_proposals, "proposals_per_image": float(np.mean(n_prop)),
         "masks_per_image": float(np.mean(n_bank)), "proposal_core_s_per_image": t_prop / n,
         "seed_core_s_per_image": t_seed / n, "cache_core_s_per_image": (t_prop + t_seed) / n,
         "bytes_per_image": CueStore(out).bytes_per_image(),
         "random_access_ms_per_image": time_random_access(out),
         "present_classes_per_image": float(np.mean([len(i["labels"]) for i in manifest.images]))}
    if report:
        r["report"] = cue_report(man_path, out, online=online)
        sm = r["report"]["seed_masks"]
        r["online_ms_per_box"] = (1e3 * sm["online_s_per_box"] if "online_s_per_box" in sm
                                  else online_ms_per_box(manifest))
    return r


def online_ratio(r: dict, online_ms: float) -> float:
    """The authors' online GrabCut over their VOC schedule (epochs x present classes x seeds x ms
    per GrabCut) divided by the cache's cost, per image."""
    online_s = VOC_EPOCHS * r["present_classes_per_image"] * ONLINE_SEEDS * online_ms / 1e3
    return online_s / r["cache_core_s_per_image"]


def write_readme(readme: Path, text: str, tag: str = "bench_cues:real"):
    """Replace the block between ``<!-- tag -->`` and ``<!-- /tag -->`` in ``readme`` (atomic)."""
    s = readme.read_text()
    a, b = f"<!-- {tag} -->", f"<!-- /{tag} -->"
    if a not in s or b not in s:
        raise SystemExit(f"{readme}: markers {a} ... {b} not found")
    s = s[:s.index(a) + len(a)] + "\n" + text.rstrip() + "\n" + s[s.index(b):]
    tmp = readme.with_name(readme.name + ".tmp")
    tmp.write_text(s)
    tmp.replace(readme)


def real_markdown(r: dict, cmd: str, more: list = ()) -> str:
    from pdsl.cues.report import methods_table

    rep = r["report"]
    om = r["online_ms_per_box"]
    sizes = [r, *more]
    cost_rows = [
        f"| cache stage at {x['max_proposals']:,} proposals: proposals + seed masks, core-s per "
        f"image | {x['proposal_core_s_per_image']:.2f} + {x['seed_core_s_per_image']:.2f} = "
        f"**{x['cache_core_s_per_image']:.2f}** "
        f"({1e3 * x['seed_core_s_per_image'] / max(x['masks_per_image'], 1):.2f} ms per seed mask) |"
        for x in sizes] + [
        f"| bytes per image at {x['max_proposals']:,} proposals (all fields, {x['masks_per_image']:.0f} "
        f"masks) | {x['bytes_per_image'] / 1e3:.0f} KB |" for x in sizes] + [
        f"| random access, warm, at {x['max_proposals']:,} proposals | "
        f"{x['random_access_ms_per_image']:.2f} ms per image |" for x in sizes] + [
        f"| authors' online GrabCut over their VOC schedule ({VOC_EPOCHS} epochs × "
        f"{r['present_classes_per_image']:.2f} present classes × {ONLINE_SEEDS} seeds × {om:.0f} ms) "
        f"/ cache at {x['max_proposals']:,} | **{online_ratio(x, om):.0f}×** |" for x in sizes]
    rc, rs = rep["recall"], rep["recall_by_size"]
    L = [f"Measured by `{cmd}` ({r['images']} photos, {rep['gt']['instances']} non-crowd instances; "
         f"one core per image, `time.process_time`):", "",
         "| cache stage, real photos | value |", "|---|---|",
         f"| proposals per image (built-in) | {r['proposals_per_image']:.0f} |",
         f"| seed masks per image | {r['masks_per_image']:.0f} |", *cost_rows,
         f"| recall@0.5, all instances / ≥ 32² px | {rc['iou_0.5']:.1%} / **{rc['iou_0.5_ge_32px']:.1%}** |",
         "| recall@0.5 small / medium / large | " + " / ".join(
             f"{rs[k]['iou_0.5']:.1%}" if rs[k]["n"] else "—" for k in ("small", "medium", "large")) + " |",
         f"| recall@0.7, all | {rc['iou_0.7']:.1%} |",
         f"| bank coverage (mean IoU proposal → representative) | {rep['coverage']['mean_iou']:.3f} |",
         "", methods_table(rep)]
    return "\n".join(L)


def bench_scaling(manifest_path, params, tmp):
    out = {}
    for w in (1, 2):
        t = time.perf_counter()
        cache_cues(manifest_path, "builtin", Path(tmp) / f"scale{w}.h5", workers=w, shard_size=2,
                   params=params, log=lambda s: None)
        out[w] = time.perf_counter() - t
    return {"wall_s_1_worker": out[1], "wall_s_2_workers": out[2], "speedup": out[1] / out[2],
            "efficiency": out[1] / out[2] / 2}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16, help="VOC-sized images for parts 1-2")
    ap.add_argument("--quality-images", type=int, default=60, help="benchmark images for part 3")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    ap.add_argument("--coco-real", default=None, help="COCO tree of real photos: run part 4 only")
    ap.add_argument("--real-split", default="val2017", help="split of --coco-real (default val2017)")
    ap.add_argument("--no-online", action="store_true", help="part 4 without the authors' online "
                    "GrabCut rows (~150 ms per box)")
    ap.add_argument("--readme", default=None, help="write part 4's table into this README")
    ap.add_argument("--sharing", default=None, choices=("none", "facility", "threshold"),
                    help="the bank's sharing (default: SeedParams'); run both, one after the "
                         "other on an idle machine, to compare their costs")
    ap.add_argument("--method", default=None,
                    choices=("grabcut_batched", "grabcut", "grabcut_masked", "grabcut_rect"),
                    help="the bank's seed-mask method (default: SeedParams')")
    ap.add_argument("--max-proposals", default="2000,4000",
                    help="part 4: proposals per image, comma-separated; the seed-mask table is "
                         "measured at the first, cost, storage and reading at each")
    ap.add_argument("--max-bank", type=int, default=None,
                    help="masks per image at most (default: SeedParams')")
    args = ap.parse_args()
    import cv2

    cv2.setNumThreads(1)
    from pdsl.datasets.synthetic import generate

    params = SeedParams(**{k: v for k, v in (("sharing", args.sharing), ("method", args.method),
                                             ("max_bank", args.max_bank)) if v is not None})
    res = {"seed_params": params.to_dict()}
    if args.coco_real:
        sizes = [int(v) for v in args.max_proposals.split(",")]
        with tempfile.TemporaryDirectory() as tmp:
            r = bench_real(args.coco_real, args.real_split, params, tmp, online=not args.no_online,
                           max_proposals=sizes[0])
            more = [bench_real(args.coco_real, args.real_split, params, tmp, max_proposals=k,
                               report=False) for k in sizes[1:]]
        cmd = "python pipeline/scripts/bench_cues.py --coco-real " + args.coco_real + (
            f" --real-split {args.real_split}" if args.real_split != "val2017" else "") + (
            " --no-online" if args.no_online else "") + (
            f" --sharing {args.sharing}" if args.sharing else "") + (
            f" --method {args.method}" if args.method else "") + (
            f" --max-bank {args.max_bank}" if args.max_bank else "") + (
            f" --max-proposals {args.max_proposals}" if sizes != [2000, 4000] else "") + (
            " --readme pipeline/results/README.md")
        md = real_markdown(r, cmd, more)
        print(md)
        if args.readme:
            write_readme(Path(args.readme), md)
        if args.out:
            Path(args.out).write_text(json.dumps({"first": r, "more": more}, indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        big = generate(Path(tmp) / "big.json", "bench", args.images, seed=7, image_size=500)
        res["per_image"] = bench_per_image(big, params)
        print(f"[1] {args.images} images 500x500, builtin proposals padded to 2,000: "
              f"proposals {res['per_image']['proposal_core_s_per_image']:.2f} core-s/img, "
              f"seeds {res['per_image']['seed_core_s_per_image_at_2000']:.2f} core-s/img "
              f"({res['per_image']['grabcut_masks_per_image']:.0f} GrabCut masks/img)", flush=True)
        res["scaling"] = bench_scaling(big.path, params, tmp)
        s = res["scaling"]
        print(f"[2] cache-cues on the same images: 1 worker {s['wall_s_1_worker']:.1f} s, "
              f"2 workers {s['wall_s_2_workers']:.1f} s: speed-up {s['speedup']:.2f}x "
              f"({s['efficiency']:.0%} of linear)", flush=True)
        q = generate(Path(tmp) / "q.json", "val", args.quality_images, seed=0)
        cache_cues(q.path, "builtin", Path(tmp) / "q.h5", workers=2, params=params,
                   log=lambda s: None)
        rep = cue_report(q.path, Path(tmp) / "q.h5", online=True)
        res["quality"] = {"instances": rep["gt"]["instances"], **rep["recall"],
                          **{k: v for k, v in rep["seed_masks"].items() if k != "by_status"},
                          "bank_status": rep["bank_status"]}
        sq = res["quality"]
        print(f"[3] embedded benchmark val, {sq['instances']} GT instances: mask IoU vs GT cached "
              f"{sq['cached_mask_iou']:.3f} vs online {sq['online_mask_iou']:.3f} (filled box "
              f"{sq['box_fill_iou']:.3f}); {sq['cached_s_per_box'] * 1e3:.1f} ms/box cached vs "
              f"{sq['online_s_per_box'] * 1e3:.1f} ms/box online = {sq['speedup']:.0f}x less compute; "
              f"proposal recall@0.5 {sq['iou_0.5']:.1%}", flush=True)
    print("\n| measure | value | target |\n|---|---|---|")
    pi, s = res["per_image"], res["scaling"]
    print(f"| proposals, core-s / image (500 px, builtin) | {pi['proposal_core_s_per_image']:.2f} | — |")
    print(f"| seeds, core-s / image at 2,000 proposals | {pi['seed_core_s_per_image_at_2000']:.2f} | ≤ 2 |")
    print(f"| scaling 1 → 2 workers | {s['speedup']:.2f}x ({s['efficiency']:.0%}) | ≥ 85 % |")
    print(f"| mask IoU vs GT: cached / online | {sq['cached_mask_iou']:.3f} / {sq['online_mask_iou']:.3f} | cached ≥ online |")
    print(f"| compute per box: online / cached | {sq['speedup']:.0f}x | ≥ 10x |")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
