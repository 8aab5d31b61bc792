"""``grid``: config variants x seeds, trained and evaluated resumably, and their table."""
from __future__ import annotations

import click

from .options import FILE, out_option, output_lock


@click.command("grid")
@click.option("--spec", "spec_path", type=FILE, required=True,
              help="Grid spec YAML: train/eval inputs, seeds, variants (override lists), expected "
                   "directions. See pipeline/grids/.")
@out_option("Where the cells go: OUT/<variant>/seed<k>/ (run dir + cell.json).", folder=True)
@click.option("--results", type=FILE, default=None,
              help="Write RESULTS.json, .md and .png (table mean ± std over seeds, plot), "
                   "rewritten after every finished cell. Cells recorded in RESULTS.json are "
                   "done: commit it and the grid resumes from it in another checkout.")
@click.option("--only", multiple=True, help="Run only this variant (repeatable).")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True,
              help="Cells trained at once (one process each).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="torch threads per cell (default: the config's train.threads); on a CPU "
                   "keep jobs x threads <= cores.")
@click.option("--title", default="", help="Heading of the markdown table.")
def grid_cmd(spec_path, out_dir, results, only, jobs, threads, title):
    """Train and evaluate config variants over seeds, resumably, and tabulate them.

    Every (variant, seed) cell trains with `cli.py train` semantics (an unfinished run resumes)
    and is evaluated on the spec's eval split; a finished cell (OUT/<variant>/seed<k>/cell.json)
    is never re-run, and a cell that finished with another spec is refused rather than
    overwritten. Variant kinds: pdsl (default; an override list), supervised (Mask R-CNN on the
    GT: the ceiling) and second_stage (`from: VARIANT`: that variant's cell of the same seed
    labels the training split, Mask R-CNN is retrained on the labels; run after it). The table
    gives mean ± std over seeds of mask/box AP and CorLoc, each variant's final training losses,
    weak/full ratios, the pseudo labels' quality, and whether each expected direction is beyond
    seed noise (difference > 2 pooled std).

    \b
    Example (Table 1, Fig. 3, the ceiling and the second stage on the demo data):
      python cli.py grid --spec pipeline/grids/ablation.yaml --out runs/grid-ablation \\
          --results pipeline/results/ablation --jobs 2 --threads 1
    """
    with output_lock(out_dir, "grid"):
        from ..engine.grid import load_spec, markdown, run_grid, summarize, write_results

        recs = run_grid(spec_path, out_dir, only=only or None, jobs=jobs, threads=threads,
                        echo=lambda m: click.echo(m, err=True), results=results, title=title)
        if results:
            summary = write_results(spec_path, out_dir, results, title)
            click.echo(f"wrote {results}.json/.md/.png", err=True)
        else:
            summary = summarize(load_spec(spec_path), recs)
    click.echo(markdown(summary, title))


COMMANDS = (grid_cmd,)
