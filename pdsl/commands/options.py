"""Options several commands share, made in one place: the path options every stage reads or
writes (``--manifest``, ``--cues``, ``--run``, ``--config``, ``--out``), the trainers'
``--max-iter`` and KEY=VALUE overrides, ``--device``, and the seed-mask parameters of the cue
cache.

Each path option takes the command's own help text: what the file is for that command."""
from __future__ import annotations

import click

FILE = click.Path(dir_okay=False)
FOLDER = click.Path(file_okay=False)


def _path_option(*decls, kind, required, help, **attrs):
    if not required:  # an optional path defaults to None; a required one has no default
        attrs["default"] = None
    return click.option(*decls, type=kind, required=required, help=help, **attrs)


def manifest_option(help=None, required=True):
    return _path_option("--manifest", kind=FILE, required=required, help=help)


def cues_option(help=None):
    return _path_option("--cues", kind=FILE, required=True, help=help)


def config_option(help):
    return _path_option("--config", "config_path", kind=FILE, required=False, help=help)


def run_option(help, required=True, **attrs):
    """``--run RUN`` (a run directory or a release), passed as ``run_dir``."""
    return _path_option("--run", "run_dir", kind=FOLDER, required=required, help=help, **attrs)


def out_option(help=None, folder=False, required=True):
    """``--out``: a file (passed as ``out``) or, with ``folder``, a directory (``out_dir``)."""
    decls = ("--out", "out_dir") if folder else ("--out",)
    return _path_option(*decls, kind=FOLDER if folder else FILE, required=required, help=help)


PROPOSAL_HELP = ("builtin (selective search) | mcg:DIR (one MCG .mat per image) | pickle:FILE "
                 "(Detectron/PCL/OICR) | boxes:DIR (one .mat/.npy/.pkl/.txt per image) | "
                 "fastrcnn:FILE.mat (Fast R-CNN's selective-search file); data/README.md.")


def box_convention_options(f):
    """``--box-format`` / ``--box-base``: the proposal files' convention (None: the reader's)."""
    f = click.option("--box-base", type=click.Choice(["0", "1"]), default=None,
                     help="Proposal files: 0 = 0-based corners as given, 1 = 1-based inclusive "
                          "pixel indices (MATLAB). Default: boxes: 0; mcg:, fastrcnn: 1.")(f)
    return click.option("--box-format", type=click.Choice(["x1y1x2y2", "y1x1y2x2", "xywh"]),
                        default=None, help="Proposal files' box order. Default: boxes: "
                        "x1y1x2y2; mcg:, fastrcnn: y1x1y2x2 (their published one).")(f)


def convention(box_format, box_base) -> dict:
    """The proposal source parameters of the two options (unset ones left to the reader)."""
    return {"box_format": box_format, "box_base": None if box_base is None else int(box_base)}


def output_lock(out, command: str):
    """The lock of a command's output (:mod:`pdsl.lock`): a second command on it is refused."""
    from ..lock import output_lock as lock

    return lock(out, command, echo=lambda m: click.echo(m, err=True))


max_iter_option = click.option("--max-iter", type=click.IntRange(1), default=None,
                               help="Optimiser steps (overrides solver.max_iter).")
overrides_argument = click.argument("overrides", nargs=-1)
device_option = click.option("--device", default="auto", show_default=True,
                             help="auto | cpu | cuda")


_seed_options = [
    click.option("--seed-method", "--method", "method",
                 type=click.Choice(["grabcut_batched", "grabcut_masked", "grabcut", "grabcut_rect",
                                    "ellipse", "box", "mcg", "mcg_grabcut"]),
                 default=None, help="How a box's seed mask is made. Default grabcut_batched "
                 "(GrabCut's model from a sure-foreground core, for all proposals of an image "
                 "at once); grabcut_masked = the same start with cv2.grabCut, one box at a time "
                 "(4-6x the time); grabcut = the rectangle first, the core where it degenerates "
                 "(clean shapes); grabcut_rect = rectangle init (earlier versions); "
                 "mcg / mcg_grabcut need MCG '-proposals' segments."),
    click.option("--fallback", type=click.Choice(["ellipse", "box", "none"]), default=None,
                 help="Mask stored where the method degenerates. Default ellipse (box = the "
                 "authors' code; none keeps the empty mask, flagged)."),
    click.option("--mask-size", type=click.IntRange(28), default=None,
                 help="Bank mask side M (>= 28). Default 28."),
    click.option("--crop-size", type=click.IntRange(16), default=None,
                 help="Long side (px) of the box crop GrabCut runs on. Default 64."),
    click.option("--iterations", type=click.IntRange(1), default=None,
                 help="GrabCut iterations. Default 1 (the authors use 5 on whole images)."),
    click.option("--core", type=click.FloatRange(0.0, 1.0), default=None,
                 help="grabcut: sure-foreground core, as a fraction of the inscribed ellipse's "
                 "axes. Default 0.7."),
    click.option("--cluster-iou", type=click.FloatRange(0.3, 1.0), default=None,
                 help="threshold sharing: proposals with IoU >= this share a representative's "
                      "mask; facility: no more masks once every proposal overlaps a "
                      "representative this much. Default 0.8."),
    click.option("--max-bank", type=click.IntRange(1), default=None,
                 help="At most this many seed masks per image. Default 80."),
    click.option("--sharing", type=click.Choice(["none", "threshold", "facility"]), default=None,
                 help="none: one seed mask per proposal; otherwise a shared bank of max-bank "
                      "masks, chosen by facility (boxes maximising every proposal's IoU to its "
                      "nearest one) or threshold (greedy clustering at --cluster-iou, earlier "
                      "versions). Default none."),
    click.option("--mask-format", type=click.Choice(["bits", "u8"]), default=None,
                 help="Stored masks: binary, bit-packed (98 bytes per 28 x 28 mask) or u8 (soft, "
                      "0..255: the demo's). Default bits."),
    click.option("--batch-box", type=click.IntRange(8), default=None,
                 help="grabcut_batched: the box's side (px) in its crop grid. Default 28."),
    click.option("--batch-core", type=click.FloatRange(0.0, 1.0), default=None,
                 help="grabcut_batched: sure-foreground core, as a fraction of the inscribed "
                      "ellipse's axes. Default 0.5."),
]

max_proposals_option = click.option(
    "--max-proposals", type=click.IntRange(1), default=None,
    help="Proposals kept per image: the run config's input.max_proposals (4,000 in the authors' "
         "VOC/COCO configs). Default: the source's, 2,000.")


def proposal_options(box_format, box_base, max_proposals) -> dict:
    """The proposal source parameters of the convention options and ``--max-proposals``."""
    return {**convention(box_format, box_base),
            **({} if max_proposals is None else {"max_proposals": int(max_proposals)})}


def seed_options(f):
    """The seed-mask options of ``cache-cues`` and ``seeds-shard`` (None = SeedParams' default)."""
    for opt in reversed(_seed_options):
        f = opt(f)
    return f


def seed_params(**kw):
    """The :class:`~pdsl.cues.seeds.SeedParams` of the given seed options (unset ones default)."""
    from ..cues.seeds import SeedParams

    return SeedParams(**{k: v for k, v in kw.items() if v is not None})
