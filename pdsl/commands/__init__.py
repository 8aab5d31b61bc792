"""The click commands of ``cli.py``: the same stages the Snakefile runs, for a person.

Every command parses and validates its arguments and calls one library function in ``pdsl``
(imported when the command runs, so ``--help`` stays fast); bad input ends with one
``Error: ...`` line naming the file, image or field (no traceback). The top layer of ``pdsl``:
it may import every other package; nothing in ``pdsl`` imports it.

One module per stage family: :mod:`.data` (prepare-data), :mod:`.cues` (the cue cache and its
Snakemake pieces), :mod:`.train` (the trainers), :mod:`.evaluate` (eval, predict, export-model),
:mod:`.second_stage` (pseudo-label), :mod:`.grid`; :mod:`.options` holds the options several
commands share.
"""
from __future__ import annotations

import sys

import click

from ..errors import PDSLError, user_message
from . import cues, data, evaluate, grid, second_stage, train


class _Group(click.Group):
    """Turns PDSLError into one clear line and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PDSLError as e:
            click.echo(f"Error: {user_message(e)}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """PDSL: weakly supervised instance segmentation from image-level labels (ICCV 2021).

    \b
    Stages (the Snakefile runs the same ones):
      prepare-data  dataset -> manifest json (COCO format + image-level labels)
      cache-cues    manifest -> proposals + GrabCut seed-mask bank in one HDF5 file
      cue-report    proposal recall, bank coverage and seed-mask quality of a cache
      pretrain-backbone  image-level initialisation on the same labels (no ImageNet offline)
      train         manifest + cues -> run dir (config, metrics, checkpoints)
      train-supervised  the fully supervised Mask R-CNN ceiling (GT or pseudo-label masks)
      eval          run + split -> metrics (pycocotools), results json, report.md
      score         any COCO results json + manifest -> metrics under every protocol
      predict       run + any images -> overlays and a COCO json (no cache needed; without
                    --run: the released demo model)
      pseudo-label  run + its training split -> COCO json of pseudo labels (second stage)
      export-model  run -> weights-only release
      grid          variants x seeds -> trained runs and a table (Table 1, Fig. 3, ceiling)
    Stage pieces used by Snakemake shards: proposals-shard, seeds-shard, merge-cues.
    """


for _module in (data, cues, train, evaluate, second_stage, grid):
    for _command in _module.COMMANDS:
        cli.add_command(_command)

__all__ = ["cli"]
