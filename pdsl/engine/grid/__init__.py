"""Experiment grids: train and evaluate config variants over seeds, resumably, and tabulate them.

A grid spec (YAML, e.g. ``pipeline/grids/ablation.yaml``)::

    train: {config: CFG, manifest: M, cues: C, overrides: [KEY=VALUE, ...]}
    eval:  {manifest: M, cues: C, max_images: 100, curve: 100}  # curve: every checkpoint scored
    seeds: [0, 1, 2]
    variants:                      # name -> overrides on top of train.overrides
      full: []
      acl_off: [model.acl=false]
      soft: {overrides: [model.mask_targets=soft], seeds: [0]}  # a subset of the seeds
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
unfinished run resumes from its last checkpoint. :func:`summarize` writes the table. With a
results path, the results files are rewritten after every finished cell and the cells they record
count as done (:func:`restore_cells`): a long grid stopped in one checkout resumes in another from
its committed results file (``runs/`` is not committed).

Modules: :mod:`.spec` (the spec and its cells, what a finished cell records), :mod:`.run`
(training and evaluating cells, the second stage's labels, scheduling), :mod:`.summary` (the
table over seeds and the results files), :mod:`.plot` (the bar chart).
"""
from __future__ import annotations

from .plot import plot
from .run import restore_cells, run_cell, run_grid
from .spec import COLUMNS, KINDS, Cell, GridError, cell_done, cells, load_spec
from .summary import COMPARED, QUALITY, collect, final_losses, markdown, summarize, write_results

__all__ = ["COLUMNS", "COMPARED", "KINDS", "QUALITY", "Cell", "GridError", "cell_done", "cells",
           "collect", "final_losses", "load_spec", "markdown", "plot", "restore_cells", "run_cell",
           "run_grid",
           "summarize", "write_results"]
