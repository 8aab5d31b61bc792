"""The cache stages: proposals shard -> seeds shard -> merged ``cues.h5``.

A shard is a contiguous slice of the manifest's images, named ``"i-of-n"`` (1-based, the form
Snakemake's ``scattergather`` uses). Each shard is an independent job writing its own file
atomically, so Snakemake (or :func:`cache_cues` with joblib) can run shards in parallel, a killed
run leaves no file that looks complete, and a finished shard is never recomputed.
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import CacheError, DataError
from ..io import file_sha1, read_image
from ..manifest import Manifest, load_manifest
from .seeds import SeedParams, build_bank
from .store import CueStore, CueWriter, merge_cue_files


def parse_shard(shard: str) -> tuple[int, int]:
    """``"3-of-8"`` -> ``(2, 8)`` (0-based index, count)."""
    m = re.fullmatch(r"(\d+)-of-(\d+)", str(shard))
    if not m or not (1 <= int(m.group(1)) <= int(m.group(2))):
        raise DataError(f"shard {shard!r}: expected 'I-of-N' with 1 <= I <= N, e.g. '1-of-8'")
    return int(m.group(1)) - 1, int(m.group(2))


def shard_images(manifest: Manifest, shard: str) -> list[dict]:
    """The contiguous slice of the manifest's images that shard ``"i-of-n"`` covers."""
    i, n = parse_shard(shard)
    bounds = np.linspace(0, len(manifest.images), n + 1).round().astype(int)
    return manifest.images[bounds[i]:bounds[i + 1]]


def _base_meta(manifest: Manifest, shard: str) -> dict:
    return {"dataset": manifest.dataset, "split": manifest.split,
            "num_classes": manifest.num_classes, "class_names": manifest.class_names,
            "manifest": str(manifest.path), "shard": shard}


def compute_proposals_shard(manifest: Manifest | str, source, shard: str, out,
                            progress=None) -> Path:
    """Stage 1: proposals of every image in ``shard`` -> ``out`` (kind "proposals")."""
    import cv2

    cv2.setNumThreads(1)
    from ..proposals import make_source

    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    if isinstance(source, str):
        source = make_source(source)
    meta = _base_meta(manifest, shard)
    meta["proposal_source"] = source.describe()
    with CueWriter(out, meta, kind="proposals") as w:
        for img in shard_images(manifest, shard):
            path = manifest.image_path(img)
            image = read_image(path, img["id"])
            if image.shape[:2] != (int(img["height"]), int(img["width"])):
                raise DataError(f"image {img['id']} ({path}) is {image.shape[1]}x{image.shape[0]} "
                                f"but the manifest says {img['width']}x{img['height']}")
            prop = source.get(img, path, image=image)
            w.add(img["id"], img["height"], img["width"], file_sha1(path), prop["boxes"],
                  prop["scores"], segments=prop.get("segments"))
            if progress:
                progress(1)
    return Path(out)


def compute_seeds_shard(manifest: Manifest | str, proposals_file, out, params: SeedParams,
                        progress=None) -> Path:
    """Stage 2: the seed masks of every image of a proposals shard -> ``out`` (kind "cues"): one
    per proposal (``sharing: none``) or a shared bank, in ``params.mask_format``."""
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    props = CueStore(proposals_file)
    if params.needs_segments and not props.has_segments:
        raise CacheError(f"seed method {params.method!r} needs MCG segments, but {proposals_file} has "
                         f"none: use MCG '-proposals' files (mcg:DIR with segments) or --seed-method "
                         f"grabcut_masked")
    meta = {k: props.meta(k) for k in ("dataset", "split", "num_classes", "class_names",
                                       "manifest", "shard", "proposal_source")}
    meta["seeds"] = params.to_dict()
    with CueWriter(out, meta, kind="cues", mask_size=params.mask_size,
                   bank_layout=params.bank_layout,
                   mask_encoding="bits" if params.mask_format == "bits" else "u8") as w:
        for image_id in props.ids:
            c = props.get(int(image_id), with_segments=props.has_segments)
            img = manifest.image_by_id.get(int(image_id))
            if img is None:
                raise CacheError(f"proposals {proposals_file}: image {image_id} is not in manifest "
                                 f"{manifest.path}; rebuild the proposals")
            path = manifest.image_path(img)
            if file_sha1(path) != c.file_sha1:
                raise CacheError(f"image {image_id} ({path}) changed since its proposals were "
                                 f"computed ({proposals_file}): stale, delete that file and rerun")
            bank = build_bank(read_image(path, image_id), c.boxes, c.scores, params,
                              segments=c.segments if params.needs_segments else None)
            w.add(c.image_id, c.height, c.width, c.file_sha1, c.boxes, c.scores,
                  segments=c.segments, **bank)
            if progress:
                progress(1)
    props.close()
    return Path(out)


