"""Running a grid's cells: train (resuming) and evaluate each, label the training split for a
second-stage cell, and schedule the cells over processes."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from ...errors import ConfigError
from ...io import write_json_atomic
from .spec import COLUMNS, Cell, GridError, cell_done, cell_record, cells, load_spec
from .summary import collect, write_results


def run_cell(cell: Cell, spec: dict, out: Path, threads: int | None = None) -> dict:
    """Train (resuming) and evaluate one cell; write ``cell.json`` last, atomically."""
    run_dir = cell.dir(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = list(cell.overrides) + ([f"train.threads={threads}"] if threads else [])
    tr, ev = spec["train"], spec["eval"]
    from ..evaluate import evaluate_run  # with the trainer, before training: one code version
    from ..supervised import train_supervised
    from ..train import train

    log = run_dir / "grid.log"
    with open(log, "a") as fh:
        old = os.dup(2)
        os.dup2(fh.fileno(), 2)  # the trainer's progress lines go to the cell's log
        try:
            if cell.kind == "second_stage":
                labels, quality = _pseudo_labels(cell, spec, out)
                train_supervised(tr["config"], tr["manifest"], run_dir, annotations=labels,
                                 resume=True, overrides=overrides)
            elif cell.kind == "supervised":
                train_supervised(tr["config"], tr["manifest"], run_dir, resume=True,
                                 overrides=overrides)
            else:
                train(tr["config"], tr["manifest"], tr["cues"], run_dir, resume=True,
                      overrides=overrides)
            metrics = evaluate_run(run_dir, ev["manifest"], ev["cues"], max_images=ev.get("max_images"),
                                   device="cpu", report=False, curve=ev.get("curve") or 0)
        finally:
            sys.stderr.flush()
            os.dup2(old, 2)
            os.close(old)
    rec = cell_record(cell, spec)
    rec["metrics"] = {col: (metrics.get(sec) or {}).get(key) for col, sec, key in COLUMNS}
    rec["images"] = metrics.get("images")
    if cell.kind == "second_stage":
        rec["pseudo_label"] = quality
    if ev.get("curve"):  # the learning curve: every checkpoint's scores (evaluate.ap_curve)
        rec["curve"] = [json.loads(x) for x in
                        (run_dir / "ap_curve.jsonl").read_text().splitlines() if x.strip()]
    write_json_atomic(rec, run_dir / "cell.json", indent=2)
    return rec


def _pseudo_labels(cell: Cell, spec: dict, out: Path):
    """The source cell's run labels the training split once (``<cell>/pseudo/train.json``; an
    interrupted labelling resumes); returns its path and its quality against GT (with
    ``labels_per_image``)."""
    from ..pseudo_label import PseudoLabelParams, pseudo_label

    src = Cell(cell.source, cell.seed, "pdsl", ()).dir(out)
    if (src / "cell.json").is_file() and "restored" in json.loads((src / "cell.json").read_text()):
        raise ConfigError(f"{cell.variant} seed {cell.seed} labels with {src}, whose record was "
                          f"restored from a results file without its run: train it again "
                          f"(delete {src}) or bring its run back")
    if not (src / "cell.json").is_file():
        raise ConfigError(f"{cell.variant} seed {cell.seed} labels with {src}, which has not "
                          f"finished (no cell.json): run its variant '{cell.source}' first")
    labels = cell.dir(out) / "pseudo" / "train.json"
    qfile = labels.with_name("train.quality.json")
    params = PseudoLabelParams(**spec["variants"][cell.variant]["pseudo_label"])
    if labels.exists():
        # labels of an unfinished cell are reused only if made with this spec's parameters
        made = json.loads(labels.read_text()).get("info", {}).get("params")
        if made != json.loads(json.dumps(dataclasses.asdict(params))):
            raise ConfigError(f"{labels} was labelled with other parameters ({made}); delete it "
                              f"to relabel with the spec's")
    else:
        labels.parent.mkdir(parents=True, exist_ok=True)
        pseudo_label(src, spec["train"]["manifest"], spec["train"]["cues"], labels, params,
                     device="cpu")
    q = json.loads(qfile.read_text()) if qfile.exists() else {}
    quality = dict(q.get("quality") or {})
    if q.get("images"):
        quality["labels_per_image"] = q["annotations"] / q["images"]
    return labels, quality


def _run_cell_job(args):
    import torch

    cell, spec, out, threads = args
    torch.set_num_threads(threads or 1)
    return run_cell(cell, spec, out, threads)


def restore_cells(spec: dict, out: Path, results) -> list[Cell]:
    """The cells recorded in ``RESULTS.json`` (a results file written by an earlier run of this
    grid, e.g. committed in another checkout) that ``out`` lacks: their records are written back
    as ``cell.json`` (marked ``restored``), so that a grid resumes from its results file alone.
    A record made with another spec (other overrides or inputs) is left alone."""
    path = Path(results).with_suffix(".json")
    if not path.is_file():
        return []
    try:
        recorded = {(r["variant"], r["seed"]): r for r in json.loads(path.read_text())["cells"]}
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a grid results file ({e}); move it away to start the "
                          f"grid afresh") from None
    restored = []
    for c in cells(spec):
        rec = recorded.get((c.variant, c.seed))
        if rec is None or (c.dir(out) / "cell.json").exists():
            continue
        if any(rec.get(k) != v for k, v in cell_record(c, spec).items()):
            continue
        c.dir(out).mkdir(parents=True, exist_ok=True)
        write_json_atomic({**rec, "restored": str(path)}, c.dir(out) / "cell.json", indent=2)
        restored.append(c)
    return restored


def run_grid(spec_path, out, only=None, jobs: int = 1, threads: int | None = None,
             echo=print, results=None, title: str = "") -> list[dict]:
    """Run every unfinished cell (``jobs`` at a time, each with ``threads`` torch threads).

    With ``results`` (the RESULTS path of :func:`write_results`), the cells recorded there are
    done (:func:`restore_cells`) and the results files are rewritten after every finished cell,
    so that a stopped grid leaves its table so far and resumes from it."""
    spec = load_spec(spec_path)
    out = Path(out)
    if results:
        back = restore_cells(spec, out, results)
        if back:
            echo(f"grid: {len(back)} cell(s) restored from {Path(results).with_suffix('.json')} "
                 f"(their records; their runs are not here)")
    todo = [c for c in cells(spec, only) if not cell_done(c, spec, out)]
    echo(f"grid {spec_path}: {len(cells(spec, only)) - len(todo)} cells done, {len(todo)} to run "
         f"-> {out}")
    failed = []

    def report(k, c, rec=None, err=None):
        if err is None and results:
            write_results(spec_path, out, results, title)
        if err is not None:
            failed.append(f"{c.variant} seed {c.seed}: {err}")
            echo(f"[{k}/{len(todo)}] FAILED {c.variant} seed {c.seed}: {err} "
                 f"(log: {c.dir(out)}/grid.log)")
        else:
            echo(f"[{k}/{len(todo)}] done {c.variant} seed {c.seed}: mask AP50 "
                 f"{rec['metrics']['mask AP50']}, box AP50 {rec['metrics']['box AP50']}")

    if jobs <= 1:
        for k, c in enumerate(todo, 1):
            echo(f"[{k}/{len(todo)}] {c.variant} seed {c.seed} (log: {c.dir(out)}/grid.log)")
            try:
                report(k, c, run_cell(c, spec, out, threads))
            except Exception as e:  # noqa: BLE001 - one failed cell does not stop the others
                report(k, c, err=e)
    else:
        # a fresh process per cell (max_tasks_per_child): each cell runs the code as it is
        # when the cell starts, even if the files change during a long grid
        fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
        # a second-stage cell is submitted once the cell it labels with has finished
        waiting, running, k = list(todo), {}, 0
        unfinished = {(c.variant, c.seed) for c in todo}
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), **fresh) as pool:
            while waiting or running:
                for c in [c for c in waiting if (c.source, c.seed) not in unfinished]:
                    if len(running) < jobs:
                        waiting.remove(c)
                        running[pool.submit(_run_cell_job, (c, spec, out, threads))] = c
                if not running:  # only cells whose source failed are left
                    for c in waiting:
                        k += 1
                        report(k, c, err=ConfigError(f"not run: its '{c.source}' cell failed"))
                    break
                f = next(as_completed(running))
                c, k = running.pop(f), k + 1
                try:
                    report(k, c, f.result())
                    unfinished.discard((c.variant, c.seed))
                except Exception as e:  # noqa: BLE001
                    report(k, c, err=e)
    if failed:
        raise GridError(f"{len(failed)} of {len(todo)} cells failed (the others are kept; run "
                        f"again to retry only these):\n  " + "\n  ".join(failed))
    return collect(spec, out, only)
