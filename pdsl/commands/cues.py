"""The cue cache: ``cache-cues`` (one command) and the pieces Snakemake runs per shard
(``proposals-shard``, ``seeds-shard``, ``merge-cues``); ``cue-report`` measures a cache."""
from __future__ import annotations

import click

from .options import (FILE, PROPOSAL_HELP, box_convention_options, cues_option, manifest_option,
                      max_proposals_option, out_option, output_lock, proposal_options,
                      seed_options, seed_params)


@click.command("cache-cues")
@manifest_option("Manifest json (from prepare-data).")
@click.option("--proposals", default="builtin", show_default=True, help=PROPOSAL_HELP)
@box_convention_options
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Parallel CPU worker processes (one shard each at a time).")
@click.option("--shard-size", type=click.IntRange(1), default=64, show_default=True,
              help="Images per resumable shard.")
@out_option("cues.h5 to write.")
@click.option("--keep-parts", is_flag=True, help="Keep the shard files after merging.")
@max_proposals_option
@seed_options
def cache_cues(manifest, proposals, box_format, box_base, workers, shard_size, out, keep_parts,
               max_proposals, **seed_kw):
    """Compute proposals and their seed masks of one split into one HDF5 file.

    Reads MANIFEST and its images (plus MCG .mat files or a proposals pickle if given), writes
    OUT atomically. Work is split into shards kept in OUT.parts/ until the merge, so a killed run
    resumes where it stopped. Same result as the Snakemake stages, without Snakemake. A second
    cache-cues on the same OUT is refused while this one runs (OUT.lock names it).

    \b
    Example:
      python cli.py cache-cues --manifest data/voc/val.json --proposals mcg:MCG/VOC2012 --workers 8 --out data/cues/voc/val/cues.h5
    """
    with output_lock(out, "cache-cues"):
        from ..cues.cache import cache_cues as run

        run(manifest, proposals, out, workers=workers, shard_size=shard_size,
            params=seed_params(**seed_kw), keep_parts=keep_parts,
            proposal_options=proposal_options(box_format, box_base, max_proposals))


@click.command("proposals-shard")
@manifest_option()
@click.option("--proposals", default="builtin", show_default=True, help=PROPOSAL_HELP)
@box_convention_options
@click.option("--shard", required=True, help="Which slice of the images: 'I-of-N', e.g. 1-of-8.")
@max_proposals_option
@out_option()
def proposals_shard(manifest, proposals, box_format, box_base, shard, max_proposals, out):
    """Stage 1 of one shard: proposals of the shard's images -> OUT (HDF5, kind 'proposals')."""
    from ..cues.cache import compute_proposals_shard
    from ..proposals import make_source

    source = make_source(proposals, **proposal_options(box_format, box_base, max_proposals))
    compute_proposals_shard(manifest, source, shard, out)
    click.echo(f"proposals-shard: wrote {out} ({source.kind}, boxes read as "
               f"{source.convention()})", err=True)


@click.command("seeds-shard")
@manifest_option()
@click.option("--proposals-file", type=FILE, required=True, help="Output of proposals-shard.")
@out_option()
@seed_options
def seeds_shard(manifest, proposals_file, out, **seed_kw):
    """Stage 2 of one shard: the seed masks of a proposals shard -> OUT (kind 'cues')."""
    from ..cues.cache import compute_seeds_shard

    compute_seeds_shard(manifest, proposals_file, out, seed_params(**seed_kw))


@click.command("merge-cues")
@click.argument("parts", nargs=-1, required=True, type=FILE)
@out_option()
def merge_cues(parts, out):
    """Merge shard files (same parameters) into the one cues.h5 the trainer opens."""
    from ..cues.store import CueStore, merge_cue_files

    merge_cue_files(list(parts), out)
    s = CueStore(out)
    click.echo(f"merge-cues: wrote {out}: {len(s)} images from {len(parts)} shards", err=True)


@click.command("cue-report")
@manifest_option()
@cues_option()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--online/--no-online", default=True, show_default=True,
              help="Also run the authors' online GrabCut on the same boxes for comparison.")
@click.option("--max-images", type=click.IntRange(1), default=None,
              help="Measure recall and seed-mask quality on at most this many images (speed).")
def cue_report(manifest, cues, as_json, online, max_images):
    """Quality of a cue cache against the manifest's GT (boxes and masks).

    Proposal recall at IoU 0.5/0.7 and mean best IoU vs GT boxes (also by COCO size); bank
    coverage; GrabCut status counts; and, for each GT instance, the IoU with its GT mask of the
    cached mask of its best-overlapping proposal (what training reads) — beside the other seed
    masks made on that proposal and on the GT box itself (filled box, inscribed ellipse, the
    GrabCut variants, MCG segments where the cache has them and, with --online, the authors'
    online GrabCut: whole image at 400 px, 5 iterations), with the time per box of each.
    """
    import json

    from ..cues.report import cue_report as run, format_report

    rep = run(manifest, cues, online=online, max_images=max_images)
    click.echo(json.dumps(rep, indent=2) if as_json else format_report(rep))


COMMANDS = (cache_cues, proposals_shard, seeds_shard, merge_cues, cue_report)