def _shard_is_current(path: Path, source_desc: dict, params: SeedParams, manifest: Manifest,
                      n_images: int) -> bool:
    """A finished shard is reused only if it was made by the same source and parameters."""
    if not path.is_file():
        return False
    try:
        s = CueStore(path)
    except CacheError:
        return False
    return (s.kind == "cues" and s.meta("proposal_source") == source_desc
            and s.meta("seeds") == params.to_dict() and s.meta("dataset") == manifest.dataset
            and s.meta("split") == manifest.split and len(s) == n_images)


def _stored_source(prop_file: Path):
    """The proposal source a proposals shard was written with (the file closed again)."""
    store = CueStore(prop_file)
    try:
        return store.meta("proposal_source")
    finally:
        store.close()


def _run_shard(manifest_path, source, shard, parts_dir, params) -> tuple[str, int, float]:
    t0 = time.perf_counter()
    m = load_manifest(manifest_path)
    prop_file = parts_dir / f"proposals-{shard}.h5"
    # a proposals shard left by a run with another source (e.g. another max_proposals) is redone
    if not prop_file.is_file() or _stored_source(prop_file) != source.describe():
        compute_proposals_shard(m, source, shard, prop_file)
    compute_seeds_shard(m, prop_file, parts_dir / f"seeds-{shard}.h5", params)
    prop_file.unlink()
    return shard, len(shard_images(m, shard)), time.perf_counter() - t0


def cache_cues(manifest_path, proposals: str, out, workers: int = 1, shard_size: int = 64,
               params: SeedParams | None = None, keep_parts: bool = False, log=None,
               proposal_options: dict | None = None) -> dict:
    """Proposals + seed bank for one split, without Snakemake: shards run in ``workers`` joblib
    processes; finished shards in ``<out>.parts/`` are reused, so a killed run resumes.
    ``proposal_options``: the source's parameters (``box_format``, ``box_base``, ...; see
    :func:`pdsl.proposals.make_source`). Returns a summary dict."""
    import click
    from joblib import Parallel, delayed

    from ..proposals import make_source

    log = log or (lambda s: click.echo(s, err=True))
    params = params or SeedParams()
    manifest = load_manifest(manifest_path)
    source = make_source(proposals, **(proposal_options or {}))  # checked before any work
    desc = source.describe()
    out = Path(out)
    parts_dir = out.with_name(out.name + ".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    n = max(1, int(np.ceil(len(manifest.images) / shard_size)))
    shards = [f"{i + 1}-of-{n}" for i in range(n)]
    todo = [s for s in shards if not _shard_is_current(
        parts_dir / f"seeds-{s}.h5", desc, params, manifest, len(shard_images(manifest, s)))]
    done_images = sum(len(shard_images(manifest, s)) for s in shards if s not in todo)
    log(f"cache-cues: {len(manifest.images)} images of {manifest.dataset}/{manifest.split} in "
        f"{n} shards; {n - len(todo)} already done, {len(todo)} to compute with {workers} worker(s)"
        f"; proposals {source.kind}, boxes read as {source.convention()}")
    t0 = time.perf_counter()
    total = len(manifest.images)
    with click.progressbar(length=total, label="cache-cues", show_pos=True, show_eta=True,
                           file=sys.stderr) as bar:
        bar.update(done_images)
        jobs = (delayed(_run_shard)(str(manifest.path), source, s, parts_dir, params)
                for s in todo)
        for _, k, _ in Parallel(n_jobs=workers, return_as="generator_unordered")(jobs):
            bar.update(k)
    compute_s = time.perf_counter() - t0
    merge_cue_files([parts_dir / f"seeds-{s}.h5" for s in shards], out)
    if not keep_parts:
        for s in shards:
            (parts_dir / f"seeds-{s}.h5").unlink(missing_ok=True)
        try:
            parts_dir.rmdir()
        except OSError:
            pass
    store = CueStore(out)
    summary = {"images": len(store), "proposals": int(store.index["prop_count"].sum()),
               "bank_masks": int(store.index["bank_count"].sum()),
               "computed_images": total - done_images, "seconds": round(compute_s, 1),
               "workers": workers, "out": str(out),
               "bytes_per_image": round(store.bytes_per_image())}
    rate = (total - done_images) / compute_s if compute_s > 0 and total > done_images else 0.0
    log(f"cache-cues: wrote {out}: {summary['images']} images, {summary['proposals']} proposals, "
        f"{summary['bank_masks']} seed masks ({summary['bytes_per_image'] / 1e3:.0f} KB per image); "
        f"{summary['computed_images']} images computed in {compute_s:.1f} s ({rate:.2f} img/s); "
        f"proposal boxes read as {source.convention()}")
    return summary
